"""Decoders (PyAV, decord) and the decode pipeline on generated clips.

Most clips use the ``counter`` pattern: every frame shows its own number, so the tests check not
only timestamps but that the picture returned really is the frame displayed at that instant.
"""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from framebus.agents.media.decoders import Decoder, DecordDecoder, SampledFrame, get_decoder, upright
from framebus.agents.media.pipeline import DecodedVideo, DecodeJob, decode_video
from framebus.agents.media.probe import Limits
from framebus.agents.media.sampling import sample_times, select_frames
from framebus.loadtest import videos as V
from framebus.topics.errors import DecodeError, FramebusError, IngestError
from framebus.topics.frames import decode_jpeg, encode_jpeg, output_size

CODECS = ["h264", "hevc10", "vp9", "av1", "mpeg4", "mjpeg", "prores", "prores4444"]


@pytest.fixture(scope="module")
def clipdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("decode_clips")


@pytest.fixture(scope="module")
def clip(clipdir):
    cache: dict[tuple, Path] = {}

    def make(
        codec: str = "h264",
        width: int = 64,
        height: int = 48,
        fps: float = 24.0,
        duration_s: float = 1.5,
        pattern: str = "counter",
        suffix: str | None = None,
    ) -> Path:
        key = (codec, width, height, fps, duration_s, pattern, suffix)
        if key not in cache:
            name = "_".join(str(k) for k in key[:-1]).replace(".", "p")
            p = clipdir / f"{name}{suffix or V.default_suffix(codec)}"
            cache[key] = V.make_clip(p, codec, width, height, fps, duration_s, pattern)
        return cache[key]

    return make


def sample(path, fps, short_side=32, decoder="pyav", max_frames=10_000, **kw) -> list[SampledFrame]:
    return list(get_decoder(decoder).sample(path, fps, max_frames, short_side, **kw))


# --- geometry helpers -------------------------------------------------------------------------


def test_output_size():
    assert output_size(64, 48, 24) == (32, 24)
    assert output_size(48, 64, 24) == (24, 32)
    assert output_size(48, 64, 24, rotation=90) == (24, 32)  # coded 48x64, displayed 64x48
    assert output_size(1920, 1080, 224) == (398, 224)
    assert output_size(97, 61, 30) == (48, 30)
    assert output_size(720, 576, 288, pixel_aspect=16 / 15) == (384, 288)


def test_upright_rotates_clockwise():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 0] = 255  # top-left marker
    r = upright(img, 90)  # a clockwise quarter turn moves top-left to top-right
    assert r.shape == (3, 2, 3) and r[0, 1, 0] == 255
    assert upright(img, 180)[1, 2, 0] == 255
    assert upright(img, 270)[2, 0, 0] == 255
    assert upright(img, 0) is img


def test_registry():
    assert get_decoder().name == "pyav"
    assert get_decoder("decord").name == "decord"
    assert isinstance(get_decoder("pyav"), Decoder)
    with pytest.raises(DecodeError) as ei:
        get_decoder("gstreamer")
    assert ei.value.code == "decode.unknown_decoder"


# --- every codec: timestamps, selection, content ------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_pyav_sampling_each_codec(codec, clip):
    path = clip(codec)  # 1.5 s at 24 fps, counter pattern
    frames = sample(path, 4.0)
    assert [f.index for f in frames] == [0, 6, 12, 18, 24, 30]
    assert [f.pts_s for f in frames] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 1.25], abs=1e-9)
    assert [V.read_counter(f.rgb) for f in frames] == [0, 6, 12, 18, 24, 30]
    for f in frames:
        assert f.rgb.shape == (32, 43, 3) and f.rgb.dtype == np.uint8
        assert f.rgb.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("codec", CODECS)
