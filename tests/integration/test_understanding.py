"""Video understanding through the real pipeline, with the tiny models trained on the synthetic world:
shots at the true cuts with quality scores; captions, moderation verdicts and alerts, and text search on
held-out videos; search by example image, by time range and by verdict."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from framebus.models import world
from framebus.streams.client import ingest
from framebus.streams.demo import AlertWatcher
from framebus.topics.events import IngestRequest

pytestmark = pytest.mark.integration

SHOTS = [
    world.ShotSpec(shape="circle", colour="red", motion="left", background=0, seed=101),
    world.ShotSpec(shape="star", colour="yellow", motion="up", background=1, seed=102),
    world.ShotSpec(shape="square", colour="blue", motion="right", background=2, seed=103),
]


@pytest.fixture(scope="module")
def world_video(stack):
    """One world video (3 shots), ingested through Kafka; its metadata document."""
    name = f"world-{uuid.uuid4().hex[:6]}"
    video = world.make_world_video(stack.media / f"{name}.mp4", SHOTS, fps=24, width=320, height=240)
    tenant = f"w{uuid.uuid4().hex[:6]}"
    doc = stack.ingest([IngestRequest(video_id=name, uri=str(video.path), tenant=tenant)])[name]
    return video, tenant, doc, []


def test_shots_are_the_segments_and_sit_at_the_true_cuts(world_video):
    video, _, doc, _ = world_video
    assert doc.status == "ok", doc.error
    assert len(doc.shots) == len(SHOTS)
    for shot, (start, end) in zip(doc.shots, video.bounds):
        assert shot.start_s == pytest.approx(start, abs=1.5 / 24)
        assert shot.end_s == pytest.approx(end, abs=1.5 / 24)
        assert shot.start_s <= shot.keyframe_s <= shot.end_s
        assert set(shot.quality) >= {"sharpness", "motion", "temporal_consistency"}


def test_search_by_image_and_time_range(stack, world_video):
    video, tenant, doc, _ = world_video
    url = f"http://{stack.http}"
    late = httpx.get(
        f"{url}/search", params={"q": "a shape", "tenant": tenant, "start_s": doc.shots[2].start_s + 0.1}
    ).json()
    assert {s["index"] for r in late["results"] for s in r["segments"]} == {2}
    early = httpx.get(
        f"{url}/search", params={"q": "a shape", "tenant": tenant, "end_s": doc.shots[0].end_s - 0.1}
    ).json()
    assert {s["index"] for r in early["results"] for s in r["segments"]} == {0}
    for k, spec in enumerate(SHOTS):
        frame = world.render_frame(spec, 1.0, 320, 240)
        buf = io.BytesIO()
        Image.fromarray(np.asarray(frame)).save(buf, format="JPEG")
        by_image = httpx.post(f"{url}/search/image", params={"tenant": tenant}, content=buf.getvalue()).json()
        assert by_image["query"] == "<image>"
        assert by_image["results"][0]["segments"][0]["index"] == k
    bad = httpx.post(f"{url}/search/image", params={"tenant": tenant}, content=b"not an image")
    assert bad.status_code == 400


# ------------------------------------------------------------------------------------------------
# held-out world videos, trained tiny models, all tasks
# ------------------------------------------------------------------------------------------------


def held_out_videos() -> list[list[world.ShotSpec]]:
    """Two videos of four held-out shots each (seeds no training shot used): six safe shots of
    different shape+colour and two unsafe (star) shots; neighbouring shots on different backgrounds."""
    _, held = world.split(seed=0)
    safe, stars, seen = [], [], set()
    for spec in held:
        if spec.unsafe and len(stars) < 2 and spec.colour not in {s.colour for s in stars}:
            stars.append(spec)
        elif not spec.unsafe and len(safe) < 6 and (spec.shape, spec.colour) not in seen:
            seen.add((spec.shape, spec.colour))
            safe.append(spec)
    plan = [[safe[0], stars[0], safe[1], safe[2]], [safe[3], safe[4], stars[1], safe[5]]]
    return [
        [dataclasses.replace(spec, background=(4 * v + k) % world.N_BACKGROUNDS) for k, spec in enumerate(shots)]
        for v, shots in enumerate(plan)
    ]


@pytest.fixture(scope="module")
def held_out(stack):
    """The held-out videos ingested through Kafka; their metadata and the alerts seen meanwhile."""
    tenant = f"h{uuid.uuid4().hex[:6]}"
    videos, requests = {}, []
    for v, shots in enumerate(held_out_videos()):
        name = f"held-{v}-{uuid.uuid4().hex[:6]}"
        videos[name] = world.make_world_video(stack.media / f"{name}.mp4", shots, fps=24, width=320, height=240)
        requests.append(IngestRequest(video_id=name, uri=str(videos[name].path), tenant=tenant))
    watcher = AlertWatcher(stack.settings)
    docs = asyncio.run(watcher.around(ingest(stack.settings, requests, wait=True, timeout_s=240)))
    for name, doc in docs.items():
        assert doc.status == "ok", doc.error
        assert len(doc.shots) == len(videos[name].shots), f"{name}: {[(s.start_s, s.end_s) for s in doc.shots]}"
    alerts = [a for a in watcher.alerts if a["video_id"] in videos]
    return tenant, videos, docs, alerts


def _shots(held_out):
    _, videos, docs, _ = held_out
    return [
        (name, k, spec, docs[name].shots[k]) for name, video in videos.items() for k, spec in enumerate(video.shots)
    ]


def test_captions_name_the_shape_and_colour(held_out):
    shots = _shots(held_out)
    for name, k, _spec, shot in shots:
        assert shot.caption, f"{name} shot {k}: no caption"
    colour = sum(spec.colour in shot.caption.split() for *_, spec, shot in shots)
    shape = sum(spec.shape in shot.caption.split() for *_, spec, shot in shots)
    report = [(spec.caption, shot.caption) for *_, spec, shot in shots]
    print(f"captions: colour {colour}/{len(shots)}, shape {shape}/{len(shots)}: {report}")
    assert colour >= len(shots) - 1, report  # loosely: the held-out evaluation measures the rates
    assert shape >= len(shots) - 2, report


def test_only_unsafe_shots_are_flagged_and_alerted_with_their_times(held_out):
    _, _, _, alerts = held_out
    for name, k, spec, shot in _shots(held_out):
        assert shot.moderation is not None, f"{name} shot {k}: no verdict"
        assert bool(shot.moderation.flagged) == spec.unsafe, (spec.caption, shot.moderation)
        mine = [a for a in alerts if a["video_id"] == name and a["segment_index"] == k]
        if spec.unsafe:
            assert len(mine) == 1, alerts
            assert mine[0]["category"] == "hazard" and mine[0]["score"] >= mine[0]["threshold"]
            assert (mine[0]["start_s"], mine[0]["end_s"]) == (shot.start_s, shot.end_s)
        else:
            assert mine == [], mine
    assert len(alerts) == 2


def test_text_search_returns_the_right_video_and_shot_first(stack, held_out):
    tenant = held_out[0]
    hits, misses = 0, []
    for name, k, spec, _ in _shots(held_out):
        resp = httpx.get(
            f"http://{stack.http}/search", params={"q": spec.caption, "tenant": tenant, "limit": 2}, timeout=60
        ).json()
        top = resp["results"][0]
        if (top["video_id"], top["segments"][0]["index"]) == (name, k):
            hits += 1
        else:
            misses.append((spec.caption, top["video_id"], top["segments"][0]))
    print(f"text search: right video and shot first for {hits}/8 queries; misses {misses}")
    assert hits >= 6, misses  # "most queries": 6 of 8 at least (chance: 1 in 8)


def test_search_filters_by_moderation_verdict(stack, held_out):
    tenant = held_out[0]
    unsafe = {(name, k) for name, k, spec, _ in _shots(held_out) if spec.unsafe}

    def found(flagged: str) -> set:
        resp = httpx.get(
            f"http://{stack.http}/search",
            params={"q": "a shape", "tenant": tenant, "limit": 10, "flagged": flagged},
            timeout=60,
        ).json()
        segments = [s for r in resp["results"] for s in r["segments"]]
        assert all(s["flagged"] is (flagged == "true") for s in segments), resp
        return {(r["video_id"], s["index"]) for r in resp["results"] for s in r["segments"]}, resp

    flagged, resp = found("true")
    assert flagged == unsafe, resp
    clean, resp = found("false")
    assert clean and not clean & unsafe, resp
