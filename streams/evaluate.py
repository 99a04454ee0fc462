"""Evaluate the configured models on held-out world videos, through the production decode path.

``evaluate(settings)`` encodes the held-out shots of ``framebus.models.world.split`` into a few world videos
(hard cuts between shots), decodes each with ``framebus.agents.media.pipeline.decode_video`` and a
``DecodeJob.from_settings`` job (so the frames are exactly those the decode agent would send), embeds
every segment as the normalised mean of its frames' embeddings (what the embed agent stores) and runs
text queries against all segments of all videos by cosine similarity.

Metrics (``result["search"]``):

* ``caption``: the query is a held-out shot's caption; a hit is a segment of the right video AND the
  right shot. ``recall@1`` / ``recall@5`` and their ``chance`` levels (random ranking).
* ``caption_attributes``: for the same caption queries, how often the top result has the right
  ``shape`` / ``colour`` / ``motion`` / ``shape+colour`` (whichever shot it is), with chance levels.
* ``queries``: attribute-only queries ("a red circle", "a circle", "a red shape",
  "a shape moving left"): ``precision@1`` (top segment shows a shot with those attributes),
  ``precision@5`` and chance (the share of segments that match).

The result is a plain dict; other evaluations (captioning, moderation) add their own top-level keys
via ``EVALUATIONS``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from framebus.topics.errors import FramebusError

if TYPE_CHECKING:
    from framebus.streams.config import Settings

#: held-out shots per world video
SHOTS_PER_VIDEO = 8
EVAL_WORLD_SEED = 0
#: bump when the world renderer or video layout changes, so cached eval videos are rebuilt
VIDEO_FORMAT = 1


# ------------------------------------------------------------------------------------------------
# the held-out world, decoded as in production
# ------------------------------------------------------------------------------------------------


class EvalSegment:
    """One decoded segment: which video, which shot it shows, its frames (the decode agent's JPEGs)."""

    __slots__ = ("video", "index", "start_s", "end_s", "shot", "spec", "jpegs", "shots", "specs")

    def __init__(self, video, index, start_s, end_s, shot, spec, jpegs, shots=None, specs=None):
        self.video, self.index, self.start_s, self.end_s = video, index, start_s, end_s
        #: the shot most of its frames show, and its spec
        self.shot, self.spec, self.jpegs = shot, spec, list(jpegs)
        #: every shot its frames show (more than one when the segment spans a cut), and their specs
        self.shots = tuple(shots) if shots is not None else (shot,)
        self.specs = tuple(specs) if specs is not None else (spec,)

    def pixels(self, min_side: int | None = None) -> list[np.ndarray]:
        """The frames as RGB arrays, decoded as the model agents decode them for a model whose input
        side is ``min_side`` (``framebus.agents.embed.frame_pixels``)."""
        from framebus.topics.frames import decode_jpeg

        return [decode_jpeg(j, min_side) for j in self.jpegs]


def eval_video_dir(settings: Settings) -> Path:
    return settings.model_cache_dir / "eval-videos"


def _videos_key(groups) -> str:
    from framebus.models.world import RENDER_VERSION

    h = hashlib.sha256(
        json.dumps([VIDEO_FORMAT, RENDER_VERSION, [[s.__dict__ for s in g] for g in groups]], sort_keys=True).encode()
    )
    return h.hexdigest()[:12]


def _alternate_backgrounds(shots: list) -> list:
    """The same shots, reordered (deterministically, greedily) so that consecutive shots have
    different backgrounds where possible: a cut changes the scene, as in real footage."""
    rest = list(shots)
    out = [rest.pop(0)] if rest else []
    while rest:
        k = next((i for i, s in enumerate(rest) if s.background != out[-1].background), 0)
        out.append(rest.pop(k))
    return out


def heldout_videos(
    settings: Settings,
    *,
    world_seed: int = EVAL_WORLD_SEED,
    shots_per_video: int = SHOTS_PER_VIDEO,
    limit: int | None = None,
):
    """Encode (or reuse, cached under ``<model dir>/eval-videos``) the held-out world videos.
    Returns a list of ``WorldVideo``."""
    from framebus.models.world import WorldVideo, make_world_video, split

    _, held = split(world_seed)
    if limit is not None:
        held = held[:limit]
    held = _alternate_backgrounds(held)
    groups = [held[i : i + shots_per_video] for i in range(0, len(held), shots_per_video)]
    root = eval_video_dir(settings) / _videos_key(groups)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, shots in enumerate(groups):
        path = root / f"world-{i:02d}.mp4"
        if path.is_file() and path.stat().st_size > 0:
            fps = 24
            counts = [max(1, int(round(s.duration_s * fps))) for s in shots]
            starts = np.concatenate([[0], np.cumsum(counts)]) / fps
            bounds = [(float(a), float(b)) for a, b in zip(starts[:-1], starts[1:])]
            out.append(WorldVideo(path=path, shots=list(shots), cuts=[b[0] for b in bounds[1:]], bounds=bounds))
            continue
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
        wv = make_world_video(tmp, shots)
        os.replace(tmp, path)
        wv.path = path
        out.append(wv)
    return out


def decode_heldout(settings: Settings, videos) -> list[EvalSegment]:
    """Decode each world video with the production decode code; label each segment with the shot
    most of its frames show."""
    from framebus.agents.media.pipeline import DecodeJob, decode_video

    segs: list[EvalSegment] = []
    for v, wv in enumerate(videos):
        job = DecodeJob.from_settings(settings, wv.path, f"world-{v:02d}")
        dec = decode_video(job)
        for seg in dec.segments:
            shots = [wv.shot_at(p) for p, _ in seg.frames]
            mid = wv.shot_at((seg.start_s + seg.end_s) / 2)
            shot = max(sorted(set(shots)), key=lambda k: (shots.count(k), k == mid))
            shown = sorted(set(shots))
            segs.append(
                EvalSegment(
                    v,
                    seg.index,
                    seg.start_s,
                    seg.end_s,
                    shot,
                    wv.shots[shot],
                    [jpg for _, jpg in seg.frames],
                    shots=shown,
                    specs=[wv.shots[k] for k in shown],
                )
            )
    return segs


def segment_vectors(embedder, segments: list[EvalSegment]) -> np.ndarray:
    """Normalised mean of each segment's frame embeddings (as ``framebus.agents.embed.embed_segments``)."""
    images = [f for s in segments for f in s.pixels(getattr(embedder, "image_size", None))]
    owner = np.asarray([i for i, s in enumerate(segments) for _ in s.jpegs])
    vecs = np.asarray(embedder.embed_images(images))
    out = np.stack([vecs[owner == i].mean(axis=0) for i in range(len(segments))])
    return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------


def _rank(sims: np.ndarray) -> np.ndarray:
    # stable: ties keep segment order
    return np.argsort(-sims, kind="stable")


def search_metrics(
    embedder,
    segments: list[EvalSegment],
    vectors: np.ndarray,
    *,
    shots: list[tuple[tuple[int, int], Any]] | None = None,
    ks: tuple[int, ...] = (1, 5),
) -> dict[str, Any]:
    """``shots``: ``((video, shot), spec)`` of every held-out shot (default: those the segments
    show); a segment is relevant to a shot's caption when its frames show that shot."""
    from framebus.models.world import QUERY_KINDS, queries

    n = len(segments)
    out: dict[str, Any] = {"segments": n, "videos": len({s.video for s in segments})}

    # caption queries: one per held-out shot; hit = right video and shot
    if shots is None:
        shots = sorted({(s.video, k): sp for s in segments for k, sp in zip(s.shots, s.specs)}.items())
    texts = [spec.caption for _, spec in shots]
    tv = embedder.embed_texts(texts)
    sims = tv @ vectors.T
    hits = {k: [] for k in ks}
    attr_hits: dict[str, list[bool]] = {"shape": [], "colour": [], "motion": [], "shape+colour": []}
    chance = {k: [] for k in ks}
    for (key, spec), row in zip(shots, sims):
        order = _rank(row)
        rel = np.asarray([s.video == key[0] and key[1] in s.shots for s in segments])
        for k in ks:
            hits[k].append(bool(rel[order[:k]].any()))
            chance[k].append(_chance_any(int(rel.sum()), n, k))
        top = segments[order[0]].spec
        attr_hits["shape"].append(top.shape == spec.shape)
        attr_hits["colour"].append(top.colour == spec.colour)
        attr_hits["motion"].append(top.motion == spec.motion)
        attr_hits["shape+colour"].append(top.shape == spec.shape and top.colour == spec.colour)
    caption = {"queries": len(shots), "segments_spanning_cuts": sum(len(s.shots) > 1 for s in segments)}
    for k in ks:
        caption[f"recall@{k}"] = _mean(hits[k])
        caption[f"chance@{k}"] = _mean(chance[k])
    out["caption"] = caption

    specs = [s.spec for s in segments]
    attr_chance = {
        "shape": _share_same(specs, ("shape",)),
        "colour": _share_same(specs, ("colour",)),
        "motion": _share_same(specs, ("motion",)),
        "shape+colour": _share_same(specs, ("shape", "colour")),
    }
    out["caption_attributes"] = {a: {"accuracy@1": _mean(v), "chance": attr_chance[a]} for a, v in attr_hits.items()}

    # attribute-only queries
    per_kind: dict[str, Any] = {}
    for kind in QUERY_KINDS:
        if kind == "caption":
            continue
        qs = queries((kind,))
        qs = [q for q in qs if any(q.matches(sp) for s in segments for sp in s.specs)]
        if not qs:
            continue
        qv = embedder.embed_texts([q.text for q in qs])
        qsims = qv @ vectors.T
        p = {k: [] for k in ks}
        ch = []
        for q, row in zip(qs, qsims):
            order = _rank(row)
            rel = np.asarray([any(q.matches(sp) for sp in s.specs) for s in segments])
            for k in ks:
                p[k].append(float(rel[order[:k]].mean()))
            ch.append(float(rel.mean()))
        per_kind[kind] = {"queries": len(qs), **{f"precision@{k}": _mean(p[k]) for k in ks}, "chance": _mean(ch)}
    out["queries"] = per_kind
    return out


def _chance_any(relevant: int, n: int, k: int) -> float:
    """P(at least one of ``relevant`` items among the first ``k`` of a random ranking of ``n``)."""
    if relevant <= 0:
        return 0.0
    k = min(k, n)
    p_none = 1.0
    for i in range(k):
        p_none *= max(0, n - relevant - i) / (n - i)
    return 1.0 - p_none


def _share_same(specs, attrs) -> float:
    """Mean, over segments, of the share of segments with the same ``attrs`` (chance of a random top-1)."""
    keys = [tuple(getattr(s, a) for a in attrs) for s in specs]
    return _mean([keys.count(k) / len(keys) for k in keys])


def _mean(xs) -> float:
    return round(float(np.mean(xs)), 4) if len(xs) else float("nan")


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------

#: name -> fn(settings, context) -> dict; each adds one top-level key to ``evaluate``'s result.
#: ``context`` holds the decoded held-out data (``videos``, ``segments``) and may cache models.
EVALUATIONS: list[tuple[str, Callable[[Settings, dict[str, Any]], dict[str, Any]]]] = []


def _search_eval(settings: Settings, ctx: dict[str, Any]) -> dict[str, Any]:
    from framebus.models.registry import load_embedder

    embedder = ctx.get("embedder") or load_embedder(settings)
    ctx["embedder"] = embedder
    vectors = segment_vectors(embedder, ctx["segments"])
    shots = [((v, k), spec) for v, wv in enumerate(ctx["videos"]) for k, spec in enumerate(wv.shots)]
    res = search_metrics(embedder, ctx["segments"], vectors, shots=shots)
    res["model"] = {"name": embedder.info.name, "version": embedder.info.version}
    return res


EVALUATIONS.append(("search", _search_eval))


def _captioning_eval(settings: Settings, ctx: dict[str, Any]) -> dict[str, Any]:
    from framebus.models.registry import load_captioner
    from framebus.models.training.captioner import heldout_eval

    try:
        ctx["captioner"] = ctx.get("captioner") or load_captioner(settings)
    except FramebusError as e:
        return {"error": e.as_dict()}
    return heldout_eval(ctx["captioner"], ctx["segments"])


def _moderation_eval(settings: Settings, ctx: dict[str, Any]) -> dict[str, Any]:
    from framebus.models.registry import load_embedder, load_moderator
    from framebus.models.training.moderator import heldout_eval

    ctx["embedder"] = embedder = ctx.get("embedder") or load_embedder(settings)
    try:
        moderator = ctx.get("moderator") or load_moderator(settings, embedder)
    except FramebusError as e:
        moderator = {"error": e.as_dict()}
    return heldout_eval(embedder, moderator, ctx["segments"])


EVALUATIONS.append(("captioning", _captioning_eval))
EVALUATIONS.append(("moderation", _moderation_eval))


def evaluate(
    settings: Settings, *, embedder=None, only: tuple[str, ...] | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Run every registered evaluation (or those named in ``only``) on the held-out world.

    ``embedder``: use this instead of ``load_embedder(settings)``; ``limit``: only the first
    ``limit`` held-out shots (quick checks).
    """
    t0 = time.monotonic()
    videos = heldout_videos(settings, limit=limit)
    segments = decode_heldout(settings, videos)
    ctx: dict[str, Any] = {"videos": videos, "segments": segments}
    if embedder is not None:
        ctx["embedder"] = embedder
    result: dict[str, Any] = {
        "heldout": {
            "videos": len(videos),
            "shots": sum(len(v.shots) for v in videos),
            "segments": len(segments),
            "world_seed": EVAL_WORLD_SEED,
        },
    }
    for name, fn in EVALUATIONS:
        if only and name not in only:
            continue
        result[name] = fn(settings, ctx)
    result["seconds"] = round(time.monotonic() - t0, 2)
    return result
