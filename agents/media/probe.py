"""Cheap, defensive inspection of a local video file with PyAV.

``probe(path, limits)`` opens the container (demuxer whitelist, local files only), picks the
first real video stream, decodes its first frame (so a file that cannot produce a single picture
is rejected here, before any work is queued) and reports a ``VideoInfo``.

Error codes: ``ingest.not_found``, ``ingest.not_a_file``, ``ingest.unreadable``,
``ingest.empty``, ``ingest.too_large``, ``ingest.not_a_video``, ``ingest.too_long``,
``ingest.resolution_too_large``, ``decode.corrupt``, ``decode.truncated`` (MP4 without its
index), ``decode.unsupported_codec``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from framebus.agents.media._avutil import (
    NOT_VIDEO_CODECS,
    av_error,
    bit_depth,
    codec_name,
    open_error,
    open_input,
    rotation_cw,
    sar,
    to_seconds,
    video_stream,
)
from framebus.topics.errors import DecodeError, FramebusError, IngestError

#: Packets read at most while looking for the first decodable frame (a long open GOP at the
#: start of a cut stream can delay it; a hostile file cannot make us read forever).
FIRST_FRAME_MAX_PACKETS = 5000


@dataclass(frozen=True)
class VideoInfo:
    """What a video is. ``width``/``height`` are the *display* size: pixel aspect ratio applied
    and swapped for a 90/270 degree rotation. ``rotation`` is the clockwise angle (0, 90, 180,
    270) a player applies to the decoded picture. ``duration_s`` is the video stream's length."""

    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str
    bit_depth: int
    rotation: int
    container: str
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Limits:
    """Ingest limits (defaults = ``framebus.streams.config.Settings`` defaults). The resolution limit
    applies to the coded picture in either orientation (a portrait 2160x3840 clip passes a
    3840x2160 limit)."""

    max_file_bytes: int = 2 * 1024**3
    max_duration_s: float = 4 * 3600.0
    max_width: int = 7680
    max_height: int = 4320

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(
            max_file_bytes=settings.max_file_bytes,
            max_duration_s=settings.max_duration_s,
            max_width=settings.max_width,
            max_height=settings.max_height,
        )

    @classmethod
    def unlimited(cls) -> Limits:
        return cls(max_file_bytes=1 << 62, max_duration_s=math.inf, max_width=1 << 30, max_height=1 << 30)

    def fits(self, width: int, height: int) -> bool:
        return (width <= self.max_width and height <= self.max_height) or (
            width <= self.max_height and height <= self.max_width
        )


@dataclass(frozen=True)
class ProbeResult:
    """``probe`` plus provenance, for the decode pipeline.

    ``duration_source``: ``"stream"`` (the video stream states its length), ``"container"``
    (only the container does: it may include other streams) or ``"scan"`` (nobody does; measured
    from packet timestamps). ``start_s``: stream start time; decoded pts are reported relative to
    it. ``coded_width``/``coded_height``: the picture as decoded, before rotation/aspect.
    """

    info: VideoInfo
    duration_source: str
    start_s: float
    coded_width: int
    coded_height: int


def probe(path: str | os.PathLike, limits: Limits | None = None) -> VideoInfo:
    """Inspect ``path``; raise ``IngestError``/``DecodeError`` (see module docstring)."""
    return probe_detailed(path, limits).info


def probe_detailed(path: str | os.PathLike, limits: Limits | None = None) -> ProbeResult:
    limits = limits or Limits()
    path = Path(path)
    size = _check_file(path, limits)
    try:
        container = open_input(path)
    except Exception as e:  # noqa: BLE001 - every open failure is classified
        raise open_error(path, e) from None
    try:
        with container:
            return _probe_open(path, container, size, limits)
    except FramebusError:
        raise
    except av.FFmpegError as e:
        raise av_error(e, "probe") from None
    except (OSError, ValueError, RuntimeError, MemoryError, OverflowError) as e:
        raise DecodeError(f"probe failed: {e}", code="decode.corrupt") from None


def _check_file(path: Path, limits: Limits) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IngestError(f"no such file: {path}", code="ingest.not_found") from None
    except PermissionError:
        raise IngestError(f"permission denied: {path}", code="ingest.unreadable") from None
    except OSError as e:
        raise IngestError(f"cannot stat {path}: {e}", code="ingest.not_found") from None
    if not stat.S_ISREG(st.st_mode):
        raise IngestError(f"not a regular file: {path}", code="ingest.not_a_file")
    if st.st_size == 0:
        raise IngestError("the file is empty", code="ingest.empty")
    if st.st_size > limits.max_file_bytes:
        raise IngestError(
            f"file is {st.st_size} bytes, over the limit of {limits.max_file_bytes}", code="ingest.too_large"
        )
    return st.st_size


