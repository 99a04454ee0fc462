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


#: held-out shots per video; the whole held-out split (80 shots, 20 of them unsafe) goes through Kafka, so one
#: borderline shot moves a rate by 1/20 at most, and the tests stay strict about the rates
SHOTS_PER_VIDEO = 8


def held_out_videos() -> list[list[world.ShotSpec]]:
    """Every held-out shot of the world (seeds no training shot used), 8 to a video. Neighbouring shots get
    different backgrounds and, where the split allows, different colours, so each cut is a visible one."""
    _, held = world.split(seed=0)
    rest, order = list(held), []
    while rest:  # greedy: the next shot of another colour than the last one, when there is one
        nxt = next((s for s in rest if not order or s.colour != order[-1].colour), rest[0])
        rest.remove(nxt)
        order.append(nxt)
    shots = [dataclasses.replace(spec, background=i % world.N_BACKGROUNDS) for i, spec in enumerate(order)]
    return [shots[i : i + SHOTS_PER_VIDEO] for i in range(0, len(shots), SHOTS_PER_VIDEO)]


@dataclasses.dataclass
class HeldOut:
    tenant: str
    videos: dict
    docs: dict
    alerts: list
    #: (video, shot index, spec, segment) for every shot whose segment is that shot alone
    shots: list


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
    docs = asyncio.run(watcher.around(ingest(stack.settings, requests, wait=True, timeout_s=600)))
    isolated = []
    for name, video in videos.items():
        doc = docs[name]
        assert doc.status == "ok", doc.error
        for k, (spec, (start, end)) in enumerate(zip(video.shots, video.bounds)):
            seg = [s for s in doc.shots if abs(s.start_s - start) <= 1.5 / 24 and abs(s.end_s - end) <= 1.5 / 24]
            if seg:
                isolated.append((name, k, spec, seg[0]))
    total = sum(len(v.shots) for v in videos.values())
    # shot detection is measured elsewhere (bench_shots); here a missed cut only takes its shots out of the rates
    assert len(isolated) >= total - 4, f"{total - len(isolated)} of {total} shots not found as segments"
    alerts = [a for a in watcher.alerts if a["video_id"] in videos]
    return HeldOut(tenant, videos, docs, alerts, isolated)


def _rate(hits: int, n: int) -> float:
    return hits / max(1, n)


def test_the_held_out_set_is_big_enough_for_rates(held_out):
    unsafe = [spec for *_, spec, _ in held_out.shots if spec.unsafe]
    assert len(held_out.shots) >= 76 and len(unsafe) >= 19


def test_captions_name_the_shape_colour_and_motion(held_out):
    shots = held_out.shots
    for name, k, _spec, shot in shots:
        assert shot.caption, f"{name} shot {k}: no caption"
    rates = {
        attr: _rate(sum(getattr(spec, attr) in shot.caption.split() for *_, spec, shot in shots), len(shots))
        for attr in ("colour", "shape", "motion")
    }
    wrong = [(spec.caption, shot.caption) for *_, spec, shot in shots if spec.caption != shot.caption]
    print(f"captions over {len(shots)} held-out shots: {rates}; wrong: {wrong}")
    # measured (models eval, training seeds 0, 1, 2): colour and motion 1.00, shape 0.95-1.00 (chance 0.25)
    assert rates["colour"] >= 0.95 and rates["motion"] >= 0.9 and rates["shape"] >= 0.85, (rates, wrong)


def test_moderation_flags_the_unsafe_shots_and_alerts_each_once_with_its_times(held_out):
    tp = fp = fn = 0
    for name, k, spec, shot in held_out.shots:
        assert shot.moderation is not None, f"{name} shot {k}: no verdict"
        flagged = bool(shot.moderation.flagged)
        tp, fp, fn = (
            tp + (flagged and spec.unsafe),
            fp + (flagged and not spec.unsafe),
            fn + (spec.unsafe and not flagged),
        )
        mine = [a for a in held_out.alerts if a["video_id"] == name and a["segment_index"] == shot.index]
        if flagged:  # every flagged shot is on the feed exactly once, with its times
            assert len(mine) == 1, mine
            assert mine[0]["category"] == "hazard" and mine[0]["score"] >= mine[0]["threshold"]
            assert (mine[0]["start_s"], mine[0]["end_s"]) == (shot.start_s, shot.end_s)
        else:
            assert mine == [], mine
    precision, recall = _rate(tp, tp + fp), _rate(tp, tp + fn)
    print(
        f"moderation over {len(held_out.shots)} held-out shots: precision {precision:.3f} recall {recall:.3f} "
        f"(tp {tp}, fp {fp}, fn {fn})"
    )
    assert precision >= 0.95 and recall >= 0.95, (tp, fp, fn)


def test_text_search_returns_the_right_video_and_shot_first(stack, held_out):
    hits, misses = 0, []
    for name, _k, spec, shot in held_out.shots:
        resp = httpx.get(
            f"http://{stack.http}/search",
            params={"q": spec.caption, "tenant": held_out.tenant, "limit": 2},
            timeout=60,
        ).json()
        top = resp["results"][0]
        if (top["video_id"], top["segments"][0]["index"]) == (name, shot.index):
            hits += 1
        else:
            misses.append((spec.caption, top["video_id"], top["segments"][0]))
    n = len(held_out.shots)
    print(f"text search: right video and shot first for {hits}/{n} queries; misses {misses}")
    assert _rate(hits, n) >= 0.8, misses  # chance: 1 in 80; measured offline 0.99


def test_search_filters_by_moderation_verdict(stack, held_out):
    flagged_shots = {(name, shot.index) for name, _k, _s, shot in held_out.shots if shot.moderation.flagged}

    def found(flagged: str) -> tuple[set, dict]:
        resp = httpx.get(
            f"http://{stack.http}/search",
            params={"q": "a shape", "tenant": held_out.tenant, "limit": 100, "flagged": flagged},
            timeout=60,
        ).json()
        segments = [s for r in resp["results"] for s in r["segments"]]
        assert all(s["flagged"] is (flagged == "true") for s in segments), resp
        return {(r["video_id"], s["index"]) for r in resp["results"] for s in r["segments"]}, resp

    flagged, resp = found("true")
    # results are grouped per video, at most 3 segments each: every video with flagged shots, only those
    assert flagged and flagged <= flagged_shots, resp
    per_video = {name: sum(v == name for v, _ in flagged_shots) for name, _ in flagged_shots}
    assert {v: min(3, n) for v, n in per_video.items()} == {v: sum(x == v for x, _ in flagged) for v in per_video}
    clean, resp = found("false")
    assert clean and not clean & flagged, resp