def test_pyav_full_rate_each_codec(codec, clip):
    run = get_decoder("pyav").sample(clip(codec), 24.0, 10_000, 24)
    frames = list(run)
    assert [f.index for f in frames] == list(range(36))
    assert [V.read_counter(f.rgb) for f in frames] == list(range(36))
    # Matroska/WebM store milliseconds: 1/24 s is written as 0.042 s
    tol = 5e-4 + 1e-9 if V.default_suffix(codec) in (".mkv", ".webm") else 1e-6
    assert [f.pts_s for f in frames] == pytest.approx([k / 24 for k in range(36)], abs=tol)
    assert run.stats.frames_decoded == 36 and run.stats.complete
    assert run.stats.end_s == pytest.approx(1.5, abs=1 / 24)


def test_sampling_at_one_fps_and_max_frames(clip):
    path = clip("h264", duration_s=3.0)
    assert [f.index for f in sample(path, 1.0)] == [0, 24, 48]
    # cap: 24 fps asked, 6 allowed -> spread evenly (every 0.5 s), not cut after 0.25 s
    frames = sample(path, 24.0, max_frames=6)
    assert [f.pts_s for f in frames] == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_extra_times_are_sampled_too(clip):
    frames = sample(clip("h264"), 1.0, extra_times=[0.3, 1.3])
    assert [f.index for f in frames] == [0, 7, 24, 31]  # 0.3 s is shown by frame 7 (0.2917 s)


def test_short_side_and_upscale(clip):
    f = sample(clip("h264"), 1.0, short_side=96)[0]
    assert f.rgb.shape == (96, 128, 3)
    assert V.read_counter(f.rgb) == 0


def test_mpeg_ts_start_offset_is_removed(clipdir):
    # MPEG-TS streams start at 1.4 s or so; pts are reported from the start of the stream
    p = V.make_clip(clipdir / "offset.ts", "h264", 64, 48, 25, 2.0)
    frames = sample(p, 2.0)
    assert [f.pts_s for f in frames] == pytest.approx([0, 0.48, 1.0, 1.48], abs=1e-6)
    assert [V.read_counter(f.rgb) for f in frames] == [0, 12, 25, 37]


# --- rotation, odd sizes, VFR ---------------------------------------------------------------------


def quadrants(rgb: np.ndarray) -> list[tuple[int, int, int]]:
    h, w = rgb.shape[:2]
    pts = [(h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)]
    return [tuple(int(c) for c in rgb[y, x]) for y, x in pts]


def assert_upright_asym(rgb):
    want = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]  # TL, TR, BL, BR
    for got, exp in zip(quadrants(rgb), want):
        assert np.abs(np.array(got) - exp).max() < 48, (quadrants(rgb), want)


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_rotation_frames_are_upright(rotation, decoder, clipdir):
    p = clipdir / f"rot_{rotation}.mp4"
    if not p.exists():
        V.make_rotated_clip(p, rotation, width=64, height=48, duration_s=0.5)
    frames = sample(p, 2.0, short_side=24, decoder=decoder)
    assert len(frames) == 1
    assert frames[0].rgb.shape == (24, 32, 3)  # landscape, as displayed
    assert_upright_asym(frames[0].rgb)


def test_rotation_check_is_discriminative(clipdir):
    # the coded picture of a 90-degree clip is NOT upright: the check above would catch a decoder
    # that ignores the display matrix
    p = V.make_rotated_clip(clipdir / "rot_raw.mp4", 90, width=64, height=48, duration_s=0.5)
    import av

    with av.open(str(p)) as c:
        raw = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert raw.shape[:2] == (64, 48)
    with pytest.raises(AssertionError):
        assert_upright_asym(raw)


@pytest.mark.parametrize(
    "codec,suffix",
    [("h264", ".mp4"), ("ffv1", ".mkv"), ("mjpeg", ".avi"), ("vp9", ".webm"), ("av1", ".mkv"), ("hevc10", ".mp4")],
)
def test_odd_dimensions(codec, suffix, clip):
    p = clip(codec, 97, 61, 24, 1.0, suffix=suffix)
    frames = sample(p, 4.0, short_side=30)
    assert [f.rgb.shape for f in frames] == [(30, 48, 3)] * 4
    assert [V.read_counter(f.rgb) for f in frames] == [0, 6, 12, 18]


