"""Delivery promises, tried against the real broker and real worker processes: SIGKILL inside a decode and
inside a model batch, a member joining and leaving, the stages split over five processes.

Each scenario counts, per video: metadata documents (lost, duplicated and whether the copies are identical),
vector points against the shots of the document (exactly one per shot), and what the stages' tables still
hold once everything is done (nothing left waiting).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import defaultdict

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from framebus.indexing.ids import collection_name
from framebus.models.base import ModelInfo
from framebus.streams.broker import TABLES
from framebus.streams.client import publish_ingest
from framebus.streams.config import Settings
from framebus.topics import registry
from framebus.topics.events import IngestRequest, VideoMetadata
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def make_videos(c: Cluster, n: int, prefix: str) -> list[IngestRequest]:
    """``n`` synthetic-world clips of 1-3 shots (hard cuts, 1.2 s each, 160x120), unique ids; every fourth
    shot shows a star (moderation alerts on the way)."""
    from framebus.models.world import COLOURS, MOTIONS, SHAPES, ShotSpec, make_world_video

    run = uuid.uuid4().hex[:6]
    out = []
    for i in range(n):
        shots = [
            ShotSpec(
                shape=SHAPES[(i + k) % len(SHAPES)],
                colour=COLOURS[(i + 2 * k) % len(COLOURS)],
                motion=MOTIONS[(i + k) % len(MOTIONS)],
                background=(i + k) % 6,
                seed=100 * i + k,
                duration_s=1.2,
            )
            for k in range(1 + i % 3)
        ]
        path = c.media / f"{prefix}-{i}.mp4"
        make_world_video(path, shots, width=160, height=120)
        out.append(IngestRequest(video_id=f"{prefix}-{i}-{run}", uri=str(path), tenant="delivery"))
    return out


# --- what came out --------------------------------------------------------------------------------------


async def _read_all(settings: Settings, topic: str) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        for _ in range(50):
            if parts:
                break
            await consumer.topics()
            await asyncio.sleep(0.1)
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                out.extend((await consumer.getmany(tp, timeout_ms=1000)).get(tp, []))
        return out
    finally:
        await consumer.stop()


def metadata_docs(settings: Settings) -> dict[str, list[tuple[bytes, VideoMetadata]]]:
    docs = defaultdict(list)
    for rec in asyncio.run(_read_all(settings, settings.topic(registry.METADATA.name))):
        doc = VideoMetadata.model_validate(orjson.loads(rec.value))
        docs[doc.video_id].append((rec.value, doc))
    return docs


def wait_for_metadata(settings: Settings, ids: list[str], timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        docs = metadata_docs(settings)
        missing = [v for v in ids if v not in docs]
        if not missing:
            time.sleep(3)  # a grace period: duplicates that were on their way
            return metadata_docs(settings)
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} of {len(ids)} videos got no metadata: {missing[:5]}")
        time.sleep(1)


def table_leftovers(settings: Settings) -> dict[str, list]:
    """Per stage table: the keys whose latest changelog value is still waiting (not a tombstone, not a
    publish "closed" or an index "done" marker)."""
    out = {}
    for table in TABLES:
        latest = {}
        for rec in asyncio.run(_read_all(settings, f"{settings.app_id}-{table}-changelog")):
            latest[rec.key] = None if rec.value is None else orjson.loads(rec.value)
        out[table] = [k for k, v in latest.items() if v is not None and not (v.get("closed") or v.get("done"))]
    return out


def points_per_video(settings: Settings, docs: dict) -> dict[str, int]:
    store = settings.open_store()
    try:
        out = {}
        for vid, copies in docs.items():
            doc = copies[0][1]
            embed = next(m for m in doc.models if m.task == "embed")
            name = collection_name(settings.collection_prefix, ModelInfo(embed.name, embed.version, "embed"))
            out[vid] = store.count(name, video_id=vid)
        return out
    finally:
        store.close()


def check_outcome(c: Cluster, requests: list[IngestRequest], docs: dict) -> dict[str, int]:
    """Lost, duplicated (identical?), points per shot, table leftovers: asserted, and returned as counts."""
    ids = [r.video_id for r in requests]
    lost = [v for v in ids if v not in docs]
    dup = {v: len(docs[v]) for v in ids if len(docs.get(v, [])) > 1}
    for v in ids:
        copies = docs[v]
        assert {raw for raw, _ in copies} == {copies[0][0]}, f"{v}: its documents differ"
        assert len({d.event_id for _, d in copies}) == 1 and copies[0][1].event_id, v
        assert copies[0][1].status == "ok", (v, copies[0][1].error)
    for name in list(c.procs):  # the store is embedded: read it once the workers are gone
        c.stop(name)
    points = points_per_video(c.settings, {v: docs[v] for v in ids})
    wrong = {v: (points[v], len(docs[v][0][1].shots)) for v in ids if points[v] != len(docs[v][0][1].shots)}
    leftovers = table_leftovers(c.settings)
    assert not lost, lost
    assert not wrong, f"points vs shots: {wrong}"
    assert not any(leftovers.values()), leftovers
    counts = {
        "videos": len(ids),
        "lost": len(lost),
        "duplicated": len(dup),
        "stuck": 0,
        "shots": sum(len(docs[v][0][1].shots) for v in ids),
    }
    sys.stderr.write(f"\ndelivery outcome: {counts} duplicates: {dup}\n")
    return counts


def publish(c: Cluster, requests: list[IngestRequest]) -> None:
    asyncio.run(publish_ingest(c.settings, requests))


# --- the scenarios ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("inside", ["decode", "embed"])
def test_a_worker_killed_inside_a_stage_loses_nothing_and_duplicates_nothing_unrecognisable(cluster, inside):
    """SIGKILL the only worker while it is held in the middle of ``inside`` (after a decode sent a segment;
    between a model batch's forward and its send), with 20 videos flowing; a fresh worker takes over."""
    c = cluster
    requests = make_videos(c, 20, f"kill-{inside}")
    c.start("w1", "all", FRAMEBUS_FAULT_HOLD=f"{inside}=30")
    publish(c, requests)
    c.wait_for_log("w1", f"fault hold: {inside}")
    time.sleep(0.3)
    c.kill("w1")
    c.start("w2", "all")
    docs = wait_for_metadata(c.settings, [r.video_id for r in requests])
    check_outcome(c, requests, docs)


def test_a_member_joining_and_leaving_loses_nothing(cluster):
    c = cluster
    requests = make_videos(c, 20, "rebalance")
    c.start("w1", "all")
    publish(c, requests[:8])
    c.start("w2", "all")  # joins every stage's group: a rebalance while videos flow
    publish(c, requests[8:16])
    c.wait_for_log("w2", "assigned partitions")
    c.stop("w2")  # leaves cleanly: its work in flight finishes or is left to w1
    publish(c, requests[16:])
    docs = wait_for_metadata(c.settings, [r.video_id for r in requests])
    check_outcome(c, requests, docs)


def test_the_stages_split_over_five_processes_serve_every_video(cluster):
    """ingest/index/publish, decode, embed, caption and moderate, each in its own worker process: every
    model task sees every segment (its own consumer group). Frames go by claim-check (small events) and
    are all deleted once their videos are published."""
    c = cluster
    requests = make_videos(c, 8, "split")
    for name, agents in (
        ("edge", "ingest,index,publish"),
        ("cpu", "decode"),
        ("gpu-embed", "embed"),
        ("gpu-caption", "caption"),
        ("gpu-moderate", "moderate"),
    ):
        # small events: frames travel as claim-check files, which publish deletes once a video is done
        c.start(name, agents, FRAMEBUS_MAX_EVENT_BYTES="20000")
    publish(c, requests)
    docs = wait_for_metadata(c.settings, [r.video_id for r in requests], timeout_s=240)
    for r in requests:
        doc = docs[r.video_id][0][1]
        assert doc.status == "ok", doc.error
        assert {m.task for m in doc.models} == {"embed", "caption", "moderate"}
        assert doc.shots and all(s.caption and s.moderation is not None for s in doc.shots), r.video_id
    frames = c.data_dir / "blobs" / "frames"
    assert frames.is_dir(), "no frame went by claim-check"
    deadline = time.monotonic() + 10  # publish deletes a run's frames right after its document
    while any(frames.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(frames.iterdir()), f"claim-check files left: {sorted(p.name for p in frames.iterdir())[:5]}"
    check_outcome(c, requests, docs)


def test_a_video_whose_work_never_finishes_is_published_as_failed_not_left_waiting(cluster):
    """No worker runs the model stages, so no segment is ever done: after ``FRAMEBUS_PUBLISH_TIMEOUT_S``
    publish sends ``status: failed`` with ``publish.timeout``, and its table keeps only closed markers."""
    c = cluster
    requests = make_videos(c, 2, "stuck")
    c.start("edge", "ingest,decode,index,publish", FRAMEBUS_PUBLISH_TIMEOUT_S="4")
    publish(c, requests)
    docs = wait_for_metadata(c.settings, [r.video_id for r in requests], timeout_s=120)
    for r in requests:
        doc = docs[r.video_id][0][1]
        assert doc.status == "failed" and doc.error.code == "publish.timeout", (r.video_id, doc.error)
        assert "segments done" in doc.error.message
    c.stop("edge")
    assert table_leftovers(c.settings)["publish-progress"] == []
