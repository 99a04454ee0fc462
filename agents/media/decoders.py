"""Frame samplers: decode a video and return the frames displayed at regular instants, as
upright RGB arrays whose shorter side is ``short_side``.

Selection is by exact presentation timestamps (see ``sampling``): target instants ``k / f``
(``f`` = ``fps``, lowered if needed so that at most ``max_frames`` targets cover the stated
duration) plus any ``extra_times``; for each, the frame whose display interval
``[pts, next_pts)`` contains it. Targets continue past the stated duration while the stream has
frames (up to ``max_frames`` grid targets), so a container that understates its length loses
nothing. ``pts_s`` is relative to the stream start.

``sample`` returns a ``SampleRun``: an iterator of ``SampledFrame`` whose ``stats`` are complete
once it is exhausted (frames decoded, end of the last frame, error counts). It raises
``DecodeError`` (``decode.corrupt`` / ``decode.truncated`` / ``decode.unsupported_codec``) -
possibly after yielding the frames it could decode.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import av
import numpy as np
from av.video.reformatter import ColorRange, Interpolation, VideoReformatter

from framebus.agents.media._avutil import av_error, opened_for_decode, sar, source_colour, video_stream
from framebus.agents.media.probe import Limits, ProbeResult, probe_detailed
from framebus.agents.media.sampling import FrameSelector, effective_fps, iter_grid, merge_targets, select_frames
from framebus.topics.errors import DecodeError, FramebusError
from framebus.topics.frames import output_size


@dataclass
class SampledFrame:
    """``index``: number of the source frame in presentation order (0 = first decoded frame);
    ``pts_s``: its presentation time in seconds from the stream start; ``rgb``: HxWx3 uint8,
    upright, shorter side = the requested ``short_side``."""

    index: int
    pts_s: float
    rgb: np.ndarray


@dataclass
class SampleStats:
    frames_decoded: int = 0
    #: end of the last decoded frame (pts + its duration), seconds from the stream start
    end_s: float | None = None
    first_pts_s: float | None = None
    #: True when every frame of the stream went through the decoder (no early stop)
    complete: bool = False
    decode_errors: int = 0
    #: frames dropped because their pts did not increase
    skipped_frames: int = 0
    truncated: bool = False
    #: the last packet read ended at the end of the file (nothing but packets after it)
    reached_eof: bool = False


class SampleRun(Iterator[SampledFrame]):
    """Iterator of sampled frames; ``stats`` are final once it is exhausted."""

    def __init__(self, body: Callable[[SampleStats], Iterator[SampledFrame]]):
        self.stats = SampleStats()
        self._it = body(self.stats)

    def __iter__(self) -> SampleRun:
        return self

    def __next__(self) -> SampledFrame:
        return next(self._it)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close:
            close()


FrameObserver = Callable[[float, Any], None]


@runtime_checkable
class Decoder(Protocol):
    name: str
    observes_all_frames: bool

    def sample(
        self,
        path: str | os.PathLike,
        fps: float,
        max_frames: int,
        short_side: int,
        *,
        extra_times: Sequence[float] = (),
        probe: ProbeResult | None = None,
        observer: FrameObserver | None = None,
    ) -> Iterator[SampledFrame]:
        """``observer(pts_s, frame)``, when given and supported (``observes_all_frames``), sees every
        decoded frame (an ``av.VideoFrame``), not only the sampled ones: shot detection hooks in here."""
        ...


# ------------------------------------------------------------------------------------------------
# shared geometry
# ------------------------------------------------------------------------------------------------


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a clockwise display rotation to a decoded picture."""
    k = (rotation // 90) % 4
    if k == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=-k))


def _targets(fps: float, max_frames: int, extra_times: Iterable[float], duration_s: float | None) -> Iterator[float]:
    f = effective_fps(duration_s, fps, max_frames) if duration_s and duration_s > 0 else fps
    return merge_targets(iter_grid(f, max_frames), sorted(extra_times))


