"""agents.media.transform: FFmpeg's scale, minterpolate and framerate filters on RGB clips, and reading a
source clip for them under the ingest limits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from framebus.agents.media.encode import encode_mp4
from framebus.agents.media.probe import Limits
from framebus.agents.media.transform import interpolate, read_frames, upscale
from framebus.topics.errors import GenerationError, IngestError

PAN = 4  # pixels a frame


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (something motion estimation can lock on to)."""
    noise = np.random.default_rng(seed).integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(noise).resize((w, h), Image.Resampling.BICUBIC))


def panning(t: int = 8, h: int = 64, w: int = 64, *, offset: int = 0) -> np.ndarray:
    """A camera pan over a texture, ``PAN`` pixels a frame, starting ``offset`` pixels in."""
    scene = texture(h, w + PAN * (t + 1))
    return np.stack([scene[:, offset + PAN * i : offset + PAN * i + w] for i in range(t)])


def test_upscale_doubles_the_size():
    frames = panning(t=4, h=32, w=48)
    out = upscale(frames, 8, 2)
    assert out.shape == (4, 64, 96, 3)
    assert out.dtype == np.uint8
    # the picture is the same picture, bigger
    back = np.stack([np.asarray(Image.fromarray(f).resize((48, 32), Image.Resampling.BOX)) for f in out])
    assert np.abs(back.astype(int) - frames).mean() < 4


def test_upscale_to_an_explicit_size():
    assert upscale(panning(t=2, h=32, w=48), 8, (101, 57)).shape == (2, 57, 101, 3)


def test_upscale_uses_lanczos():
    """Lanczos rings at a hard edge: it overshoots the two grey levels; bilinear never leaves them."""
    frames = np.full((1, 16, 16, 3), 64, np.uint8)
    frames[:, :, 8:] = 192
    lanczos = upscale(frames, 8, 4)[0, 32, :, 0]
    bilinear = upscale(frames, 8, 4, method="bilinear")[0, 32, :, 0]
    assert lanczos.min() < 64 and lanczos.max() > 192
    assert bilinear.min() >= 64 and bilinear.max() <= 192


def test_upscale_refuses_unknown_methods_and_sizes():
    frames = panning(t=1, h=16, w=16)
    for kwargs in ({"method": "magic"}, {"factor": 0}, {"factor": (0, 10)}, {"factor": 10_000}):
        with pytest.raises(GenerationError) as err:
            upscale(frames, 8, **kwargs)
        assert err.value.code == "generate.bad_frames"


@pytest.mark.parametrize(("target", "count"), [(16, 16), (24, 24), (12, 12), (30000 / 1001, 30)])
@pytest.mark.parametrize("method", ["minterpolate", "framerate"])
def test_interpolate_keeps_the_duration(method, target, count):
    out = interpolate(panning(t=8), 8, target, method=method)
    assert out.shape == (count, 64, 64, 3)


def test_minterpolate_draws_motion_compensated_in_between_frames():
    frames = panning(t=8)
    out = interpolate(frames, 8, 16)
    ideal = panning(t=8, offset=PAN // 2)  # where the camera is half-way between two frames
    inner = np.s_[8:-8, 8:-8]  # borders: the picture enters there, nothing to interpolate from
    for i in range(len(frames) - 1):
        mid = out[2 * i + 1].astype(int)
        # not a copy of either neighbour ...
        assert np.abs(mid - frames[i]).mean() > 3
        assert np.abs(mid - frames[i + 1]).mean() > 3
        # ... but the picture half-way along the motion, much closer to it than a cross-fade is
        fade = (frames[i].astype(int) + frames[i + 1]) / 2
        assert np.abs(mid[inner] - ideal[i][inner]).mean() < 0.5 * np.abs(fade[inner] - ideal[i][inner]).mean()
        # the original frames are kept
        assert np.abs(out[2 * i].astype(int) - frames[i]).mean() < 2


def test_framerate_fallback_blends_the_neighbours():
    frames = panning(t=8)
    out = interpolate(frames, 8, 16, method="framerate")
    fade = (frames[3].astype(int) + frames[4]) / 2
    assert np.abs(out[7] - fade).mean() < 2
    assert np.abs(out[7].astype(int) - frames[3]).mean() > 3


def test_interpolate_refuses_unknown_methods():
    with pytest.raises(GenerationError) as err:
        interpolate(panning(t=2), 8, 16, method="optical-flow")
    assert err.value.code == "generate.bad_frames"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("transform") / "source.mp4"
    frames = panning(t=12, h=32, w=48)
    encode_mp4(frames, path, 12, crf=10)
    return path, frames


def test_read_frames_decodes_rgb_and_the_rate(source):
    path, frames = source
    got, fps = read_frames(path, max_frames=100)
    assert got.shape == frames.shape
    assert fps == 12
    # compared on luma: the file's 4:2:0 chroma keeps a quarter of the colour samples
    luma = np.array([0.2126, 0.7152, 0.0722])
    assert np.abs(got @ luma - frames @ luma).mean() < 3


def test_read_frames_stops_at_max_frames(source):
    got, _ = read_frames(source[0], max_frames=5)
    assert len(got) == 5


def test_read_frames_checks_the_limits_before_decoding(source):
    with pytest.raises(IngestError) as err:
        read_frames(source[0], max_frames=5, limits=Limits(max_width=16, max_height=16))
    assert err.value.code == "ingest.resolution_too_large"
    with pytest.raises(GenerationError) as err:
        read_frames(source[0], max_frames=10, max_pixels=32 * 48 * 9)
    assert err.value.code == "generate.source_too_large"


def test_read_frames_of_something_that_is_not_a_video(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a video\n" * 10)
    with pytest.raises(IngestError) as err:
        read_frames(path, max_frames=5)
    assert err.value.code == "ingest.not_a_video"
