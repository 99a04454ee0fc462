"""One call that turns a local video file into sampled JPEG frames grouped by segment.

``decode_video(job)`` is what the decode agent runs in its process pool: a picklable
``DecodeJob`` in, a picklable ``DecodedVideo`` out, and only ``FramebusError`` subclasses raised
(so the error's ``code`` survives the trip back and lands in the DLQ / metadata document).

Steps: probe (limits enforced) -> choose target instants (``sample_fps`` grid, capped at
``max_frames``) -> decode every frame, select by exact pts, and (``shots``) feed a tiny copy of every
frame to the shot detector -> JPEG -> segments are the detected shots (or fixed ``segment_s``
windows) -> a shot that owns no sampled frame gets its midpoint sampled in a second pass -> assign
frames to segments -> keyframe per segment (nearest its middle), quality scores, optional thumbnail.
When the video stream does not state its own length (only the container does, or nothing does),
``info.duration_s`` is refined to the end of the last decoded frame and the segments are planned
on that.

``decode_video(job, emit)`` also hands each segment to ``emit`` as soon as it is final: with shot
detection on a decoder that sees every frame, a shot is final once the detector confirmed the cut
that ends it and a sampled frame past that cut arrived, so downstream agents (moderation alerts
above all) work on the first shots while the rest of the video is still being decoded. Shots that own
no sampled frame, the last shot and fixed windows are emitted at the end. Every segment is emitted
exactly once, in index order except for those deferred ones; the returned ``DecodedVideo`` has them
all.

``DecodeJob.limits`` defaults to the *default* ingest limits: pass ``Limits.from_settings(s)`` (or
build the job with ``DecodeJob.from_settings``) so that the decode stage applies the configured
ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from framebus.agents.media._avutil import av_error
from framebus.agents.media.decoders import DEFAULT_DECODER, get_decoder
from framebus.agents.media.probe import Limits, VideoInfo, probe_detailed
from framebus.agents.media.quality import quality_scores
from framebus.agents.media.sampling import (
    assign_frames_to_segments,
    keyframe_index,
    plan_segments,
    sample_times,
    segment_midpoints_without_targets,
)
from framebus.agents.media.shots import ShotDetector, Shrinker, detect_file, shots_from_cuts
from framebus.topics.errors import DecodeError, FramebusError
from framebus.topics.frames import decode_jpeg, encode_jpeg


@dataclass
class DecodeJob:
    path: str
    video_id: str
    sample_fps: float = 1.0
    segment_s: float = 2.0
    max_frames: int = 20_000
    short_side: int = 224
    jpeg_quality: int = 85
    decoder: str = DEFAULT_DECODER
    thumb_dir: str | None = None
    limits: Limits = field(default_factory=Limits)
    #: decoder threads in the worker process (0 = FFmpeg's choice)
    threads: int = 0
    #: segments are detected shots (True) or fixed ``segment_s`` windows (False)
    shots: bool = True
    min_shot_s: float = 0.4
    #: per-segment quality scores (sharpness, motion, temporal consistency)
    quality: bool = True

    @classmethod
    def from_settings(
        cls, settings: Any, path: str | os.PathLike, video_id: str, thumb_dir: str | os.PathLike | None = None
    ) -> DecodeJob:
        """A job with every knob taken from ``framebus.streams.config.Settings``."""
        return cls(
            path=os.fspath(path),
            video_id=video_id,
            sample_fps=settings.sample_fps,
            segment_s=settings.segment_s,
            max_frames=settings.max_frames,
            short_side=settings.frame_size,
            jpeg_quality=settings.jpeg_quality,
            decoder=settings.decoder,
            thumb_dir=os.fspath(thumb_dir) if thumb_dir is not None else None,
            limits=Limits.from_settings(settings),
            shots=settings.shot_detection,
            min_shot_s=settings.min_shot_s,
            threads=settings.decode_threads,
        )


@dataclass
class DecodedSegment:
    index: int
    start_s: float
    end_s: float
    keyframe_s: float
    #: (pts seconds, JPEG bytes), in presentation order; never empty
    frames: list[tuple[float, bytes]]
    #: path of ``<thumb_dir>/<video_id>/<index>.jpg`` (the keyframe), if a thumb_dir was given
    thumbnail: str | None = None
    #: ``quality_scores`` of the segment's sampled frames, when the job asked for them
    quality: dict[str, float] | None = None


@dataclass
class DecodedVideo:
    info: VideoInfo
    segments: list[DecodedSegment]
    frames_decoded: int
    #: segments handed to ``emit`` before the decoder reached the end of the file
    emitted_early: int = 0
    #: how many segments the video has (``len(segments)`` unless they were dropped after emitting)
    segment_count: int = 0

    @property
    def frames_sampled(self) -> int:
        return len({pts for seg in self.segments for pts, _ in seg.frames})


def decode_video(job: DecodeJob, emit: Callable[[DecodedSegment], None] | None = None) -> DecodedVideo:
    """Run ``job``; raises only ``FramebusError`` subclasses (``IngestError`` from the probe,
    ``DecodeError`` with ``decode.corrupt`` / ``decode.truncated`` / ``decode.unsupported_codec``
    / ``decode.bad_request`` / ``decode.unknown_decoder`` / ``decode.io_error`` (transient)).
    ``emit``, when given, gets every segment as soon as it is final (see the module docstring)."""
    try:
        return _decode_video(job, emit)
    except FramebusError:
        raise
    except av.FFmpegError as e:
        raise av_error(e) from None
    except OSError as e:
        raise DecodeError(f"I/O error: {e}", code="decode.io_error", transient=True) from None
    except MemoryError:
        raise DecodeError("out of memory while decoding", code="decode.failed", transient=True) from None
    except Exception as e:  # noqa: BLE001 - the contract is typed errors only
        raise DecodeError(f"unexpected {type(e).__name__}: {e}", code="decode.failed") from None


def _validate(job: DecodeJob) -> None:
    problems = []
    if not (job.sample_fps > 0) or not math.isfinite(job.sample_fps):
        problems.append(f"sample_fps={job.sample_fps!r}")
    if not (job.segment_s > 0) or not math.isfinite(job.segment_s):
        problems.append(f"segment_s={job.segment_s!r}")
    if job.max_frames < 1:
        problems.append(f"max_frames={job.max_frames!r}")
    if job.short_side < 1:
        problems.append(f"short_side={job.short_side!r}")
    if job.threads < 0:
        problems.append(f"threads={job.threads!r}")
    if not 1 <= job.jpeg_quality <= 100:
        problems.append(f"jpeg_quality={job.jpeg_quality!r}")
    if not job.video_id or "\x00" in job.video_id:
        problems.append("video_id is empty")
    if problems:
        raise DecodeError("bad decode job: " + ", ".join(problems), code="decode.bad_request")


def _decode_video(job: DecodeJob, emit: Callable[[DecodedSegment], None] | None = None) -> DecodedVideo:
    _validate(job)
    path = Path(job.path)
    pr = probe_detailed(path, job.limits)
    info = pr.info
    decoder = get_decoder(job.decoder, threads=job.threads)

    segments = plan_segments(info.duration_s, job.segment_s)
    grid = sample_times(info.duration_s, job.sample_fps, job.max_frames)
    extra = [] if job.shots else segment_midpoints_without_targets(segments, grid)
    shots = _ShotObserver(info.fps, job.min_shot_s) if job.shots and decoder.observes_all_frames else None

    run = decoder.sample(
        path, job.sample_fps, job.max_frames, job.short_side, extra_times=extra, probe=pr, observer=shots
    )
    thumb_root = _thumb_root(job)
    early = _EarlyShots(job, thumb_root, emit) if shots is not None and emit is not None else None
    frames: list[tuple[float, bytes]] = []
    for sf in run:
        frames.append((sf.pts_s, encode_jpeg(sf.rgb, job.jpeg_quality)))
        if early is not None:
            early.advance(shots.detector.cuts, frames)
    stats = getattr(run, "stats", None)
    frames_decoded = stats.frames_decoded if stats is not None else len(frames)
    if not frames:
        raise DecodeError("no frame could be sampled", code="decode.corrupt")

    # Refine the duration from the decoded frames: always when it was only estimated from packets;
    # when only the container stated it, if the frames disagree by more than a frame (the
    # container's length includes a longer audio track, say); when the stream stated it, only if
    # the frames run past it.
    if stats is not None and stats.complete and stats.end_s:
        end = float(stats.end_s)
        slack = 1.5 / info.fps if info.fps > 0 else 0.1
        refine = {
            "scan": abs(end - info.duration_s) > 1e-6,
            "container": abs(end - info.duration_s) > slack,
            "stream": end > info.duration_s + slack,
        }.get(pr.duration_source, False)
        if refine:
            info = dataclasses.replace(info, duration_s=end)
            segments = plan_segments(info.duration_s, job.segment_s)

    if job.shots:
        cuts = shots.cuts() if shots is not None else detect_file(path, threads=job.threads).cuts
        segments = shots_from_cuts(cuts, info.duration_s)
        frames += _frames_for_empty_segments(decoder, job, path, pr, segments, [p for p, _ in frames])

    frames.sort(key=lambda f: f[0])
    pts = [p for p, _ in frames]
    groups = assign_frames_to_segments(pts, segments)
    out = []
    sent = early.sent if early is not None else {}
    for k, ((a, b), idxs) in enumerate(zip(segments, groups)):
        own = [frames[i] for i in idxs]
        seg = sent.get(k)
        if seg is None or (seg.start_s, seg.end_s, seg.frames) != (a, b, own):
            seg = _segment(job, thumb_root, k, (a, b), own)
            if emit is not None:
                emit(seg)
        out.append(seg)
    return DecodedVideo(
        info=info, segments=out, frames_decoded=frames_decoded, emitted_early=len(sent), segment_count=len(out)
    )


def decode_video_to_queue(job: DecodeJob, queue: Any) -> DecodedVideo:
    """``decode_video`` for a process pool: each segment goes to ``queue`` (a ``multiprocessing``
    manager queue; ``put`` blocks while it is full, so a slow consumer holds the decoder back) as soon
    as it is final; returns the ``DecodedVideo`` without its segments (they were sent)."""
    decoded = decode_video(job, emit=queue.put)
    return dataclasses.replace(decoded, segments=[])


def _segment(
    job: DecodeJob, thumb_root: Path | None, index: int, bounds: tuple[float, float], own: list[tuple[float, bytes]]
) -> DecodedSegment:
    """A segment from its own frames (sorted by pts, not empty): keyframe nearest its middle,
    thumbnail, quality scores."""
    pts = [p for p, _ in own]
    key = keyframe_index(pts, list(range(len(own))), bounds)
    thumb = _write_atomic(thumb_root / f"{index}.jpg", own[key][1]) if thumb_root is not None else None
    quality = quality_scores([decode_jpeg(jpeg) for _, jpeg in own], flow=False) if job.quality else None
    return DecodedSegment(
        index=index,
        start_s=bounds[0],
        end_s=bounds[1],
        keyframe_s=pts[key],
        frames=own,
        thumbnail=thumb,
        quality=quality,
    )


class _EarlyShots:
    """Emits each shot while decoding goes on, once it is final: the cut that ends it is confirmed and a
    sampled frame at or past that cut arrived (frames come in pts order, so the shot has all its sampled
    frames). A shot without a sampled frame of its own is left for the end (its frame comes from a
    second pass), and so is the last shot."""

    def __init__(self, job: DecodeJob, thumb_root: Path | None, emit: Callable[[DecodedSegment], None]):
        self.job, self.thumb_root, self.emit = job, thumb_root, emit
        self.sent: dict[int, DecodedSegment] = {}
        self.index = 0  # index of the shot now open
        self.start = 0.0  # its start
        self.cuts_seen = 0  # detector cuts already turned into shot boundaries
        self.first = 0  # frames[first:] are not in a closed shot yet

    def advance(self, cuts: list[float], frames: list[tuple[float, bytes]]) -> None:
        latest = frames[-1][0]
        while self.cuts_seen < len(cuts) and cuts[self.cuts_seen] <= latest:
            cut = cuts[self.cuts_seen]
            self.cuts_seen += 1
            if not self.start < cut:
                continue  # shots_from_cuts ignores it too
            end = self.first
            while end < len(frames) and frames[end][0] < cut:
                end += 1
            own = frames[self.first : end]
            if own:
                seg = _segment(self.job, self.thumb_root, self.index, (self.start, cut), own)
                self.sent[self.index] = seg
                self.emit(seg)
            self.index, self.start, self.first = self.index + 1, cut, end


class _ShotObserver:
    """Sees every decoded frame: a tiny area-averaged RGB copy (swscale) feeds the shot detector."""

    def __init__(self, fps: float, min_shot_s: float):
        self.detector = ShotDetector(fps if fps > 0 else 25.0, min_shot_s=min_shot_s)
        self.shrink = Shrinker(SHOT_FRAME_SIZE)

    def __call__(self, pts_s: float, frame) -> None:
        self.detector.push(pts_s, self.shrink(frame))

    def cuts(self) -> list[float]:
        self.detector.finish()
        return list(self.detector.cuts)


def _frames_for_empty_segments(
    decoder, job: DecodeJob, path: Path, pr, segments, pts: list[float]
) -> list[tuple[float, bytes]]:
    """A shot shorter than the sampling interval may own no sampled frame: sample its midpoint in a
    second, targeted pass (rare; short shots only), so every shot is described by its own picture."""
    missing = [(a + b) / 2 for a, b in segments if not any(a <= p < b for p in pts)]
    if not missing:
        return []
    run = decoder.sample(path, 1e-6, len(missing) + 1, job.short_side, extra_times=missing, probe=pr)
    return [(sf.pts_s, encode_jpeg(sf.rgb, job.jpeg_quality)) for sf in run if sf.pts_s not in pts]


SHOT_FRAME_SIZE = 36  # short side of the frames the shot detector sees

_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_component(name: str) -> str:
    """``name`` as a single, harmless path component (no separators, no leading dot), distinct for distinct
    names: a name that is already safe stays as it is; any other gets a digest of itself appended."""
    if _SAFE.fullmatch(name):
        return name
    s = _UNSAFE.sub("_", name)[:80].lstrip(".")
    return f"{s}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def thumbnail_dir(blob_dir: str | os.PathLike, tenant: str) -> Path:
    """Where a tenant's thumbnails live: ``<blob_dir>/thumbnails/<tenant>`` (the HTTP API serves a tenant
    only files under its own)."""
    return Path(blob_dir) / "thumbnails" / safe_component(tenant)


def _thumb_root(job: DecodeJob) -> Path | None:
    if not job.thumb_dir:
        return None
    root = Path(job.thumb_dir) / safe_component(job.video_id)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_atomic(dest: Path, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".jpg")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return os.fspath(dest)