def _tolerance(time_base, fps: float) -> float:
    """How early a target may be and still count as the next frame's: one tick of a time base
    that is coarse enough to round timestamps (Matroska's 1 ms rounds k/24 s to 0.042 s, which
    would otherwise hide every frame whose rounded pts lands just after its ideal instant), and
    float noise otherwise. Never more than 2 ms, never a sizeable part of a frame interval."""
    tick = float(time_base) if time_base else 0.0
    interval = 1.0 / fps if fps > 0 else 0.04
    if 0 < tick <= 0.002 and tick < interval / 4:
        return max(1e-6, tick)
    return 1e-6


def _probe(path: Path, probe: ProbeResult | None) -> ProbeResult:
    return probe if probe is not None else probe_detailed(path, Limits.unlimited())


def _check_args(fps: float, max_frames: int, short_side: int) -> None:
    if not (fps > 0) or not math.isfinite(fps):
        raise DecodeError(f"sample fps must be positive, got {fps!r}", code="decode.bad_request")
    if max_frames < 1 or short_side < 1:
        raise DecodeError("max_frames and short_side must be >= 1", code="decode.bad_request")


# ------------------------------------------------------------------------------------------------
# PyAV
# ------------------------------------------------------------------------------------------------


class PyAVDecoder:
    """Decodes every frame with FFmpeg (frame + slice threading), converts only the selected
    ones: scaled and converted to RGB in one swscale pass that honours the stream's colour
    matrix and range (guessing like players do when unsignalled), then rotated upright."""

    name = "pyav"
    observes_all_frames = True

    def __init__(self, threads: int = 0, thread_type: str = "AUTO", interpolation: Interpolation | None = None):
        self.threads = threads
        self.thread_type = thread_type
        self.interpolation = interpolation

    def _interp(self, src_w: int, src_h: int, dst_w: int, dst_h: int) -> Interpolation:
        if self.interpolation is not None:
            return self.interpolation
        # AREA averages when shrinking (no aliasing); BICUBIC when enlarging. ACCURATE_RND keeps
        # the YUV->RGB rounding exact (about 1 level better on flat colours).
        base = Interpolation.AREA if dst_w * dst_h < src_w * src_h else Interpolation.BICUBIC
        return base | Interpolation.ACCURATE_RND

    def sample(
        self,
        path: str | os.PathLike,
        fps: float,
        max_frames: int,
        short_side: int,
        *,
        extra_times: Sequence[float] = (),
        probe: ProbeResult | None = None,
        observer: FrameObserver | None = None,
    ) -> SampleRun:
        _check_args(fps, max_frames, short_side)
        path = Path(path)
        return SampleRun(
            lambda stats: self._run(path, fps, max_frames, short_side, tuple(extra_times), probe, stats, observer)
        )

    def _run(
        self,
        path: Path,
        fps: float,
        max_frames: int,
        short_side: int,
        extra_times: tuple[float, ...],
        probe: ProbeResult | None,
        stats: SampleStats,
        observer: FrameObserver | None = None,
    ) -> Iterator[SampledFrame]:
        pr = _probe(path, probe)
        info = pr.info
        with opened_for_decode(path) as container:
            yield from self._decode(container, path, pr, fps, max_frames, short_side, extra_times, stats, observer)
        if stats.frames_decoded == 0:
            raise DecodeError("no frame could be decoded", code="decode.corrupt")
        if (
            stats.complete
            and stats.reached_eof
            and pr.duration_source == "stream"
            and stats.end_s is not None
            and info.fps > 0
            and stats.end_s < 0.9 * info.duration_s - 1.0 / info.fps
        ):
            stats.truncated = True  # the index promises frames the file no longer holds
        if stats.truncated:
            raise DecodeError(
                f"the file ends early: decoded {stats.frames_decoded} frames up to "
                f"{stats.end_s or 0:.3f} s of {info.duration_s:.3f} s",
                code="decode.truncated",
            )
        if stats.decode_errors > max(10, stats.frames_decoded):
            raise DecodeError(
                f"{stats.decode_errors} undecodable packets for {stats.frames_decoded} frames", code="decode.corrupt"
            )

    def _decode(
        self,
        container,
        path: Path,
        pr: ProbeResult,
        fps: float,
        max_frames: int,
        short_side: int,
        extra_times: tuple[float, ...],
        stats: SampleStats,
        observer: FrameObserver | None = None,
    ) -> Iterator[SampledFrame]:
        info = pr.info
        stream = video_stream(container)
        if stream is None:  # pragma: no cover - probe said otherwise
            raise DecodeError("no video stream", code="decode.corrupt")
        cc = stream.codec_context
        cc.thread_type = self.thread_type
        cc.thread_count = self.threads
        tb = stream.time_base
        start = pr.start_s
        rotation = info.rotation
        aspect = sar(stream)
        nominal = 1.0 / info.fps if info.fps > 0 else 1.0 / 25
        selector: FrameSelector = FrameSelector(
            _targets(fps, max_frames, extra_times, info.duration_s), eps=_tolerance(tb, info.fps)
        )
        reformatter = VideoReformatter()
        codec = info.codec

        def convert(pts_s: float, item) -> SampledFrame:
            idx, frame = item
            tw, th = output_size(frame.width, frame.height, short_side, rotation, aspect)
            matrix, crange = source_colour(frame, codec)
            out = reformatter.reformat(
                frame,
                width=tw,
                height=th,
                format="rgb24",
                src_colorspace=matrix,
                src_color_range=crange,
                dst_color_range=ColorRange.JPEG,
                interpolation=self._interp(frame.width, frame.height, tw, th),
            )
            rgb = out.to_ndarray()  # may be a padded view into the frame's buffer
            rgb = upright(rgb, rotation) if rotation else np.array(rgb, order="C", copy=True)
            return SampledFrame(index=idx, pts_s=pts_s, rgb=rgb)

        size = os.path.getsize(path)
        last_t = None
        for frame in _frames(container, stream, size, stats):
            idx = stats.frames_decoded
            stats.frames_decoded += 1
            if frame.pts is not None:
                t = float(frame.pts * tb) - start
            elif last_t is not None:
                t = last_t + nominal
            else:
                t = 0.0
            if stats.first_pts_s is None:
                stats.first_pts_s = t
            dur = float(frame.duration * tb) if frame.duration else nominal
            if last_t is None or t > last_t:
                stats.end_s = max(stats.end_s or t + dur, t + dur)
            if observer is not None:
                observer(t, frame)
            got = selector.offer(t, (idx, frame))
            if got is not None:
                yield convert(*got)
            last_t = t if last_t is None else max(last_t, t)
            if selector.exhausted and observer is None:
                stats.skipped_frames = selector.skipped
                return  # nothing left to select: stop decoding early
        stats.complete = True
        stats.skipped_frames = selector.skipped
        end = stats.end_s if stats.end_s is not None else 0.0
        if pr.duration_source == "stream":
            end = max(end, info.duration_s)  # the last frame stays up until the stated end
        got = selector.finish(end)
        if got is not None:
            yield convert(*got)


