"""Exactly-once mode's order of effects per micro-batch (``framebus.streams.delivery``, module docstring),
checked with recording stand-ins for the transactional producer and the consumer.

These are unit tests of ordering only: the mode is NOT verified against a broker with transactions here
(the embedded Tansu fails at InitProducerId and no Apache Kafka or Redpanda is available to this
project's tests). ``tests/integration/test_exactly_once.py`` checks the clear failure on Tansu.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, ProducerFenced, UnknownError

from framebus.streams import delivery
from framebus.streams.config import Settings
from framebus.streams.delivery import StageConfig, StageConsumer, current_transaction
from framebus.streams.runtime import Runtime
from framebus.topics import events as ev
from framebus.topics import registry
from framebus.topics.errors import BrokerError

TOPIC = "framebus.internal.progress"
GROUP = "framebus.publish"


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None = b"v1"
    value: bytes | None = b"not json"
    headers: tuple = ()


class RecordingProducer:
    """Records every call, in order, into a log shared with the test."""

    def __init__(self, name: str, log: list, *, fail: dict[str, list[BaseException]] | None = None):
        self.name = name
        self.transactional_id = f"framebus.publish.{name}"
        self.log = log
        self.fail = fail or {}
        self.started = self.stopped = False

    def _maybe_fail(self, what: str) -> None:
        errors = self.fail.get(what)
        if errors:
            raise errors.pop(0)

    async def start(self) -> None:
        self._maybe_fail("start")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def begin_transaction(self) -> None:
        self._maybe_fail("begin")
        self.log.append(("begin", self.name))

    async def send_and_wait(self, topic, value=None, key=None, partition=None, headers=None) -> None:
        self._maybe_fail("send")
        self.log.append(("send", self.name, topic))

    async def send_offsets_to_transaction(self, offsets, group_id) -> None:
        self._maybe_fail("offsets")
        self.log.append(("offsets", self.name, {tp.partition: o for tp, o in offsets.items()}, group_id))

    async def commit_transaction(self) -> None:
        self._maybe_fail("commit")
        self.log.append(("commit", self.name))

    async def abort_transaction(self) -> None:
        self.log.append(("abort", self.name))


class RecordingConsumer:
    """The parts of ``AIOKafkaConsumer`` a stage uses, serving ``batches`` once each."""

    def __init__(self, partitions: list[int], batches: list[list[Record]] | None = None):
        self.tps = {TopicPartition(TOPIC, p) for p in partitions}
        self.batches = list(batches or [])
        self.seeks: list[tuple[int, int]] = []
        self.commits: list = []
        self.stopped = False

    def assignment(self):
        return set(self.tps)

    def paused(self):
        return set()

    def pause(self, *tps) -> None:
        pass

    def resume(self, *tps) -> None:
        pass

    def seek(self, tp, offset) -> None:
        self.seeks.append((tp.partition, offset))

    async def getmany(self, *tps, timeout_ms=0, max_records=None):
        if self.batches:
            recs = self.batches.pop(0)
            out: dict = {}
            for r in recs:
                out.setdefault(TopicPartition(TOPIC, r.partition), []).append(r)
            return out
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets=None) -> None:
        self.commits.append(offsets)

    async def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(delivery, "backoff_s", lambda *a, **k: 0.0)


@pytest.fixture
def runtime(tmp_path):
    """A real ``Runtime`` in exactly-once mode whose shared producer records (it must stay unused inside
    a stage transaction)."""
    rt = Runtime(Settings(data_dir=tmp_path, delivery_guarantee="exactly_once"), worker_name="w1")
    yield rt
    rt.close()


def make_stage(rt: Runtime, log: list, handle, *, partitions=(0, 1), fail=None, batches=None) -> StageConsumer:
    rt._producer = RecordingProducer("shared", log)  # type: ignore[assignment]
    cfg = StageConfig(name="publish", topic=TOPIC, handle=handle, batch_size=8, concurrency=3)
    sc = StageConsumer(
        cfg,
        group_id=GROUP,
        consumer_kwargs={"bootstrap_servers": "127.0.0.1:1"},
        on_error=rt.fail_records,
        transactional_producer=lambda: RecordingProducer("stage", log, fail=fail),
    )
    sc.consumer._closed = True  # never started; replaced by the stand-in
    sc.consumer = RecordingConsumer(list(partitions), batches)  # type: ignore[assignment]
    for p in partitions:
        sc.offsets[p] = delivery.PartitionOffsets()
    return sc


def done_event(video_id: str) -> ev.SegmentDone:
    return ev.SegmentDone(video_id=video_id, tenant="t")


async def run_batch(sc: StageConsumer, records: list[Record]) -> None:
    trackers = {}
    for r in records:
        sc.offsets[r.partition].take(r.offset)
        trackers[r.partition] = sc.offsets[r.partition]
    task = asyncio.create_task(sc._run_txn(records, trackers))
    sc.in_flight[task] = delivery._InFlight(records, trackers)
    await task


def test_a_micro_batch_is_one_transaction_on_the_stages_producer(runtime):
    log: list = []
    table = runtime.table("publish-state")

    async def handle(records):
        assert current_transaction() is not None
        for r in records:
            await runtime.send(registry.PROGRESS, "v1", done_event(f"v{r.offset}"))
        await table.put(records[0].partition, b"k", {"n": len(records)})

    async def go():
        sc = make_stage(runtime, log, handle)
        assert sc.exactly_once and sc._slots._value == 1  # concurrency 1, whatever the stage asked for
        await sc.start_producer()
        await run_batch(sc, [Record(TOPIC, 0, 5), Record(TOPIC, 0, 6), Record(TOPIC, 1, 9)])
        return sc

    sc = asyncio.run(go())
    changelog = "framebus-publish-state-changelog"
    assert log == [
        ("begin", "stage"),
        ("send", "stage", TOPIC),
        ("send", "stage", TOPIC),
        ("send", "stage", TOPIC),
        ("send", "stage", changelog),
        ("offsets", "stage", {0: 7, 1: 10}, GROUP),
        ("commit", "stage"),
    ]
    assert sc.committed == {0: 7, 1: 10}
    assert sc.consumer.commits == []  # no offset commits outside the transaction
    assert table.get(0, b"k")["n"] == 3
    assert sc.stats["finished"] == 3 and sc.stats["commits"] == 1


def test_outside_a_stage_transaction_sends_use_the_shared_producer(runtime):
    log: list = []
    runtime._producer = RecordingProducer("shared", log)  # type: ignore[assignment]
    asyncio.run(runtime.send(registry.PROGRESS, "v1", done_event("v1")))
    assert log == [("send", "shared", TOPIC)]


def test_a_broker_error_aborts_undoes_table_writes_seeks_back_and_the_batch_is_retried(runtime, no_backoff):
    log: list = []
    table = runtime.table("publish-state")
    fail = {"commit": [KafkaConnectionError("broker went away")]}

    async def handle(records):
        for r in records:
            await table.put(r.partition, b"k", {"offset": r.offset})
            await runtime.send(registry.PROGRESS, "v1", done_event("v1"))

    async def go():
        sc = make_stage(runtime, log, handle, fail=fail)
        await sc.start_producer()
        await table.put(0, b"k", {"offset": 1})  # committed earlier (outside any transaction)
        log.clear()
        batch = [Record(TOPIC, 0, 5), Record(TOPIC, 1, 9), Record(TOPIC, 0, 6)]
        await run_batch(sc, batch)
        first = list(log)
        assert table.get(0, b"k")["offset"] == 1 and table.get(1, b"k") is None  # undone in memory
        assert sorted(sc.consumer.seeks) == [(0, 5), (1, 9)]  # back to the batch's start
        assert sc.committed == {}
        log.clear()
        await run_batch(sc, batch)  # taken again
        return sc, first

    sc, first = asyncio.run(go())
    assert first[0] == ("begin", "stage")
    assert first[-2:] == [("offsets", "stage", {0: 7, 1: 10}, GROUP), ("abort", "stage")]
    assert ("commit", "stage") not in first
    assert log[-2:] == [("offsets", "stage", {0: 7, 1: 10}, GROUP), ("commit", "stage")]
    assert sc.committed == {0: 7, 1: 10} and sc.stats["aborts"] == 1
    assert table.get(0, b"k")["offset"] == 6


def test_a_handler_bug_is_aborted_and_reported_in_a_fresh_transaction(runtime, no_backoff):
    """The batch aborts; each record runs alone; the one that fails alone gets its DLQ entry and failed
    document (``Runtime.fail_records``) through the stage's producer, with its offset, in one transaction."""
    log: list = []

    async def handle(records):
        for r in records:
            await runtime.send(registry.PROGRESS, "v1", done_event("v1"))
            if r.offset == 6:
                raise RuntimeError("a bug")

    async def go():
        sc = make_stage(runtime, log, handle)
        await sc.start_producer()
        await run_batch(sc, [Record(TOPIC, 0, 5), Record(TOPIC, 0, 6)])
        return sc

    sc = asyncio.run(go())
    dlq = registry.DLQ.name
    assert log == [
        # the batch: aborted
        ("begin", "stage"),
        ("send", "stage", TOPIC),
        ("send", "stage", TOPIC),
        ("abort", "stage"),
        # offset 5 alone: committed
        ("begin", "stage"),
        ("send", "stage", TOPIC),
        ("offsets", "stage", {0: 6}, GROUP),
        ("commit", "stage"),
        # offset 6 alone: fails again, aborted
        ("begin", "stage"),
        ("send", "stage", TOPIC),
        ("abort", "stage"),
        # its failure's effects (DLQ entry, failed video) and its offset: one fresh transaction
        ("begin", "stage"),
        ("send", "stage", dlq),
        ("send", "stage", registry.METADATA.name),  # publish's own failure: the failed document directly
        ("offsets", "stage", {0: 7}, GROUP),
        ("commit", "stage"),
    ]
    assert sc.committed == {0: 7} and sc.stats["failed"] == 1 and sc.consumer.seeks == []