VFR_PTS = [0.0, 0.04, 0.1, 0.5, 0.55, 0.56, 1.2, 1.25, 1.9]


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_vfr_exact_timestamps_and_selection(suffix, decoder, clipdir):
    p = clipdir / f"vfr{suffix}"
    if not p.exists():
        V.make_vfr_clip(p, VFR_PTS)
    # every frame, with its exact pts
    every = sample(p, 1000.0, decoder=decoder)
    tol = 1e-9 if decoder == "pyav" else 1e-6  # decord reports float32
    assert [f.pts_s for f in every] == pytest.approx(VFR_PTS, abs=tol)
    assert [V.read_counter(f.rgb) for f in every] == list(range(len(VFR_PTS)))
    # at 10 fps: the frame *displayed* at each instant (not the nearest one)
    frames = sample(p, 10.0, decoder=decoder)
    targets = sample_times(2.0, 10.0, 1000)
    expected = select_frames(VFR_PTS, targets, end_s=2.0)
    assert expected == [0, 2, 3, 5, 6, 7, 8]  # 0.55 shows for 10 ms and is never sampled
    assert [f.index for f in frames] == expected
    assert [V.read_counter(f.rgb) for f in frames] == expected
    assert [f.pts_s for f in frames] == pytest.approx([VFR_PTS[i] for i in expected], abs=tol)


# --- colour -------------------------------------------------------------------------------------


