"""``framebus models ...``: train the offline tiny models and evaluate models on the synthetic world."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from framebus.streams.cliutil import ConfigOpt, DataOpt, console, err_console, fail, settings_or_exit

models_app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) <= 1 else f"{v:.1f}"
    return str(v)


@models_app.command()
def train(
    force: Annotated[bool, typer.Option("--force", help="retrain even if the file exists")] = False,
    data_dir: DataOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Train the tiny models that no shipped or cached weights match (all of them with --force)."""
    from framebus.models.training import TRAINERS, ensure_tiny_models, missing_models
    from framebus.topics.errors import FramebusError

    settings = settings_or_exit(config, data_dir=data_dir)
    todo = [t.name for t in TRAINERS] if force else missing_models(settings)
    if todo:
        err_console.print(f"training {', '.join(todo)} (seed {settings.train_seed}; a few minutes on CPU)...")
    try:
        result = ensure_tiny_models(settings, force=force, progress=err_console.print)
    except FramebusError as err:
        fail(err)
    if json_out:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    table = Table(title=f"tiny models, seed {settings.train_seed}")
    for col in ("model", "status", "version", "recipe", "steps", "seconds", "final loss", "path"):
        table.add_column(col, overflow="fold")
    for name, entry in result.items():
        st = entry.get("stats") or {}
        table.add_row(
            name,
            entry["status"],
            _fmt(st.get("version")),
            _fmt(st.get("recipe_id")),
            _fmt(st.get("steps")),
            _fmt(st.get("seconds")),
            _fmt(st.get("final_loss")),
            entry["path"],
        )
    console.print(table)


@models_app.command("eval")
def eval_(
    data_dir: DataOpt = None,
    config: ConfigOpt = None,
    models: Annotated[str, typer.Option("--models", help="model profile to evaluate")] = "tiny",
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Evaluate the models of a profile (default: tiny) on held-out synthetic world videos."""
    from framebus.models.training import missing_models
    from framebus.streams.evaluate import evaluate
    from framebus.topics.errors import FramebusError

    settings = settings_or_exit(config, data_dir=data_dir, models=models, device=device)
    if settings.models == "tiny" and missing_models(settings) and not json_out:
        err_console.print(
            f"[yellow]note:[/] not trained yet ({', '.join(missing_models(settings))}): evaluating "
            "the untrained seeded init; run `framebus models train` first"
        )
    try:
        result = evaluate(settings)
    except FramebusError as err:
        fail(err)
    if json_out:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    print_report(result)


def print_report(result: dict[str, Any]) -> None:
    held = result.get("heldout", {})
    search = result.get("search")
    if search:
        model = search.get("model", {})
        title = (
            f"text -> video search, {model.get('name')} {model.get('version')} ({held.get('videos')} "
            f"held-out videos, {held.get('shots')} shots, {search.get('segments')} segments)"
        )
        table = Table(title=title)
        for col in ("queries", "n", "metric", "@1", "@5", "chance@1", "chance@5"):
            table.add_column(col)
        cap = search["caption"]
        table.add_row(
            "caption (right video + shot)",
            _fmt(cap.get("queries")),
            "recall",
            _fmt(cap.get("recall@1")),
            _fmt(cap.get("recall@5")),
            _fmt(cap.get("chance@1")),
            _fmt(cap.get("chance@5")),
        )
        for attr, m in search.get("caption_attributes", {}).items():
            table.add_row(
                f"caption -> top-1 has right {attr}",
                _fmt(cap.get("queries")),
                "accuracy",
                _fmt(m.get("accuracy@1")),
                "-",
                _fmt(m.get("chance")),
                "-",
            )
        for kind, m in search.get("queries", {}).items():
            table.add_row(
                f"'{kind}' queries",
                _fmt(m.get("queries")),
                "precision",
                _fmt(m.get("precision@1")),
                _fmt(m.get("precision@5")),
                _fmt(m.get("chance")),
                _fmt(m.get("chance")),
            )
        console.print(table)
    # other evaluations (captioning, moderation, ...) print generically
    for key, value in result.items():
        if key in ("heldout", "search", "seconds") or not isinstance(value, dict):
            continue
        table = Table(title=key)
        table.add_column("metric")
        table.add_column("value")
        for name, v in _flatten(value):
            table.add_row(name, _fmt(v))
        console.print(table)
    if "seconds" in result:
        console.print(f"evaluated in {result['seconds']:.1f}s")


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, name + "."))
        else:
            out.append((name, v))
    return out