def _frames(container, stream, file_size: int, stats: SampleStats) -> Iterator:
    """Decoded frames in presentation order, tolerating damaged packets (counted) and noticing
    a file that ends before its packets do (``stats.truncated``)."""
    try:
        for packet in container.demux(stream):
            if packet.size and packet.pos is not None and packet.pos >= 0:
                end = packet.pos + packet.size
                stats.reached_eof = end >= file_size
                if end > file_size or (packet.is_corrupt and stats.reached_eof):
                    stats.truncated = True  # the last packet was cut short by the end of file
            try:
                frames = stream.decode(packet)
            except (av.DecoderNotFoundError, av.PatchWelcomeError) as e:
                raise av_error(e) from None
            except av.FFmpegError:
                stats.decode_errors += 1
                continue
            yield from frames
    except FramebusError:
        raise
    except av.FFmpegError:
        # The demuxer gave up mid-file (typically "partial file"): flush what was decoded.
        stats.truncated = True
        try:
            yield from stream.decode(None)
        except av.FFmpegError:
            pass


# ------------------------------------------------------------------------------------------------
# decord
# ------------------------------------------------------------------------------------------------


class DecordDecoder:
    """Same interface on decord (``VideoReader`` + ``get_frame_timestamp`` + ``get_batch``).

    Best effort: decord converts with its own fixed YUV->RGB settings (the stream's colour
    matrix/range are honoured when signalled, but unsignalled streams are always taken as BT.601
    limited), and its bundled FFmpeg lacks some decoders (AV1): a file it cannot open raises
    ``DecodeError(code='decode.unsupported_codec')``. eva-decord rotates frames upright itself.
    Timestamps come as float32 and are matched with a 1 ms tolerance.
    """

    name = "decord"
    observes_all_frames = False
    batch = 16

    def __init__(self, threads: int = 0):
        self.threads = threads

    def sample(
        self,
        path: str | os.PathLike,
        fps: float,
        max_frames: int,
        short_side: int,
        *,
        extra_times: Sequence[float] = (),
        probe: ProbeResult | None = None,
        observer: FrameObserver | None = None,
    ) -> SampleRun:
        _check_args(fps, max_frames, short_side)
        path = Path(path)
        return SampleRun(
            lambda stats: self._run(path, fps, max_frames, short_side, tuple(extra_times), probe, stats, observer)
        )

    def _run(
        self,
        path: Path,
        fps: float,
        max_frames: int,
        short_side: int,
        extra_times: tuple[float, ...],
        probe: ProbeResult | None,
        stats: SampleStats,
        observer: FrameObserver | None = None,
    ) -> Iterator[SampledFrame]:
        try:
            import decord
        except ImportError as e:  # pragma: no cover
            raise DecodeError(f"decord is not installed: {e}", code="decode.unsupported_codec") from None
        pr = _probe(path, probe)
        info = pr.info
        # eva-decord applies the display rotation itself (frames come out upright) and takes the
        # output size in display orientation; the display aspect already has the SAR applied.
        tw, th = output_size(info.width, info.height, short_side)
        try:
            vr = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), width=tw, height=th, num_threads=self.threads)
            n = len(vr)
            ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
        except Exception as e:  # noqa: BLE001 - decord raises its own DECORDError / RuntimeError
            raise DecodeError(
                f"decord cannot open this video: {str(e).splitlines()[0][:200]}", code="decode.unsupported_codec"
            ) from None
        if n == 0:
            raise DecodeError("no frame could be decoded", code="decode.corrupt")
        starts = ts[:, 0] - ts[:, 0].min()
        order = np.argsort(starts, kind="stable")
        starts_sorted = starts[order]
        end = float(max(ts[:, 1].max() - ts[:, 0].min(), starts_sorted[-1]))
        stats.frames_decoded = n
        stats.first_pts_s = 0.0
        stats.end_s = end
        if pr.duration_source == "stream":
            end = max(end, info.duration_s)
        chosen = select_frames(
            starts_sorted.tolist(), _targets(fps, max_frames, extra_times, info.duration_s), end_s=end, eps=1e-3
        )
        idxs = [int(order[i]) for i in chosen]
        for k in range(0, len(idxs), self.batch):
            chunk = idxs[k : k + self.batch]
            try:
                arr = vr.get_batch(chunk).asnumpy()
            except Exception as e:  # noqa: BLE001
                raise DecodeError(
                    f"decord failed mid-file: {str(e).splitlines()[0][:200]}", code="decode.corrupt"
                ) from None
            for j, fi in enumerate(chunk):
                yield SampledFrame(index=fi, pts_s=float(starts[fi]), rgb=np.ascontiguousarray(arr[j]))
        stats.complete = True


# ------------------------------------------------------------------------------------------------

DECODERS: dict[str, Callable[..., Decoder]] = {"pyav": PyAVDecoder, "decord": DecordDecoder}
DEFAULT_DECODER = "pyav"


def get_decoder(name: str | None = None, *, threads: int = 0) -> Decoder:
    """A decoder by name (``pyav`` - the default - or ``decord``). ``threads``: decoder threads
    per process (0 = FFmpeg's choice, about one per core; use 1 or 2 when a process pool
    already keeps every core busy)."""
    key = (name or DEFAULT_DECODER).strip().lower()
    try:
        return DECODERS[key](threads=threads)
    except KeyError:
        raise DecodeError(
            f"unknown decoder {name!r}; choose from {sorted(DECODERS)}", code="decode.unknown_decoder"
        ) from None
