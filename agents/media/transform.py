"""Video-to-video operations through FFmpeg's filters (PyAV's ``av.filter.Graph``), and reading a
local source clip for them.

Every operation takes and returns RGB uint8 frames ``(T, H, W, 3)``; none writes a file.

- ``upscale``: FFmpeg's ``scale`` filter (Lanczos by default).
- ``interpolate``: a new frame rate by FFmpeg's ``minterpolate`` (motion-compensated: motion vectors
  estimated between neighbouring frames, in-between frames drawn along them) or ``framerate`` (a
  cheaper cross-fade of the two neighbours, for content where motion estimation fails).
- ``read_frames``: a local file decoded with PyAV after ``probe`` has checked it against ``Limits``.

Errors: ``GenerationError`` with ``generate.bad_frames`` (input frames or parameters),
``generate.transform_failed`` (a filter failed), ``generate.source_too_large`` (a source whose decoded
frames would pass the pixel budget); ``read_frames`` also raises probe's ``ingest.*``/``decode.*``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import ColorRange, VideoReformatter

from framebus.agents.media._avutil import opened_for_decode, source_colour, video_stream
from framebus.agents.media.decoders import upright
from framebus.agents.media.encode import check_frames, frame_rate
from framebus.agents.media.probe import Limits, probe_detailed
from framebus.topics.errors import GenerationError

SCALE_METHODS = ("lanczos", "bicubic", "bilinear", "spline", "neighbor", "area")
INTERPOLATE_METHODS = ("minterpolate", "framerate")
#: decoded source frames cost 3 bytes a pixel: 2**28 pixels is 768 MiB of frames
MAX_SOURCE_PIXELS = 1 << 28
#: the largest output side ``upscale`` makes (FFmpeg's own limit is 16384)
MAX_SIDE = 8192
#: copies of the last frame fed after a clip so that the rate filters flush up to its end
HOLD_FRAMES = 3


def upscale(
    frames: np.ndarray,
    fps: float,
    factor: float | tuple[int, int] = 2,
    method: str = "lanczos",
) -> np.ndarray:
    """Resize every frame by ``factor`` (a number: both sides, rounded to even) or to ``(width, height)``
    with FFmpeg's ``scale`` filter, ``flags=<method>``. ``fps`` is the clip's rate (the filter's time base).
    Also downscales, when asked to."""
    frames = check_frames(frames)
    if method not in SCALE_METHODS:
        raise GenerationError(f"unknown scale method {method!r}; one of {SCALE_METHODS}", code="generate.bad_frames")
    height, width = frames.shape[1:3]
    if isinstance(factor, tuple):
        out_w, out_h = (int(v) for v in factor)
    else:
        f = float(factor)
        if not f > 0:
            raise GenerationError(f"scale factor must be positive, got {factor}", code="generate.bad_frames")
        out_w, out_h = _even(width * f), _even(height * f)
    if not (1 <= out_w <= MAX_SIDE and 1 <= out_h <= MAX_SIDE):
        raise GenerationError(
            f"output size {out_w}x{out_h} is outside 1..{MAX_SIDE} on a side", code="generate.bad_frames"
        )
    chain = [("scale", f"w={out_w}:h={out_h}:flags={method}"), ("format", "rgb24")]
    out = _run_graph(frames, frame_rate(fps), chain)
    if len(out) != len(frames):
        raise GenerationError(f"scale returned {len(out)} frames for {len(frames)}", code="generate.transform_failed")
    return out


def interpolate(
    frames: np.ndarray,
    fps: float,
    target_fps: float,
    method: str = "minterpolate",
) -> np.ndarray:
    """Change the frame rate of a clip from ``fps`` to ``target_fps``, keeping its duration:
    ``T`` frames become ``round(T * target_fps / fps)`` (the last frame is held to the clip's end).

    ``method="minterpolate"``: motion-compensated interpolation (``mi_mode=mci``, overlapped-block motion
    compensation, bidirectional motion estimation). ``method="framerate"``: each new frame blends its two
    neighbours (cheaper; ghosting on fast motion instead of warping artefacts). Both filters work on planar
    YUV; frames go through 4:4:4 (no chroma subsampling) and come back as RGB.
    """
    frames = check_frames(frames)
    if method not in INTERPOLATE_METHODS:
        raise GenerationError(
            f"unknown interpolation method {method!r}; one of {INTERPOLATE_METHODS}", code="generate.bad_frames"
        )
    src_rate, dst_rate = frame_rate(fps), frame_rate(target_fps)
    rate = f"{dst_rate.numerator}/{dst_rate.denominator}"
    if method == "minterpolate":
        interp = ("minterpolate", f"fps={rate}:mi_mode=mci:mc_mode=obmc:me_mode=bidir:scd=none")
    else:
        interp = ("framerate", f"fps={rate}")
    # The filters emit a frame only once they have seen the input after it: hold the last frame for
    # a few more input periods, then cut the output at the clip's duration.
    held = np.concatenate([frames, np.repeat(frames[-1:], HOLD_FRAMES, axis=0)])
    out = _run_graph(held, src_rate, [("format", "yuv444p"), interp, ("format", "rgb24")])
    expected = max(1, round(len(frames) * dst_rate / src_rate))
    if len(out) < expected:
        raise GenerationError(
            f"{method} returned {len(out)} frames, expected {expected}", code="generate.transform_failed"
        )
    return out[:expected]


def read_frames(
    path: str | os.PathLike,
    max_frames: int,
    limits: Limits | None = None,
    *,
    max_pixels: int = MAX_SOURCE_PIXELS,
) -> tuple[np.ndarray, float]:
    """Decode the first ``max_frames`` frames of the local video ``path`` to RGB: ``(frames, fps)``.

    ``probe`` checks the file against ``limits`` (size, duration, resolution) before anything is
    decoded, and ``max_frames`` x width x height must stay within ``max_pixels``. Frames come out upright
    (display rotation applied), full-range RGB converted with the stream's own colour matrix.
    """
    if max_frames < 1:
        raise GenerationError(f"max_frames must be at least 1, got {max_frames}", code="generate.bad_frames")
    probed = probe_detailed(path, limits or Limits())
    info = probed.info
    budget = int(max_frames) * probed.coded_width * probed.coded_height
    if budget > max_pixels:
        raise GenerationError(
            f"{max_frames} frames of {probed.coded_width}x{probed.coded_height} are {budget} pixels, "
            f"over the budget of {max_pixels}",
            code="generate.source_too_large",
        )
    reformatter = VideoReformatter()
    out: list[np.ndarray] = []
    with opened_for_decode(path) as container:
        stream = video_stream(container)
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            matrix, crange = source_colour(frame, info.codec)
            rgb = reformatter.reformat(
                frame,
                format="rgb24",
                src_colorspace=matrix,
                src_color_range=crange,
                dst_color_range=ColorRange.JPEG,
            ).to_ndarray()
            out.append(upright(rgb, info.rotation) if info.rotation else np.array(rgb, order="C", copy=True))
            if len(out) >= max_frames:
                break
    if not out:
        raise GenerationError(f"no frame decoded from {path}", code="generate.bad_frames")
    return np.stack(out), info.fps


def _even(v: float) -> int:
    return max(2, int(round(v / 2)) * 2)


def _run_graph(frames: np.ndarray, rate: Fraction, chain: Iterable[tuple[str, str]]) -> np.ndarray:
    """Push ``frames`` (timestamps 0, 1, 2, ... in units of ``1/rate``) through ``buffer -> chain ->
    buffersink`` and collect everything the sink gives until the end of the stream."""
    height, width = frames.shape[1:3]
    time_base = 1 / rate
    try:
        graph = av.filter.Graph()
        node = graph.add_buffer(width=width, height=height, format="rgb24", time_base=time_base)
        source = node
        for name, args in chain:
            nxt = graph.add(name, args)
            node.link_to(nxt)
            node = nxt
        sink = graph.add("buffersink")
        node.link_to(sink)
        graph.configure()

        out: list[np.ndarray] = []
        for i in range(len(frames)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts, frame.time_base = i, time_base
            source.push(frame)
            _drain(sink, out)
        source.push(None)
        _drain(sink, out)
    except (av.FFmpegError, ValueError) as e:
        names = " -> ".join(name for name, _ in chain)
        raise GenerationError(f"filter graph {names} failed: {e}", code="generate.transform_failed") from None
    if not out:
        raise GenerationError("the filter graph returned no frames", code="generate.transform_failed")
    return np.stack(out)


def _drain(sink, out: list[np.ndarray]) -> None:
    while True:
        try:
            frame = sink.pull()
        except (av.BlockingIOError, av.EOFError):
            return
        out.append(np.array(frame.to_ndarray(), order="C", copy=True))
