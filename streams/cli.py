"""The ``framebus`` command: a thin layer over the same functions a Python user calls."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.table import Table

from framebus.streams.cliutil import (
    ConfigOpt,
    DataOpt,
    console,
    err_console,
    fail,
    print_metadata_table,
    print_search_results,
    settings_or_exit,
)
from framebus.streams.config import Settings
from framebus.streams.eval_cli import eval_app
from framebus.streams.generate_cli import cancel as generate_cancel
from framebus.streams.generate_cli import generate
from framebus.streams.models_cli import models_app
from framebus.streams.provenance_cli import provenance_app
from framebus.topics.errors import FramebusError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
topics_app = typer.Typer(no_args_is_help=True, help="Topic names, partitions and JSON Schemas.")
app.add_typer(topics_app, name="topics")
app.add_typer(models_app, name="models", help="Train and evaluate the tiny profile's models.")
app.add_typer(provenance_app, name="provenance", help="Check the C2PA provenance of a video.")
dlq_app = typer.Typer(no_args_is_help=True, help="What the stages gave up on (framebus.dlq), and replaying it.")
app.add_typer(dlq_app, name="dlq")
app.add_typer(eval_app, name="eval", help="Measure models against the synthetic world (eval generation).")
BrokerOpt = Annotated[str | None, typer.Option("--broker", help="external Kafka bootstrap HOST:PORT[,...]")]
ModelsOpt = Annotated[str | None, typer.Option("--models", help="model profile: default or tiny")]


@app.command()
def up(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    embedded_broker: Annotated[str | None, typer.Option(help="where the embedded broker listens")] = None,
    http: Annotated[str | None, typer.Option(help="where the HTTP API listens, HOST:PORT")] = None,
    data_dir: DataOpt = None,
    models: ModelsOpt = None,
    log_level: Annotated[str, typer.Option(help="log level")] = "warning",
) -> None:
    """Run everything on this machine: broker (embedded unless --broker), all agents, store, HTTP API."""
    from framebus.streams.app import up as run_up

    settings = settings_or_exit(
        config, broker=broker, embedded_broker=embedded_broker, http=http, data_dir=data_dir, models=models
    )
    try:
        run_up(settings, loglevel=log_level)
    except FramebusError as err:
        fail(err)


@app.command()
def worker(
    agents: Annotated[
        str,
        typer.Option(
            help="comma-separated: ingest,decode,embed,caption,moderate,"
            "index,publish, or all (what FRAMEBUS_TASKS needs)"
        ),
    ],
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    data_dir: DataOpt = None,
    models: ModelsOpt = None,
    name: Annotated[str | None, typer.Option(help="worker name in logs")] = None,
    log_level: Annotated[str, typer.Option(help="log level")] = "warning",
) -> None:
    """Run chosen agents against a broker (scale-out: more workers join the same consumer group)."""
    from framebus.streams.app import parse_agents
    from framebus.streams.app import worker as run_worker

    settings = settings_or_exit(config, broker=broker, data_dir=data_dir, models=models)
    try:
        run_worker(settings, parse_agents(agents, settings), name=name, loglevel=log_level)
    except FramebusError as err:
        fail(err)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="local video files")],
    tenant: Annotated[str, typer.Option(help="tenant the videos belong to")] = "default",
    wait: Annotated[bool, typer.Option(help="follow each video to its metadata document")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait")] = 300.0,
    json_out: Annotated[bool, typer.Option("--json", help="print metadata as JSON lines")] = False,
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
) -> None:
    """Publish ingest requests for local files to framebus.ingest."""
    from framebus.streams.client import ingest as client_ingest
    from framebus.streams.client import video_id_for
    from framebus.topics.events import IngestRequest

    settings = settings_or_exit(config, broker=broker)
    requests = [IngestRequest(video_id=video_id_for(p), uri=str(p.resolve()), tenant=tenant) for p in paths]
    docs = asyncio.run(client_ingest(settings, requests, wait=wait, timeout_s=timeout))
    if not wait:
        for r in requests:
            console.print(f"published {r.video_id} <- {r.uri}")
        return
    if json_out:
        for r in requests:
            if r.video_id in docs:
                print(docs[r.video_id].model_dump_json(by_alias=True, exclude_none=True))
    else:
        print_metadata_table([docs[r.video_id] for r in requests if r.video_id in docs])
    missing = [r.video_id for r in requests if r.video_id not in docs]
    if missing:
        err_console.print(f"[red]no metadata within {timeout:.0f}s for:[/] {', '.join(missing)}")
        raise typer.Exit(1)
    if any(d.status != "ok" for d in docs.values()):
        raise typer.Exit(1)


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="what to look for, in words")] = None,
    image: Annotated[Path | None, typer.Option(help="query by example: an image file")] = None,
    tenant: Annotated[str, typer.Option(help="tenant to search in")] = "default",
    limit: Annotated[int, typer.Option(min=1, max=100)] = 10,
    moderation: Annotated[str | None, typer.Option(help="only 'flagged' or only 'clean' segments")] = None,
    start: Annotated[float | None, typer.Option(help="segments ending at or after this second")] = None,
    end: Annotated[float | None, typer.Option(help="segments starting at or before this second")] = None,
    generated: Annotated[bool, typer.Option("--generated", help="only videos framebus generated")] = False,
    api: Annotated[str | None, typer.Option(help="HTTP API of a running framebus, HOST:PORT")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="FRAMEBUS_API_KEY", help="the API key (Authorization: Bearer) when the API has keys"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the response as JSON")] = False,
    config: ConfigOpt = None,
    data_dir: DataOpt = None,
    models: ModelsOpt = None,
) -> None:
    """Semantic search by text or image: through the HTTP API of a running framebus, else the data dir."""
    if (query is None) == (image is None):
        err_console.print("give a text QUERY or --image PATH")
        raise typer.Exit(2)
    if moderation not in (None, "flagged", "clean"):
        err_console.print("--moderation takes flagged or clean")
        raise typer.Exit(2)
    settings = settings_or_exit(config, data_dir=data_dir, models=models, http=api)
    params = {
        "tenant": tenant,
        "limit": limit,
        "flagged": {"flagged": True, "clean": False}.get(moderation),
        "start_s": start,
        "end_s": end,
        "origin": "generated" if generated else None,
    }
    params = {k: v for k, v in params.items() if v is not None}
    if api_key:
        params.pop("tenant", None)  # the key names the tenant
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        if image is None:
            resp = httpx.get(
                f"http://{settings.http}/search", params={"q": query, **params}, headers=headers, timeout=60
            )
        else:
            resp = httpx.post(
                f"http://{settings.http}/search/image",
                params=params,
                content=image.read_bytes(),
                headers=headers,
                timeout=60,
            )
        if resp.status_code in (401, 403):
            err_console.print(f"the API refused the search ({resp.status_code}): {resp.json().get('detail', '')}")
            raise typer.Exit(1)
        resp.raise_for_status()
        data = resp.json()
    except httpx.ConnectError:
        data = _search_local(settings, query, image, params)
    if json_out:
        print(json.dumps(data, indent=2))
        return
    print_search_results(data)


def _search_local(settings: Settings, query: str | None, image: Path | None, params: dict) -> dict:
    from framebus.indexing.base import SegmentFilter
    from framebus.models.registry import load_embedder
    from framebus.streams.api import decode_image
    from framebus.streams.search import search as run_search

    where = SegmentFilter(
        flagged=params.get("flagged"),
        start_s=params.get("start_s"),
        end_s=params.get("end_s"),
        origin=params.get("origin"),
    )
    try:
        store = settings.open_store()
        try:
            return run_search(
                settings,
                load_embedder(settings),
                store,
                query,
                tenant=params["tenant"],
                image=decode_image(image.read_bytes()) if image else None,
                limit=params["limit"],
                where=where,
            ).model_dump()
        finally:
            store.close()
    except FramebusError as err:
        fail(err)
        raise


@topics_app.command("schema")
def topics_schema(topic: Annotated[str | None, typer.Argument(help="one topic; default all public")] = None) -> None:
    """Print the JSON Schema of every public event (validate before you send)."""
    from framebus.topics.registry import json_schemas

    schemas = json_schemas()
    if topic:
        if topic not in schemas:
            err_console.print(f"unknown public topic {topic!r}; known: {', '.join(schemas)}")
            raise typer.Exit(2)
        schemas = schemas[topic]
    print(json.dumps(schemas, indent=2))


@topics_app.command("list")
def topics_list(config: ConfigOpt = None) -> None:
    """Every topic framebus uses, with its key and partitions."""
    from framebus.topics.registry import ALL

    settings = settings_or_exit(config)
    table = Table("topic", "key", "value", "public", "partitions")
    for spec in ALL:
        table.add_row(
            settings.topic(spec.name),
            spec.key,
            spec.model.__name__,
            "yes" if spec.public else "",
            str(settings.partitions),
        )
    console.print(table)


@topics_app.command("create")
def topics_create(config: ConfigOpt = None, broker: BrokerOpt = None) -> None:
    """Create every topic on the broker with the configured partitions (idempotent)."""
    from framebus.streams.broker import ensure_topics

    settings = settings_or_exit(config, broker=broker)
    for name, n in sorted(asyncio.run(ensure_topics(settings)).items()):
        console.print(f"{name}  partitions={n}")


StageOpt = Annotated[str | None, typer.Option("--stage", help="only entries of this stage (ingest, decode, ...)")]
VideoOpt = Annotated[str | None, typer.Option("--video-id", help="only entries of this video")]


@dlq_app.command("list")
def dlq_list(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    stage: StageOpt = None,
    video_id: VideoOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Every DLQ entry now on the topic: stage, video, code, message."""
    from framebus.streams.dlq import list_sync

    settings = settings_or_exit(config, broker=broker)
    entries = list_sync(settings, stage=stage, video_id=video_id)
    if as_json:
        for e in entries:
            print(json.dumps(e.as_dict()))
        return
    table = Table("offset", "stage", "video", "code", "message")
    for e in entries:
        d = e.as_dict()
        table.add_row(f"{d['partition']}:{d['offset']}", d["stage"], d["video_id"] or "", d["code"], d["message"][:80])
    console.print(table)
    console.print(f"{len(entries)} entries")