def bars_error(rgb: np.ndarray, colors=V.DEFAULT_BARS) -> int:
    xs = V.bar_centres(rgb.shape[1], len(colors))
    got = rgb[rgb.shape[0] // 2, xs].astype(int)
    return int(np.abs(got - np.array(colors)).max())


@pytest.fixture(scope="module")
def bars(clipdir):
    cache = {}

    def make(matrix, full_range=False, tagged=True, width=192, height=48, codec="h264"):
        key = (matrix, full_range, tagged, width, height, codec)
        if key not in cache:
            p = clipdir / ("bars_" + "_".join(map(str, key)) + ".mp4")
            cache[key] = V.make_color_bars_clip(
                p,
                matrix=matrix,
                full_range=full_range,
                tagged=tagged,
                width=width,
                height=height,
                duration_s=0.2,
                codec=codec,
            )
        return cache[key]

    return make


@pytest.mark.parametrize("matrix", ["bt709", "bt601", "bt2020"])
@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_colour_signalled_matrix_and_range_are_honoured(matrix, full_range, codec, bars):
    # h264 full range decodes to yuvj444p (range implied by the format); hevc to yuv444p with a
    # range flag, which the conversion must read
    rgb = sample(bars(matrix, full_range, codec=codec), 1.0, short_side=48)[0].rgb
    assert bars_error(rgb) <= 3


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_colour_bars_are_discriminative(codec, bars):
    """Decoding the bars with the wrong matrix or range is far off: the tests above would notice
    a decoder that assumed one matrix/range instead of reading the stream's."""
    import av

    cases = [
        ("bt709", False, ("ITU601", "MPEG")),
        ("bt601", False, ("ITU709", "MPEG")),
        ("bt2020", False, ("ITU709", "MPEG")),
        ("bt709", True, ("ITU601", "JPEG")),
        ("bt709", False, ("ITU709", "JPEG")),
    ]
    if codec == "hevc":  # yuv444p + range flag: assuming limited range is visibly wrong
        cases.append(("bt709", True, ("ITU709", "MPEG")))
    for matrix, full, wrong in cases:
        with av.open(str(bars(matrix, full, codec=codec))) as c:
            frame = next(c.decode(video=0))
        rgb = (
            VideoReformatter()
            .reformat(frame, format="rgb24", src_colorspace=wrong[0], src_color_range=wrong[1])
            .to_ndarray()
        )
        assert bars_error(rgb) > 10, (matrix, full, wrong)


def test_colour_unsignalled_guess_sd_is_bt601(bars):
    assert bars_error(sample(bars("bt601", tagged=False), 1.0, short_side=48)[0].rgb) <= 3
    # the same picture encoded BT.709 but unsignalled is (knowingly) decoded as BT.601
    assert bars_error(sample(bars("bt709", tagged=False), 1.0, short_side=48)[0].rgb) > 10


def test_colour_unsignalled_guess_hd_is_bt709(bars):
    hd709 = bars("bt709", tagged=False, width=1280, height=720)
    assert bars_error(sample(hd709, 1.0, short_side=48)[0].rgb) <= 3
    # and a signalled BT.601 HD stream is still decoded as BT.601 (the tag wins over the guess)
    hd601 = bars("bt601", tagged=True, width=1280, height=720)
    assert bars_error(sample(hd601, 1.0, short_side=48)[0].rgb) <= 3


def test_colour_mjpeg_full_range(clip):
    rgb = sample(clip("mjpeg", 192, 48, 10, 0.3, pattern="bars"), 1.0, short_side=48)[0].rgb
    assert bars_error(rgb) <= 10


def test_colour_10bit_hevc(clip):
    rgb = sample(clip("hevc10", 192, 48, 10, 0.3, pattern="bars"), 1.0, short_side=48)[0].rgb
    assert bars_error(rgb) <= 10


@pytest.mark.parametrize("codec", ["prores", "prores4444"])
def test_colour_prores(codec, clip):
    rgb = sample(clip(codec, 192, 48, 10, 0.3, pattern="bars"), 1.0, short_side=48)[0].rgb
    assert bars_error(rgb) <= 10


def test_decord_honours_signalled_colour(bars):
    rgb = sample(bars("bt709"), 1.0, short_side=48, decoder="decord")[0].rgb
    assert bars_error(rgb) <= 3


# --- decord specifics -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["h264", "hevc10", "vp9", "mpeg4", "mjpeg", "prores"])
def test_decord_sampling(codec, clip):
    run = DecordDecoder().sample(clip(codec), 4.0, 10_000, 32)
    frames = list(run)
    assert [f.index for f in frames] == [0, 6, 12, 18, 24, 30]
    assert [f.pts_s for f in frames] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 1.25], abs=1e-6)
    assert [V.read_counter(f.rgb) for f in frames] == [0, 6, 12, 18, 24, 30]
    assert frames[0].rgb.shape == (32, 43, 3)
    assert run.stats.frames_decoded == 36


def test_decord_cannot_open_av1(clip):
    with pytest.raises(DecodeError) as ei:
        sample(clip("av1"), 1.0, decoder="decord")
    assert ei.value.code == "decode.unsupported_codec"


# --- frames.py ----------------------------------------------------------------------------------


def test_jpeg_round_trip():
    img = V.render("gradient", 0, 96, 64)
    data = encode_jpeg(img, 95)
    assert data[:2] == b"\xff\xd8"
    back = decode_jpeg(data)
    assert back.shape == img.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - img).mean() < 4
    assert len(encode_jpeg(img, 20)) < len(data)
    with pytest.raises(DecodeError):
        decode_jpeg(b"not a jpeg")
    with pytest.raises(ValueError):
        encode_jpeg(img[..., 0], 80)


# --- pipeline ----------------------------------------------------------------------------------


def job(path, **kw) -> DecodeJob:
    base = dict(
        path=str(path),
        video_id="vid-1",
        sample_fps=2.0,
        segment_s=1.0,
        max_frames=1000,
        short_side=32,
        jpeg_quality=90,
        decoder="pyav",
        thumb_dir=None,
        shots=False,
    )
    base.update(kw)
    return DecodeJob(**base)