def test_a_failed_report_seeks_back_to_the_first_record_not_committed(runtime, no_backoff):
    log: list = []
    # offset 5 commits alone; offset 6's DLQ entry cannot be produced
    fail = {"send": []}

    async def handle(records):
        if any(r.offset == 6 for r in records):
            fail["send"].append(KafkaConnectionError("DLQ partition offline"))
            raise RuntimeError("a bug")

    async def go():
        sc = make_stage(runtime, log, handle, fail=fail)
        await sc.start_producer()
        await run_batch(sc, [Record(TOPIC, 0, 5), Record(TOPIC, 0, 6), Record(TOPIC, 0, 7)])
        return sc

    sc = asyncio.run(go())
    assert ("offsets", "stage", {0: 6}, GROUP) in log and sc.committed == {0: 6}
    assert sc.consumer.seeks == [(0, 6)]  # not 5: it is committed
    assert log[-1] == ("abort", "stage")


def test_a_fenced_producer_stops_the_stage_with_a_clear_line(runtime, caplog):
    log: list = []

    async def handle(records):
        await runtime.send(registry.PROGRESS, "v1", done_event("v1"))

    async def go():
        batches = [[Record(TOPIC, 0, 5)], [Record(TOPIC, 0, 6)]]
        sc = make_stage(runtime, log, handle, fail={"commit": [ProducerFenced()]}, batches=batches)
        await sc.start_producer()
        await asyncio.wait_for(sc._run_loop_txn(), timeout=5)  # the loop ends by itself
        return sc

    with caplog.at_level(logging.ERROR, logger="framebus.delivery"):
        sc = asyncio.run(go())
    assert sc.fenced and sc._stopping
    assert log == [
        ("begin", "stage"),
        ("send", "stage", TOPIC),
        ("offsets", "stage", {0: 6}, GROUP),
    ]  # no abort on a fenced producer (the newer instance aborted it), nothing taken after
    assert sc.consumer.stopped  # left the group
    assert sc.committed == {}
    assert any("producer fenced" in r.getMessage() and "newer instance" in r.getMessage() for r in caplog.records)


