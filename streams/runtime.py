"""One worker process: its stages, producer, tables, executors, models and vector store.

Agents are thin glue registered on a :class:`Runtime` (``rt.stage``, ``rt.batched_agent``,
``rt.table``). The event loop only moves events: decode runs in a process pool, model calls and
vector-store calls run in threads.

Delivery order: each stage is a ``framebus.streams.delivery.StageConsumer`` in its own consumer group;
the order of effects (take, effects acknowledged, finish, commit the contiguous finished prefix, revoke)
is written down and enforced there. ``Runtime.send`` returns only once the broker acknowledged the event,
so a handler that returned has had all its effects. A handler that raises gets a DLQ entry and a failed
document (``Runtime.fail_records``, code ``internal.error`` for anything that is not a ``FramebusError``)
before its offsets count as finished. Replays are harmless because point ids, document keys and every
public event's ``event_id`` are deterministic.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import multiprocessing
import queue
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import anyio
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from framebus.agents.base import retry
from framebus.streams.batching import AdaptiveBatcher, DeadlineThread
from framebus.streams.config import Settings
from framebus.streams.delivery import StageConfig, StageConsumer, current_transaction
from framebus.streams.state import ChangelogTable
from framebus.topics import codec, ids, registry
from framebus.topics import events as ev
from framebus.topics.errors import DecodeError, FramebusError, InternalError
from framebus.topics.ids import metadata_event_id, run_id_of
from framebus.topics.registry import TopicSpec

log = logging.getLogger("framebus.runtime")
T = TypeVar("T")
TRACE_HEADER = "framebus-trace-id"
RUN_HEADER = "framebus-run-id"
AGENTS = ("ingest", "decode", "embed", "caption", "moderate", "index", "publish", "generate")
MODEL_AGENTS = ("embed", "caption", "moderate")
#: attempts of a produce that fails with a transient broker error (aiokafka retries inside each as well)
SEND_ATTEMPTS = 5

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


#: the topic each stage reads
STAGE_TOPICS = {
    "ingest": registry.INGEST,
    "decode": registry.DECODE,
    "embed": registry.FRAMES,
    "caption": registry.FRAMES,
    "moderate": registry.FRAMES,
    "index": registry.ANALYSIS,
    "publish": registry.PROGRESS,
    "generate": registry.GENERATE,
    "generate-cancel": registry.GENERATE_CANCEL,
}


def stage_spec(stage: str) -> TopicSpec:
    return STAGE_TOPICS.get(stage, registry.INGEST)


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def run_id(record: Any) -> str:
    """The run an ingest request starts: the ``framebus-run-id`` header when the producer sent one (a
    producer's own retries of one request then make one run; ``framebus dlq replay`` sets it), else the
    request's Kafka coordinates. Never random: a replayed request is the same run."""
    for k, v in record.headers or ():
        if k == RUN_HEADER and v:
            return (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))[:64]
    return run_id_of(record.topic, record.partition, record.offset)


def isolation(settings: Settings) -> dict[str, Any]:
    """How stage consumers and changelog restores read: only committed transactions in exactly-once mode."""
    return {"isolation_level": "read_committed"} if settings.delivery_guarantee == "exactly_once" else {}


def dlq_event_id(stage: str, record: Any) -> str:
    """A DLQ entry's ``event_id``: the stage and the original's coordinates (equal on every replay)."""
    return ids.dlq_event_id(stage, record.topic, record.partition, record.offset)