def test_pipeline_segments_frames_keyframes_thumbnails(clip, tmp_path):
    path = clip("h264", duration_s=3.0)
    out = decode_video(job(path, thumb_dir=str(tmp_path)))
    assert isinstance(out, DecodedVideo)
    assert out.frames_decoded == 72
    assert out.info.duration_s == pytest.approx(3.0)
    segs = out.segments
    assert [(s.index, s.start_s, s.end_s) for s in segs] == [(0, 0.0, 1.0), (1, 1.0, 2.0), (2, 2.0, 3.0)]
    assert [[p for p, _ in s.frames] for s in segs] == [[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]]
    assert [s.keyframe_s for s in segs] == [0.5, 1.5, 2.5]  # nearest the middle
    for s in segs:
        for pts, data in s.frames:
            img = decode_jpeg(data)
            assert img.shape == (32, 43, 3)
            assert V.read_counter(img) == round(pts * 24)
        assert s.thumbnail == str(tmp_path / "vid-1" / f"{s.index}.jpg")
        thumb = decode_jpeg(Path(s.thumbnail).read_bytes())
        assert V.read_counter(thumb) == round(s.keyframe_s * 24)
    assert out.frames_sampled == 6


def test_pipeline_every_segment_gets_a_frame_of_its_own(clip):
    # 0.5 fps sampling would give one frame for 1.5 s; 6 segments of 0.25 s each get theirs
    out = decode_video(job(clip("h264"), sample_fps=0.5, segment_s=0.25))
    assert len(out.segments) == 6
    for s in out.segments:
        assert s.frames
        assert all(s.start_s <= p < s.end_s for p, _ in s.frames), s
        assert s.keyframe_s in [p for p, _ in s.frames]


def test_pipeline_segment_shorter_than_a_frame(clip):
    # 2 fps video, 0.2 s segments: some segments contain no frame start at all
    out = decode_video(job(clip("h264", fps=2.0, duration_s=2.0), sample_fps=1.0, segment_s=0.2))
    assert len(out.segments) == 10
    assert all(s.frames for s in out.segments)
    for s in out.segments:
        assert s.keyframe_s in [p for p, _ in s.frames]
        # the frame used is at most one frame interval away from the segment
        assert min(abs(p - (s.start_s + s.end_s) / 2) for p, _ in s.frames) <= 0.5


def test_pipeline_max_frames_cap(clip):
    out = decode_video(job(clip("h264", duration_s=3.0), sample_fps=24.0, max_frames=6))
    assert out.frames_sampled == 6
    assert [p for s in out.segments for p, _ in s.frames] == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5])


def test_pipeline_refines_duration_when_stream_does_not_state_it(clipdir):
    # matroska states only the container length, here the 3 s audio track; the video is 1 s
    p = V.make_clip(clipdir / "pipe_longaudio.mkv", "h264", 64, 48, 24, 1.0, audio_s=3.0)
    out = decode_video(job(p, segment_s=0.5))
    assert abs(out.info.duration_s - 1.0) <= 1 / 24
    assert out.segments[-1].end_s == out.info.duration_s
    assert len(out.segments) == 2
    # raw elementary stream: nothing states a duration
    p = V.make_clip(clipdir / "pipe_raw.h264", "h264", 64, 48, 25, 2.0)
    out = decode_video(job(p))
    assert abs(out.info.duration_s - 2.0) <= 1 / 25


def test_pipeline_vfr(clipdir):
    p = V.make_vfr_clip(clipdir / "pipe_vfr.mkv", VFR_PTS)
    out = decode_video(job(p, sample_fps=10.0, segment_s=0.5))
    pts = sorted({p for s in out.segments for p, _ in s.frames})
    assert pts == pytest.approx([VFR_PTS[i] for i in (0, 2, 3, 5, 6, 7, 8)], abs=1e-9)


def test_pipeline_rotation(clipdir):
    p = V.make_rotated_clip(clipdir / "pipe_rot.mp4", 90, width=64, height=48, duration_s=0.5)
    out = decode_video(job(p, short_side=24))
    assert (out.info.rotation, out.info.width, out.info.height) == (90, 64, 48)
    img = decode_jpeg(out.segments[0].frames[0][1])
    assert img.shape == (24, 32, 3)
    assert_upright_asym(img)


