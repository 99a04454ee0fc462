"""agents.media.watermark with the real invisible-watermark library and the real H.264 encode: marked
keyframes read back from the MP4, an unmarked video reads as unmarked, small frames are left alone, and the
mark survives a re-encode that strips the C2PA manifest."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from framebus.agents.media import watermark as wm
from framebus.agents.media.encode import encode_mp4
from framebus.models.training.generator import render_clips
from framebus.models.world import ShotSpec


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """48 frames (6 s at 8 fps: keyframes 0, 16 and 32) of a world shot at 320x240."""
    return render_clips([ShotSpec("square", "blue", "right", 1, 77)], 48, 8.0, 320, 240, 1)[0]


def test_keyframes_follow_the_encoders_gop():
    assert wm.keyframe_indices(48, 8.0) == [0, 16, 32]
    assert wm.keyframe_indices(10, 24.0) == [0]


@pytest.mark.parametrize("crf", [18, 23])
def test_marked_keyframes_read_back_from_the_mp4(clip, tmp_path, crf):
    marked, applied = wm.embed(clip, 8.0)
    assert applied
    changed = [i for i in range(len(clip)) if not np.array_equal(marked[i], clip[i])]
    assert changed == [0, 16, 32]  # the keyframes only
    psnr = 10 * np.log10(255**2 / np.mean((marked[0].astype(float) - clip[0]) ** 2))
    assert psnr > 30  # invisible: a change of a few levels
    path = tmp_path / "marked.mp4"
    encode_mp4(marked, path, 8.0, crf=crf)
    report = wm.detect(path)
    assert report.present and report.applicable and (report.checked, report.marked) == (3, 3), report


def test_an_unmarked_video_reads_as_unmarked(clip, tmp_path):
    encode_mp4(clip, tmp_path / "plain.mp4", 8.0, crf=20)
    report = wm.detect(tmp_path / "plain.mp4")
    assert report.applicable and report.checked == 3
    assert not report.present and report.marked == 0 and report.bit_accuracy < 0.8, report


def test_small_frames_are_left_alone(clip, tmp_path):
    small = np.ascontiguousarray(clip[:, :48, :64])
    out, applied = wm.embed(small, 8.0)
    assert not applied and out is small
    encode_mp4(small, tmp_path / "small.mp4", 8.0)
    report = wm.detect(tmp_path / "small.mp4")
    assert not report.applicable and not report.present and report.checked == 0


def test_the_mark_survives_a_re_encode_that_drops_the_manifest(clip, tmp_path):
    """Transcoded by PyAV (another encoder run, another CRF, no metadata carried): the pixels keep the mark."""
    marked, _ = wm.embed(clip, 8.0)
    encode_mp4(marked, tmp_path / "marked.mp4", 8.0, crf=20)
    with av.open(str(tmp_path / "marked.mp4")) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    out = tmp_path / "copy.mp4"
    with av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"crf": "23", "g": "16", "sc_threshold": "0"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    assert wm.detect(Path(out)).present
