"""Train the tiny moderator (``FRAMEBUS_MODELS=tiny``): a logistic-regression head on CLIP image
embeddings of the synthetic world.

``train_tiny_moderator(out_path, embedder)`` embeds frames of the world's training shots
(``framebus.models.world.split``) with ``embedder`` (whatever ``load_embedder(settings)`` returns: the
trained tiny CLIP when it exists), labels each frame with the world's moderation categories
(``MODERATION_CATEGORIES``; ``hazard`` = a star is shown), fits one sigmoid per category on 80 % of
the training shots, picks each category's decision threshold on the other 20 % (best F1, ties to the
middle, in logit space, of the widest gap), and writes the head with ``framebus.models.moderator.save_head``
(atomic). ``ClipHeadModerator.load`` reads it back; the file records the embedder it was trained on.

Deterministic for a given ``seed``, embedder and torch build on CPU (full-batch L-BFGS, fixed
thread count, ``torch.use_deterministic_algorithms(True)``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from framebus.models.training import deterministic_torch

DEFAULT_THREADS = 2
#: frames per shot, evenly over it (as the tiny CLIP is trained): late points of an object's path too
FRAMES_PER_SHOT = 4
VALIDATION_SHARE = 0.2
DEFAULT_L2 = 1e-3


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
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4), "tp": tp, "fp": fp, "fn": fn,
            "n": int(len(lab)), "positives": int(lab.sum()), "threshold": round(float(threshold), 6)}


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


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = DEFAULT_L2, iters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label logistic regression (balanced class weights, L2) by full-batch L-BFGS on
    standardised features; returns ``(weight (k, d), bias (k,))`` in the original feature space."""
    import torch

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    z = (xt - mean) / std
    k, d = yt.shape[1], xt.shape[1]
    pos = yt.mean(0).clamp(1e-3, 1 - 1e-3)
    pos_weight = (1 - pos) / pos  # balance positives and negatives
    w = torch.zeros(k, d, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

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


def train_tiny_moderator(out_path: Path | str | None, embedder: Any, *, seed: int = 0, world_seed: int = 0,
                         frames_per_shot: int = FRAMES_PER_SHOT, validation_share: float = VALIDATION_SHARE,
                         l2: float = DEFAULT_L2, threads: int = DEFAULT_THREADS, max_shots: int | None = None,
                         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit the moderation head on ``embedder``'s image embeddings of world frames and save it to
    ``out_path`` (skipped when ``None``).

    Returns stats: ``categories``, ``thresholds``, ``validation`` (precision / recall / F1 per
    category at its threshold), ``train`` (the same on the fitting shots), ``frames``, ``shots``,
    ``seconds``, ``embed_seconds``, ``embedder`` (name / version), ``path``, ``version``.
    """
    import hashlib


    from framebus.models.world import MODERATION_CATEGORIES, split, training_pairs
    from framebus.models.moderator import save_head

    t0 = time.monotonic()
    categories = list(MODERATION_CATEGORIES)
    with deterministic_torch(threads):
        train, _ = split(world_seed)
        if max_shots is not None:
            train = train[:max_shots]
        # split by shot, stratified by category label, so frames of one shot never straddle the split
        rng = np.random.default_rng([int(seed), 0x30D])
        val_idx: set[int] = set()
        for flag in (True, False):
            idx = [i for i, s in enumerate(train) if s.unsafe == flag]
            rng.shuffle(idx)
            val_idx.update(idx[:max(1, int(round(len(idx) * validation_share)))])
        fit_shots = [s for i, s in enumerate(train) if i not in val_idx]
        val_shots = [s for i, s in enumerate(train) if i in val_idx]
        frames, specs = training_pairs(fit_shots + val_shots, frames_per_shot)
        t1 = time.monotonic()
        x = np.asarray(embedder.embed_images(frames), dtype=np.float32)
        embed_s = time.monotonic() - t1
        del frames
        y = category_labels(specs, categories)
        n_fit = len(fit_shots) * frames_per_shot
        weight, bias = fit_logistic(x[:n_fit], y[:n_fit], l2=l2)
        scores = 1 / (1 + np.exp(-(x.astype(np.float64) @ weight.T.astype(np.float64) + bias)))
        thresholds, val_m, fit_m = {}, {}, {}
        for j, c in enumerate(categories):
            thresholds[c] = pick_threshold(scores[n_fit:, j], y[n_fit:, j])
            val_m[c] = precision_recall(scores[n_fit:, j], y[n_fit:, j], thresholds[c])
            fit_m[c] = precision_recall(scores[:n_fit, j], y[:n_fit, j], thresholds[c])
            if log is not None:
                log(f"{c}: threshold {thresholds[c]:.4f} validation {val_m[c]}")

    stats: dict[str, Any] = {
        "model": "tiny-moderator",
        "path": str(out_path) if out_path is not None else None,
        "seed": int(seed),
        "categories": categories,
        "thresholds": {c: float(t) for c, t in thresholds.items()},
        "validation": val_m,
        "train": fit_m,
        "shots": {"fit": len(fit_shots), "validation": len(val_shots)},
        "frames": int(len(specs)),
        "embedder": {"name": embedder.info.name, "version": embedder.info.version},
        "embed_seconds": round(embed_s, 2),
        "threads": int(threads),
        "version": None,
    }
    if out_path is not None:
        save_head(out_path, categories=categories, weight=weight, bias=bias, thresholds=thresholds,
                  embedder=embedder, metrics={"validation": val_m})
        stats["version"] = hashlib.sha256(Path(out_path).read_bytes()).hexdigest()[:12]
    stats["seconds"] = round(time.monotonic() - t0, 2)
    return stats


# --- evaluation ----------------------------------------------------------------------------------

def moderation_metrics(moderator: Any, frames: Sequence[np.ndarray], specs: Sequence[Any],
                       shot_ids: Sequence[Any] | None = None) -> dict[str, Any]:
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
        res["mean_score"] = {"unsafe": round(float(sy.mean()), 4) if len(sy) else None,
                             "safe": round(float(sn.mean()), 4) if len(sn) else None}
        out[c] = res
    return out


def evaluate_moderator(moderator: Any, shots: Sequence[Any] | None = None, *, world_seed: int = 0,
                       frames_per_shot: int = FRAMES_PER_SHOT) -> dict[str, Any]:
    """``moderation_metrics`` on rendered frames of ``shots`` (default: the world's held-out shots)."""
    from framebus.models.world import split, training_pairs

    if shots is None:
        shots = split(world_seed)[1]
    frames, specs = training_pairs(list(shots), frames_per_shot)
    ids = [i for i in range(len(shots)) for _ in range(frames_per_shot)]
    return moderation_metrics(moderator, frames, specs, ids)


# --- ensure_tiny_models entry ----------------------------------------------------------------------

def train_for_settings(out_path: Path, settings: Any) -> dict[str, Any]:
    """``TrainSpec.train`` for ``framebus.models.training.TRAINERS``: the head on top of whatever
    ``load_embedder(settings)`` returns (the trained tiny CLIP when it exists, so list this entry
    after the CLIP's), embedded on CPU for reproducible bytes."""
    from framebus.models.registry import load_embedder

    embedder = load_embedder(settings.model_copy(update={"device": "cpu"}))
    return train_tiny_moderator(out_path, embedder)


# --- models.training.evaluate entry ----------------------------------------------------------------

def world_zero_shot(embedder: Any):
    """The zero-shot moderator with the world's policy (``MODERATION_CATEGORIES``) against the other
    shapes as safe prompts: what zero-shot moderation achieves on the same embedder, untrained."""
    from framebus.models.world import MODERATION_CATEGORIES, SHAPES, UNSAFE_SHAPE
    from framebus.models.moderator import ClipZeroShotModerator

    return ClipZeroShotModerator(embedder, MODERATION_CATEGORIES,
                                 safe_prompts=[f"a {s}" for s in SHAPES if s != UNSAFE_SHAPE])


def heldout_eval(settings: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """``EVALUATIONS`` entry: moderation precision / recall (at the moderator's thresholds) on every
    frame of the held-out segments that show a single shot, decoded as in production, per frame and
    per shot; for the profile's moderator and for zero-shot prompts with the world's policy."""
    from framebus.models.registry import load_embedder, load_moderator
    from framebus.topics.errors import FramebusError

    embedder = ctx.get("embedder") or load_embedder(settings)
    ctx["embedder"] = embedder
    frames, specs, ids = [], [], []
    for seg in ctx["segments"]:
        if len(seg.shots) != 1:
            continue
        for f in seg.pixels(getattr(embedder, "image_size", None)):
            frames.append(f)
            specs.append(seg.spec)
            ids.append((seg.video, seg.shot))
    out: dict[str, Any] = {"shots": len(set(ids))}
    try:
        moderator = ctx.get("moderator") or load_moderator(settings, embedder)
        ctx["moderator"] = moderator
        out["profile"] = moderation_metrics(moderator, frames, specs, ids)
    except FramebusError as e:
        out["profile"] = {"error": e.as_dict()}
    out["zero_shot_world_policy"] = moderation_metrics(world_zero_shot(embedder), frames, specs, ids)
    return out
