"""PyAV plumbing shared by probe and the decoders: safe open, stream choice, error mapping,
rotation and colour metadata."""

from __future__ import annotations

import contextlib
import math
import os
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import ColorRange, Colorspace

from framebus.topics.errors import DecodeError, FramebusError, IngestError

# Demuxers we are willing to run on untrusted input. Anything else (playlists such as hls/dash
# that open further URLs, concat, image sequences, tty/ansi text, devices, lavfi ...) fails to
# open and is reported as ``ingest.not_a_video``.
DEMUXER_WHITELIST = ",".join(
    [
        "mov",
        "mp4",
        "m4a",
        "3gp",
        "3g2",
        "mj2",
        "matroska",
        "webm",
        "avi",
        "flv",
        "live_flv",
        "mpegts",
        "mpeg",
        "mpegvideo",
        "asf",
        "ogg",
        "mxf",
        "nut",
        "ivf",
        "obu",
        "h264",
        "hevc",
        "vvc",
        "m4v",
        "mjpeg",
        "gif",
        "apng",
        "yuv4mpegpipe",
        "dv",
        "rm",
        "wtv",
        "h261",
        "h263",
        "vc1",
        "cavsvideo",
        "dirac",
        "avs2",
        "avs3",
        # audio-only containers: accepted so that they are reported precisely (no video stream)
        "wav",
        "mp3",
        "aac",
        "flac",
        "w64",
    ]
)

OPEN_OPTIONS = {
    "format_whitelist": DEMUXER_WHITELIST,
    "protocol_whitelist": "file",
}

# Codecs that FFmpeg exposes as "video" but that are not moving pictures.
NOT_VIDEO_CODECS = {"ansi", "bintext", "xbin", "idf", "tty", "text"}

# AVColorSpace -> swscale colour matrix
_MATRIX = {
    1: Colorspace.ITU709,  # BT709
    4: Colorspace.FCC,  # FCC
    5: Colorspace.ITU601,  # BT470BG
    6: Colorspace.ITU601,  # SMPTE170M
    7: Colorspace.SMPTE240M,  # SMPTE240M
    9: Colorspace.BT2020,  # BT2020_NCL
    10: Colorspace.BT2020,  # BT2020_CL (approximated by the NCL matrix)
}
_FULL_RANGE_CODECS = {"mjpeg", "jpeg2000", "ljpeg", "jpegls", "mjpegb", "smvjpeg"}


@contextlib.contextmanager
def opened_for_decode(path: Path):
    """``with opened_for_decode(path) as container:`` opens ``path`` (``open_error`` when it cannot)
    and maps what decoding raises to ``FramebusError`` subclasses: FFmpeg errors via ``av_error``,
    other failures inside the decoder to ``decode.corrupt``."""
    try:
        container = open_input(path)
    except Exception as e:  # noqa: BLE001
        raise open_error(path, e) from None
    try:
        with container:
            yield container
    except FramebusError:
        raise
    except av.FFmpegError as e:
        raise av_error(e) from None
    except (MemoryError, OverflowError, ValueError, RuntimeError) as e:
        raise DecodeError(f"decode failed: {e}", code="decode.corrupt") from None


def open_input(path: Path):
    """``av.open`` for reading untrusted local media, with the demuxer whitelist."""
    return av.open(os.fspath(path), "r", options=dict(OPEN_OPTIONS), metadata_errors="replace")


