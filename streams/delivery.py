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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from framebus.agents.base import backoff_s

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
    ):
        self.config = config
        self.group_id = group_id
        self.on_error = on_error
        self.commit_interval_s = commit_interval_s
        self.revoke_grace_s = revoke_grace_s
        self.consumer = AIOKafkaConsumer(
            group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest", **consumer_kwargs
        )
        self.offsets: dict[int, PartitionOffsets] = {}
        self.committed: dict[int, int] = {}
        self.in_flight: dict[asyncio.Task, _InFlight] = {}
        self.assigned = asyncio.Event()  # the first assignment happened (ready)
        self.stats = {"taken": 0, "finished": 0, "failed": 0, "cancelled": 0, "commits": 0}
        self._slots = asyncio.Semaphore(max(1, config.concurrency))
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._last_commit = 0.0
        self._idle_logged = 0.0

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.consumer.subscribe([self.config.topic], listener=self)
        await self.consumer.start()
        self._task = asyncio.create_task(self._run_loop(), name=f"stage-{self.config.name}")

    async def stop(self) -> None:
        """Stop taking; give in-flight work ``revoke_grace_s``; commit; leave the group."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._drain(set(self.offsets))
        await self._commit(force=True)
        await self.consumer.stop()

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

    async def _run_loop(self) -> None:
        while not self._stopping:
            if self._slots.locked():
                # every slot busy: keep polling (membership), take nothing
                paused = self.consumer.assignment()
                self.consumer.pause(*paused)
                try:
                    await self.consumer.getmany(timeout_ms=100)
                finally:
                    self.consumer.resume(*[tp for tp in paused if tp in self.consumer.assignment()])
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
            trackers = {}
            for r in records:
                self.offsets[r.partition].take(r.offset)
                trackers[r.partition] = self.offsets[r.partition]
            self.stats["taken"] += len(records)
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
