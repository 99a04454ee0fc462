"""The delivery core's pure parts: offset tracking, the changelog table's bookkeeping, retries, event ids,
salvaged ids of broken events, safe identifiers. The real broker, real workers and kills are in
``tests/integration/test_delivery.py``."""

from __future__ import annotations

import asyncio
import random

import pytest

from framebus.agents.base import backoff_s, retry
from framebus.agents.media.pipeline import safe_component, thumbnail_dir
from framebus.streams.delivery import PartitionOffsets
from framebus.streams.state import STAMP, ChangelogTable
from framebus.topics import codec, ids
from framebus.topics import events as ev
from framebus.topics.errors import InvalidEvent


def test_the_commit_point_never_passes_an_unfinished_offset():
    rng = random.Random(7)
    for _ in range(200):
        tracker, taken, finished = PartitionOffsets(), [], set()
        start = rng.randrange(0, 1000)
        for off in range(start, start + rng.randrange(1, 40)):
            tracker.take(off)
            taken.append(off)
            # finish a random subset of what is in flight, in random order
            for o in rng.sample(taken, k=rng.randrange(0, len(taken) + 1)):
                tracker.finish(o)
                finished.add(o)
            point = tracker.commit_point()
            unfinished = [o for o in taken if o not in finished]
            # everything below the commit point is finished, and the point is as far as it may be
            assert all(o in finished for o in taken if o < point)
            assert point == (min(unfinished) if unfinished else max(taken) + 1)


def test_an_untouched_partition_has_no_commit_point():
    assert PartitionOffsets().commit_point() is None


class _Log:
    """A changelog that records what was produced (the real one is a Kafka topic)."""

    def __init__(self):
        self.records: list[tuple[str, bytes, bytes | None, int]] = []

    async def produce(self, topic, key, value, partition):
        self.records.append((topic, key, value, partition))


def test_the_table_writes_the_changelog_first_and_keeps_the_first_write_time():
    log = _Log()
    table = ChangelogTable("t", "app-t-changelog", produce=log.produce, consumer_kwargs={})

    async def go():
        await table.put(2, b"k", {"a": 1}, now=100.0)
        await table.put(2, b"k", {"a": 2}, now=500.0)
        assert table.get(2, b"k") == {"a": 2, STAMP: 100.0}
        assert table.expired(2, ttl_s=300, now=399.0) == [] and table.expired(2, ttl_s=300, now=401.0) == [b"k"]
        await table.delete(2, b"k")
        await table.delete(2, b"never-there")  # no tombstone for what is not there

    asyncio.run(go())
    assert [(t, k, p) for t, k, _, p in log.records] == [("app-t-changelog", b"k", 2)] * 3
    assert log.records[-1][2] is None  # a tombstone
    assert table.get(2, b"k") is None and len(table) == 0


def test_a_failed_changelog_write_leaves_the_table_unchanged():
    async def broken(*_):
        raise ConnectionError("broker down")

    table = ChangelogTable("t", "c", produce=broken, consumer_kwargs={})
    with pytest.raises(ConnectionError):
        asyncio.run(table.put(0, b"k", {"a": 1}))
    assert table.get(0, b"k") is None


def test_the_table_is_bounded():
    table = ChangelogTable("t", "c", produce=_Log().produce, consumer_kwargs={}, max_keys=2)

    async def go():
        await table.put(0, b"a", {})
        await table.put(0, b"b", {})
        await table.put(0, b"a", {"x": 1})  # replacing is fine
        with pytest.raises(OverflowError):
            await table.put(0, b"c", {})

    asyncio.run(go())


def test_retry_retries_transient_errors_only_and_gives_up_after_the_attempts():
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("transient")
        return "ok"

    assert asyncio.run(retry(flaky, attempts=3, is_transient=lambda e: True, what="t", base_s=0.001)) == "ok"
    calls.clear()
    with pytest.raises(TimeoutError):
        asyncio.run(retry(flaky, attempts=2, is_transient=lambda e: True, what="t", base_s=0.001))
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(TimeoutError):
        asyncio.run(retry(flaky, attempts=5, is_transient=lambda e: False, what="t", base_s=0.001))
    assert len(calls) == 1
    assert all(0.05 <= backoff_s(k, 0.1, 1.0) <= 1.0 for k in range(10))
    assert backoff_s(20, 0.1, 1.0) <= 1.0


def test_event_ids_are_deterministic_and_distinct():
    assert ids.metadata_event_id("v", "r1") == ids.metadata_event_id("v", "r1")
    assert ids.metadata_event_id("v", "r1") != ids.metadata_event_id("v", "r2")
    assert ids.alert_event_id("v", "r", 0, "hazard") != ids.alert_event_id("v", "r", 1, "hazard")
    assert ids.run_id_of("framebus.ingest", 0, 5) != ids.run_id_of("framebus.ingest", 1, 5)
    # no ambiguity from joining: ("a", "b\x00c") is not ("a\x00b", "c")
    assert ids.digest("a", "bc") != ids.digest("ab", "c")