class DeadSender:
    """What aiokafka leaves when a producer's sender task died: a fatal transaction manager."""

    def __init__(self, exc: BaseException, txn_id: str):
        self.transactional_id = txn_id
        self.exc = exc

    def is_fatal_error(self) -> bool:
        return True

    @property
    def sender_task(self):
        died = asyncio.get_running_loop().create_future()
        died.set_exception(self.exc)
        died.exception()  # retrieved: no "never retrieved" warning
        return died


def kill_sender(producer: RecordingProducer, exc: BaseException) -> None:
    producer._txn_manager = DeadSender(exc, producer.transactional_id)  # type: ignore[attr-defined]
    producer._sender = producer._txn_manager  # type: ignore[attr-defined]


def test_a_producer_whose_sender_died_fenced_stops_the_stage_and_is_not_replaced(runtime):
    """Fenced in the background (the sender died of ProducerFenced): the stage stops without starting a
    new producer, whose InitProducerId would fence the newer instance back."""
    log: list = []
    made: list = []

    async def handle(records):
        pass

    async def go():
        sc = make_stage(runtime, log, handle)
        factory = sc._new_producer
        sc._new_producer = lambda: made.append(1) or factory()
        await sc.start_producer()
        kill_sender(sc.producer, ProducerFenced())
        await run_batch(sc, [Record(TOPIC, 0, 5)])
        return sc

    sc = asyncio.run(go())
    assert sc.fenced and len(made) == 1 and log == []


