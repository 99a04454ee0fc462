"""Small synthetic test videos, generated with PyAV (no ffmpeg CLI needed).

Everything here is deterministic (seeded) and sized for unit tests: 64x48 .. 640x360, a few
seconds. The default ``counter`` pattern writes the frame number as 8 black/white cells in the
top band of every frame, so a test can tell exactly which source frame a decoder returned
(``read_counter``).

Public helpers:

* ``make_clip(path, codec=..., width=, height=, fps=, duration_s=, pattern=)``
* ``make_rotated_clip(path, rotation=90, ...)`` - display-matrix rotation written by PyAV
* ``make_vfr_clip(path, pts_s=[...])`` - explicit irregular timestamps
* ``make_color_bars_clip(path, colors, matrix=, full_range=, tagged=)`` - exact Y'CbCr bars
* ``make_corrupt_file(path, kind=)``, ``make_text_file(path)``, ``make_audio_file(path)``
* ``make_sample_set(dir)`` - the four demo clips
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from framebus.models.world.encode import CODECS, encode_frames, frame_from_rgb, open_stream

PATTERNS = ("counter", "ball", "squares", "waves", "noise", "mixed", "asym", "bars", "gradient")

_COUNTER_BITS = 8


def default_suffix(codec: str) -> str:
    return CODECS[codec][2]


# ------------------------------------------------------------------------------------------------
# content
# ------------------------------------------------------------------------------------------------


def render(pattern: str, i: int, width: int, height: int, fps: float = 24.0, seed: int = 0) -> np.ndarray:
    """Frame ``i`` of ``pattern`` as an HxWx3 uint8 RGB array (display orientation)."""
    h, w = height, width
    t = i / fps
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if pattern == "counter":
        img = np.empty((h, w, 3), np.uint8)
        img[..., 0] = (xx * 255 / max(w - 1, 1)).astype(np.uint8)
        img[..., 1] = ((yy * 255 / max(h - 1, 1) + 40 * i) % 256).astype(np.uint8)
        img[..., 2] = 128
        draw_counter(img, i)
        return img
    if pattern == "ball":  # a red ball moving right to left on dark grey
        img = np.full((h, w, 3), 40, np.uint8)
        r = max(2, min(h, w) // 6)
        cx = (w + r) - ((t * w / 3.0) % (w + 2 * r))
        cy = h / 2 + (h / 4) * np.sin(2 * np.pi * t / 2.0)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img[mask] = (230, 30, 30)
        return img
    if pattern == "squares":  # blue squares drifting diagonally on white
        img = np.full((h, w, 3), 235, np.uint8)
        s = max(4, min(h, w) // 8)
        off = int(t * 20)
        m = ((xx + off) // s + (yy + off // 2) // s) % 3 == 0
        img[m] = (20, 40, 200)
        return img
    if pattern == "waves":  # green gradient waves
        img = np.zeros((h, w, 3), np.uint8)
        v = 0.5 + 0.5 * np.sin(2 * np.pi * (xx / max(w, 1) * 2 + yy / max(h, 1) - t / 2.0))
        img[..., 1] = (40 + 200 * v).astype(np.uint8)
        img[..., 0] = (20 * v).astype(np.uint8)
        img[..., 2] = (60 * (1 - v)).astype(np.uint8)
        return img
    if pattern == "noise":  # coarse-grained random noise, new every frame
        rng = np.random.default_rng(seed * 100_003 + i)
        small = rng.integers(0, 256, ((h + 3) // 4, (w + 3) // 4, 3), dtype=np.uint8)
        return np.ascontiguousarray(small.repeat(4, 0).repeat(4, 1)[:h, :w])
    if pattern == "asym":  # quadrants: red TL, green TR, blue BL, white BR (orientation probe)
        img = np.empty((h, w, 3), np.uint8)
        img[: h // 2, : w // 2] = (255, 0, 0)
        img[: h // 2, w // 2 :] = (0, 255, 0)
        img[h // 2 :, : w // 2] = (0, 0, 255)
        img[h // 2 :, w // 2 :] = (255, 255, 255)
        return img
    if pattern == "mixed":  # waves + a moving ball + grain: a more camera-like bitrate
        img = render("waves", i, w, h, fps).astype(np.int16)
        ball = render("ball", i, w, h, fps)
        m = ball[..., 0] > 200
        img[m] = ball[m]
        rng = np.random.default_rng(seed * 100_003 + i)
        grain = rng.integers(-12, 13, ((h + 1) // 2, (w + 1) // 2, 1), dtype=np.int16)
        img += grain.repeat(2, 0).repeat(2, 1)[:h, :w]
        return np.clip(img, 0, 255).astype(np.uint8)
    if pattern == "bars":  # DEFAULT_BARS as vertical bars, static
        xs = np.arange(w) * len(DEFAULT_BARS) // w
        return np.ascontiguousarray(np.broadcast_to(np.asarray(DEFAULT_BARS, np.uint8)[xs], (h, w, 3)))
    if pattern == "gradient":
        img = np.empty((h, w, 3), np.uint8)
        img[..., 0] = (xx * 255 / max(w - 1, 1)).astype(np.uint8)
        img[..., 1] = (yy * 255 / max(h - 1, 1)).astype(np.uint8)
        img[..., 2] = (i * 7) % 256
        return img
    raise ValueError(f"unknown pattern {pattern!r}; choose from {PATTERNS}")


def draw_counter(img: np.ndarray, value: int) -> None:
    """Write ``value`` (mod 256) as 8 black/white cells across the top third, MSB first."""
    h, w = img.shape[:2]
    band = max(4, h // 3)
    for b in range(_COUNTER_BITS):
        x0, x1 = b * w // _COUNTER_BITS, (b + 1) * w // _COUNTER_BITS
        bit = (value >> (_COUNTER_BITS - 1 - b)) & 1
        img[:band, x0:x1] = 255 if bit else 0


def read_counter(rgb: np.ndarray) -> int:
    """Inverse of ``draw_counter`` on a decoded (possibly resized, lossy) frame."""
    h, w = rgb.shape[:2]
    band = max(4, h // 3)
    y0, y1 = band // 4, max(band // 4 + 1, band * 3 // 4)
    value = 0
    for b in range(_COUNTER_BITS):
        x0, x1 = b * w // _COUNTER_BITS, (b + 1) * w // _COUNTER_BITS
        m = (x1 - x0) // 4
        cell = rgb[y0:y1, x0 + m : max(x0 + m + 1, x1 - m)]
        value = (value << 1) | int(cell.mean() > 127)
    return value


# ------------------------------------------------------------------------------------------------
# encoding
# ------------------------------------------------------------------------------------------------


def make_clip(
    path: str | os.PathLike,
    codec: str = "h264",
    width: int = 64,
    height: int = 48,
    fps: float = 24.0,
    duration_s: float = 1.0,
    pattern: str = "counter",
    *,
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    seed: int = 0,
    audio_s: float | None = None,
) -> Path:
    """Encode ``round(fps*duration_s)`` frames of ``pattern`` with ``codec``; returns the path.

    The container follows the path's suffix (``default_suffix(codec)`` is a safe choice).
    ``audio_s``: also add a tone audio track that long (e.g. longer than the video, so that the
    container's duration is not the video's).
    """
    path = Path(path)
    n = max(1, int(round(fps * duration_s)))
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = open_stream(out, codec, width, height, fps, pix_fmt, options)
        astream = None
        if audio_s:
            astream = out.add_stream("pcm_s16le" if path.suffix in (".mkv", ".mov", ".avi") else "aac", rate=8000)
            astream.layout = "mono"
        encode_frames(out, stream, (frame_from_rgb(render(pattern, i, width, height, fps, seed)) for i in range(n)))
        if astream is not None:
            _encode_tone(out, astream, audio_s)
    return path


def _encode_tone(out, astream, seconds: float, rate: int = 8000) -> None:
    fmt = astream.codec_context.format.name if astream.codec_context.format else "s16"
    total, pts, chunk = int(rate * seconds), 0, 1024
    while pts < total:
        n = min(chunk, total - pts)
        x = np.sin(2 * np.pi * 440 * (pts + np.arange(n)) / rate)
        if fmt.startswith("flt"):
            arr = (0.2 * x).astype(np.float32)[None, :]
        else:
            fmt, arr = "s16", (x * 6000).astype(np.int16)[None, :]
        fr = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
        fr.sample_rate = rate
        fr.pts = pts
        for pkt in astream.encode(fr):
            out.mux(pkt)
        pts += n
    for pkt in astream.encode(None):
        out.mux(pkt)


def make_rotated_clip(
    path: str | os.PathLike,
    rotation: int = 90,
    width: int = 64,
    height: int = 48,
    fps: float = 24.0,
    duration_s: float = 1.0,
    codec: str = "h264",
    pattern: str = "asym",
) -> Path:
    """A clip whose *display* is ``width``x``height`` showing ``pattern`` upright, stored as coded
    frames rotated the other way plus a display matrix telling the player to rotate ``rotation``
    degrees clockwise (the phone-portrait convention, ``rotate=90`` in old mp4 metadata).

    PyAV >= 15 writes the display matrix itself (``VideoStream.set_display_rotation``, whose
    argument is counter-clockwise), so no ffmpeg binary is needed.
    """
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90")
    rotation %= 360
    path = Path(path)
    k = rotation // 90  # np.rot90 turns counter-clockwise: undoes a clockwise display rotation
    coded_w, coded_h = (height, width) if k % 2 else (width, height)
    n = max(1, int(round(fps * duration_s)))
    with av.open(str(path), "w") as out:
        stream = open_stream(out, codec, coded_w, coded_h, fps, None)
        if not hasattr(stream, "set_display_rotation"):  # pragma: no cover - PyAV < 15
            raise RuntimeError("this PyAV cannot write a display matrix")
        stream.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        encode_frames(
            out, stream, (frame_from_rgb(np.rot90(render(pattern, i, width, height, fps), k)) for i in range(n))
        )
    return path


def make_vfr_clip(
    path: str | os.PathLike,
    pts_s: Sequence[float],
    width: int = 64,
    height: int = 48,
    codec: str = "h264",
    pattern: str = "counter",
    time_base: Fraction = Fraction(1, 1000),
) -> Path:
    """Frame ``i`` (showing counter ``i``) is presented at ``pts_s[i]`` seconds, exactly.

    ``pts_s`` must be increasing and representable in ``time_base``. Use .mkv (ms) or .mp4.
    """
    path = Path(path)
    ticks = [int(round(Fraction(t).limit_denominator(10**6) / time_base)) for t in pts_s]
    if any(b <= a for a, b in zip(ticks, ticks[1:])):
        raise ValueError("pts must be strictly increasing")
    span = (pts_s[-1] - pts_s[0]) if len(pts_s) > 1 else 1.0
    nominal = max(1.0, (len(pts_s) - 1) / span) if span > 0 else 24.0
    with av.open(str(path), "w") as out:
        # no B-frames: reordered VFR timestamps make muxers derive odd durations (mp4 stts)
        opts = {"bf": "0"} if codec in ("h264", "hevc", "hevc10") else None
        stream = open_stream(out, codec, width, height, nominal, None, opts, time_base=time_base)

        def frames():
            for i, tk in enumerate(ticks):
                fr = frame_from_rgb(render(pattern, i, width, height, nominal))
                fr.pts = tk
                fr.time_base = time_base
                yield fr

        encode_frames(out, stream, frames())
    return path


# ------------------------------------------------------------------------------------------------
# colour bars with an exact, known Y'CbCr encoding
# ------------------------------------------------------------------------------------------------

# Kr, Kb of each matrix; AVCOL_SPC value to tag with
MATRICES = {"bt601": (0.299, 0.114, 6), "bt709": (0.2126, 0.0722, 1), "bt2020": (0.2627, 0.0593, 9)}

# Saturated primaries/secondaries (matrix-sensitive) and mid-tones (range-sensitive: a saturated
# colour clips to 0/255 whichever range is assumed, a mid-tone does not).
DEFAULT_BARS = [
    (255, 255, 255),
    (255, 255, 0),
    (0, 255, 255),
    (0, 255, 0),
    (255, 0, 255),
    (255, 0, 0),
    (0, 0, 255),
    (0, 0, 0),
    (128, 128, 128),
    (200, 60, 40),
    (40, 180, 90),
    (60, 80, 200),
]


def rgb_to_ycbcr(rgb: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
    """Exact 8-bit Y'CbCr of ``rgb`` (...x3 uint8) under ``matrix`` and range; ...x3 uint8."""
    kr, kb, _ = MATRICES[matrix]
    kg = 1.0 - kr - kb
    x = rgb.astype(np.float64) / 255.0
    y = kr * x[..., 0] + kg * x[..., 1] + kb * x[..., 2]
    cb = (x[..., 2] - y) / (2 * (1 - kb))
    cr = (x[..., 0] - y) / (2 * (1 - kr))
    if full_range:
        out = np.stack([y * 255, cb * 255 + 128, cr * 255 + 128], -1)
    else:
        out = np.stack([16 + y * 219, 128 + cb * 224, 128 + cr * 224], -1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def make_color_bars_clip(
    path: str | os.PathLike,
    colors: Sequence[tuple[int, int, int]] = DEFAULT_BARS,
    matrix: str = "bt709",
    full_range: bool = False,
    tagged: bool = True,
    width: int = 192,
    height: int = 48,
    fps: float = 10.0,
    duration_s: float = 0.5,
    codec: str = "h264",
) -> Path:
    """Vertical bars of ``colors`` (left to right), converted to Y'CbCr here with ``matrix`` and
    range and encoded losslessly in 4:4:4 (``codec``: h264 = libx264 qp=0, hevc = libx265
    lossless) so the only error left is the decoder's conversion back to RGB. (FFmpeg's H.264
    decoder reports full range as ``yuvj444p``, the HEVC one as ``yuv444p`` + a range flag.) With ``tagged`` the
    stream signals matrix and range (VUI + container); without it both
    are left unspecified.
    """
    path = Path(path)
    xs = np.arange(width) * len(colors) // width
    row = np.asarray(colors, np.uint8)[xs]
    rgb = np.broadcast_to(row, (height, width, 3))
    ycc = rgb_to_ycbcr(rgb, matrix, full_range)
    planar = np.ascontiguousarray(ycc.transpose(2, 0, 1))
    n = max(1, int(round(fps * duration_s)))
    _, _, spc = MATRICES[matrix]
    with av.open(str(path), "w") as out:
        lossless = {
            "h264": {"qp": "0", "preset": "ultrafast"},
            "hevc": {"x265-params": "lossless=1:log-level=error", "preset": "ultrafast"},
        }[codec]
        stream = open_stream(out, codec, width, height, fps, "yuv444p", lossless)
        cc = stream.codec_context
        if tagged:
            cc.colorspace = spc
            cc.color_range = 2 if full_range else 1
            cc.color_primaries = {"bt601": 6, "bt709": 1, "bt2020": 9}[matrix]
            cc.color_trc = {"bt601": 6, "bt709": 1, "bt2020": 14}[matrix]

        def frames():
            for _ in range(n):
                fr = av.VideoFrame.from_ndarray(planar, format="yuv444p")
                if tagged:
                    fr.colorspace = spc
                    fr.color_range = 2 if full_range else 1
                yield fr

        encode_frames(out, stream, frames())
    return path


def bar_centres(width: int, n: int) -> list[int]:
    """x coordinate of the centre of each of ``n`` bars in a frame ``width`` wide."""
    return [int((k + 0.5) * width / n) for k in range(n)]


# ------------------------------------------------------------------------------------------------
# things that are not (good) videos
# ------------------------------------------------------------------------------------------------


def make_audio_file(path: str | os.PathLike, duration_s: float = 0.5, rate: int = 8000) -> Path:
    """An audio-only WAV (a 440 Hz tone)."""
    path = Path(path)
    n = int(rate * duration_s)
    tone = (np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 8000).astype(np.int16)[None, :]
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        fr = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        fr.sample_rate = rate
        fr.pts = 0
        for pkt in stream.encode(fr):
            out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)
    return path


