"""Hostile input and bugs, on the session's ``framebus up``: each bad input gets one clear failed outcome
with a stable code and a DLQ entry; a stage that raises fails only the video it raised on
(``internal.error``); and a valid video still gets through afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from framebus.loadtest import videos
from framebus.topics.events import IngestRequest, VideoMetadata
from tests.integration.conftest import FAULT_MARKER, FAULT_STAGES


async def _send_raw_and_collect(stack, raw: list[tuple[bytes, bytes]], requests: list[IngestRequest], wanted: set):
    """Send ``raw`` (key, value) ingest events and ``requests``; collect metadata and DLQ entries of
    ``wanted`` video ids until each has a document (and the DLQ entries that came with it)."""
    from framebus.streams.client import publish_ingest

    meta = AIOKafkaConsumer("framebus.metadata", bootstrap_servers=stack.broker, auto_offset_reset="latest")
    dlq = AIOKafkaConsumer("framebus.dlq", bootstrap_servers=stack.broker, auto_offset_reset="latest")
    for c in (meta, dlq):
        await c.start()
        await c.seek_to_end()
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker, max_request_size=8_000_000)
    await producer.start()
    try:
        for key, value in raw:
            await producer.send_and_wait("framebus.ingest", key=key, value=value)
        await publish_ingest(stack.settings, requests)
        docs: dict[str, list[VideoMetadata]] = {}
        letters: dict[str, list[dict]] = {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not wanted <= set(docs):
            for recs in (await meta.getmany(timeout_ms=300)).values():
                for r in recs:
                    doc = VideoMetadata.model_validate(orjson.loads(r.value))
                    if doc.video_id in wanted:
                        docs.setdefault(doc.video_id, []).append(doc)
            for recs in (await dlq.getmany(timeout_ms=50)).values():
                for r in recs:
                    letter = orjson.loads(r.value)
                    letters.setdefault(letter.get("key") or "", []).append(letter)
        for recs in (await dlq.getmany(timeout_ms=2000)).values():  # stragglers
            for r in recs:
                letter = orjson.loads(r.value)
                letters.setdefault(letter.get("key") or "", []).append(letter)
        return docs, letters
    finally:
        await producer.stop()
        for c in (meta, dlq):
            await c.stop()


def test_a_corpus_of_bad_inputs_gets_one_clear_outcome_each_and_a_valid_video_still_passes(stack):
    d = stack.media / f"hostile-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    tag = d.name
    outside = stack.media.parent / "outside.mp4"
    videos.make_clip(outside, "h264", 64, 48, 24, 1.0)
    (d / "escape.mp4").symlink_to(outside)
    files = {
        "truncated": (videos.make_corrupt_file(d / "truncated.mp4", "truncated"), "decode.truncated"),
        "random": (videos.make_corrupt_file(d / "random.mp4", "random"), "ingest.not_a_video"),
        "empty": (videos.make_corrupt_file(d / "empty.mp4", "empty"), "ingest.empty"),
        "audio": (videos.make_audio_file(d / "tone.wav"), "ingest.not_a_video"),
        "wide": (videos.make_clip(d / "wide.mkv", "mjpeg", 1040, 16, 5, 0.4), "ingest.resolution_too_large"),
        "long": (videos.make_clip(d / "long.mp4", "h264", 16, 16, 1, 70.0), "ingest.too_long"),
        "outside": (outside, "ingest.outside_allowed_roots"),
        "traversal": (f"{d}/../../../../etc/hostname", "ingest.outside_allowed_roots"),
        "symlink": (d / "escape.mp4", "ingest.outside_allowed_roots"),
        "private-url": ("http://10.0.0.7/cam.mp4", "ingest.unsupported_scheme"),
        "metadata-url": ("http://169.254.169.254/latest/meta-data", "ingest.unsupported_scheme"),
    }
    good = videos.make_clip(d / "good.mp4", "h264", 64, 48, 24, 1.0)
    requests = [IngestRequest(video_id=f"{k}-{tag}", uri=str(p), tenant="hostile") for k, (p, _) in files.items()]
    requests.append(IngestRequest(video_id=f"good-{tag}", uri=str(good), tenant="hostile"))
    raw_cases = {
        # video id (the Kafka key): value, expected code
        f"json-{tag}": (b'{"video_id": "json-' + tag.encode() + b'", "uri": ', "event.invalid"),
        f"schema-{tag}": (
            orjson.dumps(
                {"schema": "framebus.ingest/v9", "video_id": f"schema-{tag}", "uri": str(good), "tenant": "t"}
            ),
            "event.unsupported_schema",
        ),
        f"huge-{tag}": (
            orjson.dumps(
                {"video_id": f"huge-{tag}", "uri": str(good), "tenant": "t", "options": {"x": "y" * 1_100_000}}
            ),
            "event.too_large",
        ),
        f"dotdot-{tag}": (
            orjson.dumps({"video_id": f"../../dotdot-{tag}", "uri": str(good), "tenant": "t"}),
            "event.invalid",
        ),
    }
    raw = [(k.encode(), v) for k, (v, _) in raw_cases.items()]
    wanted = {r.video_id for r in requests} | {k for k in raw_cases if not k.startswith("dotdot")}
    wanted.add(f"../../dotdot-{tag}")  # the failed document names the id it was given
    docs, letters = asyncio.run(_send_raw_and_collect(stack, raw, requests, wanted))

    expected = {f"{k}-{tag}": code for k, (_, code) in files.items()}
    expected |= {k: code for k, (_, code) in raw_cases.items() if not k.startswith("dotdot")}
    expected[f"../../dotdot-{tag}"] = raw_cases[f"dotdot-{tag}"][1]
    for vid, code in expected.items():
        assert vid in docs, f"{vid}: no failed document"
        assert len({d.event_id for d in docs[vid]}) == 1
        doc = docs[vid][0]
        assert doc.status == "failed" and doc.error.code == code, (vid, doc.error)
        assert doc.error.message
        key = f"dotdot-{tag}" if vid.startswith("../") else vid
        assert [x["error"]["code"] for x in letters.get(key, [])][:1] == [code], (vid, letters.get(key))
    ok = docs[f"good-{tag}"][0]
    assert ok.status == "ok" and ok.shots, ok.error
    # nothing was written outside the data dir on the way
    assert not (stack.data_dir.parent / "dotdot").exists()


def test_a_stage_that_raises_fails_only_that_video_and_the_next_one_passes(stack):
    """A bug in each stage in turn (``FRAMEBUS_FAULT_INJECT``): the video it raised on gets a failed
    document and a DLQ entry with ``internal.error``; its batch neighbours and the next video pass."""
    d = stack.media / f"faults-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    clip = videos.make_clip(d / "clip.mp4", "h264", 64, 48, 24, 1.0)
    requests = []
    for stage in FAULT_STAGES:
        requests.append(IngestRequest(video_id=f"{FAULT_MARKER}{stage}-{d.name}", uri=str(clip), tenant="faults"))
        requests.append(IngestRequest(video_id=f"next-{stage}-{d.name}", uri=str(clip), tenant="faults"))
    wanted = {r.video_id for r in requests}
    docs, letters = asyncio.run(_send_raw_and_collect(stack, [], requests, wanted))
    for r in requests:
        assert r.video_id in docs, f"{r.video_id}: no document"
        doc = docs[r.video_id][0]
        if r.video_id.startswith(FAULT_MARKER):
            assert doc.status == "failed" and doc.error.code == "internal.error", (r.video_id, doc.error)
            codes = {x["error"]["code"] for x in letters.get(r.video_id, [])}
            assert codes == {"internal.error"}, (r.video_id, letters.get(r.video_id))
        else:
            assert doc.status == "ok", (r.video_id, doc.error)
            assert not letters.get(r.video_id), letters.get(r.video_id)


def _cli(stack, *args: str) -> str:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "framebus.streams.cli", *args, "--broker", stack.broker],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_dlq_list_and_replay_after_the_input_was_fixed_and_twice_is_once(stack):
    d = stack.media / f"fixme-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    vid = f"fixme-{d.name}"
    path = d / "late.mp4"
    req = IngestRequest(video_id=vid, uri=str(path), tenant="ops")
    docs, _ = asyncio.run(_send_raw_and_collect(stack, [], [req], {vid}))
    assert docs[vid][0].error.code == "ingest.not_found"

    entries = [orjson.loads(line) for line in _cli(stack, "dlq", "list", "--json", "--video-id", vid).splitlines()]
    assert [(e["stage"], e["code"], e["video_id"]) for e in entries] == [("ingest", "ingest.not_found", vid)]

    videos.make_clip(path, "h264", 64, 48, 24, 1.0)  # the operator fixes the input, then replays

    async def replay_twice_and_collect():
        meta = AIOKafkaConsumer("framebus.metadata", bootstrap_servers=stack.broker, auto_offset_reset="latest")
        await meta.start()
        await meta.seek_to_end()
        try:
            assert "1 videos replayed" in await asyncio.to_thread(_cli, stack, "dlq", "replay", "--video-id", vid)
            assert "1 videos replayed" in await asyncio.to_thread(_cli, stack, "dlq", "replay", "--video-id", vid)
            got, deadline = [], time.monotonic() + 120
            while time.monotonic() < deadline and (not got or time.monotonic() < got[0][0] + 8):
                for recs in (await meta.getmany(timeout_ms=300)).values():
                    got += [(time.monotonic(), VideoMetadata.model_validate(orjson.loads(r.value))) for r in recs]
                    got = [g for g in got if g[1].video_id == vid]
            return [doc for _, doc in got]
        finally:
            await meta.stop()

    replayed = asyncio.run(replay_twice_and_collect())
    assert replayed, "the replay published nothing"
    assert all(doc.status == "ok" for doc in replayed), [doc.error for doc in replayed]
    # two replays of one entry are one run: one document (copies, if any, are the same document)
    assert len({doc.event_id for doc in replayed}) == 1 and replayed[0].event_id != docs[vid][0].event_id