def test_a_producer_in_a_fatal_state_is_replaced_and_the_batch_taken_again(runtime, no_backoff):
    log: list = []
    made: list = []

    async def handle(records):
        await runtime.send(registry.PROGRESS, "v1", done_event("v1"))

    async def go():
        sc = make_stage(runtime, log, handle)
        factory = sc._new_producer
        sc._new_producer = lambda: made.append(1) or factory()
        await sc.start_producer()
        first = sc.producer
        kill_sender(first, KafkaConnectionError("sender crashed"))
        await run_batch(sc, [Record(TOPIC, 0, 5)])
        return sc, first

    sc, first = asyncio.run(go())
    assert first.stopped and len(made) == 2 and not sc.fenced
    assert log[-2:] == [("offsets", "stage", {0: 6}, GROUP), ("commit", "stage")] and sc.committed == {0: 6}


def test_a_revoke_cancels_a_transaction_past_the_grace_and_aborts_it(runtime):
    log: list = []
    table = runtime.table("publish-state")
    entered = asyncio.Event

    async def go():
        started = entered()

        async def handle(records):
            await table.put(0, b"k", {"v": 1})
            started.set()
            await asyncio.sleep(30)

        sc = make_stage(runtime, log, handle)
        sc.revoke_grace_s = 0.05
        await sc.start_producer()
        records = [Record(TOPIC, 0, 5)]
        sc.offsets[0].take(5)
        task = asyncio.create_task(sc._run_txn(records, {0: sc.offsets[0]}))
        sc.in_flight[task] = delivery._InFlight(records, {0: sc.offsets[0]})
        await started.wait()
        await sc.on_partitions_revoked([TopicPartition(TOPIC, 0)])
        return sc

    sc = asyncio.run(go())
    assert log == [("begin", "stage"), ("send", "stage", "framebus-publish-state-changelog"), ("abort", "stage")]
    assert sc.consumer.commits == [] and sc.committed == {} and sc.stats["cancelled"] == 1
    assert table.get(0, b"k") is None


def test_a_broker_without_transactions_fails_the_start_with_one_clear_line(runtime):
    log: list = []

    async def go():
        sc = make_stage(runtime, log, None, fail={"start": [UnknownError()]})
        await sc.start_producer()

    with pytest.raises(BrokerError) as info:
        asyncio.run(go())
    err = info.value
    assert err.code == "broker.transactions_unsupported" and not err.transient
    assert "\n" not in err.message
    assert "Apache Kafka >= 2.5" in err.message and "FRAMEBUS_DELIVERY_GUARANTEE=at_least_once" in err.message


def test_the_settings_choose_the_mode_and_read_committed(tmp_path):
    default = Runtime(Settings(data_dir=tmp_path / "a"))
    eo = Runtime(Settings(data_dir=tmp_path / "b", delivery_guarantee="exactly_once"), worker_name="w7")
    try:
        assert Settings().delivery_guarantee == "at_least_once"
        assert "isolation_level" not in default.consumer_kwargs()
        assert "isolation_level" not in default.table("t")._consumer_kwargs
        assert eo.consumer_kwargs()["isolation_level"] == "read_committed"
        assert eo.table("t")._consumer_kwargs["isolation_level"] == "read_committed"
        assert eo.transactional_id("index") == "framebus.index.w7"
    finally:
        default.close()
        eo.close()


def test_the_default_mode_keeps_its_concurrency_and_has_no_producer():
    async def go():
        cfg = StageConfig(name="embed", topic=TOPIC, handle=None, concurrency=3)  # type: ignore[arg-type]
        return StageConsumer(cfg, group_id="g", consumer_kwargs={"bootstrap_servers": "127.0.0.1:1"}, on_error=None)  # type: ignore[arg-type]

    sc = asyncio.run(go())
    sc.consumer._closed = True  # never started
    assert not sc.exactly_once and sc.producer is None and sc._slots._value == 3


def test_the_startup_check_alone_starts_and_stops_one_producer():
    ok = RecordingProducer("probe", [])
    asyncio.run(delivery.check_transactions(ok))
    assert ok.started and ok.stopped
    refused = RecordingProducer("probe", [], fail={"start": [UnknownError()]})
    with pytest.raises(BrokerError) as info:
        asyncio.run(delivery.check_transactions(refused))
    assert info.value.code == "broker.transactions_unsupported" and refused.stopped
