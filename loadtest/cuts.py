"""Synthetic videos with KNOWN hard cuts, for shot-detection tests and benchmarks.

A video is a sequence of shots; each shot is one procedurally rendered scene (numpy only, seeded)
and consecutive shots always differ in kind or palette. Cut times are exact: the pts of the first
frame of every shot after the first (``frame_index / fps``).

Shot kinds (``KINDS``):

* ``gradient`` - a two-colour linear gradient whose phase and angle drift slowly;
* ``bounce``   - 1-3 discs / boxes bouncing on a coloured background;
* ``pan``      - a smooth periodic colour texture panned slowly (0.4-1 % of the width per
  frame);
* ``fast_pan`` - the same, panned fast (a sixth to a ninth of the width per frame) - hard negative;
* ``fast_shape`` - a large disc sweeping across the frame in ~0.3-0.5 s, repeatedly, over a
  texture - hard negative;
* ``stripes``  - moving sinusoidal stripes of two colours;
* ``field``    - a colour field with a drifting light spot (lighting drift).

Modifiers applied inside a shot (never across a cut):

* ``fade``  - a slow brightness ramp over the whole shot (down to ~0.3 or up from it) - hard
  negative;
* ``flash`` - one frame blended 70 % towards white, away from the shot's ends - hard negative;
* grain on every shot (per-frame noise, amplitude drawn in ``grain``, 0-8 levels by default).

About a quarter of the shots (``same_scene_p``) keep the previous shot's palette (another kind
of picture in the same colours - "same scene, another angle"), the others move to a base hue at
least 0.12 away.

Every generated video of two shots or more has a ``fast_pan``, a ``fast_shape``, a ``fade`` and a
``flash``. Shot lengths are drawn in [``min_shot_s``, ``max_shot_s``] (defaults 0.8-2.6 s, i.e.
never shorter than PySceneDetect's default 15-frame minimum scene length).

Public helpers:

* ``plan_shots(n_frames, fps, seed=...)`` -> ``list[ShotSpec]``
* ``render_frames(plan, width, height, fps, seed=...)`` -> iterator of HxWx3 uint8 RGB
* ``cut_frames(plan)`` / ``cut_times(plan, fps)`` - the ground truth
* ``make_cut_video(path, codec=..., width=, height=, fps=, duration_s=, seed=)`` -> ``CutVideo``
* ``make_cut_set(directory, n=10, seed=0, codecs=..., same_scene_p=, grain=)`` ->
  ``list[CutVideo]``
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from framebus.loadtest.videos import CODECS, default_suffix, encode_frames, frame_from_rgb, open_stream

KINDS = ("gradient", "bounce", "pan", "fast_pan", "fast_shape", "stripes", "field")
HARD_KINDS = ("fast_pan", "fast_shape")
DEFAULT_CODECS = ("h264", "hevc", "vp9", "mpeg4")

# Encoder options for cut videos: a realistic, lossy quality (compression noise is part of the
# test), fast presets.
ENCODE_OPTIONS: dict[str, dict[str, str]] = {
    "h264": {"preset": "veryfast", "crf": "23"},
    "hevc": {"preset": "ultrafast", "crf": "24", "x265-params": "log-level=error"},
    "vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"},
    "mpeg4": {"qscale": "4"},
    "av1": {"preset": "12", "crf": "32"},
    "mjpeg": {"q:v": "4"},
}


@dataclass
class ShotSpec:
    """One shot: ``kind`` starting at frame ``start`` for ``length`` frames; ``palette`` is a
    list of RGB triples; ``fade`` is None, ``"down"`` or ``"up"``; ``flash_at`` the index (inside
    the shot) of a flash frame or None; ``params`` the kind's own seeded parameters."""

    kind: str
    start: int
    length: int
    palette: list[tuple[int, int, int]]
    fade: str | None = None
    flash_at: int | None = None
    grain: float = 4.0
    params: dict = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class CutVideo:
    path: Path
    codec: str
    width: int
    height: int
    fps: float
    n_frames: int
    seed: int
    #: pts (seconds) of the first frame of every shot after the first
    cuts_s: list[float]
    #: frame index of the first frame of every shot after the first
    cut_frames: list[int]
    shots: list[ShotSpec]

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


# ------------------------------------------------------------------------------------------------
# planning
# ------------------------------------------------------------------------------------------------


def _palette(rng: np.random.Generator, n: int = 3, avoid_hue: float | None = None) -> list[tuple[int, int, int]]:
    base = rng.uniform(0, 1)
    if avoid_hue is not None:
        # keep the new palette's base hue at least 0.12 away from the previous one
        for _ in range(20):
            if min(abs(base - avoid_hue), 1 - abs(base - avoid_hue)) >= 0.12:
                break
            base = rng.uniform(0, 1)
    cols = []
    for k in range(n):
        h = (base + k * rng.uniform(0.08, 0.45)) % 1.0
        s = rng.uniform(0.35, 0.95)
        v = rng.uniform(0.35, 0.95)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return cols


