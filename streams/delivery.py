"""The delivery core: how a stage takes events from Kafka, runs them, and commits their offsets.

Each stage (ingest, decode, embed, caption, moderate, index, publish) is one ``StageConsumer``: its own
aiokafka consumer in its **own consumer group** (``<app_id>.<stage>``), so stages can run in different
processes or on different machines and each still sees every event of its topic (embed, caption and
moderate all read the frames topic). faust-streaming gives one group to a whole app and commits past
unfinished events (faust issue #606), so framebus consumes beside it, with aiokafka.

Order of effects, enforced here (``StageConsumer._run_loop``, ``_run``, ``_commit``, ``_on_revoked``):

1. **Take.** Records are fetched (at most ``concurrency`` handler calls in flight, each at most
   ``batch_size`` records; fetching pauses while every slot is busy). Each record's offset is noted as
   *in flight* in its partition's ``PartitionOffsets`` before the handler starts.
2. **Effects.** The handler runs. Everything it does is awaited before it returns: produced events are
   acknowledged by the broker (``Runtime.send``), vector writes are done, table writes are on the
   changelog (acknowledged produce). A handler that raises is not the end of its records: the runtime's
   ``on_error`` turns the exception into a DLQ entry and a failed document (``internal.error`` for bugs),
   retried with backoff until it succeeds. Only then do the records count as finished.
3. **Finish.** The records' offsets are marked finished.
4. **Commit.** Per partition, the committed offset is the lowest offset still in flight, or one past the
   highest taken when none is: the contiguous finished prefix, never past an unfinished event. Commits
   run every ``commit_interval_s`` and on revoke and on stop.
5. **Revoke** (rebalance) **and stop.** Taking stops; the handlers in flight get ``revoke_grace_s``
   (well inside the rebalance timeout) to finish; those still running are cancelled, unfinished, so
   the next owner replays them; the finished prefix is committed; the partitions' table state is
   dropped (the next owner restores it from the changelog). A cancelled handler produces nothing more:
   no zombie writes after the group moved on.

Replays are harmless because every effect is idempotent: point ids and document keys are
deterministic, and every public event carries a deterministic ``event_id``.

Exactly-once mode (``delivery_guarantee = "exactly_once"``; ``StageConsumer._run_loop_txn``,
``_run_txn``, ``_transaction``, ``_rollback``). Each stage has its own transactional producer
(``transactional_id`` ``<app_id>.<stage>.<worker name>``), reads with ``isolation_level=read_committed``,
runs one micro-batch at a time (concurrency 1) and never commits offsets through the consumer:

1. **Take** a micro-batch, as above.
2. **Begin** a transaction on the stage's producer.
3. **Effects.** The handler runs with ``TRANSACTION`` (a ``ContextVar``) set, so every event it produces
   (``Runtime.send``/``send_all``, DLQ entries, ``ChangelogTable`` writes) goes through that producer,
   inside the transaction; table writes keep an undo entry for their in-memory copy.
4. **Offsets** ``{partition: last offset of the batch + 1}`` go into the same transaction
   (``send_offsets_to_transaction(offsets, "<app_id>.<stage>")``).
5. **Commit** the transaction: the outputs, the table writes and the consumed offsets become visible
   together, or none of them does.

Failure: any exception aborts the transaction and undoes its table writes in memory. A handler that
raised (not a transient broker error) gets the at-least-once treatment inside fresh transactions: a
batch is retried record by record, and a record that fails alone gets ``on_error``'s DLQ entry and
failed document in a transaction of its own, with its offset. A transient broker error, a failed begin,
offsets or commit, or ``on_error`` failing, seeks the batch's partitions back to the first record not yet
committed, and the batch is taken again after a backoff (a producer left in a fatal state is replaced
first). ``ProducerFenced`` (a newer instance owns the transactional id, or a transaction outlived its
timeout; also when the producer's sender died of it) stops the stage without a new producer, so it never
fences the newer instance back: it logs why, leaves its group and ends its loop (the worker then stops). On revoke and
stop, a transaction in flight gets ``revoke_grace_s`` to commit; past that it is cancelled and aborted
before the partitions go. Effects outside Kafka (vector-store writes, claim-check files) are not
transactional: they stay idempotent, as in the default mode. Periodic sweeps (``Runtime.every``) run
outside any stage transaction, on the shared producer. Not verified against a transactional broker in
this project (the embedded Tansu fails at InitProducerId; ``start_producer`` then fails the worker with
``broker.transactions_unsupported``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)

from framebus.agents.base import backoff_s
from framebus.topics.errors import BrokerError

log = logging.getLogger("framebus.delivery")


class PartitionOffsets:
    """The offsets of one partition that were taken and are not finished yet (pure; unit-tested).

    ``commit_point()`` is the offset to commit: the lowest in flight, else one past the highest taken;
    ``None`` before anything was taken."""

    def __init__(self) -> None:
        self._in_flight: set[int] = set()
        self._next: int | None = None

    def take(self, offset: int) -> None:
        self._in_flight.add(offset)
        self._next = offset + 1 if self._next is None else max(self._next, offset + 1)

    def finish(self, offset: int) -> None:
        self._in_flight.discard(offset)

    def commit_point(self) -> int | None:
        if self._in_flight:
            return min(self._in_flight)
        return self._next

    def __len__(self) -> int:
        return len(self._in_flight)


class StageTransaction:
    """The open transaction of one stage (exactly-once mode): its producer, and how to undo in-memory
    effects (table writes) when it aborts. ``TRANSACTION`` holds it while the stage's handler runs."""

    def __init__(self, stage: str, producer: Any):
        self.stage = stage
        self.producer = producer
        self._undo: list[Callable[[], None]] = []

    def on_abort(self, undo: Callable[[], None]) -> None:
        """``undo()`` runs (latest first) if this transaction aborts."""
        self._undo.append(undo)

    def rollback(self) -> None:
        while self._undo:
            self._undo.pop()()

    def forget(self) -> None:
        self._undo.clear()


