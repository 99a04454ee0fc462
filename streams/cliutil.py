"""What the ``framebus`` command's sub-apps share: consoles, common options, settings and error exits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from framebus.streams.config import Settings
    from framebus.topics.errors import FramebusError

# Piped output (CI logs, `| less`) gets a wide console so tables don't truncate ids and error codes.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]
DataOpt = Annotated[Path | None, typer.Option("--data-dir", help="vector store, blobs, caches")]


def settings_or_exit(config: Path | None, **overrides) -> Settings:
    """``load_settings``; a bad file or value prints ``configuration error`` and exits 2."""
    from framebus.streams.config import load_settings

    try:
        return load_settings(config, **overrides)
    except Exception as exc:  # pydantic validation, unreadable file
        err_console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def fail(err: FramebusError) -> NoReturn:
    """Print ``code: message`` of a framebus error and exit 1."""
    err_console.print(f"[red]{err.code}[/]: {err.message}")
    raise typer.Exit(1)


def print_metadata_table(docs) -> None:
    table = Table("video", "status", "duration", "fps", "size", "codec", "segments", "error")
    for d in docs:
        table.add_row(
            d.video_id,
            d.status,
            f"{d.duration_s:.2f}s" if d.duration_s else "-",
            f"{d.fps:.2f}" if d.fps else "-",
            f"{d.width}x{d.height}" if d.width else "-",
            d.codec or "-",
            str(len(d.shots)),
            d.error.code if d.error else "",
        )
    console.print(table)


def print_search_results(data: dict) -> None:
    console.print(f"[bold]{data['query']!r}[/] in tenant {data['tenant']} ({data['model']})")
    if not data["results"]:
        console.print("  no results")
    for rank, video in enumerate(data["results"], 1):
        console.print(f"  {rank}. {video['video_id']}  score {video['score']:.3f}")
        for s in video["segments"]:
            flag = " [red]flagged[/]" if s.get("flagged") else ""
            caption = f'  "{s["caption"]}"' if s.get("caption") else ""
            console.print(f"       {s['start_s']:6.1f}-{s['end_s']:.1f}s  {s['score']:.3f}{caption}{flag}")
