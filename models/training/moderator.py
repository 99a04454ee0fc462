"""Train the tiny moderator (``FRAMEBUS_MODELS=tiny``): a logistic-regression head on CLIP image
embeddings of the synthetic world.

``train_tiny_moderator(out_path, embedder)`` embeds frames of world shots with ``embedder`` (whatever
``load_embedder(settings)`` returns: the trained tiny CLIP when it exists), labels each frame with the
world's moderation categories (``MODERATION_CATEGORIES``; ``hazard`` = a star is shown), fits one
sigmoid per category, calibrates each category's decision threshold, and writes the head with
``framebus.models.moderator.save_head`` (atomic). ``ClipHeadModerator.load`` reads it back; the file
records the embedder it was trained on, the thresholds and the calibration figures.

The recipe (``RECIPE``) is built for robustness on new videos, whatever the machine's float rounding:

* fit on fresh shots (``framebus.models.world.extra_shots``), not the tiny CLIP's own training shots:
  the CLIP has seen those and their embeddings sit tighter than those of any new video, so a head
  fitted and calibrated on them put its threshold at the edge of what new videos score;
* several frames per shot over the whole of it, at seeded random instants (the first frames, where the
  trail fans out from the start position, too): horizontally moving triangles leave a serrated trail
  that looks spiky in some frames, and the head must see those;
* balanced classes;
* the threshold calibrated on other shots again (neither training nor held-out shots), per shot as the
  moderate agent decides (a segment is flagged when any of its frames is), in the middle of the gap
  between the safe and unsafe score distributions (``gap_threshold``), not at an edge.

Deterministic for a given ``seed``, embedder and torch build on CPU (full-batch L-BFGS, fixed
thread count, ``torch.use_deterministic_algorithms(True)``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from framebus.models.training import deterministic_torch
from framebus.models.world import RENDER_VERSION

#: Every hyperparameter that determines the trained head (with the seed, the embedder and the torch
#: build): ``framebus.models.training`` hashes it to key its cache of trained models, so change a value
#: here, never in code that reads it.
RECIPE: dict[str, Any] = {
    "world_seed": 0,
    #: fit shots: this many per combination of the tiny CLIP's own training shots (split(world_seed)[0]) ...
    "clip_train_shots": 0,
    #: ... plus this many per combination of fresh shots (extra_shots, stream fit_stream), which the CLIP has
    #: not seen: their embeddings scatter as those of new videos do (the CLIP's own training shots sit
    #: tighter, and a head fitted and calibrated on them set its threshold at the edge of new data)
    "fit_per_combo": 4,
    "fit_stream": 3,
    #: frames per fit shot, over the whole shot: frame_times, each shifted by a random (seeded) fraction of
    #: their spacing when frame_jitter (every seed sees other instants; the first frames, with the trail
    #: fanning out from the start position, too)
    "fit_frames_per_shot": 6,
    "frame_jitter": True,
    #: calibration shots: this many per combination of another stream (neither training nor held-out
    #: shots of split), scored per shot as the moderate agent does (the maximum over the shot's frames)
    "calibration_per_combo": 6,
    "calibration_stream": 4,
    "calibration_frames_per_shot": 4,
    #: frames as the decode agent sends them
    "frame": {"width": 320, "height": 240, "short_side": 224, "jpeg_quality": 85},
    #: logistic regression: L2 penalty (on standardised features), L-BFGS iterations, class balance
    #: (1: stars and the rest weigh the same in total)
    "l2": 1e-3,
    "iters": 200,
    "balance": 1.0,
    #: the threshold (gap_threshold): fewest balanced errors per calibration shot, then the middle (in
    #: logit space) of the widest gap between consecutive shot scores
    "threshold": "shot-gap-middle",
    #: the head's log-odds plus those of zero-shot prompts with the world's policy (``world_zero_shot``),
    #: thresholds calibrated on the sum: the two disagree on different shots (with training seed 2 the head
    #: alone scored a held-out star under its threshold that the prompts caught), and their sum
    #: separated the calibration shots by a gap of 3 to 8.5 log-odds units on seeds 0, 1 and 2
    "zero_shot": "world-policy",
    #: scores recalibrated after the threshold is found: sigmoid((z - z_threshold) / (margin / 2)), so the
    #: decision point is 0.5 and the nearest calibration shots score about 0.12 / 0.88
    "recalibrate": "threshold-margin",
    #: torch intra-op threads (part of the result)
    "threads": 2,
    "render_version": RENDER_VERSION,
}
DEFAULT_THREADS = RECIPE["threads"]
#: frames per shot of ``evaluate_moderator``
FRAMES_PER_SHOT = RECIPE["calibration_frames_per_shot"]
DEFAULT_L2 = RECIPE["l2"]


def category_labels(specs: Sequence[Any], categories: Sequence[str]) -> np.ndarray:
    """``(n, k)`` 0/1 labels: a world shot is in category ``hazard`` when it is unsafe (shows a star)."""
    from framebus.models.world import MODERATION_CATEGORIES

    cols = []
    for c in categories:
        if c not in MODERATION_CATEGORIES:
            raise ValueError(f"no world labels for moderation category {c!r}")
        cols.append([1.0 if s.unsafe else 0.0 for s in specs])
    return np.asarray(cols, dtype=np.float32).T.reshape(len(specs), len(categories))


def precision_recall(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    pred = np.asarray(scores) >= threshold
    lab = np.asarray(labels) > 0.5
    tp, fp, fn = int((pred & lab).sum()), int((pred & ~lab).sum()), int((~pred & lab).sum())
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(f1, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n": int(len(lab)),
        "positives": int(lab.sum()),
        "threshold": round(float(threshold), 6),
    }


def pick_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold with the best F1 on (``scores``, ``labels``); among equally good thresholds, the
    middle (in logit space) of the widest gap between consecutive scores, which is robust to drift on
    unseen data when the validation scores separate cleanly."""
    p = np.clip(np.sort(np.unique(np.asarray(scores, dtype=np.float64))), 1e-9, 1 - 1e-9)
    if len(p) == 0:
        return 0.5
    z = np.log(p) - np.log1p(-p)
    cands = np.concatenate([[z[0] - 1.0], (z[:-1] + z[1:]) / 2, [z[-1] + 1.0]])
    gaps = np.concatenate([[1.0], z[1:] - z[:-1], [1.0]])
    f1 = np.asarray([precision_recall(scores, labels, 1 / (1 + np.exp(-c)))["f1"] for c in cands])
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(1 / (1 + np.exp(-cands[best[np.argmax(gaps[best])]])))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = DEFAULT_L2, iters: int = 200, balance: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label logistic regression (class weights, L2) by full-batch L-BFGS on standardised
    features; returns ``(weight (k, d), bias (k,))`` in the original feature space. ``balance``: 1
    weighs positives and negatives equally in total, 0 weighs every example equally."""
    import torch

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    z = (xt - mean) / std
    k, d = yt.shape[1], xt.shape[1]
    pos = yt.mean(0).clamp(1e-3, 1 - 1e-3)
    pos_weight = ((1 - pos) / pos) ** float(balance)  # balance positives and negatives
    w = torch.zeros(k, d, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=iters,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure():
        opt.zero_grad()
        logits = z @ w.T + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, pos_weight=pos_weight)
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = (w / std).numpy()
        bias = (b - (w * mean / std).sum(1)).numpy()
    return weight.astype(np.float32), bias.astype(np.float32)


def shot_scores(scores: np.ndarray, labels: np.ndarray, shot_ids: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per shot, the maximum of its frames' ``scores`` and of their ``labels``: what the moderate agent
    decides a segment on (a segment is flagged when any of its frames is)."""
    keys = list(dict.fromkeys(shot_ids))
    pos = {k: i for i, k in enumerate(keys)}
    s, y = np.full(len(keys), -np.inf), np.zeros(len(keys))
    for k, sc, lab in zip(shot_ids, scores, labels):
        s[pos[k]], y[pos[k]] = max(s[pos[k]], sc), max(y[pos[k]], lab)
    return s, y


