"""``framebus eval ...``: measure a model against the synthetic world (``eval generation``: text -> video)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from framebus.streams.cliutil import ConfigOpt, DataOpt, console, err_console, fail, settings_or_exit

eval_app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


@eval_app.command()
def generation(
    models: Annotated[str, typer.Option("--model", help="model profile whose generator is measured")] = "tiny",
    prompts: Annotated[int, typer.Option("--prompts", min=2, help="prompts of the suite (one clip each)")] = 40,
    steps: Annotated[int, typer.Option("--steps", min=1, help="denoising steps per clip")] = 20,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help="classifier-free guidance scale (default: the model's)")
    ] = None,
    contrast: Annotated[
        float | None,
        typer.Option(
            "--contrast-guidance", help="the tiny generator's shape-contrast guidance (default: its own; 0: off)"
        ),
    ] = None,
    heldout: Annotated[bool, typer.Option(help="add the combinations the tiny generator never saw")] = True,
    reference: Annotated[bool, typer.Option(help="also measure the world's own clips (the ceiling)")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the result to this JSON file")] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="a previous --json; exit 1 on regressions")
    ] = None,
    sheet: Annotated[
        Path | None,
        typer.Option("--sheet", help="save a PNG: world clip against generated clip for the first 8 prompts"),
    ] = None,
    data_dir: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Generate clips for "a {colour} {shape} moving {motion}" prompts with unseen seeds and measure them with
    the tiny captioner and tiny CLIP: attribute accuracy (and on held-out combinations), text-video
    similarity matched vs shuffled, temporal consistency, flicker, sharpness, speed."""
    from framebus.models import generation_eval as ge
    from framebus.models.registry import load_captioner, load_embedder, load_generator
    from framebus.topics.errors import FramebusError

    settings = settings_or_exit(config, data_dir=data_dir, models=models)
    if contrast is not None:  # through the setting the loader already reads, as the agent gets it
        settings = settings.model_copy(update={"generate_contrast_guidance": float(contrast)})
    judges = settings.model_copy(update={"models": "tiny"})
    suite = ge.suite(prompts) + (ge.heldout_prompts() if heldout else [])
    seeds = [ge.EVAL_SEED_BASE + i for i in range(len(suite))]
    try:
        generator = load_generator(settings)
        captioner, embedder = load_captioner(judges), load_embedder(judges)
        # a job that names no guidance gets the same (agents/generate.py)
        guidance = float(guidance if guidance is not None else getattr(generator, "default_guidance", 3.0))
        err_console.print(f"generating {len(suite)} clips with {generator.info.name} {generator.info.version}...")
        clips: list = []
        result = ge.evaluate_generation(
            generator, captioner, embedder, suite, seeds, steps=steps, guidance=guidance, clips_out=clips
        )
        if sheet is not None:
            n = min(8, len(suite))
            ge.contact_sheet(
                clips[:n],
                ge.reference_clips(suite[:n], seeds[:n]),
                suite[:n],
                sheet,
                title=f"{generator.info.name} {generator.info.version}, {steps} steps, guidance {guidance}"
                + (f", contrast {generator.contrast_guidance}" if getattr(generator, "contrast_guidance", 0) else ""),
            )
            err_console.print(f"contact sheet: {sheet}")
        model = getattr(generator, "model", None)
        if hasattr(model, "velocity"):  # the tiny generator: how much it uses each word of the prompt
            result["word_reliance"] = ge.word_reliance(model, suite, seeds)
        if reference:
            result["reference"] = ge.evaluate_clips(
                ge.reference_clips(suite, seeds), suite, captioner, embedder, heldout=ge.heldout_prompts()
            )
    except FramebusError as err:
        fail(err)
    regressions = ge.compare(result, json.loads(baseline.read_text())) if baseline is not None else []
    result["regressions"] = regressions
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2, sort_keys=True))
    print_generation_report(result)
    if regressions:
        for line in regressions:
            err_console.print(f"[red]regression[/] {line}")
        raise typer.Exit(1)


def print_generation_report(result: dict[str, Any]) -> None:
    model = result["model"]
    table = Table(title=f"text -> video, {model['name']} {model['version']} ({result['clips']} clips)")
    for col in ("measure", "generated", "world clips (ceiling)"):
        table.add_column(col)
    ref = result.get("reference") or {}
    for group, label in (("accuracy", "all prompts"), ("heldout_accuracy", "held-out combinations")):
        for attr in ("colour", "shape", "motion", "all"):
            table.add_row(
                f"{attr} named ({label}, n={result[group].get('n')})",
                _fmt(result[group].get(attr)),
                _fmt((ref.get(group) or {}).get(attr)),
            )
    for key in ("matched", "shuffled", "gap"):
        table.add_row(
            f"text-video similarity {key}", _fmt(result["similarity"][key]), _fmt(ref.get("similarity", {}).get(key))
        )
    for key in ("temporal_consistency", "flicker", "sharpness"):
        table.add_row(key.replace("_", " "), _fmt(result[key]), _fmt(ref.get(key)))
    for attr, rise in (result.get("word_reliance") or {}).get("reliance", {}).items():
        table.add_row(f"flow loss rise, {attr} word swapped", _fmt(rise), "-")
    table.add_row("seconds per step", _fmt(result["seconds_per_step"]), "-")
    table.add_row("seconds per clip", _fmt(result["seconds_per_clip"]), "-")
    console.print(table)