#: the stage transaction the running handler belongs to (``None``: at-least-once, or outside a stage)
TRANSACTION: contextvars.ContextVar[StageTransaction | None] = contextvars.ContextVar(
    "framebus_stage_transaction", default=None
)


def current_transaction() -> StageTransaction | None:
    return TRANSACTION.get()


def _fenced(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) says the stage's producer was fenced."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ProducerFenced):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _transient_broker_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) is a Kafka error worth retrying the transaction for
    (the broker unreachable or busy, a timeout); other Kafka errors fail the events, as in the default mode."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, KafkaError) and (exc.retriable or isinstance(exc, KafkaTimeoutError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _txn_id(producer: Any) -> str:
    return getattr(producer, "transactional_id", None) or getattr(
        getattr(producer, "_txn_manager", None), "transactional_id", "?"
    )


async def start_transactional(producer: Any, timeout_s: float = 30.0) -> None:
    """Start a transactional producer (``InitProducerId``: it fences an older instance with the same
    transactional id and aborts its open transaction). A broker without usable transactions fails here
    with a one-line ``BrokerError``: ``broker.transactions_unsupported`` (``_unauthorized`` for ACLs)."""
    try:
        await asyncio.wait_for(producer.start(), timeout=timeout_s)
    except (KafkaError, TimeoutError) as exc:
        await asyncio.gather(producer.stop(), return_exceptions=True)
        txn_id = _txn_id(producer)
        what = str(exc) if isinstance(exc, KafkaError) else f"no answer in {timeout_s:.0f}s"
        if isinstance(exc, TransactionalIdAuthorizationFailed):
            raise BrokerError(
                f"the broker refused transactional id {txn_id!r} ({what}); grant the worker's principal "
                "WRITE and DESCRIBE on it, or set FRAMEBUS_DELIVERY_GUARANTEE=at_least_once",
                code="broker.transactions_unauthorized",
                transient=False,
            ) from exc
        raise BrokerError(
            f"exactly_once delivery needs Kafka transactions, and the broker failed to start transactional "
            f"producer {txn_id!r} ({what}); use a Kafka cluster with transactions "
            "(Apache Kafka >= 2.5 or Redpanda) or set FRAMEBUS_DELIVERY_GUARANTEE=at_least_once",
            code="broker.transactions_unsupported",
            transient=False,
        ) from exc


