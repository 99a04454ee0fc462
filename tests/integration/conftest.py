"""Integration fixtures: the real embedded broker (Tansu) and the real ``framebus up``, as child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from framebus.streams.broker import EmbeddedBroker, ensure_topics
from framebus.streams.client import ingest
from framebus.streams.config import Settings, load_settings
from framebus.streams.demo import free_port, start_process, start_stack, stop_stack
from framebus.topics.events import IngestRequest, VideoMetadata

pytestmark = pytest.mark.integration


def stack_env(data_dir: Path, roots: list[Path], **extra: str) -> dict[str, str]:
    # the training seed and the model cache pass through: the stack serves the models the tests were given
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FRAMEBUS_") or k in ("FRAMEBUS_TRAIN_SEED", "FRAMEBUS_CACHE_DIR", "FRAMEBUS_MODEL_DIR")
    }
    env.update(
        {
            "FRAMEBUS_MODELS": "tiny",
            "FRAMEBUS_DATA_DIR": str(data_dir),
            "FRAMEBUS_INGEST_ROOTS": ":".join(map(str, roots)),
            "FRAMEBUS_SESSION_TIMEOUT_S": "6",
            "FRAMEBUS_DECODE_WORKERS": "2",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


FAULT_MARKER = "poison-"
FAULT_STAGES = ("ingest", "decode", "embed", "caption", "moderate", "index", "publish")


@dataclass
class Stack:
    broker: str
    http: str
    media: Path
    data_dir: Path
    log: Path

    @property
    def settings(self) -> Settings:
        return load_settings(embedded_broker=self.broker, http=self.http)

    def ingest(self, requests: list[IngestRequest], timeout_s: float = 240) -> dict[str, VideoMetadata]:
        return asyncio.run(ingest(self.settings, requests, wait=True, timeout_s=timeout_s))


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_models) -> Stack:
    """One ``framebus up`` for the whole session (trained tiny models, all tasks), its ingest root a temp
    media dir. The models are trained before it starts (``tiny_models``), so it starts in seconds."""
    base = tmp_path_factory.mktemp("stack")
    media = base / "media"
    media.mkdir()
    broker, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    log = base / "up.log"
    env = stack_env(
        base / "data",
        [media],
        # limits the hostile-input corpus crosses with small files
        FRAMEBUS_MAX_WIDTH="1024",
        FRAMEBUS_MAX_HEIGHT="1024",
        FRAMEBUS_MAX_DURATION_S="60",
        # a bug in each stage, for the videos whose id carries its marker (test_hostile.py)
        FRAMEBUS_FAULT_INJECT=",".join(f"{s}={FAULT_MARKER}{s}-" for s in FAULT_STAGES),
        # the generation tests on this stack check the pipeline (CLI, topics, encoding, provenance, closed
        # loop). The tiny generator still draws rough shapes that the tiny moderator often reads as stars,
        # so output moderation is off here and on in test_generate.py's own moderated worker
        FRAMEBUS_GENERATE_MODERATE_OUTPUT="false",
    )
    proc = start_stack(env, broker, http, log)
    try:
        yield Stack(broker=broker, http=http, media=media, data_dir=base / "data", log=log)
    finally:
        stop_stack(proc)
        if os.environ.get("FRAMEBUS_TEST_SHOW_LOG"):
            sys.stderr.write(log.read_text(errors="replace")[-20000:])


# --- a small cluster: one broker, worker processes, a shared data dir -----------------------------------


@dataclass
class Cluster:
    base: Path
    broker: EmbeddedBroker
    media: Path
    settings: Settings
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def start(self, name: str, agents: str, **env: str) -> subprocess.Popen:
        e = stack_env(
            self.data_dir, [self.media], FRAMEBUS_BROKER=self.broker.address, FRAMEBUS_DECODE_WORKERS="1", **env
        )
        proc = start_process(
            [sys.executable, "-m", "framebus.streams.cli", "worker", "--agents", agents, "--name", name]
            + ["--log-level", "info"],
            e,
            "framebus worker ready",
            self.log(name),
            timeout_s=240,
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> Path:
        return self.base / f"{name}.log"

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop(self, name: str) -> None:
        stop_stack(self.procs.pop(name))

    def wait_for_log(self, name: str, text: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log(name).read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise AssertionError(f"{name} never logged {text!r}:\n{self.log(name).read_text(errors='replace')[-4000:]}")


@pytest.fixture
def cluster(tmp_path, tiny_models):
    broker = EmbeddedBroker(f"127.0.0.1:{free_port()}")
    broker.start()
    media = tmp_path / "media"
    media.mkdir()
    settings = load_settings(broker=broker.address, data_dir=tmp_path / "data")
    asyncio.run(ensure_topics(settings))
    c = Cluster(tmp_path, broker, media, settings)
    try:
        yield c
    finally:
        for name in list(c.procs):
            c.stop(name)
        broker.stop()
        if os.environ.get("FRAMEBUS_TEST_SHOW_LOG"):
            for log in sorted(tmp_path.glob("*.log")):
                sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-8000:]}\n")