def test_pipeline_decord_backend(clip):
    out = decode_video(job(clip("h264", duration_s=3.0), decoder="decord"))
    assert [len(s.frames) for s in out.segments] == [2, 2, 2]
    assert [p for s in out.segments for p, _ in s.frames] == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5], abs=1e-6)


def test_pipeline_is_picklable_and_runs_in_a_process_pool(clip, tmp_path):
    j = job(clip("h264"), thumb_dir=str(tmp_path))
    assert pickle.loads(pickle.dumps(j)) == j
    with ProcessPoolExecutor(max_workers=1) as pool:
        out = pool.submit(decode_video, j).result(timeout=60)
        again = pickle.loads(pickle.dumps(out))
        assert again.info == out.info and len(again.segments) == len(out.segments)
        bad = pool.submit(decode_video, job(tmp_path / "missing.mp4"))
        with pytest.raises(IngestError) as ei:
            bad.result(timeout=60)
        assert ei.value.code == "ingest.not_found"


def test_pipeline_thumbnail_dir_is_safe_for_hostile_ids(clip, tmp_path):
    thumbs = tmp_path / "thumbs"
    out = decode_video(job(clip("h264"), video_id="../../escape", thumb_dir=str(thumbs)))
    for s in out.segments:
        assert Path(s.thumbnail).resolve().is_relative_to(thumbs.resolve())
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize(
    "kind,code",
    [
        ("truncated", "decode.truncated"),
        ("no_moov", "decode.truncated"),
        ("empty_payload", "decode.corrupt"),
        ("random", "ingest.not_a_video"),
        ("empty", "ingest.empty"),
    ],
)
@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_pipeline_broken_files(kind, code, decoder, tmp_path):
    p = V.make_corrupt_file(tmp_path / f"{kind}.mp4", kind)
    with pytest.raises(FramebusError) as ei:
        decode_video(job(p, decoder=decoder))
    if decoder == "decord" and kind == "truncated":
        # decord refuses the damaged file outright: reported as a decode failure, not a crash
        assert ei.value.code.startswith("decode.")
    else:
        assert ei.value.code == code


def test_pipeline_not_videos(tmp_path):
    for p in (V.make_text_file(tmp_path / "a.txt"), V.make_audio_file(tmp_path / "a.wav")):
        with pytest.raises(IngestError) as ei:
            decode_video(job(p))
        assert ei.value.code == "ingest.not_a_video"


def test_pipeline_limits_and_bad_jobs(clip):
    path = clip("h264")
    with pytest.raises(IngestError) as ei:
        decode_video(job(path, limits=Limits(max_duration_s=1.0)))
    assert ei.value.code == "ingest.too_long"
    for bad in (
        dict(sample_fps=0),
        dict(segment_s=-1),
        dict(max_frames=0),
        dict(short_side=0),
        dict(jpeg_quality=101),
        dict(video_id=""),
    ):
        with pytest.raises(DecodeError) as ei:
            decode_video(job(path, **bad))
        assert ei.value.code == "decode.bad_request", bad
    with pytest.raises(DecodeError) as ei:
        decode_video(job(path, decoder="nope"))
    assert ei.value.code == "decode.unknown_decoder"


def test_job_from_settings(clip):
    from framebus.streams.config import Settings

    s = Settings(sample_fps=4.0, segment_s=0.5, frame_size=40, max_duration_s=60, shot_detection=False)
    j = DecodeJob.from_settings(s, clip("h264"), "v9")
    assert (j.sample_fps, j.segment_s, j.short_side, j.decoder, j.limits.max_duration_s) == (4.0, 0.5, 40, "pyav", 60)
    out = decode_video(j)
    assert out.frames_sampled == 6 and len(out.segments) == 3


# --- hostile input -------------------------------------------------------------------------------