def test_salvage_reads_what_it_can_from_broken_events():
    s = codec.salvage_ids(b'{"video_id": "v1", "tenant": "t", "run_id": "r", "uri": "/x", "bogus": 1}')
    assert (s.video_id, s.tenant, s.run_id, s.uri) == ("v1", "t", "r", "/x")
    assert codec.salvage_ids(b"not json", b"key-7").video_id == "key-7"
    assert codec.salvage_ids(b"[1, 2]", None) == codec.Salvaged(video_id=None, tenant="unknown")
    assert codec.salvage_ids(b'{"video_id": 5}', None).video_id is None
    assert len(codec.salvage_ids(b'{"video_id": "' + b"x" * 1000 + b'"}').video_id) == 256


@pytest.mark.parametrize("bad", ["../etc", "a/../b", "/abs", "a//b", "a/", ".", "..", "a/./b"])
def test_a_video_id_is_an_identifier_not_a_path(bad):
    with pytest.raises(InvalidEvent) as exc:
        codec.decode(ev.IngestRequest, ev_json(video_id=bad))
    assert exc.value.code == "event.invalid"


def test_good_video_ids_pass():
    for good in ["v1", "cam1/2026-01-01", "a.b", "x:y@z+1=2", "..a"]:
        assert codec.decode(ev.IngestRequest, ev_json(video_id=good)).video_id == good


def test_a_wrong_schema_version_has_its_own_code():
    with pytest.raises(InvalidEvent) as exc:
        codec.decode(ev.IngestRequest, ev_json(schema="framebus.ingest/v9"))
    assert exc.value.code == "event.unsupported_schema"


def ev_json(**fields) -> bytes:
    import orjson

    return orjson.dumps({"video_id": "v", "uri": "/m/v.mp4", "tenant": "t", **fields})


def test_safe_components_are_single_harmless_and_distinct(tmp_path):
    names = ["a", "a_b", "a/b", "a\\b", "..", ".", "../../x", "", "é", "a" * 300, "tenant-1"]
    comps = [safe_component(n) for n in names]
    assert len(set(comps)) == len(names)
    for c in comps:
        assert c and "/" not in c and "\\" not in c and not c.startswith(".") and len(c) < 120
    assert safe_component("tenant-1") == "tenant-1"  # safe names stay readable
    assert thumbnail_dir(tmp_path, "..").parent == tmp_path / "thumbnails"


def test_the_blob_store_backstop_deletes_expired_then_oldest_runs_down_to_its_cap(tmp_path):
    import os

    from framebus.agents.decode import sweep_blobs

    for i, (age, size) in enumerate([(100, 300), (50, 300), (10, 300), (1, 300)]):
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "00000-0000.jpg").write_bytes(b"x" * size)
        os.utime(d / "00000-0000.jpg", (1000 - age, 1000 - age))
        os.utime(d, (1000 - age, 1000 - age))
    # nothing over the cap and nothing expired: nothing goes
    assert sweep_blobs(tmp_path, cap_bytes=10_000, ttl_s=1000, now=1000) == (0, 1200)
    # run0 expired (100 s > 60 s), then the oldest until 600 bytes are left
    assert sweep_blobs(tmp_path, cap_bytes=600, ttl_s=60, now=1000) == (2, 600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run2", "run3"]
    assert sweep_blobs(tmp_path / "none", cap_bytes=0, ttl_s=1, now=1000) == (0, 0)


def test_records_polled_while_every_slot_is_busy_are_sought_back_not_dropped():
    """While every handler slot is busy the stage polls with its partitions paused (membership only). A
    partition assigned during that poll is not paused, so records of it can still arrive: they must be
    sought back, or the next batch starts after them and the commit point passes offsets never handled."""
    from framebus.streams.delivery import StageConfig, StageConsumer
    from tests.unit.test_exactly_once import TOPIC, Record, RecordingConsumer

    async def go():
        cfg = StageConfig(name="embed", topic=TOPIC, handle=None, concurrency=1)  # type: ignore[arg-type]
        sc = StageConsumer(cfg, group_id="g", consumer_kwargs={"bootstrap_servers": "127.0.0.1:1"}, on_error=None)  # type: ignore[arg-type]
        sc.consumer._closed = True  # never started; replaced by the stand-in
        sc.consumer = RecordingConsumer([0, 1], [[Record(TOPIC, 1, 5), Record(TOPIC, 1, 6)]])  # type: ignore[assignment]
        await sc._slots.acquire()  # every slot busy
        loop = asyncio.create_task(sc._run_loop())
        await asyncio.sleep(0.3)
        sc._stopping = True
        await asyncio.wait_for(loop, 5)
        return sc.consumer.seeks

    assert asyncio.run(go()) == [(1, 5)]
