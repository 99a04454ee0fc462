"""The generation half on the real broker and real worker processes: text to video, its progress and one
result per job, the closed loop into understanding (metadata, search), provenance, safety (a blocked prompt,
a blocked output), cancel and quota, a foreign Kafka client, and a worker killed mid-job that resumes from
its checkpoint and ends with the same video as an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import av
import numpy as np
import pytest

from framebus.streams.client import TopicTail, publish_event
from framebus.streams.config import Settings
from framebus.topics import codec, registry
from framebus.topics import events as ev
from tests.integration.conftest import Cluster, Stack

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "framebus.streams.cli"]


def job_id(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


class Follower:
    """Reads the generation progress and results topics from their end (started before the requests)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.progress: dict[str, list[ev.GenerationProgress]] = {}
        self.results: dict[str, list[ev.GenerationResult]] = {}
        self.loop = asyncio.new_event_loop()

        async def start() -> TopicTail:  # aiokafka clients are made inside their loop
            tail = TopicTail(settings, [registry.GENERATE_PROGRESS, registry.GENERATE_RESULTS])
            await tail.start()
            return tail

        self.tail = self.loop.run_until_complete(start())

    def poll(self, seconds: float) -> None:
        async def go() -> None:
            deadline = time.monotonic() + seconds
            results = self.settings.topic(registry.GENERATE_RESULTS.name)
            while time.monotonic() < deadline:
                for rec in await self.tail.records(200):
                    if rec.topic == results:
                        r = codec.decode(ev.GenerationResult, rec.value)
                        self.results.setdefault(r.job_id, []).append(r)
                    else:
                        p = codec.decode(ev.GenerationProgress, rec.value)
                        self.progress.setdefault(p.job_id, []).append(p)

        self.loop.run_until_complete(go())

    def wait_result(self, jid: str, timeout_s: float = 240) -> ev.GenerationResult:
        deadline = time.monotonic() + timeout_s
        while jid not in self.results and time.monotonic() < deadline:
            self.poll(0.5)
        assert jid in self.results, f"no result for {jid} within {timeout_s}s"
        self.poll(1.0)  # the progress topic is another topic: its last events may be read after the result
        return self.results[jid][0]

    def wait_step(self, jid: str, step: int, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.step >= step for p in self.progress.get(jid, [])):
                return
            self.poll(0.2)
        raise AssertionError(f"{jid} never reached step {step}: {[p.step for p in self.progress.get(jid, [])]}")

    def close(self) -> None:
        self.loop.run_until_complete(self.tail.stop())
        self.loop.close()


@pytest.fixture
def follow(stack: Stack):
    f = Follower(stack.settings)
    yield f
    f.close()


def send(settings: Settings, req: ev.GenerationRequest) -> None:
    asyncio.run(publish_event(settings, registry.GENERATE, req.job_id, req))


def read_video(path: Path) -> tuple[np.ndarray, dict]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        cc = s.codec_context
        facts = {
            "codec": cc.name,
            "pix_fmt": cc.pix_fmt,
            "fps": float(s.average_rate),
            "primaries": int(cc.color_primaries),
            "trc": int(cc.color_trc),
            "space": int(cc.colorspace),
            "range": int(cc.color_range),
        }
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
    return frames, facts


def uri_path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri[len("file://") :])


# --- the whole path, as a user runs it --------------------------------------------------------------


