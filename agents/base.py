"""What an agent may use of the worker it runs in: the ``Runtime`` interface.

Agents are thin glue registered on a runtime (``register(rt)`` in each agent module). The runtime itself,
``framebus.streams.runtime.Runtime``, lives above the agents and implements this interface; agents never
import it. The delivery order that the runtime enforces is written down there.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from framebus.topics import events as ev
from framebus.topics.errors import FramebusError
from framebus.topics.registry import TopicSpec

T = TypeVar("T")
log = logging.getLogger("framebus.agents")


class Record(Protocol):
    """What a stage handler gets: an aiokafka ``ConsumerRecord``."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


class Table(Protocol):
    """A stage's state (``framebus.streams.state.ChangelogTable``): JSON objects by key, per partition,
    written to a compacted changelog before ``put``/``delete`` return; ``expired`` survives restarts."""

    def get(self, partition: int, key: bytes) -> dict | None: ...

    async def put(self, partition: int, key: bytes, value: dict, now: float | None = None) -> None: ...

    async def delete(self, partition: int, key: bytes) -> None: ...

    def expired(self, partition: int, ttl_s: float, now: float | None = None) -> list[bytes]: ...

    def restore(self, partitions: set[int]) -> Awaitable[None]: ...

    def drop(self, partitions: set[int]) -> None: ...


class Runtime(Protocol):
    """Shared services of one worker; agents call these, never construct their own."""

    #: the engine's configuration (``framebus.streams.config.Settings``): batch sizes, limits, policies
    settings: Any
    worker_name: str
    #: size of the decode process pool (``decode_workers`` setting, else the CPU count)
    decode_workers: int
    #: per model agent: its ``AdaptiveBatcher`` (OOM-adaptive batch size, busy time)
    batchers: dict[str, Any]
    embedder: Any
    captioner: Any
    moderator: Any
    store: Any

    def stage(
        self,
        name: str,
        spec: TopicSpec,
        handle: Callable[[list[Any]], Awaitable[None]],
        *,
        batch_size: int = 1,
        wait_s: float = 0.0,
        concurrency: int = 1,
        tables: tuple[Any, ...] = (),
        broadcast: bool = False,
    ) -> None:
        """Register a stage: its own consumer group on ``spec``'s topic (``framebus.streams.delivery``);
        ``broadcast``: a group of this worker's own, so every worker sees every event."""

    def batched_agent(
        self, name: str, spec: TopicSpec, handle_batch: Callable[[Any, list], Any], *, batch_size: int, wait_s: float
    ) -> None: ...

    def table(self, name: str) -> Table: ...

    def every(self, interval_s: float, fn: Callable[[], Awaitable[None]]) -> None:
        """Call ``await fn()`` every ``interval_s`` while the worker runs."""

    async def send(
        self, spec: TopicSpec, key: str, event: ev.Event, trace_id: str | None = None, *, run_id: str | None = None
    ) -> None:
        """Produce ``event`` and wait until the broker acknowledged it (``run_id``: its run header)."""

    async def send_all(self, spec: TopicSpec, items: list[tuple[str, ev.Event, str | None]]) -> None:
        """Produce several events at once and wait for all their acks."""

    async def dead_letter(
        self, stage: str, spec: TopicSpec, record: Record, error: FramebusError, trace_id: str | None = None
    ) -> None: ...

    async def fail_video(
        self,
        *,
        video_id: str,
        tenant: str,
        error: FramebusError,
        trace_id: str | None,
        uri: str | None = None,
        run_id: str | None = None,
    ) -> None: ...

    async def fail_records(
        self, stage: str, records: list[Any], exc: BaseException, *, spec: TopicSpec | None = None
    ) -> None:
        """A DLQ entry per record and a failed document per video they name (``internal.error`` for bugs)."""

    async def parse_batch(self, stage: str, spec: TopicSpec, records: list[Any]) -> list[tuple[Any, Any]]:
        """Validate a micro-batch against ``spec``'s model; dead-letter what does not parse."""

    async def fail_batch(
        self, stage: str, spec: TopicSpec, pairs: list[tuple[Any, Any]], error: FramebusError
    ) -> None: ...

    def trace_id(self, record: Record) -> str: ...

    def run_id(self, record: Record) -> str: ...

    def count(self, name: str, n: int = 1) -> None: ...

    async def hold(self, stage: str) -> None:
        """Testing only: pause in the middle of ``stage``'s work (``fault_hold`` setting)."""

    async def in_process(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def in_process_streaming(
        self, fn: Callable[..., T], *args: Any, on_item: Callable[[Any], Awaitable[Any]], bound: int = 4
    ) -> T: ...

    async def in_model_thread(self, fn: Callable[..., T], *args: Any, task: str | None = None) -> T: ...

    def preload(self, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` in the model thread now, not awaited (an agent's models, loaded while the worker
        joins its group); model calls queued after it wait behind it."""

    async def in_prep_thread(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def in_io_thread(self, fn: Callable[..., T], *args: Any) -> T: ...


def backoff_s(attempt: int, base_s: float = 0.2, cap_s: float = 10.0) -> float:
    """Exponential backoff with full jitter: attempt 0 waits up to ``base_s``, each next one twice as long."""
    return random.uniform(0.5, 1.0) * min(cap_s, base_s * 2**attempt)


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    is_transient: Callable[[BaseException], bool],
    what: str,
    base_s: float = 0.2,
) -> T:
    """``await fn()``, again after a backoff while it raises a transient error, at most ``attempts`` times."""
    for attempt in range(attempts):
        try:
            return await fn()
        except Exception as exc:
            if attempt + 1 >= attempts or not is_transient(exc):
                raise
            wait = backoff_s(attempt, base_s)
            log.warning("%s: %s: %s; retry %d/%d in %.2fs", what, type(exc).__name__, exc, attempt + 1, attempts, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
