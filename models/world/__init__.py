"""A synthetic world of short videos with known content, for training and evaluating the tiny models.

Every shot shows one object (a ``shape`` in a ``colour``) moving in one direction (``motion``)
across a dark, textured background. Everything is a pure function of the ``ShotSpec`` (no global
RNG), so the same spec renders the same pixels on every machine.

* ``render_frame(spec, t, width, height)`` - one RGB frame at ``t`` seconds into the shot;
* ``sample_shots(rng, n)`` / ``split(seed)`` - balanced random shots / a train and held-out split;
* ``make_world_video(path, shots)`` - the shots encoded back to back (hard cuts) with PyAV;
* ``training_pairs(shots, k)`` - frames as the decode agent would send them (short side 224,
  JPEG round trip), each with its spec, for training.

Motion cue: a single frame cannot show motion, so the object leaves a fading trail behind it
(motion blur, like a long exposure: brightest next to the object, fading along the path it came
from) and travels from near the centre out towards the side it moves to: both the trail and the position
(always on that side of the frame) tell the direction even from one frame.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")  # "star" is drawn as a jagged spiky star
COLOURS = ("red", "green", "blue", "yellow", "white")
MOTIONS = ("left", "right", "up", "down")
UNSAFE_SHAPE = "star"  # the moderation category "hazard": any shot showing a star is unsafe
MODERATION_CATEGORIES: dict[str, tuple[str, ...]] = {"hazard": ("a spiky star", "a star")}

#: base RGB of each object colour (a seed jitters it a little)
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (40, 200, 70),
    "blue": (45, 95, 235),
    "yellow": (238, 218, 45),
    "white": (240, 240, 240),
}

#: dark, desaturated backgrounds: (base RGB, texture kind)
BACKGROUNDS: tuple[tuple[tuple[int, int, int], str], ...] = (
    ((26, 29, 40), "clouds"),
    ((40, 30, 24), "stripes"),
    ((32, 32, 32), "checker"),
    ((18, 34, 34), "clouds"),
    ((36, 24, 40), "gradient"),
    ((13, 13, 15), "grain"),
)
N_BACKGROUNDS = len(BACKGROUNDS)

#: bumped whenever the pixels ``render_frame`` draws change (caches of rendered videos key on it)
RENDER_VERSION = 4

#: object path, as fractions of the frame: the centre travels this far during a shot
_TRAVEL = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
#: trail: (offset back along the path in object radii, opacity): a smooth comet tail (motion blur)
_TRAIL = tuple((0.2 * k, 0.55 * (1 - k / 10)) for k in range(1, 10))


@dataclass(frozen=True)
class ShotSpec:
    shape: str
    colour: str
    motion: str
    background: int
    seed: int
    duration_s: float = 2.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; choose from {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; choose from {COLOURS}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; choose from {MOTIONS}")
        if not 0 <= int(self.background) < N_BACKGROUNDS:
            raise ValueError(f"background must be in 0..{N_BACKGROUNDS - 1}, got {self.background!r}")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s!r}")

    @property
    def unsafe(self) -> bool:
        return self.shape == UNSAFE_SHAPE

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.motion}"

    @property
    def attributes(self) -> tuple[str, str, str]:
        """``(shape, colour, motion)``."""
        return (self.shape, self.colour, self.motion)


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Look:
    """Everything a seed decides about a shot, in frame-relative units."""

    radius: float  # object radius as a fraction of min(width, height)
    start: tuple[float, float]  # centre at t=0, fractions of (width, height)
    end: tuple[float, float]  # centre at t=duration
    rotation: float  # radians
    points: int  # star spikes
    inner: float  # star valley radius / tip radius
    rgb: tuple[int, int, int]


@lru_cache(maxsize=4096)
def _look(spec: ShotSpec) -> _Look:
    rng = np.random.default_rng([int(spec.seed) & 0xFFFFFFFF, 0x5EED])
    radius = float(rng.uniform(0.16, 0.21))
    dx, dy = _TRAVEL[spec.motion]
    # Along the motion axis: from a little off the centre out towards the side it moves to (so the
    # trail stays in view and the object is always on that side); across it: anywhere that keeps it
    # inside. A 4:3 frame loses 1/8 of its width on each side to the square centre crop models
    # apply: up to 1 s into a 2 s shot (the decode agent samples 0 s and 1 s) the object is inside
    # that crop; later it starts to leave the frame.
    if dx:
        a0, a1 = 0.5 + dx * float(rng.uniform(0.08, 0.12)), 0.5 + dx * float(rng.uniform(0.28, 0.32))
        across = float(rng.uniform(0.36, 0.64))
        start, end = (a0, across), (a1, across + float(rng.uniform(-0.03, 0.03)))
    else:
        a0, a1 = 0.5 + dy * float(rng.uniform(0.1, 0.14)), 0.5 + dy * float(rng.uniform(0.36, 0.4))
        across = float(rng.uniform(0.38, 0.62))
        start, end = (across, a0), (across + float(rng.uniform(-0.03, 0.03)), a1)
    rotation = float(rng.uniform(-0.12, 0.12))
    points = int(rng.integers(6, 10))
    inner = float(rng.uniform(0.38, 0.5))
    base = np.asarray(COLOUR_RGB[spec.colour], np.int32)
    jitter = rng.integers(-14, 15, 3)
    rgb = tuple(int(v) for v in np.clip(base + jitter, 0, 255))
    return _Look(radius, start, end, rotation, points, inner, rgb)


@lru_cache(maxsize=64)
def _background(index: int, seed: int, width: int, height: int) -> np.ndarray:
    """Static dark textured background (read-only array)."""
    base, kind = BACKGROUNDS[index]
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xB6, index])
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= max(h, 1)
    xx /= max(w, 1)
    if kind == "clouds":
        cells = rng.uniform(-1, 1, (5, 7)).astype(np.float32)
        tex = _upsample(cells, h, w) * 14
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(8, 16)
        tex = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle))) * 9
    elif kind == "checker":
        n = int(rng.integers(6, 12))
        tex = (((xx * n * w / max(h, 1)).astype(int) + (yy * n).astype(int)) % 2) * 12.0 - 6
    elif kind == "gradient":
        tex = (xx * float(rng.uniform(-1, 1)) + yy * float(rng.uniform(-1, 1))) * 22
    else:  # grain
        tex = rng.uniform(-7, 7, (h, w)).astype(np.float32)
    tint = rng.uniform(-5, 5, 3)
    img = np.asarray(base, np.float32)[None, None, :] + tint[None, None, :] + tex[..., None]
    out = np.clip(img, 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def _upsample(cells: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small grid to ``h``x``w``."""
    ch, cw = cells.shape
    ys = np.linspace(0, ch - 1, h, dtype=np.float32)
    xs = np.linspace(0, cw - 1, w, dtype=np.float32)
    y0 = np.floor(ys).astype(int).clip(0, ch - 2)
    x0 = np.floor(xs).astype(int).clip(0, cw - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = cells[y0][:, x0]
    b = cells[y0][:, x0 + 1]
    c = cells[y0 + 1][:, x0]
    d = cells[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) * (1 - fy) + b * fx * (1 - fy) + c * (1 - fx) * fy + d * fx * fy).astype(np.float32)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, look: _Look) -> np.ndarray:
    """Boolean mask of ``shape`` (radius ``r`` pixels) at offsets ``dx``, ``dy`` from its centre."""
    c, s = math.cos(look.rotation), math.sin(look.rotation)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        half = r * 0.86
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == "triangle":  # equilateral, pointing up, circumradius ~1.15 r
        R = r * 1.15
        # three half-planes of the triangle with vertices at angles -90, 30, 150 degrees
        inside = np.ones_like(u, dtype=bool)
        for ang in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            nx, ny = math.cos(ang), math.sin(ang)  # outward normal of the opposite edge
            inside &= (u * nx + v * ny) <= R / 2
        return inside
    if shape == "star":  # jagged: spikes with straight-ish flanks (triangle wave in polar angle)
        R = r * 1.2
        theta = np.arctan2(v, u) + math.pi / 2
        phase = (theta * look.points / (2 * math.pi)) % 1.0
        tri = np.abs(phase - 0.5) * 2  # 1 at a tip, 0 in a valley
        bound = R * (look.inner + (1 - look.inner) * tri**1.6)
        return u * u + v * v <= bound * bound
    raise ValueError(f"unknown shape {shape!r}")


