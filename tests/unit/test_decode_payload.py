"""Frames leave decode as inline JPEG while they fit the event budget, as claim-check refs beyond it."""

from __future__ import annotations

import base64

import numpy as np

from framebus.agents.decode import frames_payload
from framebus.agents.embed import frame_pixels
from framebus.agents.media.pipeline import DecodedSegment
from framebus.topics.frames import encode_jpeg


def segment(n: int) -> DecodedSegment:
    rng = np.random.default_rng(0)
    frames = [(i * 0.5, encode_jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), 90)) for i in range(n)]
    return DecodedSegment(index=0, start_s=0.0, end_s=2.0, keyframe_s=1.0, frames=frames, thumbnail=None)


def test_small_segments_travel_inline(tmp_path):
    seg = segment(2)
    frames = frames_payload(seg, budget=1_000_000, blob_dir=tmp_path)
    assert all(f.jpeg_b64 and f.ref is None for f in frames)
    assert base64.b64decode(frames[1].jpeg_b64) == seg.frames[1][1]
    assert not any(tmp_path.iterdir())


def test_large_segments_become_claim_checks_that_embed_can_read(tmp_path):
    seg = segment(4)
    frames = frames_payload(seg, budget=1000, blob_dir=tmp_path / "blobs")
    assert all(f.ref and f.jpeg_b64 is None for f in frames)
    assert [f.pts_s for f in frames] == [0.0, 0.5, 1.0, 1.5]
    pixels = frame_pixels(frames[2])
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