async def check_transactions(producer: Any, timeout_s: float = 30.0) -> None:
    """The startup check of exactly-once mode on its own (e.g. before loading models): start and stop one
    transactional producer (not started; ``Runtime.transactional_producer("probe")``)."""
    await start_transactional(producer, timeout_s)
    await producer.stop()


class _HandlerFailed(Exception):
    """The stage's handler raised (not a broker error): its failure is reported, not retried."""


@dataclass
class StageConfig:
    """One stage: what it reads, how it batches, how much runs at once."""

    name: str
    topic: str
    handle: Callable[[list[Any]], Awaitable[None]]
    batch_size: int = 1
    batch_wait_s: float = 0.0
    concurrency: int = 1
    #: restore these partitions' state before the stage takes anything from them; drop it on revoke
    on_assigned: list[Callable[[set[int]], Awaitable[None]]] = field(default_factory=list)
    on_revoked: list[Callable[[set[int]], None]] = field(default_factory=list)


@dataclass
class _InFlight:
    records: list[Any]
    offsets: dict[int, PartitionOffsets]  # the trackers they were taken under (a revoke replaces them)


class StageConsumer(ConsumerRebalanceListener):
    """Runs one stage's handler over its topic with the delivery order of this module's docstring."""

    def __init__(
        self,
        config: StageConfig,
        *,
        group_id: str,
        consumer_kwargs: dict[str, Any],
        on_error: Callable[[str, list[Any], BaseException], Awaitable[None]],
        commit_interval_s: float = 0.5,
        revoke_grace_s: float = 5.0,
        transactional_producer: Callable[[], Any] | None = None,
        producer_start_timeout_s: float = 30.0,
    ):
        """``transactional_producer``: exactly-once mode (module docstring); a factory of this stage's
        transactional ``AIOKafkaProducer`` (not started). ``consumer_kwargs`` should then read
        ``read_committed``."""
        self.config = config
        self.group_id = group_id
        self.on_error = on_error
        self.commit_interval_s = commit_interval_s
        self.revoke_grace_s = revoke_grace_s
        self._new_producer = transactional_producer
        self.exactly_once = transactional_producer is not None
        self.producer: Any = None  # the transactional producer (exactly-once mode), once started
        self.producer_start_timeout_s = producer_start_timeout_s
        self.fenced = False
        self._txn_failures = 0
        self.consumer = AIOKafkaConsumer(
            group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest", **consumer_kwargs
        )
        self.offsets: dict[int, PartitionOffsets] = {}
        self.committed: dict[int, int] = {}
        self.in_flight: dict[asyncio.Task, _InFlight] = {}
        self.assigned = asyncio.Event()  # the first assignment happened (ready)
        self.stats = {"taken": 0, "finished": 0, "failed": 0, "cancelled": 0, "commits": 0, "aborts": 0}
        self._slots = asyncio.Semaphore(1 if self.exactly_once else max(1, config.concurrency))
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._last_commit = 0.0
        self._idle_logged = 0.0

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.exactly_once:
            await self.start_producer()
        self.consumer.subscribe([self.config.topic], listener=self)
        await self.consumer.start()
        loop = self._run_loop_txn() if self.exactly_once else self._run_loop()
        self._task = asyncio.create_task(loop, name=f"stage-{self.config.name}")

    async def start_producer(self) -> None:
        """Exactly-once mode: start this stage's transactional producer (``InitProducerId``: it fences an
        older instance with the same transactional id and aborts its open transaction). A broker without
        transactions fails here, as a ``BrokerError`` the CLI prints as one line."""
        if not self.exactly_once or self.producer is not None:
            return
        assert self._new_producer is not None
        producer = self._new_producer()
        await start_transactional(producer, self.producer_start_timeout_s)
        self.producer = producer
        log.info("%s: transactional producer %r started", self.config.name, _txn_id(producer))

    async def stop(self) -> None:
        """Stop taking; give in-flight work ``revoke_grace_s``; commit; leave the group."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._drain(set(self.offsets))
        await self._commit(force=True)
        await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    @property
    def task(self) -> asyncio.Task | None:
        return self._task

    # --- rebalance listener -------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == self.config.topic}
        if not parts:
            return
        await self._drain(parts)
        await self._commit(force=True)
        for p in parts:
            self.offsets.pop(p, None)
            self.committed.pop(p, None)
        for drop in self.config.on_revoked:
            drop(parts)
        log.info("%s: revoked partitions %s", self.config.name, sorted(parts))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        parts = {tp.partition for tp in assigned if tp.topic == self.config.topic}
        for restore in self.config.on_assigned:
            await restore(parts)
        for p in parts:
            self.offsets[p] = PartitionOffsets()
        self.assigned.set()
        log.info("%s: assigned partitions %s", self.config.name, sorted(parts))

    async def _drain(self, parts: set[int]) -> None:
        """Let the handlers holding records of ``parts`` finish within the grace; cancel the rest."""
        tasks = [t for t, f in self.in_flight.items() if any(r.partition in parts for r in f.records)]
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=self.revoke_grace_s)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning(
                "%s: cancelled %d handler call(s) still running after %.1fs; their events will be replayed",
                self.config.name,
                len(pending),
                self.revoke_grace_s,
            )

    # --- the loop -----------------------------------------------------------------------------------

    async def _take(self) -> list[Any]:
        """Up to ``batch_size`` records: wait for the first, then up to ``batch_wait_s`` to fill."""
        c = self.config
        out: list[Any] = []
        got = await self.consumer.getmany(timeout_ms=200, max_records=c.batch_size)
        out.extend(r for recs in got.values() for r in recs)
        if out and c.batch_size > 1 and c.batch_wait_s > 0:
            until = time.monotonic() + c.batch_wait_s
            while len(out) < c.batch_size and (left := until - time.monotonic()) > 0:
                got = await self.consumer.getmany(timeout_ms=int(left * 1000) + 1, max_records=c.batch_size - len(out))
                out.extend(r for recs in got.values() for r in recs)
        return out

    def _track(self, records: list[Any]) -> dict[int, PartitionOffsets]:
        """Note each record's offset as taken (in flight) on its partition's tracker; the trackers used."""
        trackers = {}
        for r in records:
            self.offsets[r.partition].take(r.offset)
            trackers[r.partition] = self.offsets[r.partition]
        self.stats["taken"] += len(records)
        return trackers

    async def _run_loop(self) -> None:
        while not self._stopping:
            if self._slots.locked():
                # every slot busy: keep polling (membership), take nothing (a record of a partition
                # assigned during the poll is sought back, never dropped)
                await self._poll_paused()
                await self._commit()
                continue
            await self._slots.acquire()
            try:
                records = await self._take()
            except BaseException:
                self._slots.release()
                raise
            records = self._owned(records)
            if not records:
                if log.isEnabledFor(logging.DEBUG) and time.monotonic() - self._idle_logged > 5:
                    self._idle_logged = time.monotonic()
                    log.debug(
                        "%s: idle; assigned %s, paused %s, ready %s, committed %s, highwater %s",
                        self.config.name,
                        sorted(tp.partition for tp in self.consumer.assignment()),
                        sorted(tp.partition for tp in self.consumer.paused()),
                        sorted(self.offsets),
                        self.committed,
                        {tp.partition: self.consumer.highwater(tp) for tp in self.consumer.assignment()},
                    )
                self._slots.release()
                await self._commit()
                continue
            trackers = self._track(records)
            log.debug(
                "%s: took %d record(s) %s",
                self.config.name,
                len(records),
                [(r.partition, r.offset) for r in records][:8],
            )
            task = asyncio.create_task(self._run(records, trackers))
            self.in_flight[task] = _InFlight(records, trackers)
            await self._commit()

    def _owned(self, records: list[Any]) -> list[Any]:
        """The records of partitions this stage may take now. A record of a partition that is not ready
        (its table still being restored: aiokafka fetches as soon as it is assigned) is not dropped: the
        partition is sought back to it, so it comes again. One of a partition no longer ours is left to
        its new owner."""
        ready, back = [], {}
        for r in records:
            if r.partition in self.offsets:
                ready.append(r)
            else:
                back[r.partition] = min(back.get(r.partition, r.offset), r.offset)
        for p, offset in back.items():
            tp = TopicPartition(self.config.topic, p)
            if tp in self.consumer.assignment():
                self.consumer.seek(tp, offset)
        return ready

    async def _run(self, records: list[Any], trackers: dict[int, PartitionOffsets]) -> None:
        try:
            await self._handle(records)
            for r in records:
                trackers[r.partition].finish(r.offset)
            self.stats["finished"] += len(records)
        except asyncio.CancelledError:
            self.stats["cancelled"] += len(records)
            raise
        finally:
            self.in_flight.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._slots.release()

    async def _handle(self, records: list[Any]) -> None:
        """The handler's effects, or the failure's: when a batch raises, each record is tried alone, so only
        the records that fail alone get a DLQ entry and a failed document, not their batch neighbours."""
        try:
            await self.config.handle(records)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(records) == 1:
                await self._report(records, exc)
                return
            log.warning("%s: a batch of %d raised %r; handling each event alone", self.config.name, len(records), exc)
        for record in records:
            try:
                await self.config.handle([record])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._report([record], exc)

    async def _report(self, records: list[Any], exc: BaseException) -> None:
        """``on_error`` (DLQ entry, failed document) until it succeeds: the records count as finished only
        once the failure's own effects happened."""
        self.stats["failed"] += len(records)
        attempt = 0
        while True:
            try:
                await self.on_error(self.config.name, records, exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as again:
                wait = backoff_s(attempt, 0.5, 30.0)
                log.error("%s: reporting a failure failed (%r); retry in %.1fs", self.config.name, again, wait)
                attempt += 1
                await asyncio.sleep(wait)

    async def _commit(self, force: bool = False) -> None:
        if self.exactly_once:  # offsets are committed inside each batch's transaction, never here
            return
        now = time.monotonic()
        if not force and now - self._last_commit < self.commit_interval_s:
            return
        self._last_commit = now
        due = {}
        for p, tracker in self.offsets.items():
            point = tracker.commit_point()
            if point is not None and point > self.committed.get(p, -1):
                due[TopicPartition(self.config.topic, p)] = point
        if not due:
            return
        log.debug("%s: committing %s", self.config.name, {tp.partition: o for tp, o in due.items()})
        try:
            await self.consumer.commit(due)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # a rebalance is under way: the next owner replays from the last commit (at-least-once)
            log.warning("%s: commit of %s failed: %r", self.config.name, due, exc)
            return
        for tp, point in due.items():
            self.committed[tp.partition] = point
        self.stats["commits"] += 1

    # --- exactly-once mode (module docstring) -------------------------------------------------------

    async def _run_loop_txn(self) -> None:
        """One micro-batch at a time, each in a transaction of its own (``_run_txn``)."""
        try:
            while not self._stopping:
                records = self._owned(await self._take())
                if not records:
                    continue
                trackers = self._track(records)
                task = asyncio.create_task(self._run_txn(records, trackers))
                self.in_flight[task] = _InFlight(records, trackers)
                while not task.done():
                    done, _ = await asyncio.wait({task}, timeout=1.0)
                    if not done:  # a long batch: poll now and then (group membership, max poll interval)
                        await self._poll_paused()
        finally:
            if self.fenced:
                # leave the group now: the partitions go to the instance that owns the transactional id
                await asyncio.gather(self.consumer.stop(), return_exceptions=True)

    async def _poll_paused(self) -> None:
        """Poll with every partition paused (every slot busy, or a transaction running): group membership,
        taking nothing; a record that still comes (a partition assigned meanwhile) is sought back, not
        dropped."""
        paused = self.consumer.assignment()
        self.consumer.pause(*paused)
        try:
            got = await self.consumer.getmany(timeout_ms=100)
        finally:
            self.consumer.resume(*[tp for tp in paused if tp in self.consumer.assignment()])
        for tp, recs in got.items():
            if recs and tp in self.consumer.assignment():
                self.consumer.seek(tp, min(r.offset for r in recs))

    async def _run_txn(self, records: list[Any], trackers: dict[int, PartitionOffsets]) -> None:
        """The batch's transaction(s); on failure: abort (done by ``_transaction``), seek back to the first
        record not committed, back off. ``ProducerFenced`` stops the stage."""
        pending = list(records)
        try:
            failure = self._producer_failure()  # its sender died between batches
            if failure is not None:
                if _fenced(failure):
                    raise failure
                await self._replace_producer()
            if self.producer is None:  # replaced after a fatal producer error
                await self.start_producer()
            await self._transact(pending)
            self._txn_failures = 0
        except asyncio.CancelledError:
            self.stats["cancelled"] += len(pending)
            raise
        except Exception as exc:
            failure = self._producer_failure()
            if _fenced(exc) or _fenced(failure):
                self._stop_fenced(exc if _fenced(exc) else failure)  # type: ignore[arg-type]
                return
            if failure is not None:
                await self._replace_producer()
            wait = backoff_s(self._txn_failures, 0.5, 30.0)
            self._txn_failures += 1
            self._seek_back(pending)
            log.warning(
                "%s: transaction of %d record(s) aborted (%r); taking them again in %.1fs",
                self.config.name,
                len(pending),
                exc,
                wait,
            )
            await asyncio.sleep(wait)
        finally:
            for r in records:
                trackers[r.partition].finish(r.offset)
            self.in_flight.pop(asyncio.current_task(), None)  # type: ignore[arg-type]

    async def _transact(self, pending: list[Any]) -> None:
        """The batch in one transaction; if its handler raised, each record alone, and a record that fails
        alone gets ``on_error`` (DLQ entry, failed document) in a transaction of its own. Committed records
        leave ``pending``."""
        records = list(pending)
        try:
            await self._transaction(records, self.config.handle, handler=True)
            self._committed(pending, records)
            return
        except _HandlerFailed as failed:
            exc = failed.__cause__ or failed
        if len(records) == 1:
            await self._report_txn(records, exc)
            self._committed(pending, records)
            return
        log.warning(
            "%s: a batch of %d raised %r; handling each event alone (a transaction each)",
            self.config.name,
            len(records),
            exc,
        )
        for record in records:
            try:
                await self._transaction([record], self.config.handle, handler=True)
            except _HandlerFailed as failed:
                await self._report_txn([record], failed.__cause__ or failed)
            self._committed(pending, [record])

    async def _report_txn(self, records: list[Any], exc: BaseException) -> None:
        self.stats["failed"] += len(records)

        async def report(recs: list[Any]) -> None:
            await self.on_error(self.config.name, recs, exc)

        await self._transaction(records, report, handler=False)

    async def _transaction(
        self, records: list[Any], work: Callable[[list[Any]], Awaitable[None]], *, handler: bool
    ) -> None:
        """begin -> ``work(records)`` with ``TRANSACTION`` set -> the records' next offsets -> commit. Any
        exception aborts (``_rollback``) and is raised again; a handler's own failure (not a broker error)
        as ``_HandlerFailed``."""
        if self.producer is None:  # dropped by a failed abort just before
            await self.start_producer()
        producer = self.producer
        txn = StageTransaction(self.config.name, producer)
        await producer.begin_transaction()
        try:
            token = TRANSACTION.set(txn)
            try:
                await work(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not handler or _fenced(exc) or _transient_broker_error(exc) or self._producer_broken():
                    raise
                raise _HandlerFailed(str(exc)) from exc
            finally:
                TRANSACTION.reset(token)
            offsets = self._next_offsets(records)
            await producer.send_offsets_to_transaction(offsets, self.group_id)
            await producer.commit_transaction()
        except BaseException as exc:
            await self._rollback(txn, exc)
            raise
        txn.forget()
        self.stats["commits"] += 1
        for tp, offset in offsets.items():
            self.committed[tp.partition] = max(offset, self.committed.get(tp.partition, -1))

    def _next_offsets(self, records: list[Any]) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(self.config.topic, r.partition)
            out[tp] = max(out.get(tp, 0), r.offset + 1)
        return out

    def _producer_broken(self) -> bool:
        """The producer is in a fatal state (its sender failed): it can only be replaced."""
        manager = getattr(self.producer, "_txn_manager", None)
        return bool(manager is not None and manager.is_fatal_error())

    def _producer_failure(self) -> BaseException | None:
        """Why the producer is in a fatal state (``ProducerFenced``, ...), or ``None`` when it is not."""
        if not self._producer_broken():
            return None
        task = getattr(getattr(self.producer, "_sender", None), "sender_task", None)
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            return task.exception()
        return KafkaError("the transactional producer is in a fatal state")

    async def _replace_producer(self) -> None:
        """Drop the producer; ``_run_txn`` starts a new one (its InitProducerId aborts what is open)."""
        producer, self.producer = self.producer, None
        if producer is not None:
            await asyncio.gather(producer.stop(), return_exceptions=True)

    async def _rollback(self, txn: StageTransaction, exc: BaseException) -> None:
        """Abort the open transaction and undo its in-memory table writes. A producer that cannot abort
        (fatal error) is replaced before the next transaction; a fenced one is left as it is."""
        txn.rollback()
        self.stats["aborts"] += 1
        failure = self._producer_failure()
        if _fenced(exc) or _fenced(failure):
            return  # nothing to abort (the newer instance did); the caller stops the stage
        if failure is None:
            try:
                await asyncio.wait_for(self.producer.abort_transaction(), timeout=self.producer_start_timeout_s)
                return
            except asyncio.CancelledError:
                raise
            except Exception as again:
                if _fenced(again) or _fenced(self._producer_failure()):
                    raise
                log.warning("%s: abort failed (%r); replacing the producer", self.config.name, again)
        await self._replace_producer()

    def _committed(self, pending: list[Any], done: list[Any]) -> None:
        for r in done:
            pending.remove(r)
        self.stats["finished"] += len(done)

    def _seek_back(self, pending: list[Any]) -> None:
        """Each partition of ``pending`` back to its first record not committed (taken again next)."""
        first: dict[int, int] = {}
        for r in pending:
            first[r.partition] = min(first.get(r.partition, r.offset), r.offset)
        assignment = self.consumer.assignment()
        for p, offset in first.items():
            tp = TopicPartition(self.config.topic, p)
            if tp in assignment:
                self.consumer.seek(tp, offset)

    def _stop_fenced(self, exc: BaseException) -> None:
        txn_id = getattr(getattr(self.producer, "_txn_manager", None), "transactional_id", None)
        log.error(
            "%s: producer fenced (%s): a newer instance owns transactional id %r (or a transaction outlived "
            "its timeout); this stage stops and leaves its group, its last transaction aborted",
            self.config.name,
            type(exc).__name__,
            txn_id,
        )
        self.fenced = True
        self._stopping = True