def _base_hue(palette: Sequence[tuple[int, int, int]]) -> float:
    r, g, b = palette[0]
    return colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0]


def plan_shots(
    n_frames: int,
    fps: float,
    seed: int = 0,
    min_shot_s: float = 0.8,
    max_shot_s: float = 2.6,
    same_scene_p: float = 0.25,
    grain: tuple[float, float] = (0.0, 8.0),
) -> list[ShotSpec]:
    """Split ``n_frames`` into shots with seeded kinds, palettes and hard negatives. With
    probability ``same_scene_p`` a shot keeps the previous shot's palette (a different kind of
    picture in the same colours: "same scene, another angle" - a harder cut). Each shot's grain
    amplitude (levels) is drawn in ``grain``."""
    rng = np.random.default_rng([seed, 0xC075])
    lo = max(2, int(round(min_shot_s * fps)))
    hi = max(lo, int(round(max_shot_s * fps)))
    lengths: list[int] = []
    left = n_frames
    while left > 0:
        n = int(rng.integers(lo, hi + 1))
        if left - n < lo:  # never leave a stub shorter than the minimum
            n = left if left <= hi + lo else left - lo
        lengths.append(n)
        left -= n
    m = len(lengths)
    # kinds: the hard ones first (so that every video has them), then a shuffled mix
    kinds = list(HARD_KINDS)
    pool = [k for k in KINDS if k not in HARD_KINDS]
    while len(kinds) < m:
        kinds.extend(rng.permutation(pool).tolist())
    kinds = kinds[:m]
    order = rng.permutation(m)
    kinds = [kinds[i] for i in order]
    # modifiers: one fade and one flash at least (on distinct long-enough shots where possible)
    idx = rng.permutation(m).tolist()
    fade_shots = set(idx[: max(1, m // 5)])
    flash_shots = set(idx[max(1, m // 5) : max(1, m // 5) + max(1, m // 5)]) or {idx[0]}
    shots: list[ShotSpec] = []
    start = 0
    prev_hue = None
    margin = max(2, int(round(0.3 * fps)))
    same = rng.uniform(0, 1, m) < same_scene_p
    for j, (n, kind) in enumerate(zip(lengths, kinds)):
        pal = _palette(rng, 3, prev_hue)
        if j > 0 and same[j] and kind != shots[-1].kind:
            pal = list(shots[-1].palette)
        prev_hue = _base_hue(pal)
        fade = str(rng.choice(["down", "up"])) if j in fade_shots else None
        flash = None
        if j in flash_shots and n > 2 * margin + 1:
            flash = int(rng.integers(margin, n - margin))
        params = _kind_params(kind, rng)
        shots.append(
            ShotSpec(
                kind=kind,
                start=start,
                length=n,
                palette=pal,
                fade=fade,
                flash_at=flash,
                grain=float(rng.uniform(*grain)),
                params=params,
            )
        )
        start += n
    return shots


def _kind_params(kind: str, rng: np.random.Generator) -> dict:
    p: dict = {"seed": int(rng.integers(0, 2**31))}
    if kind == "gradient":
        p.update(
            angle=float(rng.uniform(0, np.pi)),
            drift=float(rng.uniform(-0.4, 0.4)),
            spin=float(rng.uniform(-0.3, 0.3)),
            period=float(rng.uniform(0.8, 2.0)),
        )
    elif kind == "bounce":
        n = int(rng.integers(1, 4))
        p.update(
            n=n,
            pos=rng.uniform(0.15, 0.85, (n, 2)).tolist(),
            vel=(rng.uniform(0.15, 0.6, (n, 2)) * rng.choice([-1, 1], (n, 2))).tolist(),
            size=rng.uniform(0.1, 0.22, n).tolist(),
            box=rng.integers(0, 2, n).tolist(),
        )
    elif kind in ("pan", "fast_pan"):
        ang = rng.uniform(0, 2 * np.pi)
        # speed in fractions of the width per frame
        sp = rng.uniform(0.004, 0.01) if kind == "pan" else rng.uniform(1 / 9, 1 / 6)
        p.update(vx=float(np.cos(ang) * sp), vy=float(np.sin(ang) * sp * 0.5), scale=float(rng.uniform(0.08, 0.2)))
    elif kind == "fast_shape":
        p.update(
            cross_s=float(rng.uniform(0.3, 0.5)),
            gap_s=float(rng.uniform(0.0, 0.3)),
            size=float(rng.uniform(0.25, 0.4)),
            y=float(rng.uniform(0.3, 0.7)),
            direction=int(rng.choice([-1, 1])),
            scale=float(rng.uniform(0.1, 0.25)),
        )
    elif kind == "stripes":
        p.update(angle=float(rng.uniform(0, np.pi)), freq=float(rng.uniform(2, 7)), speed=float(rng.uniform(-0.8, 0.8)))
    elif kind == "field":
        p.update(
            cx=float(rng.uniform(0.2, 0.8)),
            cy=float(rng.uniform(0.2, 0.8)),
            vx=float(rng.uniform(-0.15, 0.15)),
            vy=float(rng.uniform(-0.1, 0.1)),
            radius=float(rng.uniform(0.3, 0.7)),
        )
    return p


def cut_frames(plan: Sequence[ShotSpec]) -> list[int]:
    return [s.start for s in plan[1:]]


def cut_times(plan: Sequence[ShotSpec], fps: float) -> list[float]:
    return [s.start / fps for s in plan[1:]]


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------


def _ramp(v: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Map values in [0, 1] (HxW) through a piecewise-linear colour ramp -> HxWx3 float32."""
    cols = np.asarray(palette, np.float32)
    k = len(cols) - 1
    x = np.clip(v, 0, 1) * k
    i = np.minimum(x.astype(np.int32), k - 1)
    f = (x - i)[..., None]
    return cols[i] * (1 - f) + cols[i + 1] * f


def _periodic_texture(h: int, w: int, scale: float, seed: int) -> np.ndarray:
    """A smooth, periodic random field in [0, 1] of shape (h, w); ``scale`` is the blob size as a
    fraction of ``w``."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    sigma = 1.0 / max(2.0, scale * w)
    lp = np.exp(-(fx**2 + fy**2) / (2 * sigma**2))
    tex = np.real(np.fft.ifft2(np.fft.fft2(noise) * lp))
    tex -= tex.min()
    tex /= max(tex.max(), 1e-9)
    # stretch contrast a little (smooth blobs otherwise sit around 0.5)
    return np.clip((tex - 0.5) * 1.6 + 0.5, 0, 1).astype(np.float32)


class _Shot:
    def __init__(self, spec: ShotSpec, w: int, h: int, fps: float):
        self.s, self.w, self.h, self.fps = spec, w, h, fps
        p = spec.params
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        k = spec.kind
        if k in ("pan", "fast_pan", "fast_shape"):
            th, tw = 2 * h, 2 * w
            self.tex = _ramp(_periodic_texture(th, tw, p["scale"], p["seed"]), spec.palette)
            self.ox = float(np.random.default_rng(p["seed"] + 1).uniform(0, tw))
            self.oy = float(np.random.default_rng(p["seed"] + 2).uniform(0, th))

    def _crop(self, x0: float, y0: float) -> np.ndarray:
        th, tw = self.tex.shape[:2]
        rows = (int(round(y0)) + np.arange(self.h)) % th
        cols = (int(round(x0)) + np.arange(self.w)) % tw
        return self.tex[rows[:, None], cols[None, :]]

    def frame(self, i: int) -> np.ndarray:
        s, w, h, fps = self.s, self.w, self.h, self.fps
        p, t = s.params, i / fps
        xx, yy = self.xx, self.yy
        if s.kind == "gradient":
            a = p["angle"] + p["spin"] * t
            u = (xx / w * np.cos(a) + yy / h * np.sin(a)) / p["period"] + p["drift"] * t
            img = _ramp(0.5 + 0.5 * np.sin(2 * np.pi * u), s.palette)
        elif s.kind == "bounce":
            img = np.empty((h, w, 3), np.float32)
            img[:] = s.palette[0]
            for j in range(p["n"]):
                r = p["size"][j] * h
                cx = _bounce(p["pos"][j][0] * w + p["vel"][j][0] * w * t, r, w - r)
                cy = _bounce(p["pos"][j][1] * h + p["vel"][j][1] * h * t, r, h - r)
                if p["box"][j]:
                    m = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
                else:
                    m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                img[m] = s.palette[1 + j % 2]
        elif s.kind in ("pan", "fast_pan"):
            img = self._crop(self.ox + p["vx"] * w * i, self.oy + p["vy"] * w * i)
        elif s.kind == "fast_shape":
            img = self._crop(self.ox + 0.3 * i, self.oy).copy()
            period = p["cross_s"] + p["gap_s"]
            ph = (t % period) / p["cross_s"]
            r = p["size"] * h
            if ph <= 1.0:
                x = -r + ph * (w + 2 * r)
                if p["direction"] < 0:
                    x = w - x
                m = (xx - x) ** 2 + (yy - p["y"] * h) ** 2 <= r * r
                c = np.asarray(s.palette[0], np.float32)
                img[m] = 255 - c  # contrasting colour
        elif s.kind == "stripes":
            a = p["angle"]
            u = (xx * np.cos(a) + yy * np.sin(a)) / max(w, h) * p["freq"] + p["speed"] * t
            v = 0.5 + 0.5 * np.sin(2 * np.pi * u)
            img = _ramp(v, [s.palette[0], s.palette[2]])
        elif s.kind == "field":
            cx = (p["cx"] + p["vx"] * t) * w
            cy = (p["cy"] + p["vy"] * t) * h
            d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (p["radius"] * max(w, h)) ** 2
            light = 0.55 + 0.45 * np.exp(-d2)
            img = np.asarray(s.palette[0], np.float32) * light[..., None]
        else:  # pragma: no cover
            raise ValueError(s.kind)
        return img

    def render(self, i: int, rng: np.random.Generator) -> np.ndarray:
        s = self.s
        img = self.frame(i).astype(np.float32, copy=True)
        if s.fade:
            f = i / max(1, s.length - 1)
            gain = 1.0 - 0.7 * f if s.fade == "down" else 0.3 + 0.7 * f
            img *= gain
        if s.grain > 0:
            img += rng.uniform(-s.grain, s.grain, img.shape[:2])[..., None].astype(np.float32)
        if s.flash_at is not None and i == s.flash_at:
            img = img * 0.3 + 255 * 0.7
        return np.clip(img, 0, 255).astype(np.uint8)


def _bounce(x: float, lo: float, hi: float) -> float:
    if hi <= lo:
        return (lo + hi) / 2
    span = hi - lo
    u = (x - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


def render_frames(plan: Sequence[ShotSpec], width: int, height: int, fps: float, seed: int = 0) -> Iterator[np.ndarray]:
    """Every frame of ``plan`` as HxWx3 uint8 RGB, in order."""
    rng = np.random.default_rng([seed, 0x6A1])
    for spec in plan:
        shot = _Shot(spec, width, height, fps)
        for i in range(spec.length):
            yield shot.render(i, rng)


# ------------------------------------------------------------------------------------------------
# encoding
# ------------------------------------------------------------------------------------------------


def make_cut_video(
    path: str | os.PathLike,
    codec: str = "h264",
    width: int = 320,
    height: int = 180,
    fps: float = 25.0,
    duration_s: float = 12.0,
    seed: int = 0,
    *,
    min_shot_s: float = 0.8,
    max_shot_s: float = 2.6,
    same_scene_p: float = 0.25,
    grain: tuple[float, float] = (0.0, 8.0),
    options: dict[str, str] | None = None,
) -> CutVideo:
    """Render and encode a video of shots with known cuts (``plan_shots`` for the knobs); the
    container follows the path's suffix (``default_suffix(codec)`` is a safe choice)."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
    path = Path(path)
    n = max(1, int(round(fps * duration_s)))
    plan = plan_shots(n, fps, seed, min_shot_s, max_shot_s, same_scene_p, grain)
    opts = {**ENCODE_OPTIONS.get(codec, {}), **(options or {})}
    with av.open(str(path), "w") as out:
        stream = open_stream(out, codec, width, height, fps, None, opts)
        encode_frames(out, stream, (frame_from_rgb(img) for img in render_frames(plan, width, height, fps, seed)))
    return CutVideo(
        path=path,
        codec=codec,
        width=width,
        height=height,
        fps=fps,
        n_frames=n,
        seed=seed,
        cuts_s=cut_times(plan, fps),
        cut_frames=cut_frames(plan),
        shots=plan,
    )


# (width, height, fps) variants a set cycles through
SET_FORMATS = ((320, 180, 25.0), (640, 360, 30.0), (320, 180, 24.0), (480, 270, 30.0))


def make_cut_set(
    directory: str | os.PathLike,
    n: int = 10,
    seed: int = 0,
    codecs: Sequence[str] = DEFAULT_CODECS,
    duration_s: tuple[float, float] = (10.0, 18.0),
    formats: Sequence[tuple[int, int, float]] = SET_FORMATS,
    *,
    same_scene_p: float = 0.25,
    grain: tuple[float, float] = (0.0, 8.0),
) -> list[CutVideo]:
    """``n`` cut videos cycling through ``codecs`` and ``formats``; video ``k`` uses seed
    ``seed * 1000 + k``, so two sets with different ``seed`` share nothing."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x5E7])
    vids = []
    for k in range(n):
        codec = codecs[k % len(codecs)]
        w, h, fps = formats[(k // len(codecs) + k) % len(formats)]
        dur = float(np.round(rng.uniform(*duration_s), 1))
        s = seed * 1000 + k
        p = directory / f"cuts_s{s}_{codec}_{w}x{h}_{fps:g}{default_suffix(codec)}"
        vids.append(make_cut_video(p, codec, w, h, fps, dur, s, same_scene_p=same_scene_p, grain=grain))
    return vids
