"""``framebus generate "prompt"``: publish a generation request and follow it to its result."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from framebus.streams.cliutil import ConfigOpt, console, err_console, settings_or_exit

SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")


def generate(
    prompt: Annotated[str, typer.Argument(help="what the video shows, in words")],
    seed: Annotated[int | None, typer.Option(help="random seed (same seed, same video)")] = None,
    steps: Annotated[int | None, typer.Option(min=1, max=1000, help="denoising steps")] = None,
    frames: Annotated[int | None, typer.Option(min=1, max=1024, help="frames to generate")] = None,
    fps: Annotated[float | None, typer.Option(min=1, max=240)] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT, e.g. 256x256")] = None,
    guidance: Annotated[float | None, typer.Option(help="classifier-free guidance scale")] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="negative prompt")] = None,
    mode: Annotated[str, typer.Option(help="t2v, v2v, i2v, upscale or interpolate")] = "t2v",
    source: Annotated[Path | None, typer.Option(help="source video (v2v, i2v, upscale, interpolate)")] = None,
    strength: Annotated[float | None, typer.Option(min=0.01, max=1.0, help="v2v: how much is re-noised")] = None,
    scale: Annotated[float | None, typer.Option(help="upscale: factor")] = None,
    priority: Annotated[int, typer.Option(min=0, max=9, help="higher runs first")] = 5,
    tenant: Annotated[str, typer.Option(help="tenant the job belongs to")] = "default",
    job_id: Annotated[str | None, typer.Option("--job-id", help="job id (default: a new one)")] = None,
    wait: Annotated[bool, typer.Option(help="show progress and wait for the result")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait")] = 900.0,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    config: ConfigOpt = None,
    broker: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
) -> None:
    """Publish a GenerationRequest to framebus.generate; with --wait, a progress bar and the result."""
    from framebus.streams.client import generate as client_generate
    from framebus.topics.events import GenerationRequest

    settings = settings_or_exit(config, broker=broker)
    width = height = None
    if size:
        m = SIZE.match(size)
        if not m:
            err_console.print("--size takes WIDTHxHEIGHT, e.g. 256x256")
            raise typer.Exit(2)
        width, height = int(m.group(1)), int(m.group(2))
    try:
        req = GenerationRequest(
            job_id=job_id or f"job-{uuid.uuid4().hex[:16]}",
            prompt=prompt,
            tenant=tenant,
            negative_prompt=negative,
            seed=seed,
            steps=steps,
            guidance=guidance,
            num_frames=frames,
            fps=fps,
            width=width,
            height=height,
            mode=mode,
            source_uri=str(source.resolve()) if source else None,
            strength=strength,
            scale=scale,
            priority=priority,
        )
    except ValueError as exc:
        err_console.print(f"[red]invalid request:[/] {exc}")
        raise typer.Exit(2) from None
    if not wait:
        asyncio.run(client_generate(settings, req, wait=False))
        console.print(f"published job {req.job_id}")
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task(f"job {req.job_id}", total=None, note="queued")

        def on_progress(p) -> None:
            note = f"resumed from step {p.resumed_from}" if p.resumed_from else ""
            bar.update(task, total=p.total_steps, completed=p.step, note=note)

        result = asyncio.run(client_generate(settings, req, wait=True, timeout_s=timeout, on_progress=on_progress))
    if result is None:
        err_console.print(f"[red]no result within {timeout:.0f}s[/] for job {req.job_id}")
        raise typer.Exit(1)
    if json_out:
        print(result.model_dump_json(by_alias=True, exclude_none=True, indent=2))
    else:
        colour = {"ok": "green", "blocked": "yellow", "cancelled": "yellow"}.get(result.status, "red")
        console.print(f"job {result.job_id}: [{colour}]{result.status}[/]")
        if result.uri:
            console.print(f"  video      {result.uri}")
            console.print(f"  indexed as {result.video_id}")
        if result.model:
            console.print(f"  model      {result.model.name}/{result.model.version}, {result.steps} steps")
        if result.resumed_from:
            console.print(f"  resumed    from step {result.resumed_from}")
        if result.error:
            console.print(f"  error      {result.error.code}: {result.error.message}")
    if result.status != "ok":
        raise typer.Exit(1)


def cancel(
    job_id: Annotated[str, typer.Argument(help="the job to stop")],
    tenant: Annotated[str, typer.Option(help="tenant the job belongs to")] = "default",
    reason: Annotated[str | None, typer.Option(help="why")] = None,
    config: ConfigOpt = None,
    broker: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
) -> None:
    """Cancel a generation job (it stops at its next step and ends cancelled)."""
    from framebus.streams.client import publish_event
    from framebus.topics import registry
    from framebus.topics.events import GenerationCancel

    settings = settings_or_exit(config, broker=broker)
    event = GenerationCancel(job_id=job_id, tenant=tenant, reason=reason)
    asyncio.run(publish_event(settings, registry.GENERATE_CANCEL, job_id, event))
    console.print(f"cancel sent for job {job_id}")
