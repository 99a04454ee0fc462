"""End to end on the real broker: ingest through Kafka, decode, embed, index, metadata, search."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from framebus.loadtest import videos
from framebus.models import world
from framebus.topics.events import IngestRequest

pytestmark = pytest.mark.integration


def check_segments(doc, duration: float) -> None:
    """Segments tile [0, duration] in order, each with its keyframe inside it."""
    assert doc.shots, doc
    assert doc.shots[0].start_s == pytest.approx(0.0, abs=1e-6)
    assert doc.shots[-1].end_s == pytest.approx(duration, abs=0.15)
    for a, b in zip(doc.shots, doc.shots[1:]):
        assert b.index == a.index + 1
        assert b.start_s == pytest.approx(a.end_s, abs=1e-6)
    for s in doc.shots:
        assert s.start_s - 1e-6 <= s.keyframe_s <= s.end_s + 1e-6
        assert s.end_s > s.start_s


def test_foreign_kafka_client_round_trip(stack):
    """A plain confluent-kafka script (no framebus code) publishes an IngestRequest and reads the metadata."""
    shots = [
        world.ShotSpec(shape=s, colour=c, motion="left", background=k, seed=k)
        for k, (s, c) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green")])
    ]
    path = world.make_world_video(stack.media / "foreign.mp4", shots, fps=25, width=160, height=120).path
    video_id = f"foreign-{uuid.uuid4().hex[:8]}"
    conf = {"bootstrap.servers": stack.broker}
    consumer = Consumer({**conf, "group.id": f"t-{video_id}", "enable.auto.commit": False})
    meta = consumer.list_topics("framebus.metadata", timeout=10).topics["framebus.metadata"]
    parts = [TopicPartition("framebus.metadata", p) for p in meta.partitions]
    ends = [TopicPartition(tp.topic, tp.partition, consumer.get_watermark_offsets(tp, timeout=10)[1]) for tp in parts]
    consumer.assign(ends)  # read from the current end, no group join needed
    producer = Producer(conf)
    value = json.dumps(
        {"schema": "framebus.ingest/v1", "video_id": video_id, "uri": f"file://{path}", "tenant": "acme"}
    ).encode()
    producer.produce("framebus.ingest", key=video_id.encode(), value=value)
    assert producer.flush(10) == 0
    doc, deadline = None, time.monotonic() + 180
    while doc is None and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and not msg.error():
            obj = json.loads(msg.value())
            if obj["video_id"] == video_id:
                doc = obj
    consumer.close()
    assert doc is not None, "no metadata document for the foreign client's video"
    assert doc["schema"] == "framebus.metadata/v1"
    assert doc["status"] == "ok", doc
    assert doc["tenant"] == "acme"
    assert doc["duration_s"] == pytest.approx(6.0, abs=0.05)
    assert (doc["width"], doc["height"], doc["codec"]) == (160, 120, "h264")
    assert [s["index"] for s in doc["shots"]] == [0, 1, 2]  # one per shot, cut where the content cuts
    bounds = [t for s in doc["shots"] for t in (s["start_s"], s["end_s"])]
    assert bounds == pytest.approx([0, 2, 2, 4, 4, 6], abs=1.5 / 25)
    assert any(m["task"] == "embed" for m in doc["models"])
    assert doc["trace_id"]


CODEC_CASES = {
    # name: (maker, expected duration, expected display size, expected codec)
    "h264": (lambda p: videos.make_clip(p / "h264.mp4", "h264", 96, 64, 24, 3.0), 3.0, (96, 64), "h264"),
    "hevc10": (lambda p: videos.make_clip(p / "hevc10.mp4", "hevc10", 96, 64, 24, 2.5), 2.5, (96, 64), "hevc"),
    "vp9": (lambda p: videos.make_clip(p / "vp9.webm", "vp9", 96, 64, 24, 2.0), 2.0, (96, 64), "vp9"),
    "av1": (lambda p: videos.make_clip(p / "av1.mkv", "av1", 96, 64, 24, 2.0), 2.0, (96, 64), "av1"),
    "mpeg4": (lambda p: videos.make_clip(p / "mpeg4.avi", "mpeg4", 96, 64, 25, 2.0), 2.0, (96, 64), "mpeg4"),
    "mjpeg": (lambda p: videos.make_clip(p / "mjpeg.mkv", "mjpeg", 96, 64, 25, 2.0), 2.0, (96, 64), "mjpeg"),
    "prores": (lambda p: videos.make_clip(p / "prores.mov", "prores", 96, 64, 24, 2.0), 2.0, (96, 64), "prores"),
    "rotated": (lambda p: videos.make_rotated_clip(p / "rotated.mp4", 90, 96, 64, 24, 2.0), 2.0, (96, 64), "h264"),
    "odd": (lambda p: videos.make_clip(p / "odd.mkv", "h264", 97, 61, 24, 2.0), 2.0, (97, 61), "h264"),
    "vfr": (
        lambda p: videos.make_vfr_clip(p / "vfr.mkv", [0, 0.04, 0.1, 0.5, 0.55, 1.3, 1.9, 2.0, 2.6]),
        None,
        (64, 48),
        "h264",
    ),
}


def test_codecs_containers_and_odd_files(stack):
    """Every codec/container in the matrix, rotation, odd sizes and VFR: status ok, right duration."""
    case_dir = stack.media / f"codecs-{uuid.uuid4().hex[:6]}"
    case_dir.mkdir()
    paths = {name: maker(case_dir) for name, (maker, *_rest) in CODEC_CASES.items()}
    requests = [
        IngestRequest(video_id=f"codec-{name}-{case_dir.name}", uri=str(p), tenant="codecs")
        for name, p in paths.items()
    ]
    docs = stack.ingest(requests)
    for (name, (_m, duration, size, codec)), req in zip(CODEC_CASES.items(), requests):
        doc = docs.get(req.video_id)
        assert doc is not None, f"{name}: no metadata"
        assert doc.status == "ok", f"{name}: {doc.error}"
        assert doc.codec == codec, name
        assert (doc.width, doc.height) == size, name
        if duration is None:  # VFR: last frame at 2.6 s, lasting one nominal frame (8 frames / 2.6 s)
            assert doc.duration_s == pytest.approx(2.6 + 2.6 / 8, abs=0.01), (name, doc.duration_s)
        else:
            assert doc.duration_s == pytest.approx(duration, abs=0.05), (name, doc.duration_s)
        check_segments(doc, doc.duration_s)


def test_bad_input_fails_clearly_and_the_worker_goes_on(stack):
    """Non-video, corrupt, outside the roots, malformed: failed documents with codes, DLQ, and no loss."""
    d = stack.media / f"bad-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    text = videos.make_text_file(d / "notes.mp4")
    corrupt = videos.make_corrupt_file(d / "broken.mp4", "random")
    good = videos.make_clip(d / "good.mp4", "h264", 64, 48, 24, 1.0)
    cases = {
        "text": (str(text), "ingest.not_a_video"),
        "corrupt": (str(corrupt), "ingest.not_a_video"),
        "outside": ("/etc/passwd", "ingest.outside_allowed_roots"),
        "traversal": (f"{d}/../../../../etc/hostname", "ingest.outside_allowed_roots"),
        "http": ("http://169.254.169.254/latest/meta-data", "ingest.unsupported_scheme"),
        "missing": (str(d / "nope.mp4"), "ingest.not_found"),
        "good": (str(good), None),
    }
    requests = [IngestRequest(video_id=f"bad-{k}-{d.name}", uri=uri, tenant="bad") for k, (uri, _) in cases.items()]
    docs = stack.ingest(requests)
    for (name, (_uri, code)), req in zip(cases.items(), requests):
        doc = docs[req.video_id]
        if code is None:
            assert doc.status == "ok", doc.error
        else:
            assert doc.status == "failed", name
            assert doc.error.code == code, (name, doc.error)
            assert doc.error.message


def test_malformed_events_go_to_the_dlq(stack):
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def run():
        marker = uuid.uuid4().hex[:8]
        consumer = AIOKafkaConsumer(
            "framebus.dlq", bootstrap_servers=stack.broker, group_id=f"dlq-{marker}", auto_offset_reset="earliest"
        )
        await consumer.start()
        producer = AIOKafkaProducer(bootstrap_servers=stack.broker)
        await producer.start()
        await producer.send_and_wait("framebus.ingest", key=f"junk-{marker}".encode(), value=b"\xff not json")
        await producer.send_and_wait(
            "framebus.ingest",
            key=f"bad-{marker}".encode(),
            value=json.dumps({"video_id": f"bad-{marker}", "tenant": "t"}).encode(),
        )
        await producer.stop()
        found, deadline = {}, time.monotonic() + 60
        while len(found) < 2 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    obj = json.loads(rec.value)
                    if obj.get("key", "").endswith(marker):
                        found[obj["key"]] = obj
        await consumer.stop()
        return marker, found

    marker, found = asyncio.run(run())
    assert set(found) == {f"junk-{marker}", f"bad-{marker}"}
    junk = found[f"junk-{marker}"]
    assert junk["stage"] == "ingest" and junk["error"]["code"] == "event.invalid"
    assert junk["original_encoding"] == "base64"
    bad = found[f"bad-{marker}"]
    assert bad["error"]["code"] == "event.invalid" and "uri" in bad["error"]["message"]


def test_search_finds_segments_and_never_crosses_tenants(stack):
    d = stack.media / f"search-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    ball = videos.make_clip(d / "ball.mp4", "h264", 128, 96, 24, 4.0, "ball")
    waves = videos.make_clip(d / "waves.mp4", "h264", 128, 96, 24, 4.0, "waves")
    ta, tb = f"ta{d.name}", f"tb{d.name}"
    requests = [
        IngestRequest(video_id=f"a-ball-{d.name}", uri=str(ball), tenant=ta),
        IngestRequest(video_id=f"a-waves-{d.name}", uri=str(waves), tenant=ta),
        IngestRequest(video_id=f"b-ball-{d.name}", uri=str(ball), tenant=tb),
    ]
    docs = stack.ingest(requests)
    assert all(doc.status == "ok" for doc in docs.values()) and len(docs) == 3

    resp = httpx.get(f"http://{stack.http}/search", params={"q": "a ball", "tenant": ta, "limit": 10}, timeout=60)
    resp.raise_for_status()
    body = resp.json()
    ids = {r["video_id"] for r in body["results"]}
    assert ids == {f"a-ball-{d.name}", f"a-waves-{d.name}"}  # both of tenant a, nothing of b
    for video in body["results"]:
        assert video["segments"]
        for seg in video["segments"]:
            assert 0 <= seg["start_s"] < seg["end_s"] <= 4.0 + 1e-6
            assert seg["thumbnail"]
            thumb = httpx.get(f"http://{stack.http}{seg['thumbnail_url']}", timeout=10)
            assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # a JPEG

    # the CLI goes through the same API
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "framebus.streams.cli",
            "search",
            "a ball",
            "--tenant",
            tb,
            "--api",
            stack.http,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert [r["video_id"] for r in cli["results"]] == [f"b-ball-{d.name}"]
    assert (
        httpx.get(f"http://{stack.http}/search", params={"q": "x", "tenant": "no-such-tenant"}).json()["results"] == []
    )
    assert httpx.get(f"http://{stack.http}/health").json()["status"] == "ok"