def gap_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(threshold, margin)`` on validation ``scores`` (probabilities) with 0/1 ``labels``: among the
    thresholds with the fewest errors, balanced (misses / positives + false alarms / negatives), the
    one in the middle, in logit space, of the widest gap between consecutive scores; ``margin`` is half
    that gap's width, in logits (how far the nearest validation score is from the threshold). When the
    scores separate cleanly, this is the middle of the gap between the highest negative and the lowest
    positive; when a few outliers overlap, the middle of the gap between the two bulks, not an edge."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(labels) > 0.5
    if len(s) == 0:
        return 0.5, 0.0
    z = np.log(s) - np.log1p(-s)
    u = np.unique(z)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    gaps = np.concatenate([[2.0], u[1:] - u[:-1], [2.0]])
    npos, nneg = max(1, int(y.sum())), max(1, int((~y).sum()))
    # errors at each candidate: sorted-score counts instead of a pass per candidate
    zp, zn = np.sort(z[y]), np.sort(z[~y])
    misses = np.searchsorted(zp, cands, side="left")  # positives below the threshold
    alarms = len(zn) - np.searchsorted(zn, cands, side="left")  # negatives at or above it
    err = misses / npos + alarms / nneg
    best = np.flatnonzero(err <= err.min() + 1e-12)
    k = best[np.argmax(gaps[best])]
    return float(1 / (1 + np.exp(-cands[k]))), float(gaps[k] / 2)


