"""Video understanding through the real pipeline: shots at the true cuts with quality scores, search
by example image and by time range."""

from __future__ import annotations

import io
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtest import world
from topics.events import IngestRequest

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
    late = httpx.get(f"{url}/search", params={"q": "a shape", "tenant": tenant, "start_s": doc.shots[2].start_s + 0.1}
                     ).json()
    assert {s["index"] for r in late["results"] for s in r["segments"]} == {2}
    early = httpx.get(f"{url}/search", params={"q": "a shape", "tenant": tenant, "end_s": doc.shots[0].end_s - 0.1}
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
