"""The one batching scheduler of the model agents (embed, caption, moderate).

Collection: an agent takes events from every partition it owns into a micro-batch bounded by size
(``batch_size``) and by a wait budget (``wait_s``): a full batch goes at once, a partial one when the
budget runs out, so one video never waits for a full batch and the model never idles on small ones.

Order: the agents' batches share one model thread (one model call at a time: a GPU is used by one
batch at a time anyway). :class:`DeadlineThread` runs them earliest deadline first, a batch's deadline
being when it was queued plus its agent's slack: moderation (slack 0) goes before embedding and
captioning that were queued up to their slack earlier, so alerts do not wait behind captioning, and
no agent starves (a waiting batch's deadline only gets earlier relative to new ones).

Execution: :class:`AdaptiveBatcher` runs the model over a batch in chunks no larger than its current
limit. An out-of-memory error halves the limit and retries the same items, down to one item; after
``recover_after`` clean calls the limit doubles again, up to ``batch_size``. Items fail only when a
single item does not fit.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger("framebus.batching")
In = TypeVar("In")
Out = TypeVar("Out")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _release_cached_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


@dataclass
class BatchStats:
    calls: int = 0
    items: int = 0
    oom_splits: int = 0
    busy_s: float = 0.0
    sizes: list[int] = field(default_factory=list)

    def record(self, size: int, seconds: float) -> None:
        self.calls += 1
        self.items += size
        self.busy_s += seconds
        self.sizes.append(size)
        del self.sizes[:-1000]  # bounded


class AdaptiveBatcher(Generic[In, Out]):
    """Run ``fn(items) -> outputs`` (same length, same order) in OOM-adaptive chunks. Thread-safe."""

    def __init__(self, name: str, batch_size: int, *, recover_after: int = 20):
        self.name = name
        self.max_size = batch_size
        self.limit = batch_size
        self.recover_after = recover_after
        self._clean_calls = 0
        self._lock = threading.Lock()
        self.stats = BatchStats()

    def run(self, fn: Callable[[Sequence[In]], Sequence[Out]], items: Sequence[In]) -> list[Out]:
        out: list[Out] = []
        start = 0
        while start < len(items):
            size = min(self.limit, len(items) - start)
            chunk = items[start : start + size]
            t0 = time.perf_counter()
            try:
                result = list(fn(chunk))
            except Exception as exc:
                if not is_out_of_memory(exc) or size == 1:
                    raise
                _release_cached_memory()
                with self._lock:
                    self.limit = max(1, size // 2)
                    self._clean_calls = 0
                    self.stats.oom_splits += 1
                log.warning("%s: out of memory on a batch of %d; retrying with %d", self.name, size, self.limit)
                continue
            if len(result) != len(chunk):
                raise RuntimeError(f"{self.name}: model returned {len(result)} outputs for {len(chunk)} inputs")
            self.stats.record(size, time.perf_counter() - t0)
            out.extend(result)
            start += size
            with self._lock:
                self._clean_calls += 1
                if self.limit < self.max_size and self._clean_calls >= self.recover_after:
                    self.limit = min(self.max_size, self.limit * 2)
                    self._clean_calls = 0
        return out


class DeadlineThread:
    """One worker thread that runs submitted calls earliest deadline first (``deadline = submitted +
    slack_s``; ties in submission order). ``submit`` returns a ``concurrent.futures.Future``."""

    def __init__(self, name: str = "model"):
        self._heap: list[tuple[float, int, Future, Callable[..., Any], tuple]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, slack_s: float = 0.0) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("DeadlineThread is shut down")
            heapq.heappush(self._heap, (time.monotonic() + slack_s, next(self._seq), fut, fn, args))
            self._cv.notify()
        return fut

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if not self._heap:
                    return
                _, _, fut, fn, args = heapq.heappop(self._heap)
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc)

    def shutdown(self, cancel_futures: bool = True) -> None:
        with self._cv:
            self._closed = True
            if cancel_futures:
                for _, _, fut, _, _ in self._heap:
                    fut.cancel()
                self._heap.clear()
            self._cv.notify_all()