def object_centre(spec: ShotSpec, t: float, width: int, height: int) -> tuple[float, float]:
    """Pixel position of the object's centre at ``t`` seconds (linear in ``t``)."""
    look = _look(spec)
    f = float(t) / spec.duration_s
    x = look.start[0] + (look.end[0] - look.start[0]) * f
    y = look.start[1] + (look.end[1] - look.start[1]) * f
    return x * width, y * height


def _box(px: float, py: float, ext: int, width: int, height: int):
    x0, x1 = max(0, int(px) - ext), min(width, int(px) + ext + 1)
    y0, y1 = max(0, int(py) - ext), min(height, int(py) + ext + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return (x0, x1, y0, y1), (px, py)


def _mask_in(spec: ShotSpec, look: _Look, box, r: float) -> np.ndarray:
    (x0, x1, y0, y1), (px, py) = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return _shape_mask(spec.shape, xx + 0.5 - px, yy + 0.5 - py, r, look)


def render_frame(spec: ShotSpec, t: float, width: int, height: int) -> np.ndarray:
    """Frame ``t`` seconds into ``spec`` as an ``height``x``width``x3 uint8 RGB array."""
    if width < 8 or height < 8:
        raise ValueError("frames must be at least 8x8")
    look = _look(spec)
    img = _background(int(spec.background), int(spec.seed), int(width), int(height)).astype(np.float32)
    r = look.radius * min(width, height)
    cx, cy = object_centre(spec, t, width, height)
    ux, uy = _TRAVEL[spec.motion]
    colour = np.asarray(look.rgb, np.float32)
    ext = int(math.ceil(r * 1.3)) + 1
    # the trail: one opacity map (the max over the ghost copies, so they fade smoothly rather than
    # pile up), blended once; then the object on top
    alpha_map = np.zeros((height, width), np.float32)
    for off, alpha in _TRAIL:
        box = _box(cx - ux * off * r, cy - uy * off * r, ext, width, height)
        if box is None:
            continue
        (x0, x1, y0, y1), m = box[0], _mask_in(spec, look, box, r)
        np.maximum(alpha_map[y0:y1, x0:x1], m * np.float32(alpha), out=alpha_map[y0:y1, x0:x1])
    img += (colour[None, None, :] - img) * alpha_map[..., None]
    box = _box(cx, cy, ext, width, height)
    if box is not None:
        (x0, x1, y0, y1), m = box[0], _mask_in(spec, look, box, r)
        img[y0:y1, x0:x1][m] = colour
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# shot sets
# ------------------------------------------------------------------------------------------------


def all_combinations() -> list[tuple[str, str, str]]:
    """Every ``(shape, colour, motion)``, in a fixed order."""
    return list(itertools.product(SHAPES, COLOURS, MOTIONS))


def sample_shots(
    rng: np.random.Generator | int, n: int, *, exclude: set[tuple[str, str, str]] | None = None, duration_s: float = 2.0
) -> list[ShotSpec]:
    """``n`` shots, balanced over the ``(shape, colour, motion)`` combinations not in ``exclude``:
    the combinations are taken in shuffled rounds, so each appears ``n // combos`` or one more
    times. Background and seed are random. Deterministic for an int ``rng``."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))
    combos = [c for c in all_combinations() if not exclude or c not in exclude]
    if n < 0:
        raise ValueError("n must be >= 0")
    if not combos:
        raise ValueError("every combination is excluded")
    out: list[ShotSpec] = []
    while len(out) < n:
        for k in gen.permutation(len(combos)):
            if len(out) >= n:
                break
            shape, colour, motion = combos[int(k)]
            out.append(
                ShotSpec(
                    shape,
                    colour,
                    motion,
                    background=int(gen.integers(N_BACKGROUNDS)),
                    seed=int(gen.integers(0, 2**31 - 1)),
                    duration_s=duration_s,
                )
            )
    return out


#: train shots per combination, in ``split``
TRAIN_PER_COMBO = 8
#: held-out shots per combination, in ``split``
HELDOUT_PER_COMBO = 1


def split(seed: int = 0) -> tuple[list[ShotSpec], list[ShotSpec]]:
    """Deterministic ``(train, held_out)``: every combination ``TRAIN_PER_COMBO`` times in train
    and ``HELDOUT_PER_COMBO`` times in held-out. Held-out shots use seeds no train shot uses (odd
    vs even), so their sizes, paths, jitter and textures are new; the attribute space is the same."""
    combos = len(all_combinations())
    train = sample_shots(np.random.default_rng([int(seed), 1]), combos * TRAIN_PER_COMBO)
    held = sample_shots(np.random.default_rng([int(seed), 2]), combos * HELDOUT_PER_COMBO)
    train = [ShotSpec(s.shape, s.colour, s.motion, s.background, (s.seed // 2) * 2, s.duration_s) for s in train]
    held = [ShotSpec(s.shape, s.colour, s.motion, s.background, (s.seed // 2) * 2 + 1, s.duration_s) for s in held]
    return train, held


#: ``extra_shots`` streams (``split`` uses 1 for train and 2 for held-out)
FIT_STREAM = 3
VALIDATION_STREAM = 4


def extra_shots(seed: int = 0, per_combo: int = 2, *, stream: int = VALIDATION_STREAM) -> list[ShotSpec]:
    """Shots outside ``split(seed)``: every combination ``per_combo`` times, drawn from their own random
    stream (``stream`` >= 3; ``split`` uses 1 and 2), so a set for fitting or validating a model on top of
    the tiny models, or for calibrating its thresholds, that is distinct from both the training and the
    held-out shots. Seeds are even, like the train shots', and none equals a seed of ``split(seed)``."""
    if int(stream) in (1, 2):
        raise ValueError("streams 1 and 2 are split()'s train and held-out shots")
    combos = len(all_combinations())
    shots = sample_shots(np.random.default_rng([int(seed), int(stream)]), combos * int(per_combo))
    train, held = split(seed)
    taken = {s.seed for s in train} | {s.seed for s in held}
    out = []
    for s in shots:
        k = (s.seed // 2) * 2
        while k in taken:
            k += 2
        taken.add(k)
        out.append(ShotSpec(s.shape, s.colour, s.motion, s.background, k, s.duration_s))
    return out


# ------------------------------------------------------------------------------------------------
# videos
# ------------------------------------------------------------------------------------------------


@dataclass
class WorldVideo:
    path: Path
    shots: list[ShotSpec]
    #: times (s) of the hard cuts between shots (len(shots) - 1 of them)
    cuts: list[float] = field(default_factory=list)
    #: (start, end) seconds of each shot
    bounds: list[tuple[float, float]] = field(default_factory=list)

    def shot_at(self, t: float) -> int:
        """Index of the shot shown at ``t`` seconds."""
        for i, (_, b) in enumerate(self.bounds):
            if t < b - 1e-9:
                return i
        return len(self.bounds) - 1


def make_world_video(
    path: str | os.PathLike,
    shots: list[ShotSpec],
    *,
    fps: float = 24,
    width: int = 320,
    height: int = 240,
    codec: str = "h264",
) -> WorldVideo:
    """Encode ``shots`` back to back with hard cuts; each shot gets ``round(duration_s * fps)``
    frames, so shot ``i`` starts at (frames before it) / fps seconds."""
    import av

    from framebus.models.world.encode import encode_frames, frame_from_rgb, open_stream

    if not shots:
        raise ValueError("a world video needs at least one shot")
    path = Path(path)
    counts = [max(1, int(round(s.duration_s * fps))) for s in shots]
    bounds, start = [], 0
    for c in counts:
        bounds.append((start / fps, (start + c) / fps))
        start += c
    cuts = [b[0] for b in bounds[1:]]

    def frames():
        for spec, count in zip(shots, counts):
            for i in range(count):
                yield frame_from_rgb(render_frame(spec, i / fps, width, height))

    with av.open(str(path), "w") as out:
        stream = open_stream(out, codec, width, height, fps, None)
        encode_frames(out, stream, frames())
    return WorldVideo(path=path, shots=list(shots), cuts=cuts, bounds=bounds)


def frame_times(spec: ShotSpec, frames_per_shot: int) -> list[float]:
    """``k * duration / frames_per_shot``: for 2 frames of a 2 s shot, 0 s and 1 s, the instants the
    decode agent samples at its default 1 fps when the shot starts on a whole second."""
    return [k * spec.duration_s / frames_per_shot for k in range(frames_per_shot)]


def training_pairs(
    shots: list[ShotSpec],
    frames_per_shot: int,
    *,
    size: int = 224,
    width: int = 320,
    height: int = 240,
    jpeg_quality: int = 85,
) -> tuple[list[np.ndarray], list[ShotSpec]]:
    """Frames of each shot (``frame_times``) as the decode agent sends them: rendered at
    ``width``x``height``, scaled so the short side is ``size`` and passed through a JPEG encode /
    decode round trip. Returns ``(frames, specs)``, shot-major, one spec per frame."""
    from PIL import Image

    from framebus.topics.frames import decode_jpeg, encode_jpeg, output_size

    if frames_per_shot < 1:
        raise ValueError("frames_per_shot must be >= 1")
    tw, th = output_size(width, height, size)
    frames: list[np.ndarray] = []
    specs: list[ShotSpec] = []
    for spec in shots:
        for t in frame_times(spec, frames_per_shot):
            rgb = render_frame(spec, t, width, height)
            if (tw, th) != (width, height):
                rgb = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.Resampling.BICUBIC))
            frames.append(decode_jpeg(encode_jpeg(rgb, jpeg_quality)))
            specs.append(spec)
    return frames, specs


