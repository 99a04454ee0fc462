"""Encoding frames into a video file with PyAV: what the synthetic world and the test videos share."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np

# codec key -> (encoder, default pix_fmt, default container suffix, encoder options)
CODECS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "h264": ("libx264", "yuv420p", ".mp4", {"preset": "veryfast", "crf": "18"}),
    "hevc": ("libx265", "yuv420p", ".mp4", {"preset": "ultrafast", "crf": "18", "x265-params": "log-level=error"}),
    "hevc10": (
        "libx265",
        "yuv420p10le",
        ".mp4",
        {"preset": "ultrafast", "crf": "18", "x265-params": "log-level=error"},
    ),
    "vp9": ("libvpx-vp9", "yuv420p", ".webm", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    "av1": ("libsvtav1", "yuv420p", ".mkv", {"preset": "12", "crf": "25"}),
    "mpeg4": ("mpeg4", "yuv420p", ".mp4", {"qscale": "2"}),
    "mjpeg": ("mjpeg", "yuvj420p", ".avi", {"q:v": "2"}),
    "prores": ("prores_ks", "yuv422p10le", ".mov", {"profile": "2"}),
    "prores4444": ("prores_ks", "yuv444p10le", ".mov", {"profile": "4"}),
    "ffv1": ("ffv1", "yuv420p", ".mkv", {}),
}


def _odd_safe_pix_fmt(codec: str, pix_fmt: str, width: int, height: int) -> str:
    if width % 2 == 0 and height % 2 == 0:
        return pix_fmt
    # x264/x265 refuse odd sizes with 4:2:0 chroma; 4:4:4 has no such constraint.
    if codec == "h264" and pix_fmt == "yuv420p":
        return "yuv444p"
    if codec in ("hevc", "hevc10") and pix_fmt.startswith("yuv420p"):
        return pix_fmt.replace("420", "444")
    return pix_fmt


def open_stream(
    out,
    codec: str,
    width: int,
    height: int,
    fps: float,
    pix_fmt: str | None,
    options: dict[str, str] | None = None,
    time_base: Fraction | None = None,
):
    encoder, default_pix, _, opts = CODECS[codec]
    opts = {**opts, **(options or {})}
    rate = Fraction(fps).limit_denominator(1001)
    stream = out.add_stream(encoder, rate=rate, options=opts)
    stream.width = width
    stream.height = height
    stream.pix_fmt = _odd_safe_pix_fmt(codec, pix_fmt or default_pix, width, height)
    if time_base is not None:
        stream.codec_context.time_base = time_base
        stream.time_base = time_base
    return stream


def frame_from_rgb(img: np.ndarray) -> av.VideoFrame:
    """HxWx3 uint8 RGB -> an ``av.VideoFrame`` to encode."""
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")


def encode_frames(out, stream, frames: Iterable[av.VideoFrame]) -> int:
    """Encode and mux ``frames`` into ``out`` through ``stream``, then flush it; returns the frame count."""
    n = 0
    for fr in frames:
        for pkt in stream.encode(fr):
            out.mux(pkt)
        n += 1
    for pkt in stream.encode(None):
        out.mux(pkt)
    return n
