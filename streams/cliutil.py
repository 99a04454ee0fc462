"""What the ``framebus`` command's sub-apps share: consoles, common options, settings and error exits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:
    from streams.config import Settings
    from streams.errors import FramebusError

# Piped output (CI logs, `| less`) gets a wide console so tables don't truncate ids and error codes.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file")]
DataOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="vector store, blobs, caches")]


def settings_or_exit(config: Path | None, **overrides) -> "Settings":
    """``load_settings``; a bad file or value prints ``configuration error`` and exits 2."""
    from streams.config import load_settings

    try:
        return load_settings(config, **overrides)
    except Exception as exc:  # pydantic validation, unreadable file
        err_console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def fail(err: "FramebusError") -> NoReturn:
    """Print ``code: message`` of a framebus error and exit 1."""
    err_console.print(f"[red]{err.code}[/]: {err.message}")
    raise typer.Exit(1)