def make_text_file(path: str | os.PathLike, text: str | None = None) -> Path:
    path = Path(path)
    path.write_text(text or ("this is not a video\n" * 200))
    return path


CORRUPT_KINDS = ("random", "truncated", "no_moov", "empty_payload", "empty")


def make_corrupt_file(path: str | os.PathLike, kind: str = "random", seed: int = 0) -> Path:
    """Broken inputs:

    * ``random``: 64 KiB of random bytes;
    * ``truncated``: a faststart mp4 (index first) cut after ~40 % of its bytes - the index
      promises frames the file no longer has;
    * ``no_moov``: a plain mp4 (index at the end) cut in half - no index at all;
    * ``empty_payload``: a faststart mp4 whose sample data is zeroed - the container opens and
      describes a video stream, but not one frame decodes;
    * ``empty``: 0 bytes.
    """
    path = Path(path)
    if kind == "empty":
        path.write_bytes(b"")
        return path
    if kind == "random":
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 65536, np.uint8).tobytes())
        return path
    tmp = path.with_name(path.name + ".src.mp4")
    faststart = kind in ("truncated", "empty_payload")
    make_clip(tmp, "h264", 64, 48, 24, 2.0, "noise", container_options={"movflags": "faststart"} if faststart else None)
    data = bytearray(tmp.read_bytes())
    tmp.unlink()
    if kind == "truncated":
        path.write_bytes(bytes(data[: int(len(data) * 0.4)]))
    elif kind == "no_moov":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif kind == "empty_payload":
        start, end = _mdat_payload(bytes(data))
        data[start:end] = bytes(end - start)
        path.write_bytes(bytes(data))
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from {CORRUPT_KINDS}")
    return path


def _mdat_payload(data: bytes) -> tuple[int, int]:
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        typ = data[pos + 4 : pos + 8]
        hdr = 8
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            hdr = 16
        elif size == 0:
            size = len(data) - pos
        if typ == b"mdat":
            return pos + hdr, pos + size
        pos += size
    raise ValueError("no mdat box")


# ------------------------------------------------------------------------------------------------
# demo set
# ------------------------------------------------------------------------------------------------

SAMPLE_SET = (
    # name, pattern, fps, seconds
    ("red_ball", "ball", 24, 5.0),
    ("blue_squares", "squares", 25, 4.0),
    ("green_waves", "waves", 30, 4.0),
    ("noise", "noise", 24, 3.0),
)


def make_sample_set(directory: str | os.PathLike, width: int = 320, height: int = 240) -> list[Path]:
    """Four short, visually distinct H.264 clips for the demo; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pattern, fps, secs in SAMPLE_SET:
        p = directory / f"{name}.mp4"
        make_clip(
            p, "h264", width, height, fps, secs, pattern, options={"preset": "ultrafast", "crf": "23"}, seed=len(paths)
        )
        paths.append(p)
    return paths