def test_generate_cli_end_to_end(stack: Stack, tmp_path):
    """``framebus generate ... --wait``: progress, an MP4 with the requested frames, size, fps and BT.709 tags,
    provenance that verifies (and fails after a one-byte edit), the invisible watermark in its keyframe, and
    the clip found by search as generated."""
    jid = job_id("e2e")
    out = subprocess.run(
        [*CLI, "generate", "a red circle moving left", "--wait", "--json", "--job-id", jid, "--seed", "7"]
        + ["--frames", "16", "--fps", "8", "--size", "320x240", "--broker", stack.broker],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "steps" in out.stderr  # the progress bar
    result = ev.GenerationResult.model_validate_json(out.stdout)
    assert result.status == "ok" and result.video_id == f"generated/{jid}"
    assert result.provenance["prompt_sha256"] and result.provenance["seed"] == 7
    path = uri_path(result.uri)
    frames, facts = read_video(path)
    assert frames.shape[:3] == (16, 240, 320) and facts["fps"] == pytest.approx(8.0)
    assert facts["codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
    bt709, tv = 1, 1  # AVCOL_PRI/TRC/SPC_BT709, AVCOL_RANGE_MPEG
    assert (facts["primaries"], facts["trc"], facts["space"], facts["range"]) == (bt709, bt709, bt709, tv)
    assert uri_path(result.thumbnail).is_file()

    env = {"FRAMEBUS_DATA_DIR": str(stack.data_dir)}
    ok = subprocess.run(
        [*CLI, "provenance", "verify", str(path), "--json"], capture_output=True, text=True, env=_env(env)
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["claims"]["watermark"] == "dwtDctSvd:FBw1" == result.provenance["watermark"]
    assert report["watermark"]["present"] and report["watermark"]["checked"] == 1, report["watermark"]
    tampered = tmp_path / "tampered.mp4"
    data = bytearray(path.read_bytes())
    data[_box(bytes(data), b"mdat") + 16] ^= 0xFF  # one byte of the coded video
    tampered.write_bytes(bytes(data))
    bad = subprocess.run([*CLI, "provenance", "verify", str(tampered)], capture_output=True, text=True, env=_env(env))
    assert bad.returncode == 1, bad.stdout + bad.stderr

    # closed loop: ingested under the result's video id, understood, and found as generated content
    deadline, doc = time.monotonic() + 240, None
    while time.monotonic() < deadline and doc is None:
        found = _search(stack, "a red circle moving left", generated=True)
        doc = next((v for v in found["results"] if v["video_id"] == result.video_id), None)
        if doc is None:
            time.sleep(2)
    assert doc is not None, f"generated/{jid} not found by search as generated content: {found}"
    assert all(v["origin"] == "generated" for v in found["results"])
    assert found["results"][0]["video_id"] == result.video_id, found  # its own prompt ranks it first


def _box(data: bytes, kind: bytes) -> int:
    """Offset of the first top-level MP4 box of ``kind``."""
    at = 0
    while at < len(data):
        size, typ = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        if typ == kind:
            return at
        at += int.from_bytes(data[at + 8 : at + 16], "big") if size == 1 else size
    raise AssertionError(f"no {kind!r} box")


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith("FRAMEBUS_")}, **extra}


def _search(stack: Stack, q: str, *, generated: bool, limit: int = 10) -> dict:
    import httpx

    params = {"q": q, "tenant": "default", "limit": limit}
    if generated:
        params["origin"] = "generated"
    resp = httpx.get(f"http://{stack.http}/search", params=params, timeout=60)
    resp.raise_for_status()
    return resp.json()


def test_same_job_twice_gives_one_result(stack: Stack, follow: Follower):
    jid = job_id("twice")
    req = ev.GenerationRequest(job_id=jid, prompt="a blue square moving right", tenant="default", steps=6, seed=3)
    send(stack.settings, req)
    first = follow.wait_result(jid)
    assert first.status == "ok"
    send(stack.settings, req)
    follow.poll(8)
    assert len(follow.results[jid]) == 1, follow.results[jid]


def test_blocked_prompt_computes_nothing(stack: Stack, follow: Follower):
    jid = job_id("blocked")
    send(stack.settings, ev.GenerationRequest(job_id=jid, prompt="a yellow star moving up", tenant="default", steps=6))
    result = follow.wait_result(jid)
    assert result.status == "blocked" and result.error.code == "generate.prompt_blocked"
    assert result.uri is None and jid not in follow.progress  # no step ran
    assert not list(stack.data_dir.glob(f"generated/*/{jid}*"))


def test_cancel_and_quota(stack: Stack, follow: Follower):
    """Past the tenant's cap the next jobs end generate.quota_exceeded at once; a cancel stops a running job
    at its next step (cancelled, no video) and a queued one before it starts."""
    tenant = f"q{uuid.uuid4().hex[:6]}"
    jobs = [job_id(f"quota{i}") for i in range(6)]
    for jid in jobs:
        send(
            stack.settings,
            ev.GenerationRequest(job_id=jid, prompt="a green circle moving up", tenant=tenant, steps=200),
        )
    deadline = time.monotonic() + 120
    while not follow.progress.keys() & set(jobs) and time.monotonic() < deadline:
        follow.poll(0.2)
    assert follow.progress.keys() & set(jobs), "no job started"
    for jid in jobs:
        asyncio.run(
            publish_event(stack.settings, registry.GENERATE_CANCEL, jid, ev.GenerationCancel(job_id=jid, tenant=tenant))
        )
    results = {jid: follow.wait_result(jid) for jid in jobs}
    statuses = sorted(r.status for r in results.values())
    assert statuses.count("failed") == 2, statuses
    assert all(r.error.code == "generate.quota_exceeded" for r in results.values() if r.status == "failed")
    assert statuses.count("cancelled") == 4, statuses
    assert all(r.uri is None for r in results.values())
    started = [jid for jid in jobs if jid in follow.progress]
    assert all(results[j].status == "cancelled" and max(p.step for p in follow.progress[j]) < 200 for j in started)


def test_foreign_kafka_client_publishes_and_reads(stack: Stack):
    """confluent-kafka (librdkafka), no framebus code: a GenerationRequest in, progress and a result out."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    jid = job_id("foreign")
    topics = ("framebus.generate.progress", "framebus.generate.results")
    consumer = Consumer({"bootstrap.servers": stack.broker, "group.id": f"foreign-{jid}", "enable.auto.commit": False})
    parts = []
    for t in topics:
        md = consumer.list_topics(t, timeout=10).topics[t]
        for p in md.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
            parts.append(TopicPartition(t, p, high))
    consumer.assign(parts)
    producer = Producer({"bootstrap.servers": stack.broker})
    request = {
        "schema": "framebus.generate/v1",
        "job_id": jid,
        "prompt": "a white triangle moving down",
        "tenant": "default",
        "steps": 6,
        "seed": 11,
    }
    producer.produce("framebus.generate", key=jid.encode(), value=json.dumps(request).encode())
    assert producer.flush(30) == 0
    progress, result = [], None
    deadline = time.monotonic() + 240
    # two topics: the result may be read before the last progress events, so read on until both are in
    while (result is None or max((p["step"] for p in progress), default=0) < 6) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error() or msg.key() != jid.encode():
            continue
        value = json.loads(msg.value())
        if msg.topic() == "framebus.generate.results":
            result = value
        else:
            progress.append(value)
    consumer.close()
    assert result is not None and result["status"] == "ok" and result["event_id"]
    assert [p["step"] for p in progress][-1] == 6 and all(p["total_steps"] == 6 for p in progress)


# --- a worker killed mid-job -------------------------------------------------------------------------


#: (generator backend, its options, request shape): the project's own model, and the real diffusers LTX and
#: Wan pipelines built from tiny random configs (their outputs are noise, so output moderation is off for them)
BACKENDS = {
    "tiny": ({}, {}),
    "ltx": (
        {"FRAMEBUS_GENERATOR": "diffusers-ltx", "FRAMEBUS_GENERATOR_OPTIONS": '{"random_tiny": true}'},
        {"width": 32, "height": 32, "num_frames": 9},
    ),
    "wan": (
        {"FRAMEBUS_GENERATOR": "diffusers-wan", "FRAMEBUS_GENERATOR_OPTIONS": '{"random_tiny": true}'},
        {"width": 16, "height": 16, "num_frames": 9},
    ),
}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_killed_worker_resumes_from_checkpoint(cluster: Cluster, backend: str):
    """SIGKILL the generation worker mid-job; another takes the job's partition over and resumes from the
    last checkpoint (fewer steps than a fresh run; the progress topic says resumed_from), and the video is
    the same as an uninterrupted run of the same request. The same agent, for every backend."""
    extra_env, shape = BACKENDS[backend]
    # each step holds 0.25 s (a test hook), so the kill lands mid-job
    env = {
        "FRAMEBUS_GENERATE_CHECKPOINT_EVERY": "2",
        "FRAMEBUS_GENERATE_INGEST": "false",
        "FRAMEBUS_FAULT_HOLD": "generate=0.25",
        **({"FRAMEBUS_GENERATE_MODERATE_OUTPUT": "false"} if extra_env else {}),
        **extra_env,
    }
    follow = Follower(cluster.settings)
    try:
        cluster.start("gen-a", "generate", **env)
        steps = 24
        spec = {"prompt": "a blue circle moving up", "tenant": "default", "steps": steps, "seed": 5, **shape}
        killed = job_id("killed")
        send(cluster.settings, ev.GenerationRequest(job_id=killed, **spec))
        follow.wait_step(killed, 9)
        cluster.kill("gen-a")
        cluster.start("gen-b", "generate", **env)
        result = follow.wait_result(killed, 300)
        assert result.status == "ok", result
        resumed = [p for p in follow.progress[killed] if p.resumed_from is not None]
        assert resumed and result.resumed_from is not None and result.resumed_from >= 8
        assert len({p.step for p in resumed}) == steps - result.resumed_from  # fewer steps than a fresh run
        assert not (cluster.data_dir / "blobs" / "generate").exists() or not any(
            (cluster.data_dir / "blobs" / "generate").iterdir()
        )  # checkpoints deleted when the job ended

        fresh = job_id("fresh")
        send(cluster.settings, ev.GenerationRequest(job_id=fresh, **spec))
        again = follow.wait_result(fresh, 300)
        assert again.status == "ok" and again.resumed_from is None
        assert again.model.name == result.model.name and (backend == "tiny") == ("tiny-generator" in again.model.name)
        assert len({p.step for p in follow.progress[fresh]}) == steps
        a, _ = read_video(uri_path(result.uri))
        b, _ = read_video(uri_path(again.uri))
        assert a.shape == b.shape
        if backend == "tiny":
            assert np.array_equal(a, b)  # bit for bit
        else:
            # LTX/Wan resume bit for bit in one process (tests/unit/test_diffusers_video.py); across two
            # processes, LTX was once seen to differ by a float-level amount under the full suite's load
            # (random tiny weights amplify it to a few levels per pixel; another seed differs by ~60)
            assert np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < 4.0
    finally:
        # the workers are done: SIGKILL rather than a graceful stop. Once, on a fresh clone, the Wan worker
        # kept both cores busy after its last job and did not stop on SIGINT; the starved broker and this
        # process then ran the test past its timeout in teardown
        for name in list(cluster.procs):
            cluster.kill(name)
        follow.close()


# --- video-to-video ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_clip(stack: Stack) -> Path:
    from framebus.models.world import ShotSpec, make_world_video

    spec = ShotSpec(shape="square", colour="yellow", motion="right", background=2, seed=4242)
    return make_world_video(stack.media / "v2v-source.mp4", [spec], fps=8, width=96, height=64).path


def test_upscale_and_interpolate_a_source_video(stack: Stack, follow: Follower, source_clip: Path):
    src, src_facts = read_video(source_clip)
    up, inter = job_id("upscale"), job_id("interp")
    send(
        stack.settings,
        ev.GenerationRequest(
            job_id=up, prompt="upscale", tenant="default", mode="upscale", source_uri=str(source_clip), scale=2
        ),
    )
    send(
        stack.settings,
        ev.GenerationRequest(
            job_id=inter, prompt="smoother", tenant="default", mode="interpolate", source_uri=str(source_clip), fps=16
        ),
    )
    r_up, r_in = follow.wait_result(up), follow.wait_result(inter)
    assert r_up.status == "ok" and r_in.status == "ok", (r_up, r_in)
    big, _ = read_video(uri_path(r_up.uri))
    assert big.shape[1:3] == (2 * src.shape[1], 2 * src.shape[2]) and len(big) == len(src)
    smooth, facts = read_video(uri_path(r_in.uri))
    assert facts["fps"] == pytest.approx(16.0) and len(smooth) == pytest.approx(2 * len(src), abs=1)
    assert r_up.provenance["source_sha256"] and r_up.provenance["mode"] == "upscale"


def test_a_flagged_output_is_withheld_and_a_clean_one_published(cluster: Cluster):
    """A generation worker with output moderation on (the default): an upscale of a clip showing a star
    (the world's hazard) ends ``blocked`` with ``generate.output_blocked``; its MP4 is in quarantine, not
    published and not ingested. The same job on a clip without a star ends ``ok``."""
    from framebus.models.world import ShotSpec, make_world_video

    clips = {
        "star": ShotSpec(shape="star", colour="red", motion="left", background=1, seed=77),
        "square": ShotSpec(shape="square", colour="blue", motion="up", background=3, seed=78),
    }
    paths = {
        k: make_world_video(cluster.media / f"{k}.mp4", [spec], fps=8, width=96, height=64).path
        for k, spec in clips.items()
    }
    follow = Follower(cluster.settings)
    try:
        cluster.start("gen-mod", "generate")
        jobs = {k: job_id(f"mod-{k}") for k in clips}
        for k, jid in jobs.items():
            send(
                cluster.settings,
                ev.GenerationRequest(
                    job_id=jid, prompt="upscale", tenant="t1", mode="upscale", source_uri=str(paths[k])
                ),
            )
        star, square = follow.wait_result(jobs["star"]), follow.wait_result(jobs["square"])
    finally:
        follow.close()
    assert star.status == "blocked" and star.error.code == "generate.output_blocked", star
    assert star.uri is None and star.video_id is None and not star.provenance
    assert (cluster.data_dir / "quarantine" / "t1" / f"{jobs['star']}.mp4").is_file()
    assert not (cluster.data_dir / "generated" / "t1" / f"{jobs['star']}.mp4").exists()
    assert square.status == "ok" and square.video_id == f"generated/{jobs['square']}", square
    assert uri_path(square.uri) == (cluster.data_dir / "generated" / "t1" / f"{jobs['square']}.mp4").resolve()


def test_v2v_i2v_and_a_source_outside_the_roots(stack: Stack, follow: Follower, source_clip: Path, tmp_path):
    v2v, i2v, outside = job_id("v2v"), job_id("i2v"), job_id("outside")
    for job, mode, strength in ((v2v, "v2v", 0.5), (i2v, "i2v", 0.75)):
        send(
            stack.settings,
            ev.GenerationRequest(
                job_id=job,
                prompt="a yellow square moving right",
                tenant="default",
                mode=mode,
                source_uri=str(source_clip),
                strength=strength,
                steps=8,
            ),
        )
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes(source_clip.read_bytes())
    send(
        stack.settings,
        ev.GenerationRequest(job_id=outside, prompt="x", tenant="default", mode="upscale", source_uri=str(elsewhere)),
    )
    r, bad = follow.wait_result(v2v), follow.wait_result(outside)
    assert r.status == "ok" and r.steps == 8, r
    assert len([p for p in follow.progress[v2v]]) < 8  # strength 0.5: only the last part of the steps runs
    assert bad.status == "failed" and bad.error.code == "ingest.outside_allowed_roots"
    still = follow.wait_result(i2v)  # from the source's first frame: round(0.75 * 8) steps
    assert still.status == "ok" and still.steps == 8, still
    assert max(p.step for p in follow.progress[i2v]) == 8 and len(follow.progress[i2v]) <= 6
