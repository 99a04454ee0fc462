"""What an agent may use of the worker it runs in: the ``Runtime`` interface.

Agents are thin glue registered on a runtime (``register(rt)`` in each agent module). The runtime itself,
``framebus.streams.runtime.Runtime``, lives above the agents and implements this interface; agents never
import it. The delivery order that the runtime enforces is written down there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import faust

from framebus.topics import events as ev
from framebus.topics.errors import FramebusError
from framebus.topics.registry import TopicSpec

T = TypeVar("T")


class Runtime(Protocol):
    """Shared services of one worker; agents call these, never construct their own."""

    #: the engine's configuration (``framebus.streams.config.Settings``): batch sizes, limits, policies
    settings: Any
    worker_name: str
    #: size of the decode process pool (``decode_workers`` setting, else the CPU count)
    decode_workers: int
    app: faust.App
    #: per model agent: its ``AdaptiveBatcher`` (OOM-adaptive batch size, busy time)
    batchers: dict[str, Any]
    embedder: Any
    captioner: Any
    moderator: Any
    store: Any

    def topic(self, spec: TopicSpec) -> faust.TopicT: ...

    async def send(self, spec: TopicSpec, key: str, event: ev.Event, trace_id: str | None = None) -> None:
        """Produce ``event`` and wait until the broker acknowledged it."""

    async def send_all(self, spec: TopicSpec, items: list[tuple[str, ev.Event, str | None]]) -> None:
        """Produce several events at once and wait for all their acks."""

    async def dead_letter(
        self, stage: str, spec: TopicSpec, event: faust.EventT, error: FramebusError, trace_id: str | None = None
    ) -> None: ...

    async def fail_video(
        self, *, video_id: str, tenant: str, error: FramebusError, trace_id: str | None, uri: str | None = None
    ) -> None: ...

    async def parse_batch(self, stage: str, spec: TopicSpec, events: list[faust.EventT]) -> list[tuple[Any, Any]]:
        """Validate a micro-batch against ``spec``'s model; dead-letter what does not parse."""

    async def fail_batch(
        self, stage: str, spec: TopicSpec, pairs: list[tuple[Any, Any]], error: FramebusError
    ) -> None: ...

    def trace_id(self, event: faust.EventT) -> str: ...

    def count(self, name: str, n: int = 1) -> None: ...

    async def in_process(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def in_process_streaming(
        self, fn: Callable[..., T], *args: Any, on_item: Callable[[Any], Awaitable[Any]], bound: int = 4
    ) -> T: ...

    async def in_model_thread(self, fn: Callable[..., T], *args: Any, task: str | None = None) -> T: ...

    async def in_prep_thread(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def in_io_thread(self, fn: Callable[..., T], *args: Any) -> T: ...

    def batched_agent(
        self, name: str, spec: TopicSpec, handle_batch: Callable[[Any, list], Any], *, batch_size: int, wait_s: float
    ) -> None: ...