def recipe_sets(recipe: dict[str, Any], *, max_shots: int | None = None) -> tuple[list[Any], list[Any]]:
    """``(fit shots, calibration shots)`` of ``recipe``: the fit shots are the tiny CLIP's training shots
    (``clip_train_shots`` of each combination, from ``split(world_seed)[0]``) plus ``fit_per_combo`` fresh
    shots per combination (``extra_shots``, stream ``fit_stream``); the calibration shots are
    ``calibration_per_combo`` per combination of another stream: neither the training nor the held-out
    shots of ``split``."""
    from framebus.models.world import all_combinations, extra_shots, split

    ws = int(recipe["world_seed"])
    fit: list[Any] = []
    if recipe["clip_train_shots"]:
        fit += split(ws)[0][: len(all_combinations()) * int(recipe["clip_train_shots"])]
    if recipe["fit_per_combo"]:
        fit += extra_shots(ws, int(recipe["fit_per_combo"]), stream=int(recipe["fit_stream"]))
    cal = extra_shots(ws, int(recipe["calibration_per_combo"]), stream=int(recipe["calibration_stream"]))
    if max_shots is not None:
        fit, cal = fit[:max_shots], cal[: max(8, max_shots // 4)]
    return fit, cal


def train_tiny_moderator(
    out_path: Path | str | None,
    embedder: Any,
    *,
    seed: int = 0,
    max_shots: int | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Fit the moderation head on ``embedder``'s image embeddings of world frames, calibrate its
    thresholds on other world shots, and save it to ``out_path`` (skipped when ``None``).

    The hyperparameters are ``RECIPE``'s; any of its keys may be overridden as a keyword. ``seed``
    varies which frames of each shot are used (``frame_jitter``); ``max_shots`` keeps only the first fit
    shots (tests).

    Returns stats: ``categories``, ``thresholds``, ``margin`` (per category: how far, in logits, the
    nearest calibration shot score is from the threshold; ``gap_threshold``), ``validation`` (precision
    / recall / F1 per category at its threshold on the calibration frames, and ``validation_shot`` on
    the calibration shots, as the moderate agent decides), ``train`` (the same on the fitting frames),
    ``frames``, ``shots``, ``seconds``, ``embed_seconds``, ``embedder`` (name / version), ``path``,
    ``version``, ``recipe``.
    """
    import hashlib

    from framebus.models.moderator import save_head
    from framebus.models.world import MODERATION_CATEGORIES

    unknown = set(overrides) - set(RECIPE)
    if unknown:
        raise TypeError(f"unknown moderator recipe keys: {sorted(unknown)}")
    r = {**RECIPE, **overrides}
    fit_fps, cal_fps = int(r["fit_frames_per_shot"]), int(r["calibration_frames_per_shot"])
    t0 = time.monotonic()
    categories = list(MODERATION_CATEGORIES)
    with deterministic_torch(int(r["threads"])):
        fit_shots, cal_shots = recipe_sets(r, max_shots=max_shots)
        rng = np.random.default_rng([int(seed), 0x30D])
        frames, specs, shot_ids = [], [], []
        for k, (shots, fps, jitter) in enumerate(
            ((fit_shots, fit_fps, bool(r["frame_jitter"])), (cal_shots, cal_fps, False))
        ):
            f, s = _frames(shots, fps, r["frame"], rng if jitter else None)
            frames += f
            specs += s
            shot_ids += [(k, i) for i in range(len(shots)) for _ in range(fps)]
        t1 = time.monotonic()
        x = np.asarray(embedder.embed_images(frames), dtype=np.float32)
        embed_s = time.monotonic() - t1
        del frames
        y = category_labels(specs, categories)
        n_fit = len(fit_shots) * fit_fps
        weight, bias = fit_logistic(
            x[:n_fit], y[:n_fit], l2=float(r["l2"]), iters=int(r["iters"]), balance=float(r["balance"])
        )
        logits = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
        zero_shot = world_zero_shot(embedder) if r["zero_shot"] == "world-policy" else None
        if zero_shot is not None:
            zl = zero_shot.logits(x)
            logits = logits + zl[:, [zero_shot.categories.index(c) for c in categories]]
        scores = 1 / (1 + np.exp(-logits))
        thresholds, margins, val_m, val_shot, fit_m = {}, {}, {}, {}, {}
        for j, c in enumerate(categories):
            cal_s, cal_y = shot_scores(scores[n_fit:, j], y[n_fit:, j], shot_ids[n_fit:])
            thresholds[c], margins[c] = gap_threshold(cal_s, cal_y)
            val_m[c] = precision_recall(scores[n_fit:, j], y[n_fit:, j], thresholds[c])
            val_shot[c] = precision_recall(cal_s, cal_y, thresholds[c])
            fit_m[c] = precision_recall(scores[:n_fit, j], y[:n_fit, j], thresholds[c])
            if log is not None:
                log(f"{c}: threshold {thresholds[c]:.4f} margin {margins[c]:.2f} validation {val_m[c]}")
        raw_thresholds = dict(thresholds)
        offsets, scales = None, None
        if r.get("recalibrate") == "threshold-margin":
            offsets = [float(np.log(thresholds[c]) - np.log1p(-thresholds[c])) for c in categories]
            scales = [max(float(margins[c]), 1e-3) / 2 for c in categories]
            thresholds = dict.fromkeys(categories, 0.5)

    stats: dict[str, Any] = {
        "model": "tiny-moderator",
        "path": str(out_path) if out_path is not None else None,
        "seed": int(seed),
        "categories": categories,
        "thresholds": {c: float(t) for c, t in thresholds.items()},
        "raw_thresholds": {c: float(t) for c, t in raw_thresholds.items()},
        "margin": {c: round(float(m), 4) for c, m in margins.items()},
        "validation": val_m,
        "validation_shot": val_shot,
        "train": fit_m,
        "shots": {"fit": len(fit_shots), "validation": len(cal_shots)},
        "frames": int(len(specs)),
        "embedder": {"name": embedder.info.name, "version": embedder.info.version},
        "embed_seconds": round(embed_s, 2),
        "threads": int(r["threads"]),
        "recipe": r,
        "version": None,
    }
    if out_path is not None:
        save_head(
            out_path,
            categories=categories,
            weight=weight,
            bias=bias,
            thresholds=thresholds,
            embedder=embedder,
            metrics={
                "validation": val_m,
                "validation_shot": val_shot,
                "margin": stats["margin"],
                "recipe": r,
                "seed": int(seed),
            },
            zero_shot=zero_shot.config() if zero_shot is not None else None,
            logit_offset=offsets,
            logit_scale=scales,
        )
        stats["version"] = hashlib.sha256(Path(out_path).read_bytes()).hexdigest()[:12]
    stats["seconds"] = round(time.monotonic() - t0, 2)
    return stats


def _frames(shots: Sequence[Any], frames_per_shot: int, frame: dict[str, Any], rng: np.random.Generator | None):
    """``frames_per_shot`` frames of each shot, as the decode agent sends them: evenly over the shot
    (``frame_times``), or with ``rng`` each shifted by a random fraction of the spacing (other instants
    of the shot on every seed, over the whole of it)."""
    from PIL import Image

    from framebus.models.world import frame_times, render_frame
    from framebus.topics.frames import decode_jpeg, encode_jpeg, output_size

    w, h = int(frame["width"]), int(frame["height"])
    tw, th = output_size(w, h, int(frame["short_side"]))
    frames, specs = [], []
    for spec in shots:
        step = spec.duration_s / frames_per_shot
        for t in frame_times(spec, frames_per_shot):
            if rng is not None:
                t = t + float(rng.uniform(0, step))
            rgb = render_frame(spec, t, w, h)
            if (tw, th) != (w, h):
                rgb = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.Resampling.BICUBIC))
            frames.append(decode_jpeg(encode_jpeg(rgb, int(frame["jpeg_quality"]))))
            specs.append(spec)
    return frames, specs


# --- evaluation ----------------------------------------------------------------------------------


def moderation_metrics(
    moderator: Any, frames: Sequence[np.ndarray], specs: Sequence[Any], shot_ids: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Precision / recall per world category at the moderator's thresholds, per frame and per shot
    (a shot is flagged when any of its frames is). Categories the moderator lacks are skipped."""
    from framebus.models.world import MODERATION_CATEGORIES

    scores = moderator.score(list(frames))
    out: dict[str, Any] = {"model": moderator.info.name, "version": moderator.info.version, "frames": len(frames)}
    for c in moderator.categories:
        if c not in MODERATION_CATEGORIES:
            continue
        s = np.asarray([d[c] for d in scores])
        y = category_labels(specs, [c])[:, 0]
        thr = moderator.thresholds[c]
        res: dict[str, Any] = {"threshold": round(float(thr), 6), "frame": precision_recall(s, y, thr)}
        if shot_ids is not None:
            keys = list(dict.fromkeys(shot_ids))
            pos = {k: i for i, k in enumerate(keys)}
            shot_s = np.zeros(len(keys))
            shot_y = np.zeros(len(keys))
            for k, sc, lab in zip(shot_ids, s, y):
                shot_s[pos[k]] = max(shot_s[pos[k]], sc)
                shot_y[pos[k]] = max(shot_y[pos[k]], lab)
            res["shot"] = precision_recall(shot_s, shot_y, thr)
        sy = s[y > 0.5]
        sn = s[y <= 0.5]
        res["mean_score"] = {
            "unsafe": round(float(sy.mean()), 4) if len(sy) else None,
            "safe": round(float(sn.mean()), 4) if len(sn) else None,
        }
        out[c] = res
    return out


def evaluate_moderator(
    moderator: Any, shots: Sequence[Any] | None = None, *, world_seed: int = 0, frames_per_shot: int = FRAMES_PER_SHOT
) -> dict[str, Any]:
    """``moderation_metrics`` on rendered frames of ``shots`` (default: the world's held-out shots)."""
    from framebus.models.world import split, training_pairs

    if shots is None:
        shots = split(world_seed)[1]
    frames, specs = training_pairs(list(shots), frames_per_shot)
    ids = [i for i in range(len(shots)) for _ in range(frames_per_shot)]
    return moderation_metrics(moderator, frames, specs, ids)


# --- ensure_tiny_models entry ----------------------------------------------------------------------


def train_for_settings(out_path: Path, settings: Any) -> dict[str, Any]:
    """``TrainSpec.train`` for ``framebus.models.training.TRAINERS``: the head on top of the tiny CLIP of
    ``settings`` (``tiny_path(settings, "tiny-clip")``, trained first: list this entry after the CLIP's),
    embedded on CPU for reproducible bytes."""
    from framebus.models.openclip import OpenClipEmbedder
    from framebus.models.training import tiny_path

    embedder = OpenClipEmbedder.tiny(checkpoint=tiny_path(settings, "tiny-clip"), device="cpu")
    return train_tiny_moderator(out_path, embedder, seed=int(getattr(settings, "train_seed", 0) or 0))


# --- models.training.evaluate entry ----------------------------------------------------------------


def world_zero_shot(embedder: Any):
    """The zero-shot moderator with the world's policy (``MODERATION_CATEGORIES``) against the other
    shapes as safe prompts: what zero-shot moderation achieves on the same embedder, untrained.

    Only the policy prompts made of words the world's captions use are kept ("a star", not "a spiky
    star"): the tiny CLIP has never seen the other words, their token embeddings are still their random
    init, and how close such a prompt lands to the images changes with the training seed (with seed 1,
    "a spiky star" drew 7 false alarms on the 60 safe held-out shots, "a star" none)."""
    from framebus.models.moderator import ClipZeroShotModerator
    from framebus.models.world import COLOURS, MODERATION_CATEGORIES, MOTIONS, SHAPES, UNSAFE_SHAPE

    known = {"a", "shape", "moving", *SHAPES, *COLOURS, *MOTIONS}
    policy = {
        c: tuple(p for p in prompts if set(p.lower().split()) <= known) or prompts
        for c, prompts in MODERATION_CATEGORIES.items()
    }
    return ClipZeroShotModerator(embedder, policy, safe_prompts=[f"a {s}" for s in SHAPES if s != UNSAFE_SHAPE])


def heldout_eval(embedder: Any, moderator: Any, segments: Sequence[Any]) -> dict[str, Any]:
    """Moderation precision / recall (at the moderator's thresholds) on every frame of the held-out
    ``segments`` that show a single shot (decoded as in production), per frame and per shot; for
    ``moderator`` (the profile's, or the ``{"error": ...}`` that loading it gave) and for zero-shot
    prompts with the world's policy on ``embedder``."""
    frames, specs, ids = [], [], []
    for seg in segments:
        if len(seg.shots) != 1:
            continue
        for f in seg.pixels(getattr(embedder, "image_size", None)):
            frames.append(f)
            specs.append(seg.spec)
            ids.append((seg.video, seg.shot))
    out: dict[str, Any] = {"shots": len(set(ids))}
    is_error = isinstance(moderator, dict)
    out["profile"] = moderator if is_error else moderation_metrics(moderator, frames, specs, ids)
    out["zero_shot_world_policy"] = moderation_metrics(world_zero_shot(embedder), frames, specs, ids)
    return out