@dlq_app.command("replay")
def dlq_replay(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    stage: StageOpt = None,
    video_id: VideoOpt = None,
) -> None:
    """Send the videos of the chosen entries through ingest again (a replayed entry is one run: twice is once)."""
    from framebus.streams.dlq import replay_sync

    settings = settings_or_exit(config, broker=broker)
    sent = replay_sync(settings, stage=stage, video_id=video_id)
    for vid, run in sent:
        console.print(f"replayed {vid} run={run}")
    console.print(f"{len(sent)} videos replayed")


@app.command()
def demo(
    workdir: Annotated[Path | None, typer.Option(help="where to put sample videos and data")] = None,
    keep: Annotated[bool, typer.Option(help="keep the work directory")] = False,
) -> None:
    """Make sample videos, start the embedded stack, ingest them, print metadata and searches."""
    from framebus.streams.demo import run_demo

    sys.exit(run_demo(workdir, keep=keep))


@app.command()
def doctor(config: ConfigOpt = None) -> None:
    """Check this installation: namespace, torch, torchvision (and its compatibility hook), tiny models,
    broker, directories. Exits 1 when a check fails."""
    from framebus.streams.doctor import diagnose

    checks = diagnose(settings_or_exit(config))
    table = Table("check", "", "detail")
    for c in checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", c.detail)
    console.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def loadtest(ctx: typer.Context) -> None:
    """Load generator and soak test: ingest (and search) at a steady rate; throughput, latency percentiles,
    lag per stage, RSS and blob store over time, JSON + PNG. Options: framebus loadtest --help."""
    from framebus.loadtest.soak import main as run_loadtest

    sys.exit(run_loadtest(ctx.args))


app.command("generate")(generate)
app.command("cancel")(generate_cancel)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