def recipe_pairs(
    shots: list[ShotSpec], frames_per_shot: int, frame: dict[str, int]
) -> tuple[list[np.ndarray], list[ShotSpec]]:
    """``training_pairs`` with a training recipe's ``frame`` entry (``width``, ``height``,
    ``short_side``, ``jpeg_quality``): the frames as the decode agent sends them."""
    return training_pairs(
        shots,
        frames_per_shot,
        size=frame["short_side"],
        width=frame["width"],
        height=frame["height"],
        jpeg_quality=frame["jpeg_quality"],
    )


# ------------------------------------------------------------------------------------------------
# text queries
# ------------------------------------------------------------------------------------------------

#: query kind -> the attributes it names; "caption" is the full caption of a shot
QUERY_KINDS: dict[str, tuple[str, ...]] = {
    "caption": ("shape", "colour", "motion"),
    "shape+colour": ("shape", "colour"),
    "shape": ("shape",),
    "colour": ("colour",),
    "motion": ("motion",),
}
_VALUES = {"shape": SHAPES, "colour": COLOURS, "motion": MOTIONS}


def query_text(*, shape: str | None = None, colour: str | None = None, motion: str | None = None) -> str:
    """The text query naming these attributes: ``a red circle moving left`` (the caption),
    ``a red circle``, ``a circle``, ``a red shape``, ``a shape moving left``."""
    words = ["a"] + ([colour] if colour else []) + [shape or "shape"]
    if motion:
        words += ["moving", motion]
    return " ".join(words)


@dataclass(frozen=True)
class Query:
    kind: str
    text: str
    #: attribute name -> required value
    wants: tuple[tuple[str, str], ...]

    def matches(self, spec: ShotSpec) -> bool:
        return all(getattr(spec, k) == v for k, v in self.wants)


def queries(kinds: tuple[str, ...] | None = None) -> list[Query]:
    """Every query of each kind in ``kinds`` (default: all of ``QUERY_KINDS``), in a fixed order."""
    out = []
    for kind in kinds or tuple(QUERY_KINDS):
        names = QUERY_KINDS[kind]
        for values in itertools.product(*(_VALUES[n] for n in names)):
            wants = tuple(zip(names, values))
            out.append(Query(kind, query_text(**dict(wants)), wants))
    return out