def looks_like_isobmff(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return len(head) >= 8 and head[4:8] in (b"ftyp", b"mdat", b"free", b"wide", b"skip")


def open_error(path: Path, e: Exception) -> FramebusError:
    """Map a failure of ``av.open`` to a typed error."""
    if isinstance(e, FileNotFoundError):
        return IngestError(f"no such file: {path}", code="ingest.not_found")
    if isinstance(e, PermissionError):
        return IngestError(f"permission denied: {path}", code="ingest.unreadable")
    if isinstance(e, IsADirectoryError):
        return IngestError(f"not a regular file: {path}", code="ingest.not_a_file")
    if isinstance(e, av.InvalidDataError) and looks_like_isobmff(path):
        # An MP4/MOV whose index (moov) is missing: the classic result of an interrupted
        # upload or copy of a file written index-last.
        return DecodeError(f"MP4/MOV without an index (moov), probably truncated: {e}", code="decode.truncated")
    return IngestError(f"not a recognised video container: {_msg(e)}", code="ingest.not_a_video")


def _msg(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def av_error(e: Exception, what: str = "decode") -> DecodeError:
    """Map a PyAV/FFmpeg error raised while demuxing or decoding."""
    if isinstance(e, (av.DecoderNotFoundError, av.PatchWelcomeError)) or (
        isinstance(e, av.FFmpegError) and isinstance(e, NotImplementedError)
    ):
        return DecodeError(f"{what}: codec not supported: {_msg(e)}", code="decode.unsupported_codec")
    if isinstance(e, av.EOFError):
        return DecodeError(f"{what}: unexpected end of file: {_msg(e)}", code="decode.truncated")
    return DecodeError(f"{what}: {_msg(e)}", code="decode.corrupt")


def video_stream(container):
    """The first real video stream (cover art and other attached pictures are skipped)."""
    from av.stream import Disposition

    for s in container.streams.video:
        if s.disposition & Disposition.attached_pic:
            continue
        return s
    return None


def codec_name(stream) -> str:
    cc = stream.codec_context
    if cc is not None and cc.codec is not None:
        try:
            return cc.codec.canonical_name  # 'av1' rather than 'libdav1d'
        except Exception:  # pragma: no cover
            return cc.name
    return "unknown"


def rotation_cw(frame=None, stream=None) -> int:
    """Clockwise rotation (0/90/180/270) a player applies to show the picture upright.

    FFmpeg's display matrix angle (``VideoFrame.rotation``) is counter-clockwise; a phone
    portrait clip (``rotate=90`` in old metadata) reads -90 there and 90 here.
    """
    ccw = None
    if frame is not None:
        try:
            ccw = frame.rotation
        except Exception:  # pragma: no cover
            ccw = None
    if not ccw and stream is not None:
        tag = stream.metadata.get("rotate") if stream.metadata else None
        if tag:
            try:
                return int(round(float(tag) / 90.0)) * 90 % 360
            except ValueError:
                pass
    if not ccw:
        return 0
    return int(round(-float(ccw) / 90.0)) * 90 % 360


def bit_depth(pix_fmt: str | None) -> int:
    if not pix_fmt:
        return 8
    try:
        comps = av.VideoFormat(pix_fmt).components
        return max(c.bits for c in comps) if comps else 8
    except Exception:
        return 8


def source_colour(frame, codec: str = "") -> tuple[Colorspace, ColorRange]:
    """The colour matrix and range to convert ``frame`` with: as signalled by the stream, else
    guessed the way players do (BT.709 for HD - height >= 720 or width >= 1280 - else BT.601;
    limited range, except JPEG-style codecs and ``yuvj*`` formats which are full range)."""
    spc = int(frame.colorspace or 2)
    matrix = _MATRIX.get(spc)
    if matrix is None:
        matrix = Colorspace.ITU709 if (frame.height >= 720 or frame.width >= 1280) else Colorspace.ITU601
    rng = int(frame.color_range or 0)
    if rng == 2:
        crange = ColorRange.JPEG
    elif rng == 1:
        crange = ColorRange.MPEG
    elif frame.format.name.startswith("yuvj") or codec in _FULL_RANGE_CODECS:
        crange = ColorRange.JPEG
    else:
        crange = ColorRange.MPEG
    return matrix, crange


def sar(stream) -> float:
    """Sample (pixel) aspect ratio, 1.0 when unknown or implausible."""
    for obj in (stream, stream.codec_context):
        try:
            r = obj.sample_aspect_ratio
        except Exception:
            r = None
        if r:
            v = float(r)
            if 0.1 <= v <= 10 and math.isfinite(v):
                return v
    return 1.0


def to_seconds(value, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)
