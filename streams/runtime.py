"""One worker process: the faust app, its topics, executors, models and vector store.

Agents are thin glue registered on a :class:`Runtime`. The event loop only moves events: decode runs in
a process pool, model calls and vector-store calls run in threads.

Delivery order, enforced by the agents: an agent awaits the delivery of everything it produces for an
event (``Runtime.send`` waits for the broker's ack) before it takes the next event; faust commits an
event's offset only after the agent took the next one. So offsets are committed after the effect, and a
crash replays rather than loses. Replays are harmless because point ids and document keys are
deterministic (video id, segment, model version).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import multiprocessing
import queue
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import anyio
import faust
from prometheus_client import Counter, Histogram

from framebus.streams.batching import AdaptiveBatcher, DeadlineThread
from framebus.streams.config import Settings
from framebus.topics import codec, registry
from framebus.topics import events as ev
from framebus.topics.errors import DecodeError, FramebusError
from framebus.topics.registry import TopicSpec

log = logging.getLogger("framebus.runtime")
T = TypeVar("T")
TRACE_HEADER = "framebus-trace-id"
AGENTS = ("ingest", "decode", "embed", "caption", "moderate", "index", "publish")
MODEL_AGENTS = ("embed", "caption", "moderate")

#: slack (s) added to a model call's queue time to order the model thread (earliest deadline first):
#: alerts do not wait behind captioning, and nothing starves
MODEL_SLACK_S = {"moderate": 0.0, "embed": 0.25, "caption": 0.5}

#: per-batch timings of a model agent (``Runtime.batched_agent``; ``Runtime._timed`` adds to them)
BATCH_TIMINGS = ("prep_wait_s", "prep_s", "model_wait_s", "model_s", "forward_s")
_BATCH_TIMES: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "framebus_batch_times", default=None
)
EVENTS = Counter("framebus_events", "events produced, dead-lettered and processed, by name", ["name"])
BATCH_ITEMS = Histogram(
    "framebus_batch_items",
    "events per micro-batch of a model agent",
    ["agent"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_SECONDS = Histogram(
    "framebus_batch_seconds",
    "handler time per micro-batch of a model agent",
    ["agent"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def kafka_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def broker_credentials(settings: Settings):
    sec = settings.kafka_security()
    proto = settings.security_protocol.upper()
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism or "PLAIN",
            ssl_context=sec.get("ssl_context"),
        )
    if proto == "SSL":
        return faust.SSLCredentials(sec["ssl_context"])
    return None


class Runtime:
    """Shared services of one worker; agents call these, never construct their own."""

    def __init__(self, settings: Settings, worker_name: str | None = None):
        self.settings = settings
        self.worker_name = worker_name or f"worker-{uuid.uuid4().hex[:6]}"
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.app_id,
            broker=kafka_urls(settings.bootstrap),
            broker_credentials=broker_credentials(settings),
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,
            topic_allow_declare=False,
            topic_disable_leader=True,
            topic_partitions=settings.partitions,
            store="memory://",
            datadir=str(settings.data_dir / "faust"),
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 6),
            broker_rebalance_timeout=max(10.0, settings.session_timeout_s * 2),
            stream_buffer_maxsize=settings.stream_buffer,
            producer_max_request_size=max(settings.max_event_bytes * 2, 1_048_576),
        )
        self.topics: dict[str, faust.TopicT] = {
            spec.name: self.app.topic(
                settings.topic(spec.name), key_type=bytes, value_type=bytes, partitions=settings.partitions
            )
            for spec in registry.ALL
        }
        self.model_executor = DeadlineThread("model")
        # frame decoding and model preprocessing, overlapping the model thread
        self.prep_executor = ThreadPoolExecutor(settings.prep_threads, thread_name_prefix="prep")
        # vector-store calls and the decode queue's blocking reads: anyio worker threads, at most this many
        # at once (anyio's default limiter, 40 threads, is shared with everything else in the process)
        self.io_limiter = anyio.CapacityLimiter(2)
        self.decode_workers = max(1, settings.decode_workers or multiprocessing.cpu_count())
        self.queue_limiter = anyio.CapacityLimiter(self.decode_workers)
        self._process_pool: ProcessPoolExecutor | None = None
        self._manager = None
        self._embedder = None
        self._captioner = None
        self._moderator = None
        self._store = None
        self.batchers: dict[str, AdaptiveBatcher] = {}
        self.stats: dict[str, int] = {}

    # --- topics and events -----------------------------------------------------------------------

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        return self.topics[spec.name]

    async def send(self, spec: TopicSpec, key: str, event: ev.Event, trace_id: str | None = None) -> None:
        """Produce ``event`` and wait until the broker acknowledged it (the effect happened)."""
        value = codec.encode(event, max_bytes=self.settings.max_event_bytes)
        headers = {TRACE_HEADER: trace_id.encode()} if trace_id else None
        fut = await self.topic(spec).send(key=key.encode(), value=value, headers=headers)
        await fut
        self.count(f"sent.{spec.name}")

    async def send_all(self, spec: TopicSpec, items: list[tuple[str, ev.Event, str | None]]) -> None:
        """Produce several events at once and wait for all their acks (a batch's results go out together,
        so the model thread is not idle while each ack comes back one by one)."""
        await asyncio.gather(*(self.send(spec, key, event, trace) for key, event, trace in items))

    async def dead_letter(
        self, stage: str, spec: TopicSpec, event: faust.EventT, error: FramebusError, trace_id: str | None = None
    ) -> None:
        raw = event.value if isinstance(event.value, bytes) else bytes(event.value or b"")
        try:
            original, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            original, encoding = base64.b64encode(raw).decode(), "base64"
        key = event.key.decode("utf-8", "replace") if isinstance(event.key, bytes) else event.key
        letter = ev.DeadLetter(
            stage=stage,
            topic=self.settings.topic(spec.name),
            key=key,
            error=ev.ErrorInfo(**error.as_dict()),
            error_class=type(error).__name__,
            original=original,
            original_encoding=encoding,
            trace_id=trace_id,
        )
        log.warning("%s: dead-lettered %s: %s %s", stage, key, error.code, error.message)
        # The DLQ keeps the original even when it is near the size limit.
        value = codec.encode(letter)
        headers = {TRACE_HEADER: trace_id.encode()} if trace_id else None
        fut = await self.topic(registry.DLQ).send(key=(key or "").encode(), value=value, headers=headers)
        await fut
        self.count(f"dlq.{stage}")

    async def fail_video(
        self, *, video_id: str, tenant: str, error: FramebusError, trace_id: str | None, uri: str | None = None
    ) -> None:
        """Tell publish that the video failed; it emits the ``status: failed`` document."""
        done = ev.SegmentDone(
            video_id=video_id, tenant=tenant, uri=uri, trace_id=trace_id, error=ev.ErrorInfo(**error.as_dict())
        )
        await self.send(registry.PROGRESS, video_id, done, trace_id)

    async def parse_batch(self, stage: str, spec: TopicSpec, events: list[faust.EventT]) -> list[tuple[Any, Any]]:
        """Validate a micro-batch against ``spec``'s model; dead-letter what does not parse.

        Returns ``(item, event)`` pairs in arrival order.
        """
        pairs = []
        for event in events:
            try:
                pairs.append((codec.decode(spec.model, event.value), event))
            except FramebusError as err:
                await self.dead_letter(stage, spec, event, err, self.trace_id(event))
        return pairs

    async def fail_batch(self, stage: str, spec: TopicSpec, pairs: list[tuple[Any, Any]], error: FramebusError) -> None:
        """Dead-letter every item of a batch that failed as a whole, and fail each video once."""
        failed: set[str] = set()
        for item, event in pairs:
            await self.dead_letter(stage, spec, event, error, item.trace_id)
            if item.video_id not in failed:
                failed.add(item.video_id)
                await self.fail_video(
                    video_id=item.video_id, tenant=item.tenant, error=error, trace_id=item.trace_id, uri=item.uri
                )

    @staticmethod
    def trace_id(event: faust.EventT) -> str:
        headers = event.headers or {}
        for k, v in headers.items() if isinstance(headers, Mapping) else headers:
            if k == TRACE_HEADER and v:
                return v.decode() if isinstance(v, bytes) else str(v)
        return uuid.uuid4().hex

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n
        EVENTS.labels(name=name).inc(n)

    # --- executors ---------------------------------------------------------------------------------

    @property
    def process_pool(self) -> ProcessPoolExecutor:
        if self._process_pool is None:
            workers = self.decode_workers
            self._process_pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        return self._process_pool

    async def in_process(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work in the process pool; a crashed child (hostile media) fails only this call."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.process_pool, fn, *args)
        except BrokenProcessPool:
            self._process_pool = None
            raise DecodeError("the decoder process crashed on this input", code="decode.crashed") from None

    async def in_process_streaming(
        self, fn: Callable[..., T], *args: Any, on_item: Callable[[Any], Any], bound: int = 4
    ) -> T:
        """Run ``fn(*args, queue)`` in the process pool, where ``fn`` puts results into ``queue`` as it
        goes; ``await on_item(item)`` for each here, in order, while it runs; return what ``fn`` returns.
        The queue holds at most ``bound`` items (the child waits), so memory stays bounded."""
        loop = asyncio.get_running_loop()
        q = self.manager.Queue(maxsize=bound)
        fut = loop.run_in_executor(self.process_pool, fn, *args, q)

        def drain_until_done() -> None:  # a failed on_item must not leave the child blocked on put
            while not fut.done():
                try:
                    q.get(True, 0.1)
                except queue.Empty:
                    pass

        try:
            while True:
                try:
                    item = await anyio.to_thread.run_sync(q.get, True, 0.1, limiter=self.queue_limiter)
                except queue.Empty:
                    if fut.done():
                        break
                    continue
                await on_item(item)
            while True:  # what was put before fn returned
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                await on_item(item)
            return await fut
        except BaseException as exc:
            if not fut.done() and not isinstance(exc, asyncio.CancelledError):
                # (on shutdown, closing the manager frees it)
                await anyio.to_thread.run_sync(drain_until_done, limiter=self.queue_limiter)
            if isinstance(exc, BrokenProcessPool):
                self._process_pool = None
                raise DecodeError("the decoder process crashed on this input", code="decode.crashed") from None
            raise

    @property
    def manager(self):
        """A ``multiprocessing`` manager (its own process, started on first use): queues that process
        pool children can put into."""
        if self._manager is None:
            self._manager = multiprocessing.get_context("spawn").Manager()
        return self._manager

    async def in_model_thread(self, fn: Callable[..., T], *args: Any, task: str | None = None) -> T:
        """``fn(*args)`` in the one model thread (models run one batch at a time), earliest deadline
        first: queued time plus the ``task``'s slack (``MODEL_SLACK_S``; moderation first)."""
        slack = MODEL_SLACK_S.get(task or "", 0.0)
        return await self._timed(lambda call: self.model_executor.submit(call, slack_s=slack), "model", fn, *args)

    async def in_prep_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a preprocessing thread: CPU work for the model (frame decode, resize,
        normalise) that overlaps the batch in the model thread."""
        return await self._timed(self.prep_executor.submit, "prep", fn, *args)

    def _model_busy_s(self) -> float:
        return sum(b.stats.busy_s for b in self.batchers.values())

    async def _timed(self, submit: Callable[[Callable[[], T]], Any], kind: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` through ``submit`` (a thread's ``submit(call) -> Future``); inside a model
        agent's batch (``batched_agent``), add to its timings the wait for the thread
        (``<kind>_wait_s``), the time in it (``<kind>_s``) and, in the model thread, the time inside the
        model itself (``forward_s``, AdaptiveBatcher busy time)."""
        times = _BATCH_TIMES.get()
        if times is None:
            return await asyncio.wrap_future(submit(lambda: fn(*args)))
        submitted = time.perf_counter()

        def call() -> T:
            started, busy = time.perf_counter(), self._model_busy_s() if kind == "model" else 0.0
            try:
                return fn(*args)
            finally:
                times[f"{kind}_wait_s"] += started - submitted
                times[f"{kind}_s"] += time.perf_counter() - started
                if kind == "model":
                    times["forward_s"] += self._model_busy_s() - busy

        return await asyncio.wrap_future(submit(call))

    async def in_io_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in an io thread (vector-store calls), at most ``io_limiter`` at once."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.io_limiter)

    # --- models and store (loaded once, lazily, off the loop) -----------------------------------

    @property
    def embedder(self):
        if self._embedder is None:
            from framebus.models.registry import load_embedder

            self._embedder = load_embedder(self.settings)
        return self._embedder

    @property
    def captioner(self):
        if self._captioner is None:
            from framebus.models.registry import load_captioner

            self._captioner = load_captioner(self.settings)
        return self._captioner

    @property
    def moderator(self):
        if self._moderator is None:
            from framebus.models.registry import load_moderator

            self._moderator = load_moderator(self.settings, self.embedder)
        return self._moderator

    def load_models(self, agents: list[str]) -> None:
        """Load what ``framebus.agents`` need now (off the loop, before joining the group): fail fast and clearly.

        With the tiny profile, first trains the tiny models that are missing or stale (``train_tiny``).
        """
        if self.settings.models == "tiny" and self.settings.train_tiny and set(agents) & set(MODEL_AGENTS):
            from framebus.models.training import ensure_tiny_models

            # says which model it trains and why (missing, stale), and how long it took
            ensure_tiny_models(self.settings, progress=lambda line: log.warning("tiny models: %s", line))
        for agent, attr in (("embed", "embedder"), ("caption", "captioner"), ("moderate", "moderator")):
            if agent in agents:
                started = time.monotonic()
                model = getattr(self, attr)
                log.info(
                    "%s model %s/%s ready in %.1fs",
                    agent,
                    model.info.name,
                    model.info.version,
                    time.monotonic() - started,
                )

    def batched_agent(
        self,
        name: str,
        spec: TopicSpec,
        handle_batch: Callable[[Runtime, list], Any],
        *,
        batch_size: int,
        wait_s: float,
    ) -> None:
        """Register a model agent on ``spec``: micro-batches from all its partitions, one handler call each.

        The same events feed every model agent (each has its own stream of the topic); a batch is
        bounded by ``batch_size`` and by ``wait_s`` (see :mod:`streams.batching`). The agent runs
        ``model_batches_in_flight`` actors on one queue: while one batch is in the model thread, the
        others are collected, parsed and prepared (frame decode, preprocessing: ``Runtime.in_prep_thread``)
        and queued behind it, and finished ones' results are sent, so the model does not wait for the
        event loop between batches (faust's ``take_events`` stops filling an actor's buffer while that
        actor handles its batch). Each event is acked once its batch is handled, whichever actor took it.
        """
        self.batchers[name] = AdaptiveBatcher(name, batch_size)
        items_hist, seconds_hist = BATCH_ITEMS.labels(agent=name), BATCH_SECONDS.labels(agent=name)

        async def agent(stream):
            async for events in stream.take_events(batch_size, within=wait_s):
                batch = list(events)
                times = dict.fromkeys(BATCH_TIMINGS, 0.0)
                token = _BATCH_TIMES.set(times)
                started = time.perf_counter()
                try:
                    await handle_batch(self, batch)
                finally:
                    _BATCH_TIMES.reset(token)
                    took = time.perf_counter() - started
                    items_hist.observe(len(batch))
                    seconds_hist.observe(took)
                    # one line per batch at debug level (loadtest.bench_batching reads these)
                    log.debug(
                        "batch agent=%s items=%d handler_s=%.5f %s",
                        name,
                        len(batch),
                        took,
                        " ".join(f"{k}={v:.5f}" for k, v in times.items()),
                    )

        agent.__name__ = name
        self.app.agent(self.topic(spec), name=f"framebus.{name}", concurrency=self.settings.model_batches_in_flight)(
            agent
        )

    @property
    def store(self):
        if self._store is None:
            self._store = self.settings.open_store()
        return self._store

    def close(self) -> None:
        if self._manager is not None:  # first: a child blocked on one of its queues then fails and ends
            self._manager.shutdown()
        if self._process_pool is not None:
            self._process_pool.shutdown(cancel_futures=True)
        self.model_executor.shutdown(cancel_futures=True)
        self.prep_executor.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.close()
