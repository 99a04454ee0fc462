"""agents.media.encode: generated frames become a web-ready H.264 MP4 (BT.709, tv range, fixed GOP,
faststart, exact rate) and a JPEG thumbnail; checked by re-opening the output with PyAV."""

from __future__ import annotations

import hashlib
import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image

from framebus.agents.media.encode import encode_mp4, write_thumbnail
from framebus.topics.errors import GenerationError

BT709 = 1  # AVCOL_PRI_BT709 = AVCOL_TRC_BT709 = AVCOL_SPC_BT709
TV = 1  # AVCOL_RANGE_MPEG


def clip(t: int = 16, h: int = 48, w: int = 64) -> np.ndarray:
    """A moving diagonal gradient: every frame differs, nothing is noise (encodes small and fast)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = (x * 4 + i * 8) % 256
        frames[i, ..., 1] = (y * 4) % 256
        frames[i, ..., 2] = 128
    return frames


def top_level_boxes(path: Path) -> list[str]:
    """The ISO BMFF top-level box types in file order."""
    data, names, pos = path.read_bytes(), [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        names.append(kind.decode("latin-1"))
        pos += size if size else len(data)
    return names


def test_h264_yuv420p_with_bt709_tagged_on_the_stream(tmp_path):
    info = encode_mp4(clip(), tmp_path / "out.mp4", 24)
    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        assert cc.name == "h264"
        assert cc.pix_fmt == "yuv420p"
        assert (cc.color_primaries, cc.color_trc, cc.colorspace) == (BT709, BT709, BT709)
        assert cc.color_range == TV
        frames = list(container.decode(stream))
    assert len(frames) == info.frames == 16
    assert (frames[0].colorspace, frames[0].color_range) == (BT709, TV)
    assert (info.width, info.height, info.fps) == (64, 48, 24.0)


def test_colours_are_converted_with_the_bt709_matrix(tmp_path):
    """A saturated colour decodes back to itself with the BT.709 matrix, not with BT.601's: the frames were
    converted with the matrix the stream signals."""
    rgb = np.array([200, 40, 40], np.uint8)
    frames = np.broadcast_to(rgb, (4, 32, 32, 3)).copy()
    encode_mp4(frames, tmp_path / "red.mp4", 8, crf=0)
    with av.open(str(tmp_path / "red.mp4")) as container:
        frame = next(container.decode(video=0))

    def decoded(matrix):
        out = frame.reformat(
            format="rgb24", src_colorspace=matrix, src_color_range=ColorRange.MPEG, dst_color_range=ColorRange.JPEG
        )
        return out.to_ndarray()[16, 16].astype(int)

    assert np.abs(decoded(Colorspace.ITU709) - rgb).max() <= 3
    assert np.abs(decoded(Colorspace.ITU601) - rgb).max() >= 10


@pytest.mark.parametrize(
    ("fps", "rate"), [(24, Fraction(24)), (30000 / 1001, Fraction(30000, 1001)), (12.5, Fraction(25, 2))]
)
def test_frame_rate_is_exact(tmp_path, fps, rate):
    info = encode_mp4(clip(t=8, h=16, w=16), tmp_path / "r.mp4", fps)
    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == rate
        assert stream.frames == 8
    assert info.fps == float(rate)


def test_a_keyframe_every_two_seconds_and_none_between(tmp_path):
    info = encode_mp4(clip(t=40, h=16, w=16), tmp_path / "gop.mp4", 8)  # gop = 16 frames
    with av.open(str(info.path)) as container:
        keys = [i for i, pkt in enumerate(p for p in container.demux(video=0) if p.size) if pkt.is_keyframe]
    assert keys == [0, 16, 32]


def test_faststart_puts_the_index_before_the_media_data(tmp_path):
    info = encode_mp4(clip(), tmp_path / "fs.mp4", 24)
    boxes = top_level_boxes(info.path)
    assert boxes.index("moov") < boxes.index("mdat")


def test_crf_trades_size_for_quality(tmp_path):
    frames = clip(t=8, h=64, w=64)
    small = encode_mp4(frames, tmp_path / "small.mp4", 8, crf=40, preset="ultrafast")
    big = encode_mp4(frames, tmp_path / "big.mp4", 8, crf=10, preset="ultrafast")
    assert small.bytes < big.bytes


def test_odd_sizes_are_padded_to_even(tmp_path):
    frames = clip(t=4, h=33, w=47)
    info = encode_mp4(frames, tmp_path / "odd.mp4", 8)
    assert (info.width, info.height) == (48, 34)
    with av.open(str(info.path)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (48, 34)


def test_info_hash_and_size_describe_the_file(tmp_path):
    info = encode_mp4(clip(t=4), tmp_path / "h.mp4", 8)
    data = info.path.read_bytes()
    assert info.bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_written_atomically_no_temporary_file_left(tmp_path):
    target = tmp_path / "a.mp4"
    target.write_bytes(b"previous")
    encode_mp4(clip(t=4), target, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]
    with pytest.raises(GenerationError) as err:
        encode_mp4(clip(t=4), target, 8, preset="no-such-preset")
    assert err.value.code == "generate.encode_failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]
    assert av.open(str(target)).streams.video[0].frames == 4  # the old complete file is untouched


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((4, 16, 16), np.uint8),
        np.zeros((4, 16, 16, 3), np.float32),
        np.zeros((0, 16, 16, 3), np.uint8),
        [[0]],
    ],
    ids=["no-channels", "float", "empty", "list"],
)
def test_bad_frames_are_refused(tmp_path, frames):
    with pytest.raises(GenerationError) as err:
        encode_mp4(frames, tmp_path / "x.mp4", 8)
    assert err.value.code == "generate.bad_frames"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf")])
def test_bad_fps_is_refused(tmp_path, fps):
    with pytest.raises(GenerationError) as err:
        encode_mp4(clip(t=2), tmp_path / "x.mp4", fps)
    assert err.value.code == "generate.bad_frames"


def test_thumbnail_is_a_jpeg_of_the_middle_frame_within_max_side(tmp_path):
    frames = clip(t=16, h=240, w=320)
    path = write_thumbnail(frames, tmp_path / "thumb.jpg", max_side=160)
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "JPEG"
    assert image.size == (160, 120)
    expected = np.asarray(Image.fromarray(frames[8]).resize((160, 120), Image.Resampling.LANCZOS), np.int16)
    assert np.abs(np.asarray(image.convert("RGB"), np.int16) - expected).mean() < 6


def test_thumbnail_of_one_small_frame_is_not_enlarged(tmp_path):
    path = write_thumbnail(clip(t=1, h=30, w=40)[0], tmp_path / "t.jpg")
    assert Image.open(path).size == (40, 30)