def _container_name(container, path: Path) -> str:
    names = [n for n in container.format.name.split(",") if n]
    ext = path.suffix.lower().lstrip(".")
    if ext in names:
        return ext
    return names[0] if names else "unknown"


def _probe_open(path: Path, container, size: int, limits: Limits) -> ProbeResult:
    stream = video_stream(container)
    if stream is None:
        raise IngestError("the file has no video stream", code="ingest.not_a_video")
    codec = codec_name(stream)
    if codec in NOT_VIDEO_CODECS or container.format.name in ("tty",):
        raise IngestError(f"{codec!r} is not a moving-picture codec", code="ingest.not_a_video")
    cc = stream.codec_context
    if cc is None:
        raise DecodeError(f"no decoder for codec {codec!r}", code="decode.unsupported_codec")
    if cc.width and cc.height and not limits.fits(cc.width, cc.height):
        raise IngestError(
            f"resolution {cc.width}x{cc.height} is over the limit of {limits.max_width}x{limits.max_height}",
            code="ingest.resolution_too_large",
        )

    tb = stream.time_base
    start_s = to_seconds(stream.start_time, tb)

    # --- duration from metadata -------------------------------------------------------------------
    duration, source = None, None
    sd = to_seconds(stream.duration, tb)
    if sd is not None and sd > 0 and math.isfinite(sd):
        duration, source = sd, "stream"
    elif container.duration and container.duration > 0:
        duration, source = container.duration / av.time_base, "container"
    if duration is not None and duration > limits.max_duration_s:
        raise IngestError(
            f"video is {duration:.1f} s long, over the limit of {limits.max_duration_s:.0f} s", code="ingest.too_long"
        )

    # --- first frame: proves the stream decodes; gives pix_fmt, rotation, real size -----------
    frame = _first_frame(container, stream)
    if frame is None:
        raise DecodeError("the container opens but no frame decodes", code="decode.corrupt")
    w, h = frame.width, frame.height
    if not limits.fits(w, h):
        raise IngestError(
            f"resolution {w}x{h} is over the limit of {limits.max_width}x{limits.max_height}",
            code="ingest.resolution_too_large",
        )
    if start_s is None:
        start_s = float(frame.time) if frame.time is not None else 0.0
    rotation = rotation_cw(frame, stream)
    pix_fmt = frame.format.name

    fps = _fps(stream)
    if duration is None:
        duration, source = _scan_duration(path, start_s, fps), "scan"
        if duration > limits.max_duration_s:
            raise IngestError(
                f"video is {duration:.1f} s long, over the limit of {limits.max_duration_s:.0f} s",
                code="ingest.too_long",
            )
    if not fps and duration > 0 and stream.frames:
        fps = stream.frames / duration

    dw = max(1, int(round(w * sar(stream))))
    dh = h
    if rotation in (90, 270):
        dw, dh = dh, dw
    info = VideoInfo(
        duration_s=float(duration),
        fps=float(fps),
        width=dw,
        height=dh,
        codec=codec,
        pix_fmt=pix_fmt,
        bit_depth=bit_depth(pix_fmt),
        rotation=rotation,
        container=_container_name(container, path),
        size_bytes=size,
    )
    return ProbeResult(info=info, duration_source=source, start_s=float(start_s), coded_width=w, coded_height=h)


def _fps(stream) -> float:
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        try:
            r = getattr(stream, attr)
        except Exception:
            r = None
        if r:
            v = float(r)
            if 0 < v < 10_000 and math.isfinite(v):
                return v
    return 0.0


def _first_frame(container, stream):
    n = 0
    try:
        for packet in container.demux(stream):
            n += 1
            try:
                frames = stream.decode(packet)
            except (av.DecoderNotFoundError, av.PatchWelcomeError) as e:
                raise av_error(e, "probe") from None
            except av.FFmpegError:
                frames = []  # a damaged packet; keep looking (the decoder resynchronises)
            if frames:
                return frames[0]
            if n >= FIRST_FRAME_MAX_PACKETS:
                break
    except FramebusError:
        raise
    except av.FFmpegError:
        pass  # demuxer gave up: nothing decodable found
    return None


def _scan_duration(path: Path, start_s: float, fps: float) -> float:
    """Length measured from packet timestamps (end of the last packet in presentation order)."""
    end, count = None, 0
    try:
        with open_input(path) as c:
            s = video_stream(c)
            tb = s.time_base
            for pkt in c.demux(s):
                if pkt.size == 0:
                    continue
                count += 1
                ts = pkt.pts if pkt.pts is not None else pkt.dts
                if ts is None:
                    continue
                e = float((ts + max(pkt.duration or 0, 0)) * tb)
                if not pkt.duration and fps:
                    e += 1.0 / fps
                end = e if end is None else max(end, e)
    except av.FFmpegError:
        pass  # a damaged tail: keep what was measured
    if end is not None:
        return max(0.0, end - start_s)
    return count / fps if fps else 0.0
