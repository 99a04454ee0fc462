"""Wiring: build a Runtime with a chosen set of agents and run it as a faust worker.

``framebus up`` = embedded broker (unless external) + topics + HTTP API + every agent in this process.
``framebus worker --agents decode,embed`` = the chosen agents against an external broker: scale-out is
more such processes in the same consumer group.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Iterable

import faust

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


class FramebusWorker(faust.Worker):
    """A faust worker that says once, on stdout, when it is ready, and calls ``on_ready``."""

    def __init__(self, app: faust.App, *, ready_line: str, on_ready: Callable[[], None] | None = None, **kw):
        super().__init__(app, **kw)
        self.spinner = None  # its terminal escape codes would garble the ready line
        self._ready_line = ready_line
        self._on_ready = on_ready

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        print(self._ready_line, flush=True)
        if self._on_ready:
            self._on_ready()


def run_worker(rt: Runtime, *, ready_line: str, loglevel: str = "warn", on_ready=None) -> None:
    """Run until SIGINT/SIGTERM. Blocks; returns after a clean stop."""
    worker = FramebusWorker(
        rt.app,
        ready_line=ready_line,
        on_ready=on_ready,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        rt.close()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("aiokafka", "faust", "mode", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def up(settings: Settings, *, with_api: bool = True, loglevel: str = "warning") -> None:
    """Everything on one machine: embedded broker (unless external), topics, agents, HTTP API."""
    from framebus.streams import api

    configure_logging(loglevel)
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
        rt.load_models(agents)  # before joining the group: a missing model fails fast and clearly
        server = api.serve_in_thread(rt) if with_api else None
        where = f" http=http://{settings.http}" if server else ""
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
    rt.load_models(agents)
    run_worker(
        rt,
        ready_line=f"framebus worker ready: name={rt.worker_name} broker={settings.bootstrap} "
        f"agents={','.join(agents)}",
    )
