"""Pure timing math: which instants to sample, how to cut segments, which frame shows when.

Conventions (all times in seconds, relative to the start of the video stream):

* A decoded frame with presentation timestamp ``pts`` is *displayed* during ``[pts, next_pts)``,
  where ``next_pts`` is the pts of the next frame in presentation order (for the last frame: the
  end of the video). The first frame is also taken to cover any time before its pts. This is
  exact for variable-frame-rate video: no frame rate is assumed anywhere.
* Sampling at ``fps`` means the target instants ``k / fps``; for each target the frame displayed
  at that instant is chosen. Several targets landing on the same frame select it once.
* Segments are half-open ``[start, end)`` windows, except the last which is closed ``[start, end]``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

#: Slack for float timestamps: a target within EPS before a frame's pts counts as that frame.
EPS = 1e-6
#: A trailing segment shorter than this is merged into the previous one.
SLIVER_S = 1e-3


def effective_fps(duration_s: float, fps: float, max_frames: int) -> float:
    """``fps``, lowered just enough that a video of ``duration_s`` gets at most ``max_frames``
    targets (they are then spread evenly over the whole video rather than cut off)."""
    if fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be positive and finite, got {fps!r}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames!r}")
    if duration_s > 0 and math.isfinite(duration_s) and _count_below(duration_s, fps) > max_frames:
        return max_frames / duration_s
    return float(fps)


def _count_below(duration_s: float, fps: float) -> int:
    """Number of k >= 0 with k / fps < duration_s - EPS (robust to float noise: a target within
    EPS of the end is not inside the video)."""
    limit = duration_s - EPS
    if limit <= 0:
        return 1 if duration_s > 0 else 0
    n = max(0, math.ceil(limit * fps))
    while n > 0 and (n - 1) / fps >= limit:
        n -= 1
    while n / fps < limit:
        n += 1
    return n


def sample_times(duration_s: float, fps: float, max_frames: int) -> list[float]:
    """Target instants ``k / f`` inside ``[0, duration_s)``, at most ``max_frames`` of them, where
    ``f = effective_fps(duration_s, fps, max_frames)``. A zero/negative duration gives ``[]``."""
    f = effective_fps(duration_s, fps, max_frames)
    n = min(_count_below(duration_s, f), max_frames)
    return [k / f for k in range(n)]


def iter_grid(fps: float, limit: int | None = None) -> Iterator[float]:
    """``0, 1/fps, 2/fps, ...`` (unbounded unless ``limit``): targets for a stream whose real end
    is only known once it has been decoded."""
    ks = itertools.count() if limit is None else range(limit)
    for k in ks:
        yield k / fps


def merge_targets(*streams: Iterable[float]) -> Iterator[float]:
    """Merge sorted target streams into one sorted stream (duplicates kept; harmless)."""
    return heapq.merge(*streams)


def plan_segments(duration_s: float, segment_s: float) -> list[tuple[float, float]]:
    """Fixed windows ``[k*segment_s, (k+1)*segment_s)`` covering ``[0, duration_s]`` exactly.

    The last window ends at ``duration_s`` (so it may be shorter); a trailing sliver shorter
    than ``SLIVER_S`` is merged into the previous window; a video shorter than ``segment_s`` (or
    of unknown/zero length) has exactly one segment.
    """
    if segment_s <= 0 or not math.isfinite(segment_s):
        raise ValueError(f"segment_s must be positive and finite, got {segment_s!r}")
    if not (duration_s > 0) or not math.isfinite(duration_s):
        return [(0.0, max(0.0, duration_s) if math.isfinite(duration_s) else 0.0)]
    n = max(1, math.ceil(duration_s / segment_s - 1e-9))
    segs = [(k * segment_s, min((k + 1) * segment_s, duration_s)) for k in range(n)]
    segs[-1] = (segs[-1][0], duration_s)
    if len(segs) > 1 and segs[-1][1] - segs[-1][0] < SLIVER_S:
        segs.pop()
        segs[-1] = (segs[-1][0], duration_s)
    return [(float(a), float(b)) for a, b in segs]


def segment_of(t: float, segments: Sequence[tuple[float, float]]) -> int:
    """Index of the segment containing ``t`` (clamped to the first/last segment)."""
    starts = [s for s, _ in segments]
    return max(0, min(len(segments) - 1, bisect_right(starts, t + EPS) - 1))


def nearest_index(values: Sequence[float], x: float) -> int:
    """Index of the value closest to ``x`` (the earlier one on a tie); ``-1`` when empty."""
    best, best_d = -1, math.inf
    for i, v in enumerate(values):
        d = abs(v - x)
        if d < best_d - 1e-12:
            best, best_d = i, d
    return best


def segment_midpoints_without_targets(segments: Sequence[tuple[float, float]], targets: Sequence[float]) -> list[float]:
    """Midpoints of the segments that no target falls into; sampling these as well guarantees
    every segment a frame displayed inside it."""
    hit = [False] * len(segments)
    for t in targets:
        hit[segment_of(t, segments)] = True
    return [(a + b) / 2 for (a, b), h in zip(segments, hit) if not h]


def assign_frames_to_segments(frame_pts: Sequence[float], segments: Sequence[tuple[float, float]]) -> list[list[int]]:
    """For each segment, the indices (into ``frame_pts``) of the frames it gets.

    A frame belongs to the segment containing its pts (clamped: before 0 -> first segment, after
    the end -> last). A segment left empty gets the frame whose pts is nearest its midpoint (that
    frame then appears in two segments). With no frames at all every list is empty.
    """
    out: list[list[int]] = [[] for _ in segments]
    if not segments:
        return out
    for i, p in enumerate(frame_pts):
        out[segment_of(p, segments)].append(i)
    if frame_pts:
        for k, (a, b) in enumerate(segments):
            if not out[k]:
                out[k].append(nearest_index(frame_pts, (a + b) / 2))
    for lst in out:
        lst.sort(key=lambda i: (frame_pts[i], i))
    return out


def keyframe_index(frame_pts: Sequence[float], indices: Sequence[int], segment: tuple[float, float]) -> int:
    """Of ``indices``, the one whose pts is nearest the middle of ``segment``."""
    mid = (segment[0] + segment[1]) / 2
    j = nearest_index([frame_pts[i] for i in indices], mid)
    return indices[j]


class FrameSelector(Generic[T]):
    """Streaming selection of the frames displayed at sorted target instants.

    Feed decoded frames in presentation order with ``offer(pts, item)``; it returns the
    *previous* item when that one is selected (its display interval ``[pts_prev, pts)`` is only
    known once the next frame arrives), else ``None``. Call ``finish(end_s)`` after the last frame
    to settle it (it is displayed until ``end_s``). Frames whose pts does not increase are
    ignored (reported by ``offer`` returning ``None`` and counted in ``skipped``).
    """

    def __init__(self, targets: Iterable[float], eps: float = EPS):
        self._targets = iter(targets)
        self._eps = eps
        self._next: float | None = None
        self._advance()
        self._prev: tuple[float, T] | None = None
        self.selected = 0
        self.skipped = 0

    def _advance(self) -> None:
        self._next = next(self._targets, None)

    def _take_before(self, bound: float) -> bool:
        """Consume every target displayed before ``bound``; True if there was any."""
        took = False
        while self._next is not None and self._next + self._eps < bound:
            took = True
            self._advance()
        return took

    @property
    def exhausted(self) -> bool:
        """No target left: the remaining frames cannot be selected."""
        return self._next is None

    def offer(self, pts: float, item: T) -> tuple[float, T] | None:
        prev = self._prev
        if prev is not None and not pts > prev[0]:
            self.skipped += 1
            return None
        self._prev = (pts, item)
        if prev is not None and self._take_before(pts):
            self.selected += 1
            return prev
        return None

    def finish(self, end_s: float = math.inf) -> tuple[float, T] | None:
        prev, self._prev = self._prev, None
        if prev is None:
            return None
        bound = max(end_s, prev[0] + 2 * self._eps)  # the last frame is shown for a while at least
        if self._take_before(bound):
            self.selected += 1
            return prev
        return None


def select_frames(
    frame_pts: Sequence[float], targets: Iterable[float], end_s: float = math.inf, eps: float = EPS
) -> list[int]:
    """Offline ``FrameSelector``: indices of the frames (``frame_pts`` in presentation order)
    displayed at the sorted ``targets``, each index once, ascending."""
    sel: FrameSelector[int] = FrameSelector(targets, eps)
    out = []
    for i, p in enumerate(frame_pts):
        got = sel.offer(p, i)
        if got is not None:
            out.append(got[1])
    got = sel.finish(end_s)
    if got is not None:
        out.append(got[1])
    return out
