"""``framebus provenance ...``: check the C2PA provenance of a video (who made it, how, and whether it changed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from framebus.streams.cliutil import ConfigOpt, DataOpt, console, fail, settings_or_exit

provenance_app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _name(parts: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (parts or {}).items()) or "-"


def _watermark(path: Path) -> dict | None:
    """The invisible watermark report of ``path`` (``agents.media.watermark.detect``), ``None`` when it has
    no readable video stream."""
    from framebus.agents.media.watermark import detect

    try:
        return detect(path).as_dict()
    except Exception:  # noqa: BLE001 - not a video PyAV can read: the C2PA verdict still stands
        return None


@provenance_app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="the video (or image) to check")],
    trust: Annotated[
        list[Path] | None,
        typer.Option("--trust", help="PEM file of a root certificate to trust, besides this deployment's own"),
    ] = None,
    data_dir: DataOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Verify FILE's C2PA manifest against the local CA (and the configured chain's root), and look for
    framebus's invisible watermark in its keyframes. Exit code 0 when the manifest is valid: intact and
    signed by a trusted signer; 1 otherwise (altered, untrusted, not signed). The watermark is reported,
    not judged: it survives re-encoding and metadata stripping, where the manifest does not."""
    from framebus.agents.media.provenance import trust_anchors
    from framebus.agents.media.provenance import verify as verify_file
    from framebus.topics.errors import FramebusError, GenerationError

    settings = settings_or_exit(config, data_dir=data_dir)
    try:
        anchors = [trust_anchors(settings.data_dir, settings.provenance_cert) or b""]
        for path in trust or []:
            try:
                anchors.append(path.read_bytes())
            except OSError as e:
                raise GenerationError(f"cannot read {path}: {e}", code="provenance.bad_identity") from None
        result = verify_file(file, trust_anchors=anchors)
    except FramebusError as err:
        fail(err)
    mark = _watermark(file)
    if json_out:
        typer.echo(json.dumps({**result.as_dict(), "watermark": mark}, indent=2, sort_keys=True))
        raise typer.Exit(0 if result.valid else 1)

    if result.valid:
        verdict = "[bold green]VALID[/]"
    elif result.altered:
        verdict = "[bold red]ALTERED[/]"
    elif not result.signed:
        verdict = "[bold yellow]NOT SIGNED[/]" if result.state == "NotSigned" else "[bold red]UNREADABLE[/]"
    else:
        verdict = "[bold red]NOT VALID[/]"
    console.print(f"{verdict}  {file}")
    console.print(f"  {result.message}")
    if result.signed:
        signer = result.signer or {}
        console.print(f"  signer:    {_name(signer.get('subject'))}")
        console.print(f"  issuer:    {_name(signer.get('issuer'))}")
        console.print(
            f"  generator: {result.claim_generator or '-'}   source type: {result.digital_source_type or '-'}"
        )
        console.print(f"  state:     {result.state}   altered: {'yes' if result.altered else 'no'}")
        if result.failures:
            console.print(f"  failures:  [red]{', '.join(result.failures)}[/]")
    if mark is None:
        console.print("  watermark: [yellow]not readable[/] (no video stream)")
    elif not mark["applicable"]:
        console.print("  watermark: not applicable (frames under 256x256 carry none)")
    else:
        found = "[green]present[/]" if mark["present"] else "[yellow]absent[/]"
        console.print(
            f"  watermark: {found} ({mark['method']}, {mark['marked']} of {mark['checked']} keyframes, "
            f"bit accuracy {mark['bit_accuracy']:.2f})"
        )
    if result.claims:
        title = "org.framebus.generation" + ("" if result.valid else " (not verified)")
        table = Table("claim", "value", title=title)
        for key, value in sorted(result.claims.items()):
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        console.print(table)
    raise typer.Exit(0 if result.valid else 1)
