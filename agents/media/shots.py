"""Shot (hard-cut) detection on tiny decoded frames.

Every decoded frame is converted by swscale straight from the decoder's YUV to a tiny RGB picture
(``small_frames``: 64x36 for 16:9, area-averaged; tens of microseconds) and fed to
``ShotDetector``, which finds hard cuts to the exact frame (~0.1 ms per frame, numpy only; no
model, no Kafka).

Per frame, a signature of the picture in Y'CbCr, computed on its 2x2 means (~600 pixels):

* soft marginal histograms of Y', Cb and Cr around each channel's mean (16 bins; every value
  shared linearly between the two nearest bins) - insensitive to motion, and, being centred,
  to small uniform shifts of brightness or colour (fades, lighting drift, GOP "pulsing");
* the channel means themselves;
* a block-mean thumbnail (9 cells on the short side: 16x9 for 64x36), each channel's mean
  removed - insensitive to noise and small motion.

``D(a, b)`` = the mean over the channels of half the L1 distance of the histograms (0..1)
+ 3 x the mean absolute difference of the channel means (/255, luma weighted twice)
+ ``pixel_weight`` (2) x the mean absolute difference of the thumbnails (/255, luma weighted
twice) at the best of the 9 one-cell shifts of one against the other (a cheap stand-in for
motion compensation: pans and moving objects up to 1/16 of the width per frame cost little).

With ``d[t] = D(t-1, t)``, frame ``t`` starts a new shot when all of these hold:

1. floor: ``d[t] >= min_score`` (0.18);
2. min shot: at least ``min_shot_s`` after the previous cut (and after the first frame);
3. isolation - a cut is a one-frame spike, motion a plateau, a flash two spikes: with ``nb`` the
   largest of ``d[t-2], d[t-1], d[t+1], d[t+2]``, ``d[t] > max(1.5 nb, min(2 nb, nb + 0.15))``;
4. not a flash nor a brief occlusion: with ``L = flash_s * fps`` look-ahead frames (0.2 s),
   no frame ``t+1 .. t+L`` comes back to frame ``t-1`` (``D(t-1, t+m) < flash_ratio * d[t]``),
   frame ``t`` is not a return to one of the frames ``t-L-1 .. t-2`` (the end of a flash), and
   ``D(t-2, t+2) >= flash_ratio * d[t]``;
5. adaptive threshold against the shot so far (``window_s`` = 1 s before ``t``):
   ``d[t] > median + k_mad * MAD`` and ``d[t] > ratio * median`` - fast-motion content raises
   its own baseline.

``push`` therefore confirms a cut ``L`` frames (0.2 s) late; ``finish`` settles the last
frames (a cut on the very last frame is never reported: it cannot be told from a flash).
Incremental and batch use give identical cuts. Dissolves, wipes and other gradual transitions are
not cuts and are not reported.

Public API:

* ``ShotDetector(fps, min_shot_s=0.4, ...)``: ``push(pts_s, small) -> float | None``,
  ``finish() -> list[float]``, ``cuts``; with ``keep_scores=True`` also ``scores`` (``d`` per
  frame) and ``trace`` (why each notable peak was not a cut);
* ``detect_cuts(frames, fps, **kw) -> list[float]`` - batch convenience;
* ``shots_from_cuts(cuts, duration_s, start_s=0.0) -> list[tuple[float, float]]``;
* ``small_frames(path, size=36, ...) -> Iterator[tuple[float, np.ndarray]]`` - every frame, tiny;
* ``detect_file(path, size=36, ...) -> ShotResult`` - decode (prefetched in a thread) + detect.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from framebus.agents.media._avutil import opened_for_decode, video_stream
from framebus.topics.errors import DecodeError

__all__ = [
    "ShotDetector",
    "ShotResult",
    "Signature",
    "detect_cuts",
    "detect_file",
    "frame_signature",
    "prefetched",
    "shots_from_cuts",
    "signature_distance",
    "small_frames",
    "small_size",
]

# ------------------------------------------------------------------------------------------------
# frame signatures
# ------------------------------------------------------------------------------------------------

_BINS = 16  # histogram bins per channel (soft: linearly interpolated)
_THUMB_SHORT = 9  # cells on the thumbnail's shorter side
_LUMA_WEIGHT = 2.0  # luma counts twice as much as each chroma channel in the pixel term

# RGB (0..255) @ _RGB2YCC = Y', Cb - 128, Cr - 128 (BT.601, full range)
_RGB2YCC = np.array([[0.299, -0.168736, 0.5], [0.587, -0.331264, -0.418688], [0.114, 0.5, -0.081312]], np.float32)
# histogram coordinate of a value: (value - channel mean) * _BINS / 256 + _H_CENTRE, bin centres
# at integers, the mean at the middle
_H_SCALE = _RGB2YCC * (_BINS / 256.0)
_H_CENTRE = _BINS / 2.0 - 0.5
# channel means are kept in bins: back to levels, luma weighted, /255
_M_WEIGHT = np.array([_LUMA_WEIGHT, 1.0, 1.0], np.float32) * (256.0 / _BINS) / (255.0 * (_LUMA_WEIGHT + 2.0))
_H_BASE = (np.arange(3) * _BINS).astype(np.intp)
_T_WEIGHT = np.array([_LUMA_WEIGHT, 1.0, 1.0], np.float32)


@dataclass
class Signature:
    """``hist``: (3 * _BINS,) soft marginal histograms of Y', Cb, Cr around each channel's
    mean (value - mean + 128), each summing to 1; ``mean``: (3,) the channel means (in bins);
    ``thumb``: (h, w, 3) block means in Y'CbCr, each channel minus its mean and luma scaled by
    ``_LUMA_WEIGHT`` (float32, 0..255 scale)."""

    hist: np.ndarray
    mean: np.ndarray
    thumb: np.ndarray


def _block_matrix(n: int, blk: int) -> np.ndarray:
    """(n // blk, n) averaging matrix: row k averages inputs [k * blk, (k + 1) * blk)."""
    m = n // blk
    out = np.zeros((m, n), np.float32)
    for k in range(m):
        out[k, k * blk : (k + 1) * blk] = 1.0 / blk
    return out


@functools.lru_cache(maxsize=32)
def _plan(h: int, w: int) -> tuple:
    """For an HxW input: the 2x2 reduction factor (1 for inputs under 18 px), and the two
    block-averaging matrices that turn the reduced (h2, w2*3) picture into the thumbnail."""
    f = 2 if min(h, w) >= 2 * _THUMB_SHORT else 1
    h2, w2 = h // f, w // f
    blk = max(1, min(h2, w2) // _THUMB_SHORT)
    bh, bw = max(1, h2 // blk), max(1, w2 // blk)
    tleft = _block_matrix(h2, blk)  # (bh, h2)
    # block means of RGB, converted to Y'CbCr and luma-weighted, in one product
    tright = np.kron(_block_matrix(w2, blk).T, _RGB2YCC * _T_WEIGHT).astype(np.float32)
    return f, h2, w2, tleft, tright, bh, bw


def frame_signature(small: np.ndarray) -> Signature:
    """The signature of one tiny frame: HxWx3 uint8 RGB (any small size, e.g. 64x36), or HxW
    luma."""
    a = np.asarray(small)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] < 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"expected an HxWx3 RGB or HxW luma array, got shape {a.shape}")
    h, w = a.shape[:2]
    f, h2, w2, tleft, tright, bh, bw = _plan(h, w)
    if f == 2:  # 2x2 means (the histograms need no more than ~600 pixels)
        a = a[: 2 * h2, : 2 * w2, :3].astype(np.float32)
        a = a[0::2] + a[1::2]
        a = (a[:, 0::2] + a[:, 1::2]) * 0.25
    else:
        a = a[..., :3].astype(np.float32)
    rgb = a.reshape(-1, 3)
    # soft marginal histograms: each value shares its weight between the two nearest bins
    x = rgb @ _H_SCALE
    mean = x.mean(axis=0)
    x += _H_CENTRE - mean
    np.clip(x, 0.0, _BINS - 1 - 1e-4, out=x)
    i0 = x.astype(np.intp)
    fr = (x - i0).ravel()
    i0 += _H_BASE
    i0 = i0.ravel()
    hist = np.bincount(i0, weights=1.0 - fr, minlength=3 * _BINS)
    hist += np.bincount(i0 + 1, weights=fr, minlength=3 * _BINS)[: 3 * _BINS]
    hist *= 3.0 / i0.size
    # block-mean thumbnail, brightness removed
    thumb = (tleft @ rgb.reshape(h2, w2 * 3) @ tright).reshape(-1, 3)  # Y'CbCr, weighted
    thumb -= thumb.mean(axis=0)
    thumb = thumb.reshape(bh, bw, 3)
    return Signature(hist=hist.astype(np.float32), mean=mean, thumb=thumb)


_T_NORM = 1.0 / (255.0 * (_LUMA_WEIGHT + 2.0))


def _shifted_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| of two thumbnails (luma weighted), at the best of the 9 one-cell shifts of
    ``b`` against ``a`` (border cells dropped); 0..1."""
    h, w = a.shape[:2]
    shifts, core = _plan_for_thumb(h, w)
    d = np.abs(b.ravel()[shifts] - a.ravel()[core]).sum(axis=1)
    return float(d.min() * _T_NORM * 3.0 / core.size)


@functools.lru_cache(maxsize=32)
def _plan_for_thumb(bh: int, bw: int) -> tuple:
    if bh >= 3 and bw >= 3:
        idx = np.arange(bh * bw * 3).reshape(bh, bw, 3)
        shifts = np.stack([idx[dy : dy + bh - 2, dx : dx + bw - 2].ravel() for dy in range(3) for dx in range(3)])
        core = idx[1:-1, 1:-1].ravel()
    else:
        shifts = np.arange(bh * bw * 3)[None, :]
        core = shifts[0]
    return shifts, core


def signature_distance(a: Signature, b: Signature, pixel_weight: float = 2.0, mean_weight: float = 3.0) -> float:
    """``D(a, b)``: mean over Y', Cb, Cr of half the L1 distance of the mean-centred soft
    histograms (0..1), plus ``mean_weight`` times the difference of the channel means (luma
    weighted, 0..1), plus ``pixel_weight`` times the shift-tolerant thumbnail difference (0..1)."""
    hd = float(np.abs(a.hist - b.hist).sum()) * (1.0 / 6.0)
    md = float(np.abs(a.mean - b.mean) @ _M_WEIGHT)
    if a.thumb.shape != b.thumb.shape:  # a change of frame size: no pixel comparison
        return hd + mean_weight * md
    return hd + mean_weight * md + pixel_weight * _shifted_diff(a.thumb, b.thumb)


# ------------------------------------------------------------------------------------------------
# detector
# ------------------------------------------------------------------------------------------------


class ShotDetector:
    """Incremental hard-cut detector; see the module docstring for the rule.

    ``push(pts_s, small)`` takes every decoded frame in presentation order (tiny HxWx3 uint8 RGB
    of a fixed size; ``small_frames`` makes them) and returns the time of a cut it has just
    confirmed - the pts of the first frame of the new shot - or None. ``finish()`` settles the
    frames still waiting for look-ahead and returns the cuts confirmed there. ``cuts`` holds
    every confirmed cut so far; ``scores`` the per-frame ``d[t]`` (when ``keep_scores``).

    ``fps`` sets the history window, the look-ahead and the frame tolerance of ``min_shot_s``;
    times are taken from ``pts_s`` (variable frame rate is fine). Frames should all have one
    size (a frame of another size is compared by its histograms and means only). Cost: about
    0.1 ms per frame at 64x36, and a few distances more at each candidate peak.
    """

    def __init__(
        self,
        fps: float,
        min_shot_s: float = 0.4,
        *,
        window_s: float = 1.0,
        min_score: float = 0.18,
        k_mad: float = 5.0,
        ratio: float = 2.0,
        peak_ratio: float = 2.0,
        peak_margin: float = 0.15,
        flash_ratio: float = 0.5,
        flash_s: float = 0.2,
        pixel_weight: float = 2.0,
        keep_scores: bool = False,
    ):
        if not (fps > 0) or not math.isfinite(fps):
            fps = 25.0
        self.fps = float(fps)
        self.min_shot_s = float(min_shot_s)
        self.min_score = float(min_score)
        self.k_mad = float(k_mad)
        self.ratio = float(ratio)
        self.peak_ratio = float(peak_ratio)
        self.peak_margin = float(peak_margin)
        self.flash_ratio = float(flash_ratio)
        self.pixel_weight = float(pixel_weight)
        self.lookahead = max(2, int(round(flash_s * self.fps)))
        self.window = max(4, int(round(window_s * self.fps)))
        self.cuts: list[float] = []
        self.scores: list[float] | None = [] if keep_scores else None
        #: with keep_scores: (pts, d, reason) of every frame with d >= min_score / 2 that was
        #: not taken as a cut (floor, min_shot, isolation, flash_*, adaptive)
        self.trace: list[tuple[float, float, str]] | None = [] if keep_scores else None
        keep = self.window + self.lookahead + 3
        self._sig: deque[Signature] = deque(maxlen=2 * self.lookahead + 3)
        self._pts: deque[float] = deque(maxlen=keep)
        self._d1: deque[float] = deque(maxlen=keep)  # d[t] = D(t-1, t); d[0] = 0
        self._n = 0  # frames pushed
        self._next = 1  # next frame to decide on
        self._first_pts: float | None = None
        self._last_cut: float | None = None
        self._finished = False

    @property
    def frames(self) -> int:
        return self._n

    # -- feeding ---------------------------------------------------------------------------------

    def push(self, pts_s: float, small: np.ndarray) -> float | None:
        """Add the next frame; returns a newly confirmed cut time (<= ``pts_s``) or None."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        sig = frame_signature(small)
        d = signature_distance(self._sig[-1], sig, self.pixel_weight) if self._sig else 0.0
        self._sig.append(sig)
        self._pts.append(float(pts_s))
        self._d1.append(d)
        if self.scores is not None:
            self.scores.append(d)
        if self._first_pts is None:
            self._first_pts = float(pts_s)
        self._n += 1
        found = None
        while self._next <= self._n - 1 - self.lookahead:
            got = self._decide(self._next)
            self._next += 1
            if got is not None:
                found = got
        return found

    def finish(self) -> list[float]:
        """Decide on the frames still waiting for look-ahead; returns the cuts found there.
        Call once, after the last ``push``."""
        out: list[float] = []
        if not self._finished:
            while self._next <= self._n - 1:
                got = self._decide(self._next)
                self._next += 1
                if got is not None:
                    out.append(got)
            self._finished = True
        return out

    def _reject(self, t: int, dt: float, why: str) -> None:
        if self.trace is not None:
            self.trace.append((self._pts[t - (self._n - len(self._pts))], dt, why))
        return None

    # -- the rule --------------------------------------------------------------------------------

    def _D(self, a: int, b: int) -> float:
        """Distance between absolute frames ``a`` and ``b`` (both among the last few)."""
        off = self._n - len(self._sig)
        return signature_distance(self._sig[a - off], self._sig[b - off], self.pixel_weight)

    def _decide(self, t: int) -> float | None:
        """Does absolute frame ``t`` start a new shot? (Frames up to ``t + lookahead`` are
        known, or all of them.)"""
        base = self._n - len(self._d1)  # absolute index of the oldest kept d
        i = t - base
        d1 = self._d1
        dt = d1[i]
        # 1. absolute floor
        if dt < self.min_score:
            if self.trace is not None and dt >= 0.5 * self.min_score:
                self.trace.append((self._pts[i], dt, "floor"))
            return None
        n_after = self._n - 1 - t
        if n_after < 1:
            return self._reject(t, dt, "last")  # the very last frame: a flash cannot be ruled out
        pts = self._pts[i]
        # 5. minimum shot length (from the first frame and from the previous cut)
        ref = self._last_cut if self._last_cut is not None else self._first_pts
        if pts - ref < self.min_shot_s - 0.25 / self.fps:
            return self._reject(t, dt, "min_shot")
        # 3. isolation: a cut is a one-frame spike, motion a plateau, a flash two spikes.
        #    Needed: peak_ratio x the highest neighbour, or for busy neighbours at least
        #    peak_margin above it and never less than 1.5 x.
        nb = max(d1[j] for j in range(max(0, i - 2), min(len(d1), i + 3)) if j != i)
        if dt <= max(1.5 * nb, min(self.peak_ratio * nb, nb + self.peak_margin)):
            return self._reject(t, dt, "isolation")
        # 4. not a flash (nor a brief occlusion): no frame of the look-ahead returns to what
        #    was before t, t itself is not a return to what was shortly before t-1 (the end of
        #    a flash), and the frames two either side differ as much as t-1 and t do
        lim = self.flash_ratio * dt
        for m in range(1, min(self.lookahead, n_after) + 1):
            if self._D(t - 1, t + m) < lim:
                return self._reject(t, dt, "flash_ahead")
        for m in range(2, min(self.lookahead + 1, t) + 1):
            if self._D(t - m, t) < lim:
                return self._reject(t, dt, "flash_behind")
        if n_after >= 2 and t >= 2 and self._D(t - 2, t + 2) < lim:
            return self._reject(t, dt, "flash_far")
        # 2. adaptive threshold against the shot so far (window_s before t): fast-motion
        #    content raises its own baseline
        first = 0 if base > 0 else 1  # d[0] is not a distance
        hist = [d1[j] for j in range(max(first, i - self.window), i)]
        if len(hist) >= 3:
            h = np.asarray(hist, np.float32)
            med = float(np.median(h))
            mad = float(np.median(np.abs(h - med)))
            if dt <= med + self.k_mad * mad or dt <= self.ratio * med:
                return self._reject(t, dt, "adaptive")
        self._last_cut = pts
        self.cuts.append(pts)
        return pts


# ------------------------------------------------------------------------------------------------
# conveniences
# ------------------------------------------------------------------------------------------------


def detect_cuts(frames: Iterable[tuple[float, np.ndarray]], fps: float, **kw) -> list[float]:
    """Cut times (pts of the first frame of each new shot) of a whole sequence of
    ``(pts_s, small)`` frames; ``kw`` go to ``ShotDetector``."""
    det = ShotDetector(fps, **kw)
    for pts, small in frames:
        det.push(pts, small)
    det.finish()
    return list(det.cuts)


def shots_from_cuts(cuts: Iterable[float], duration_s: float, start_s: float = 0.0) -> list[tuple[float, float]]:
    """``[(start, end), ...]`` covering ``[start_s, duration_s]``, split at ``cuts`` (sorted,
    cuts outside the range or not after the previous boundary ignored)."""
    bounds = [start_s]
    for c in sorted(cuts):
        if bounds[-1] < c < duration_s:
            bounds.append(float(c))
    end = max(float(duration_s), bounds[-1])
    bounds.append(end)
    if len(bounds) >= 2 and bounds[-1] == bounds[-2] and len(bounds) > 2:
        bounds.pop()
    return list(zip(bounds[:-1], bounds[1:]))


def small_size(width: int, height: int, size: int | tuple[int, int] = 36) -> tuple[int, int]:
    """(w, h) of the tiny picture: ``size`` is the shorter side (aspect kept, even numbers are
    not required), or an explicit ``(w, h)``."""
    if isinstance(size, tuple):
        return max(1, int(size[0])), max(1, int(size[1]))
    s = max(1, int(size))
    if width <= 0 or height <= 0:
        return s, s
    if width >= height:
        return max(1, int(round(width * s / height))), s
    return s, max(1, int(round(height * s / width)))


class Shrinker:
    """A decoded ``av.VideoFrame`` -> a small ``HxWx3`` uint8 array, in one swscale call (area
    averaging): shorter side ``size`` (or an explicit ``(w, h)``), fixed by the first frame seen."""

    def __init__(self, size: int | tuple[int, int] = 36, fmt: str = "rgb24"):
        self.size, self.fmt = size, fmt
        self.reformatter = VideoReformatter()
        self.size_wh: tuple[int, int] | None = None

    def __call__(self, frame) -> np.ndarray:
        if self.size_wh is None:
            self.size_wh = small_size(frame.width, frame.height, self.size)
        return self.reformatter.reformat(
            frame,
            width=self.size_wh[0],
            height=self.size_wh[1],
            format=self.fmt,
            interpolation=Interpolation.AREA,
            threads=1,
        ).to_ndarray()


def small_frames(
    path: str | os.PathLike,
    size: int | tuple[int, int] = 36,
    *,
    threads: int = 0,
    fmt: str = "rgb24",
    info: dict | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Decode every frame of ``path`` (PyAV, frame+slice threads) and yield ``(pts_s, small)``:
    ``pts_s`` in seconds from the stream start, ``small`` an HxWx3 uint8 array converted by
    swscale straight from the decoded picture (area averaging; shorter side ``size``, or an
    explicit ``(w, h)``). Frames without a pts get the previous one plus a nominal interval;
    frames whose pts does not increase are dropped. Coded orientation (rotation metadata does
    not matter to cuts). ``info``, if given, receives ``fps`` (the stream's average rate, 25 when
    unknown) once the file is open.

    Raises ``FramebusError`` subclasses only (``IngestError`` for an unreadable file,
    ``DecodeError`` for a broken stream) - possibly after yielding some frames."""
    with opened_for_decode(Path(path)) as container:
        stream = video_stream(container)
        if stream is None:
            raise DecodeError("no video stream", code="decode.corrupt")
        cc = stream.codec_context
        cc.thread_type = "AUTO"
        cc.thread_count = threads
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time is not None and tb else None
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate and float(rate) > 0 else 25.0
        if info is not None:
            info["fps"] = fps
        nominal = 1.0 / fps
        shrink = Shrinker(size, fmt)
        last = None
        for frame in container.decode(stream):
            if frame.pts is not None and tb is not None:
                t = float(frame.pts * tb)
                if start is None:
                    start = t
                t -= start
            else:
                t = (last + nominal) if last is not None else 0.0
            if last is not None and t <= last:
                continue
            last = t
            yield t, shrink(frame)


def prefetched(items: Iterable, depth: int = 64, batch: int = 8) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` items ahead (in batches of ``batch``):
    FFmpeg decodes and swscale converts without the GIL, so decoding the next frames overlaps
    with the numpy work on the current ones. Exceptions are re-raised here; leaving the loop
    early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth // max(1, batch)))
    stop = threading.Event()

    def put(msg) -> bool:
        while not stop.is_set():
            try:
                q.put(msg, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        buf: list = []
        try:
            for item in items:
                buf.append(item)
                if len(buf) >= batch:
                    if not put(("items", buf)):
                        return
                    buf = []
            if buf and not put(("items", buf)):
                return
            put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed over to the consumer
            if buf and not put(("items", buf)):
                return
            put(("error", e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    th = threading.Thread(target=run, name="framebus-prefetch", daemon=True)
    th.start()
    try:
        while True:
            kind, payload = q.get()
            if kind == "items":
                yield from payload
            elif kind == "end":
                return
            else:
                raise payload
    finally:
        stop.set()
        th.join(timeout=5)


@dataclass
class ShotResult:
    cuts: list[float]
    shots: list[tuple[float, float]]
    frames: int
    fps: float
    duration_s: float
    scores: list[float] | None = field(default=None, repr=False)
    trace: list[tuple[float, float, str]] | None = field(default=None, repr=False)


def detect_file(
    path: str | os.PathLike,
    size: int | tuple[int, int] = 36,
    *,
    threads: int = 0,
    prefetch: int = 64,
    keep_scores: bool = False,
    **kw,
) -> ShotResult:
    """``small_frames`` + ``ShotDetector`` over a whole file. ``kw`` go to ``ShotDetector``;
    ``fps`` is the stream's (override with ``fps=``). ``prefetch``: decode that many frames
    ahead in a background thread (0: decode and detect in turn, in this thread)."""
    path = Path(path)
    fps = kw.pop("fps", None)
    info: dict = {}
    frames: Iterable = small_frames(path, size, threads=threads, info=info)
    if prefetch > 0:
        frames = prefetched(frames, prefetch)
    det = None
    n, last = 0, 0.0
    for pts, small in frames:
        if det is None:
            fps = fps or info.get("fps") or 25.0
            det = ShotDetector(fps, keep_scores=keep_scores, **kw)
        det.push(pts, small)
        n, last = n + 1, pts
    if det is None:  # no frame decoded
        fps = fps or info.get("fps") or 25.0
        det = ShotDetector(fps, keep_scores=keep_scores, **kw)
    det.finish()
    dur = last + 1.0 / fps if n else 0.0
    return ShotResult(
        cuts=list(det.cuts),
        shots=shots_from_cuts(det.cuts, dur),
        frames=n,
        fps=fps,
        duration_s=dur,
        scores=det.scores,
        trace=det.trace,
    )