class Runtime:
    """Shared services of one worker; agents call these, never construct their own."""

    def __init__(self, settings: Settings, worker_name: str | None = None):
        self.settings = settings
        self.worker_name = worker_name or f"worker-{uuid.uuid4().hex[:6]}"
        settings.data_dir.mkdir(parents=True, exist_ok=True)
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
        self._store_lock = threading.Lock()
        self.batchers: dict[str, AdaptiveBatcher] = {}
        self.stats: dict[str, int] = {}
        self.agents: list[str] = []
        self.stages: dict[str, StageConfig] = {}
        self.tables: dict[str, ChangelogTable] = {}
        self.consumers: dict[str, StageConsumer] = {}
        self.broadcast: set[str] = set()
        self._producer: AIOKafkaProducer | None = None
        self._timers: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        self._timer_tasks: list[asyncio.Task] = []

    # --- Kafka clients -----------------------------------------------------------------------------

    def client_kwargs(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.settings.bootstrap, **self.settings.kafka_security()}

    @property
    def exactly_once(self) -> bool:
        return self.settings.delivery_guarantee == "exactly_once"

    def consumer_kwargs(self) -> dict[str, Any]:
        s = self.settings
        return {
            **self.client_kwargs(),
            **isolation(s),
            "session_timeout_ms": int(s.session_timeout_s * 1000),
            "heartbeat_interval_ms": int(max(0.5, s.session_timeout_s / 6) * 1000),
            "rebalance_timeout_ms": int(s.rebalance_timeout_s * 1000),
            "max_poll_interval_ms": int(max(s.rebalance_timeout_s, 300.0) * 1000),
            "max_partition_fetch_bytes": max(2 * s.max_event_bytes, 1_048_576),
            "fetch_max_bytes": max(8 * s.max_event_bytes, 8_388_608),
        }

    def group_id(self, stage: str) -> str:
        """Each stage consumes in its own consumer group, so every stage sees every event of its topic (a
        broadcast stage: in a group of this worker's own, so every worker sees every event)."""
        if stage in self.broadcast:
            return f"{self.settings.app_id}.{stage}.{self.worker_name}"
        return f"{self.settings.app_id}.{stage}"

    def transactional_id(self, stage: str) -> str:
        """Exactly-once mode: stage ``stage``'s transactional id in this worker. Stable across restarts
        only when the worker name is (``framebus worker --name``): a restarted worker then fences its
        previous instance."""
        return f"{self.settings.app_id}.{stage}.{self.worker_name}"

    def transactional_producer(self, stage: str) -> AIOKafkaProducer:
        """A stage's own transactional producer (not started). Its transaction timeout is the consumers'
        max poll interval: a batch that takes longer loses its partitions anyway."""
        s = self.settings
        return AIOKafkaProducer(
            transactional_id=self.transactional_id(stage),
            transaction_timeout_ms=int(max(s.rebalance_timeout_s, 300.0) * 1000),
            acks="all",
            linger_ms=2,
            max_request_size=max(s.max_event_bytes * 2, 1_048_576),
            request_timeout_ms=30_000,
            **self.client_kwargs(),
        )

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer of the running code: inside a stage transaction (exactly-once mode) that stage's
        transactional producer, else the worker's shared one."""
        txn = current_transaction()
        if txn is not None:
            return txn.producer
        if self._producer is None:
            raise RuntimeError("the runtime is not started")
        return self._producer

    async def start(self) -> None:
        """Start the producer, then every stage's consumer (each joins its group)."""
        s = self.settings
        self._producer = AIOKafkaProducer(
            acks="all",
            linger_ms=2,
            max_request_size=max(s.max_event_bytes * 2, 1_048_576),
            request_timeout_ms=30_000,
            **self.client_kwargs(),
        )
        await self._producer.start()
        grace = min(s.revoke_grace_s, s.rebalance_timeout_s / 3)
        for name, cfg in self.stages.items():
            self.consumers[name] = StageConsumer(
                cfg,
                group_id=self.group_id(name),
                consumer_kwargs=self.consumer_kwargs(),
                on_error=self.fail_records,
                revoke_grace_s=grace,
                transactional_producer=(lambda n=name: self.transactional_producer(n)) if self.exactly_once else None,
            )
        if self.exactly_once:  # one at a time: a broker without transactions fails on the first, clearly
            try:
                for c in self.consumers.values():
                    await c.start_producer()
            except BaseException:
                await asyncio.gather(*(c.stop() for c in self.consumers.values()), return_exceptions=True)
                await self._producer.stop()
                raise
        # every stage joins its group at once (a join takes the broker's initial rebalance delay)
        await asyncio.gather(*(c.start() for c in self.consumers.values()))
        for interval, fn in self._timers:
            self._timer_tasks.append(asyncio.create_task(self._every(interval, fn)))

    def every(self, interval_s: float, fn: Callable[[], Awaitable[None]]) -> None:
        """Call ``await fn()`` every ``interval_s`` while the worker runs (sweeps, expiry)."""
        self._timers.append((interval_s, fn))

    async def _every(self, interval_s: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await fn()
            except Exception:
                log.exception("periodic %s failed", getattr(fn, "__qualname__", fn))

    def crashed(self) -> list[asyncio.Task]:
        """Stage loops that ended (they only end on a fatal error before ``stop``)."""
        return [c.task for c in self.consumers.values() if c.task is not None and c.task.done()]

    async def wait_assigned(self) -> None:
        await asyncio.gather(*(c.assigned.wait() for c in self.consumers.values()))

    async def stop(self) -> None:
        for t in self._timer_tasks:
            t.cancel()
        await asyncio.gather(*self._timer_tasks, return_exceptions=True)
        await asyncio.gather(*(c.stop() for c in self.consumers.values()), return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    # --- stages and tables -------------------------------------------------------------------------

    def stage(
        self,
        name: str,
        spec: TopicSpec,
        handle: Callable[[list[Any]], Awaitable[None]],
        *,
        batch_size: int = 1,
        wait_s: float = 0.0,
        concurrency: int = 1,
        tables: tuple[ChangelogTable, ...] = (),
        broadcast: bool = False,
    ) -> None:
        """Register stage ``name`` on ``spec``'s topic: ``await handle(records)`` for micro-batches of
        ``ConsumerRecord``s (at most ``batch_size``, waiting up to ``wait_s`` to fill one), at most
        ``concurrency`` calls at once. With ``concurrency=1`` and ``batch_size=1`` a partition's events
        are handled one by one, in order. ``tables`` are restored before a partition is taken and
        dropped when it goes. ``broadcast``: this worker reads every partition, in a group of its own
        (``<app_id>.<stage>.<worker name>``), from the start of the topic (cancels every worker must see)."""
        if broadcast:
            self.broadcast.add(name)
        fault = self.settings.fault_inject.get(name)

        async def run(records: list[Any]) -> None:
            if fault and any(fault.encode() in (r.value or b"") for r in records):
                raise RuntimeError(f"fault injected into {name} (FRAMEBUS_FAULT_INJECT)")
            await handle(records)

        self.stages[name] = StageConfig(
            name=name,
            topic=self.settings.topic(spec.name),
            handle=run,
            batch_size=batch_size,
            batch_wait_s=wait_s,
            concurrency=concurrency,
            on_assigned=[t.restore for t in tables],
            on_revoked=[t.drop for t in tables],
        )

    def table(self, name: str) -> ChangelogTable:
        """A stage's state table, backed by the compacted changelog ``<app_id>-<name>-changelog``."""
        if name not in self.tables:
            self.tables[name] = ChangelogTable(
                name,
                changelog_topic(self.settings, name),
                produce=self._produce_raw,
                consumer_kwargs={**self.client_kwargs(), **isolation(self.settings)},
                max_keys=self.settings.max_table_keys,
            )
        return self.tables[name]

    # --- topics and events -------------------------------------------------------------------------

    async def _produce_raw(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce and wait for the broker's ack; transient broker errors are retried with backoff. Inside a
        stage transaction (exactly-once mode) through that stage's producer, once: a failure aborts the
        transaction and the stage retries all of it."""
        producer = self.producer

        async def once() -> None:
            await producer.send_and_wait(topic, value=value, key=key, partition=partition, headers=headers)

        await retry(
            once,
            attempts=1 if current_transaction() is not None else SEND_ATTEMPTS,
            is_transient=lambda e: isinstance(e, KafkaError) and getattr(e, "retriable", True),
            what=f"produce to {topic}",
        )

    async def send(
        self, spec: TopicSpec, key: str, event: ev.Event, trace_id: str | None = None, *, run_id: str | None = None
    ) -> None:
        """Produce ``event`` and wait until the broker acknowledged it (the effect happened). ``run_id``: the
        ``framebus-run-id`` header (an ingest request that is the same run on every replay)."""
        value = codec.encode(event, max_bytes=self.settings.max_event_bytes)
        headers = [(TRACE_HEADER, trace_id.encode())] if trace_id else []
        if run_id:
            headers.append((RUN_HEADER, run_id.encode()))
        await self._produce_raw(self.settings.topic(spec.name), key.encode(), value, headers=headers or None)
        self.count(f"sent.{spec.name}")

    async def send_all(self, spec: TopicSpec, items: list[tuple[str, ev.Event, str | None]]) -> None:
        """Produce several events at once and wait for all their acks (a batch's results go out together,
        so the model thread is not idle while each ack comes back one by one)."""
        await asyncio.gather(*(self.send(spec, key, event, trace) for key, event, trace in items))

    async def dead_letter(
        self, stage: str, spec: TopicSpec, record: Any, error: FramebusError, trace_id: str | None = None
    ) -> None:
        raw = record.value if isinstance(record.value, bytes) else bytes(record.value or b"")
        try:
            original, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            original, encoding = base64.b64encode(raw).decode(), "base64"
        key = record.key.decode("utf-8", "replace") if isinstance(record.key, bytes) else record.key
        letter = ev.DeadLetter(
            event_id=dlq_event_id(stage, record),
            stage=stage,
            topic=self.settings.topic(spec.name),
            key=key,
            error=ev.ErrorInfo(**error.as_dict()),
            error_class=type(error).__name__,
            original=original,
            original_encoding=encoding,
            original_partition=record.partition,
            original_offset=record.offset,
            trace_id=trace_id,
        )
        log.warning("%s: dead-lettered %s: %s %s", stage, key, error.code, error.message)
        # The DLQ keeps the original even when it is near the size limit.
        headers = [(TRACE_HEADER, trace_id.encode())] if trace_id else None
        await self._produce_raw(
            self.settings.topic(registry.DLQ.name), (key or "").encode(), codec.encode(letter), headers=headers
        )
        self.count(f"dlq.{stage}")

    async def fail_video(
        self,
        *,
        video_id: str,
        tenant: str,
        error: FramebusError,
        trace_id: str | None,
        uri: str | None = None,
        run_id: str | None = None,
    ) -> None:
        """Tell publish that the video failed; it emits the ``status: failed`` document."""
        done = ev.SegmentDone(
            video_id=video_id,
            tenant=tenant,
            uri=uri,
            trace_id=trace_id,
            run_id=run_id,
            error=ev.ErrorInfo(**error.as_dict()),
        )
        await self.send(registry.PROGRESS, video_id, done, trace_id)

    async def parse_batch(self, stage: str, spec: TopicSpec, records: list[Any]) -> list[tuple[Any, Any]]:
        """Validate a micro-batch against ``spec``'s model; dead-letter what does not parse (and fail its
        video when the event names one). Returns ``(item, record)`` pairs in arrival order."""
        pairs = []
        for record in records:
            try:
                pairs.append((codec.decode(spec.model, record.value, max_bytes=self.settings.max_event_bytes), record))
            except FramebusError as err:
                await self.fail_records(stage, [record], err, spec=spec)
        return pairs

    async def fail_batch(self, stage: str, spec: TopicSpec, pairs: list[tuple[Any, Any]], error: FramebusError) -> None:
        """Dead-letter every item of a batch that failed as a whole, and fail each video once."""
        failed: set[str] = set()
        for item, record in pairs:
            await self.dead_letter(stage, spec, record, error, item.trace_id)
            if item.video_id not in failed:
                failed.add(item.video_id)
                await self.fail_video(
                    video_id=item.video_id,
                    tenant=item.tenant,
                    error=error,
                    trace_id=item.trace_id,
                    uri=getattr(item, "uri", None),
                    run_id=getattr(item, "run_id", None),
                )

    async def fail_records(
        self, stage: str, records: list[Any], exc: BaseException, *, spec: TopicSpec | None = None
    ) -> None:
        """What becomes of events whose handler raised (``StageConsumer``'s ``on_error``) or that do not
        parse: a DLQ entry each, and a failed document for every video they name. Anything that is not a
        ``FramebusError`` is a bug: code ``internal.error``."""
        if isinstance(exc, FramebusError):
            error = exc
        else:
            log.error("%s: unexpected %s", stage, type(exc).__name__, exc_info=exc)
            error = InternalError(f"{stage} failed: {type(exc).__name__}: {exc}"[:2000])
        spec = spec or stage_spec(stage)
        for record in records:
            ids = codec.salvage_ids(record.value, record.key)
            trace_id = ids.trace_id or self.trace_id(record)
            await self.dead_letter(stage, spec, record, error, trace_id)
            if ids.video_id and stage == "publish":
                # publish itself failed on this video: the failed document goes out directly (not through
                # publish again, which would fail the same way)
                doc = ev.VideoMetadata(
                    video_id=ids.video_id,
                    tenant=ids.tenant,
                    status="failed",
                    error=ev.ErrorInfo(**error.as_dict()),
                    trace_id=trace_id,
                    uri=ids.uri,
                    run_id=ids.run_id,
                    event_id=metadata_event_id(ids.video_id, ids.run_id),
                )
                await self.send(registry.METADATA, ids.video_id, doc, trace_id)
            elif ids.video_id:
                await self.fail_video(
                    video_id=ids.video_id,
                    tenant=ids.tenant,
                    error=error,
                    trace_id=trace_id,
                    uri=ids.uri,
                    run_id=ids.run_id or (run_id(record) if stage == "ingest" else None),
                )

    @staticmethod
    def header(record: Any, name: str) -> str | None:
        for k, v in record.headers or ():
            if k == name and v:
                return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        return None

    def trace_id(self, record: Any) -> str:
        """The trace id a producer sent in the ``framebus-trace-id`` header, else the event's run id
        (deterministic: a replayed event gets the same trace id)."""
        return self.header(record, TRACE_HEADER) or run_id(record)

    def run_id(self, record: Any) -> str:
        return run_id(record)

    async def hold(self, stage: str) -> None:
        """Testing only (``fault_hold``): pause here, in the middle of ``stage``'s work."""
        seconds = self.settings.fault_hold.get(stage)
        if seconds:
            log.warning("fault hold: %s for %.1fs", stage, seconds)
            await asyncio.sleep(float(seconds))

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n
        EVENTS.labels(name=name).inc(n)

    # --- executors ---------------------------------------------------------------------------------

    @property
    def process_pool(self) -> ProcessPoolExecutor:
        if self._process_pool is None:
            self._process_pool = self._spawn_pool(self.decode_workers)
        return self._process_pool

    def _spawn_pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def _pool_broke(self, pool: ProcessPoolExecutor) -> None:
        if self._process_pool is pool:
            self._process_pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    async def in_process(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work in the process pool. A crashed child (hostile media) breaks the pool and every
        call running in it; each of those is run again, alone, in a process of its own, so only the
        input that crashes again fails (``decode.crashed``)."""
        loop = asyncio.get_running_loop()
        pool = self.process_pool
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            self._pool_broke(pool)
        solo = self._spawn_pool(1)
        try:
            return await loop.run_in_executor(solo, fn, *args)
        except BrokenProcessPool:
            raise DecodeError("the decoder process crashed on this input", code="decode.crashed") from None
        finally:
            solo.shutdown(wait=False, cancel_futures=True)

    async def in_process_streaming(
        self, fn: Callable[..., T], *args: Any, on_item: Callable[[Any], Any], bound: int = 4
    ) -> T:
        """Run ``fn(*args, queue)`` in the process pool, where ``fn`` puts results into ``queue`` as it
        goes; ``await on_item(item)`` for each here, in order, while it runs; return what ``fn`` returns.
        The queue holds at most ``bound`` items (the child waits), so memory stays bounded. A broken
        pool is retried as ``in_process`` does (``on_item`` then sees the first items again)."""
        pool = self.process_pool
        try:
            return await self._streaming(pool, fn, args, on_item, bound)
        except BrokenProcessPool:
            self._pool_broke(pool)
        solo = self._spawn_pool(1)
        try:
            return await self._streaming(solo, fn, args, on_item, bound)
        except BrokenProcessPool:
            raise DecodeError("the decoder process crashed on this input", code="decode.crashed") from None
        finally:
            solo.shutdown(wait=False, cancel_futures=True)

    async def _streaming(self, pool, fn, args, on_item, bound):
        loop = asyncio.get_running_loop()
        q = self.manager.Queue(maxsize=bound)
        fut = loop.run_in_executor(pool, fn, *args, q)

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
            if not fut.done():
                if isinstance(exc, asyncio.CancelledError):
                    # cancelled (revoke, stop): the child finishes into a queue nobody reads; drain it in
                    # the background so it does not block the pool worker (closing the manager also frees it)
                    threading.Thread(target=drain_until_done, daemon=True, name="drain").start()
                else:
                    await anyio.to_thread.run_sync(drain_until_done, limiter=self.queue_limiter)
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

    def preload(self, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` in the model thread now, not awaited (an agent's models, loaded while the worker
        joins its group); model calls queued after it wait behind it."""
        self.model_executor.submit(fn)

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
        if self.settings.models == "tiny" and self.settings.train_tiny and set(agents) & {*MODEL_AGENTS, "generate"}:
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

        The agent is a stage in its own consumer group (every model task sees every segment); a batch is
        bounded by ``batch_size`` and by ``wait_s`` (see :mod:`streams.batching`). ``model_batches_in_flight``
        batches run at once: while one is in the model thread, the others are collected, parsed and
        prepared (frame decode, preprocessing: ``Runtime.in_prep_thread``) and queued behind it, and
        finished ones' results are sent, so the model does not wait for the event loop between batches.
        Offsets are committed only up to the lowest event still in a batch (``framebus.streams.delivery``).
        """
        self.batchers[name] = AdaptiveBatcher(name, batch_size)
        items_hist, seconds_hist = BATCH_ITEMS.labels(agent=name), BATCH_SECONDS.labels(agent=name)

        async def agent(batch: list[Any]) -> None:
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

        self.stage(
            name,
            spec,
            agent,
            batch_size=batch_size,
            wait_s=wait_s,
            concurrency=self.settings.model_batches_in_flight,
        )

    @property
    def store(self):
        # opened once, under a lock: the API's threads and the index stage may ask at the same moment, and
        # two embedded Qdrant clients on one folder fail
        with self._store_lock:
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
