"""agents.media.probe on generated clips of every supported codec, and on things that are not
(good) videos."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from framebus.agents.media.probe import Limits, VideoInfo, probe, probe_detailed
from framebus.loadtest import videos as V
from framebus.topics.errors import DecodeError, FramebusError, IngestError

# codec key -> (expected codec name, pix_fmt, bit depth, size)
CODECS = {
    "h264": ("h264", "yuv420p", 8, (64, 48)),
    "hevc10": ("hevc", "yuv420p10le", 10, (64, 48)),
    "vp9": ("vp9", "yuv420p", 8, (64, 48)),
    "av1": ("av1", "yuv420p", 8, (64, 48)),
    "mpeg4": ("mpeg4", "yuv420p", 8, (64, 48)),
    "mjpeg": ("mjpeg", "yuvj420p", 8, (64, 48)),
    "prores": ("prores", "yuv422p10le", 10, (64, 48)),
    # FFmpeg's ProRes decoder outputs 4444 as 12-bit whatever the encoder's input depth
    "prores4444": ("prores", "yuv444p12le", 12, (64, 48)),
}


@pytest.fixture(scope="module")
def clipdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("probe_clips")


@pytest.fixture(scope="module")
def codec_clip(clipdir):
    cache: dict[str, Path] = {}

    def make(codec: str, fps: float = 24.0, duration_s: float = 1.0) -> Path:
        key = f"{codec}_{fps}_{duration_s}"
        if key not in cache:
            w, h = CODECS[codec][3]
            p = clipdir / f"{key}{V.default_suffix(codec)}"
            cache[key] = V.make_clip(p, codec, w, h, fps, duration_s)
        return cache[key]

    return make


@pytest.mark.parametrize("codec", list(CODECS))
def test_probe_each_codec(codec, codec_clip):
    name, pix_fmt, depth, (w, h) = CODECS[codec]
    path = codec_clip(codec, fps=24.0, duration_s=1.5)
    info = probe(path, Limits())
    assert isinstance(info, VideoInfo)
    assert info.codec == name
    assert info.pix_fmt == pix_fmt
    assert info.bit_depth == depth
    assert (info.width, info.height) == (w, h)
    assert info.rotation == 0
    assert info.fps == pytest.approx(24.0, abs=1e-6)
    assert abs(info.duration_s - 1.5) <= 1 / 24 + 1e-9
    assert info.size_bytes == path.stat().st_size
    assert info.container == path.suffix.lstrip(".") or info.container == "matroska"


def test_probe_as_dict_and_pickle(codec_clip):
    info = probe(codec_clip("h264"))
    d = info.as_dict()
    assert set(d) == {
        "duration_s",
        "fps",
        "width",
        "height",
        "codec",
        "pix_fmt",
        "bit_depth",
        "rotation",
        "container",
        "size_bytes",
    }
    assert pickle.loads(pickle.dumps(info)) == info
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.width = 1  # type: ignore[misc]


def test_probe_fractional_rate(clipdir):
    p = V.make_clip(clipdir / "ntsc.mp4", "h264", 64, 48, 30000 / 1001, 1.0)
    info = probe(p)
    assert info.fps == pytest.approx(29.97, abs=0.01)
    assert abs(info.duration_s - 30 / (30000 / 1001)) <= 1001 / 30000 + 1e-9


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_probe_rotation_and_display_size(rotation, clipdir):
    p = V.make_rotated_clip(clipdir / f"rot{rotation}.mp4", rotation, width=64, height=48)
    info = probe(p)
    assert info.rotation == rotation
    # display size is what was drawn upright, whatever the coded orientation
    assert (info.width, info.height) == (64, 48)
    pr = probe_detailed(p)
    coded = (48, 64) if rotation in (90, 270) else (64, 48)
    assert (pr.coded_width, pr.coded_height) == coded


def test_probe_rotation_in_matroska(clipdir):
    p = V.make_rotated_clip(clipdir / "rot90.mkv", 90, width=64, height=48)
    info = probe(p)
    assert (info.rotation, info.width, info.height) == (90, 64, 48)


@pytest.mark.parametrize(
    "codec,suffix",
    [("h264", ".mp4"), ("ffv1", ".mkv"), ("mjpeg", ".avi"), ("vp9", ".webm"), ("av1", ".mkv"), ("hevc", ".mp4")],
)
def test_probe_odd_dimensions(codec, suffix, clipdir):
    p = V.make_clip(clipdir / f"odd_{codec}{suffix}", codec, 97, 61, 24, 0.5)
    info = probe(p)
    assert (info.width, info.height) == (97, 61)


def test_probe_container_duration_vs_stream(clipdir):
    # mp4 states the video stream's own length even when the audio runs longer
    p = V.make_clip(clipdir / "longaudio.mp4", "h264", 64, 48, 24, 1.0, audio_s=3.0)
    pr = probe_detailed(p)
    assert pr.duration_source == "stream" and pr.info.duration_s == pytest.approx(1.0)
    # matroska only states the container length (3 s, the audio): the decode pipeline refines it
    p = V.make_clip(clipdir / "longaudio.mkv", "h264", 64, 48, 24, 1.0, audio_s=3.0)
    pr = probe_detailed(p)
    assert pr.duration_source == "container" and pr.info.duration_s == pytest.approx(3.0)


def test_probe_scans_when_nothing_states_duration(clipdir):
    p = V.make_clip(clipdir / "raw.h264", "h264", 64, 48, 25, 2.0)
    pr = probe_detailed(p)
    assert pr.duration_source == "scan"
    assert abs(pr.info.duration_s - 2.0) <= 1 / 25 + 1e-9


def test_probe_vfr_clip(clipdir):
    pts = [0.0, 0.04, 0.1, 0.5, 0.55, 1.2, 1.25]
    p = V.make_vfr_clip(clipdir / "vfr.mp4", pts)
    info = probe(p)
    assert info.duration_s > 1.25


# --- rejections -----------------------------------------------------------------------------------


def code_of(path, limits=None):
    with pytest.raises(FramebusError) as ei:
        probe(path, limits or Limits())
    return type(ei.value), ei.value.code


def test_empty_file(tmp_path):
    p = V.make_corrupt_file(tmp_path / "empty.mp4", "empty")
    assert code_of(p) == (IngestError, "ingest.empty")


def test_text_file_is_not_a_video(tmp_path):
    # FFmpeg would happily open a .txt as 'tty' ANSI art with a "video" stream
    assert code_of(V.make_text_file(tmp_path / "notes.txt")) == (IngestError, "ingest.not_a_video")
    assert code_of(V.make_text_file(tmp_path / "notes.mp4")) == (IngestError, "ingest.not_a_video")


def test_audio_only_file_is_not_a_video(tmp_path):
    assert code_of(V.make_audio_file(tmp_path / "tone.wav")) == (IngestError, "ingest.not_a_video")


def test_random_bytes_are_not_a_video(tmp_path):
    for seed in range(3):
        p = V.make_corrupt_file(tmp_path / f"rand{seed}.mp4", "random", seed=seed)
        assert code_of(p) == (IngestError, "ingest.not_a_video")


def test_mp4_without_index_is_truncated(tmp_path):
    p = V.make_corrupt_file(tmp_path / "cut.mp4", "no_moov")
    assert code_of(p) == (DecodeError, "decode.truncated")


def test_container_opens_but_nothing_decodes(tmp_path):
    p = V.make_corrupt_file(tmp_path / "zeroed.mp4", "empty_payload")
    assert code_of(p) == (DecodeError, "decode.corrupt")


def test_playlist_is_not_followed(tmp_path, codec_clip):
    # an HLS playlist pointing at a local file must not be opened through the playlist demuxer
    target = codec_clip("h264")
    p = tmp_path / "evil.mp4"
    p.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{target}\n#EXT-X-ENDLIST\n")
    assert code_of(p) == (IngestError, "ingest.not_a_video")


def test_too_large(codec_clip):
    p = codec_clip("h264")
    assert code_of(p, Limits(max_file_bytes=p.stat().st_size - 1)) == (IngestError, "ingest.too_large")
    probe(p, Limits(max_file_bytes=p.stat().st_size))  # the limit itself is allowed


def test_too_long(codec_clip):
    p = codec_clip("h264", duration_s=1.5)
    assert code_of(p, Limits(max_duration_s=1.0)) == (IngestError, "ingest.too_long")
    probe(p, Limits(max_duration_s=1.5))


def test_resolution_too_large(codec_clip, clipdir):
    p = codec_clip("h264")  # 64x48
    assert code_of(p, Limits(max_width=63, max_height=63)) == (IngestError, "ingest.resolution_too_large")
    assert code_of(p, Limits(max_width=64, max_height=40)) == (IngestError, "ingest.resolution_too_large")
    probe(p, Limits(max_width=64, max_height=48))
    probe(p, Limits(max_width=48, max_height=64))  # portrait limit accepts landscape


def test_missing_and_directory(tmp_path):
    assert code_of(tmp_path / "nope.mp4") == (IngestError, "ingest.not_found")
    assert code_of(tmp_path) == (IngestError, "ingest.not_a_file")


def test_limits_from_settings():
    from framebus.streams.config import Settings

    s = Settings(max_file_bytes=10, max_duration_s=5.0, max_width=320, max_height=240)
    assert Limits.from_settings(s) == Limits(10, 5.0, 320, 240)
    assert Limits() == Limits.from_settings(Settings())


def test_errors_survive_pickling(tmp_path):
    with pytest.raises(IngestError) as ei:
        probe(V.make_text_file(tmp_path / "t.txt"))
    again = pickle.loads(pickle.dumps(ei.value))
    assert type(again) is IngestError and again.code == "ingest.not_a_video"


def test_probe_does_not_leak_file_descriptors(codec_clip, tmp_path):
    p = codec_clip("h264")
    bad = V.make_corrupt_file(tmp_path / "r.mp4", "random")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        probe(p)
        with pytest.raises(IngestError):
            probe(bad)
    assert len(os.listdir("/proc/self/fd")) <= before + 2
