"""Wiring: build a Runtime with a chosen set of agents and run its stages until stopped.

``framebus up`` = embedded broker (unless external) + topics + HTTP API + every agent in this process.
``framebus worker --agents decode,embed`` = the chosen agents against an external broker: scale-out is
more such processes: each stage has its own consumer group (``<app_id>.<stage>``), so any split of the
stages across processes and machines works.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Iterable

from framebus.streams.broker import EmbeddedBroker, ensure_topics
from framebus.streams.config import Settings
from framebus.streams.runtime import AGENTS, MODEL_AGENTS, Runtime

log = logging.getLogger("framebus.app")


def pipeline_agents(settings: Settings) -> list[str]:
    """Every agent the configured tasks need (a model agent only when its task is on)."""
    return [a for a in AGENTS if a not in MODEL_AGENTS or a in settings.tasks]


def parse_agents(value: str | Iterable[str], settings: Settings) -> list[str]:
    names = [a.strip() for a in (value.split(",") if isinstance(value, str) else value) if a.strip()]
    if names == ["all"]:
        return pipeline_agents(settings)
    unknown = sorted(set(names) - set(AGENTS))
    if unknown or not names:
        raise SystemExit(f"unknown agents {unknown or names}; choose from {', '.join(AGENTS)} or 'all'")
    return names


def build_runtime(settings: Settings, agents: Iterable[str], worker_name: str | None = None) -> Runtime:
    rt = Runtime(settings, worker_name=worker_name)
    for name in agents:
        importlib.import_module(f"framebus.agents.{name}").register(rt)
    rt.agents = list(agents)
    return rt


async def serve(rt: Runtime, *, ready_line: str, on_ready: Callable[[], None] | None = None) -> None:
    """Run ``rt``'s stages until SIGINT/SIGTERM (or a stage's fatal error), then stop them cleanly:
    in-flight work gets its grace, the finished prefix is committed, every group is left."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await rt.start()
    try:
        waiter = asyncio.create_task(stop.wait())
        assigned = asyncio.create_task(rt.wait_assigned())
        await asyncio.wait({waiter, assigned}, return_when=asyncio.FIRST_COMPLETED)
        if assigned.done():
            print(ready_line, flush=True)
            if on_ready:
                on_ready()
        else:
            assigned.cancel()
        while not stop.is_set():
            crashed = rt.crashed()
            if crashed:
                exc = crashed[0].exception() if not crashed[0].cancelled() else None
                raise RuntimeError(f"stage loop {crashed[0].get_name()} ended: {exc!r}") from exc
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout=1.0)
            except TimeoutError:
                pass
    finally:
        await rt.stop()


def run_worker(rt: Runtime, *, ready_line: str, loglevel: str = "warn", on_ready=None) -> None:
    """Run until SIGINT/SIGTERM. Blocks; returns after a clean stop."""
    try:
        asyncio.run(serve(rt, ready_line=ready_line, on_ready=on_ready))
    finally:
        rt.close()


def preflight(rt: Runtime) -> None:
    """Checks that need the broker, before models load (seconds, not the minute a model may take): in
    exactly-once mode, that the broker supports transactions (``broker.transactions_unsupported``)."""
    if not rt.exactly_once:
        return
    from framebus.streams.delivery import check_transactions

    async def probe() -> None:  # an aiokafka client is made inside its loop
        await check_transactions(rt.transactional_producer("probe"))

    asyncio.run(probe())


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("aiokafka", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def up(settings: Settings, *, with_api: bool = True, loglevel: str = "warning") -> None:
    """Everything on one machine: embedded broker (unless external), topics, agents, HTTP API."""
    from framebus.streams import api

    configure_logging(loglevel)
    auth = api.check_bind(settings) if with_api else ""  # before anything starts: no open API off loopback
    broker = None
    if not settings.broker:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        broker = EmbeddedBroker(
            settings.embedded_broker,
            log_path=settings.data_dir / "broker.log",
            on_restart=lambda: asyncio.run(ensure_topics(settings)),
        )
        broker.start()
    try:
        asyncio.run(ensure_topics(settings))
        agents = pipeline_agents(settings)
        rt = build_runtime(settings, agents, worker_name="up")
        preflight(rt)
        rt.load_models(agents)  # before joining the group: a missing model fails fast and clearly
        server = api.serve_in_thread(rt) if with_api else None
        where = f" http=http://{settings.http} {auth}" if server else ""
        run_worker(
            rt,
            ready_line=f"framebus ready: broker={settings.bootstrap}{where} "
            f"agents={','.join(agents)} models={settings.models}",
            loglevel="warn",
        )
        if server:
            server.should_exit = True
    finally:
        if broker:
            broker.stop()


def worker(settings: Settings, agents: list[str], *, name: str | None = None, loglevel: str = "warning") -> None:
    configure_logging(loglevel)
    asyncio.run(ensure_topics(settings))
    rt = build_runtime(settings, agents, worker_name=name)
    preflight(rt)
    rt.load_models(agents)
    run_worker(
        rt,
        ready_line=f"framebus worker ready: name={rt.worker_name} broker={settings.bootstrap} "
        f"agents={','.join(agents)}",
    )