def test_mutated_files_raise_only_typed_errors(clip, tmp_path):
    """Seeded byte-level fuzzing of valid clips: every outcome is a result or a typed FramebusError
    (ingest.* / decode.*), never a stray exception type. A hang is caught by pytest-timeout, not by
    timing each case: how fast a case decodes is not a property this test pins."""
    import random

    rng = random.Random(1234)
    sources = [clip("h264", duration_s=1.0), clip("vp9", duration_s=1.0), clip("mjpeg", duration_s=1.0)]
    seen = set()
    for i in range(60):
        src = rng.choice(sources)
        data = bytearray(src.read_bytes())
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data = data[: rng.randrange(1, len(data))]
        p = tmp_path / f"m{i}{src.suffix}"
        p.write_bytes(bytes(data))
        try:
            out = decode_video(job(p, sample_fps=4.0, segment_s=0.5))
            assert all(s.frames for s in out.segments)
            seen.add("ok")
        except FramebusError as e:
            assert e.code.startswith(("ingest.", "decode.")), e.code
            seen.add(e.code)
    assert "ok" in seen and len(seen) >= 3


def test_pipeline_segments_are_shots_at_the_true_cuts_with_their_own_frames(tmp_path):
    from framebus.loadtest.cuts import make_cut_video

    video = make_cut_video(tmp_path / "cuts.mp4", "h264", 160, 90, 24, 8.0, 5)
    out = decode_video(DecodeJob(path=str(video.path), video_id="v", sample_fps=1.0, short_side=32))
    bounds = [0.0, *video.cuts_s, out.info.duration_s]
    assert len(out.segments) == len(video.cuts_s) + 1
    for seg, a, b in zip(out.segments, bounds, bounds[1:]):
        assert seg.start_s == pytest.approx(a, abs=1.5 / 24) and seg.end_s == pytest.approx(b, abs=1.5 / 24)
        assert seg.frames and all(seg.start_s <= p < seg.end_s for p, _ in seg.frames)  # its own pictures
        assert set(seg.quality) >= {"sharpness", "motion", "temporal_consistency"}


def test_pipeline_emits_each_shot_while_decoding_goes_on(tmp_path):
    """With shot detection, a shot is handed to ``emit`` once its closing cut is confirmed, before the
    decoder reaches the end of the file; every segment is emitted exactly once and equals the result's."""
    from framebus.models import world

    shots = [
        world.ShotSpec(shape=s, colour=c, motion="left", background=k, seed=k, duration_s=1.5)
        for k, (s, c) in enumerate([("circle", "red"), ("star", "blue"), ("square", "green"), ("triangle", "white")])
    ]
    video = world.make_world_video(tmp_path / "w.mp4", shots, fps=24, width=160, height=120)
    emitted = []
    out = decode_video(job(video.path, shots=True, sample_fps=1.0, thumb_dir=str(tmp_path / "t")), emit=emitted.append)
    got_bounds = [b for s in out.segments for b in (s.start_s, s.end_s)]
    assert got_bounds == pytest.approx([b for ab in video.bounds for b in ab], abs=1.5 / 24)
    assert out.emitted_early == 3 and out.segment_count == 4  # all but the last, before the end of the file
    assert sorted(s.index for s in emitted) == [0, 1, 2, 3] and [s.index for s in emitted[:3]] == [0, 1, 2]
    by_index = {s.index: s for s in emitted}
    for seg in out.segments:
        got = by_index[seg.index]
        assert (got.start_s, got.end_s, got.keyframe_s, got.frames, got.quality, got.thumbnail) == (
            seg.start_s,
            seg.end_s,
            seg.keyframe_s,
            seg.frames,
            seg.quality,
            seg.thumbnail,
        )
    # without emit, the same segments
    again = decode_video(job(video.path, shots=True, sample_fps=1.0))
    assert [(s.start_s, s.end_s, s.frames) for s in again.segments] == [
        (s.start_s, s.end_s, s.frames) for s in out.segments
    ]
    assert again.emitted_early == 0
