"""Train the tiny open_clip model (``FRAMEBUS_MODELS=tiny``) on the synthetic world.

``train_tiny_clip(out_path)`` starts from exactly the model ``OpenClipEmbedder.tiny()`` builds (the
seeded init of ``framebus.models.openclip.TINY_CONFIG``), trains it contrastively on frames of the world's
training shots (``framebus.models.world.split``) paired with text queries, and writes the weights to
``out_path`` in the format ``OpenClipEmbedder.tiny(checkpoint=...)`` loads (a plain
``state_dict`` saved with ``torch.save``). The checkpoint's bytes name the model version, so a
trained model gets its own vector collection.

Training is deterministic for a given ``seed`` and torch build on CPU: fixed thread count, fixed data
order, ``torch.use_deterministic_algorithms(True)``; the checkpoint is written atomically.

The thread count is part of the result (2 threads give different weights from 1) and defaults to
ONE: the same checkpoint on every machine whatever its core count, and robust on a busy host (with
other CPU-heavy processes on 2 cores, 2 OpenMP threads ran 10-20x slower than 1 in measurements, as
each waits for the other at every barrier; 1 thread does 1200 steps in about 4-5 minutes).

The loss is CLIP's symmetric InfoNCE, generalised to several positives per row/column: the text side
of every step is the fixed set of all world queries (the 80 captions plus the attribute-only
queries "a red circle", "a circle", "a red shape", "a shape moving left"), so one caption appears
for several images of a batch. Image -> text is a cross-entropy over the captions (one correct
caption per image); text -> image, for each query with at least one matching image in the batch,
is ``-log`` of the softmax mass on its matching images. With unique captions in a batch this is
exactly CLIP's loss. An auxiliary image -> text cross-entropy within each single-attribute query
kind (which of "a circle" / "a square" / ..., of "a red shape" / ..., of "a shape moving left" /
...) gives every attribute its own signal from the first step.

Motion: frames are rendered with a motion trail and a direction-dependent position (see
``framebus.models.world``), so each single frame carries the direction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from framebus.models.common import save_torch_atomic
from framebus.models.openclip import TINY_CONFIG, TINY_SEED
from framebus.models.training import deterministic_torch
from framebus.models.world import RENDER_VERSION

#: Every hyperparameter that determines the trained weights (with the seed and the torch build):
#: ``framebus.models.training`` hashes it to key its cache of trained models, so change a value here,
#: never in code that reads it. ``train_tiny_clip``'s keyword defaults are these values.
RECIPE: dict[str, Any] = {
    "world_seed": 0,  # training shots: framebus.models.world.split(world_seed)[0]
    #: frames per training shot, evenly over the shot (0, 0.5, 1, 1.5 s of a 2 s shot): the object at every
    #: point of its path, as the 1 fps frames of a longer shot show it. With 2 (the instants the decode agent
    #: samples in a 2 s shot) and 600 steps, held-out recall@1 was 0.825 and 10-s shots were out of
    #: distribution (12 of 60 safe ones flagged by the moderation head); with 4 and 1200 steps, 0.99 and 0.
    "frames_per_shot": 4,
    #: frames as the decode agent sends them (training_pairs)
    "frame": {"width": 320, "height": 240, "short_side": 224, "jpeg_quality": 85},
    "config": TINY_CONFIG,  # the architecture (framebus.models.openclip)
    "init_seed": TINY_SEED,  # the init is seeded with init_seed + seed
    #: optimisation steps (about 4-5 min on one idle CPU core, data included)
    "steps": 1200,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.1,
    "betas": [0.9, 0.98],
    "eps": 1e-6,
    "warmup": 20,  # steps, at most a tenth of them
    "schedule": "wsd",
    "grad_clip": None,
    "max_logit_scale": 100,
    #: the auxiliary per-attribute image -> text cross-entropy (see the module doc)
    "attr_loss": True,
    #: torch intra-op threads (part of the result)
    "threads": 1,
    "render_version": RENDER_VERSION,
}
DEFAULT_STEPS = RECIPE["steps"]
DEFAULT_BATCH = RECIPE["batch_size"]
DEFAULT_LR = RECIPE["lr"]
DEFAULT_THREADS = RECIPE["threads"]
FRAMES_PER_SHOT = RECIPE["frames_per_shot"]


def _build_model(init_seed: int):
    """The tiny model, exactly as the serving path builds it before any checkpoint: seeded init."""
    from framebus.models.openclip import OpenClipEmbedder

    emb = OpenClipEmbedder.tiny(checkpoint=None, device="cpu", init_seed=init_seed)
    return emb.model, emb.preprocess, emb.tokenizer


def encode_text_prefix(model, tokens, length: int):
    """``model.encode_text(tokens)`` computed on the first ``length`` token positions only.

    The text tower is causal and pools at the end-of-text token, so positions after the longest
    prompt's EOT cannot change the result: this is the same function (up to float rounding) at a
    fraction of the cost for short prompts.
    """
    import torch
    from open_clip.transformer import text_global_pool

    t = tokens[:, :length]
    x = model.token_embedding(t) + model.positional_embedding[:length]
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = text_global_pool(x, t, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch.nn.Linear)
            else x @ model.text_projection
        )
    return x


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = (
            p.ndim < 2
            or "bn" in name
            or "ln" in name
            or "bias" in name
            or "logit_scale" in name
            or "token_embedding" in name
            or "positional_embedding" in name
            or "class_embedding" in name
        )
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, steps: int, base: float, warmup: int, schedule: str = "cosine") -> float:
    """Linear warmup, then ``cosine`` decay to 0, or ``wsd``: constant, then a cosine decay over the
    last quarter of the steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "wsd":
        decay_from = max(warmup, int(steps * 0.75))
        if step < decay_from:
            return base
        progress = (step - decay_from) / max(1, steps - decay_from)
    else:
        progress = (step - warmup) / max(1, steps - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def contrastive_loss(img, txt, logit_scale, pos, caption_idx, caption_cols, attr_groups=()):
    """Multi-positive symmetric InfoNCE (see the module doc).

    ``img`` [B,D] and ``txt`` [P,D] L2-normalised; ``pos`` [B,P] bool (image b matches query p);
    ``caption_idx`` [B] the column of each image's caption; ``caption_cols`` the caption columns;
    ``attr_groups``: ``(columns, targets)`` pairs, one per single-attribute query kind (the 4
    "a circle" .. queries, targets [B] = index of the image's shape among them, ...), each adding an
    image -> text cross-entropy over those columns only.
    """
    import torch
    import torch.nn.functional as F

    logits = logit_scale * img @ txt.T  # [B, P]
    # image -> text: one correct caption among all captions
    cap_logits = logits[:, caption_cols]
    i2t = F.cross_entropy(cap_logits, caption_idx)
    # text -> image: softmax over the batch's images, mass on the matching ones
    present = pos.any(dim=0)
    col = logits[:, present].T  # [P', B]
    pmask = pos[:, present].T
    log_all = torch.logsumexp(col, dim=1)
    log_pos = torch.logsumexp(col.masked_fill(~pmask, float("-inf")), dim=1)
    t2i = (log_all - log_pos).mean()
    loss = (i2t + t2i) / 2
    if attr_groups:
        attr = sum(F.cross_entropy(logits[:, cols], tgt) for cols, tgt in attr_groups) / len(attr_groups)
        loss = loss + attr / 2
    return loss, i2t, t2i


def _prepare_data(preprocess, world_seed: int, frames_per_shot: int, max_shots: int | None):
    import torch
    from PIL import Image

    from framebus.models.world import recipe_pairs, split

    train, _ = split(world_seed)
    if max_shots is not None:
        train = train[:max_shots]
    frames, specs = recipe_pairs(train, frames_per_shot, RECIPE["frame"])
    x = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
    return x, specs


def train_tiny_clip(
    out_path: Path | str | None,
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    weight_decay: float = RECIPE["weight_decay"],
    threads: int = DEFAULT_THREADS,
    world_seed: int = RECIPE["world_seed"],
    frames_per_shot: int = FRAMES_PER_SHOT,
    max_shots: int | None = None,
    attr_loss: bool = RECIPE["attr_loss"],
    grad_clip: float | None = RECIPE["grad_clip"],
    warmup: int | None = None,
    schedule: str = RECIPE["schedule"],
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the tiny CLIP on the world and save it to ``out_path`` (skipped when ``None``).

    Returns stats: ``steps``, ``seconds``, ``initial_loss``, ``final_loss`` (mean of the last 10
    steps), ``train_accuracy`` (image -> caption, last 10 steps), ``logit_scale``, ``frames``,
    ``shots``, ``sha256`` / ``version`` of the checkpoint, ``path``, and ``state_digest`` (sha256 of
    the trained weights, for determinism checks).
    """
    import torch

    from framebus.models.openclip import _state_dict_digest, resolve_device
    from framebus.models.world import queries

    init_seed = RECIPE["init_seed"] + int(seed)  # seed 0: the init the serving path builds with no checkpoint
    t0 = time.monotonic()
    dev = torch.device(resolve_device(device))
    with deterministic_torch(threads):
        with torch.random.fork_rng(devices=[]):
            model, preprocess, tokenizer = _build_model(init_seed)
            torch.manual_seed(int(seed))
            x_all, specs = _prepare_data(preprocess, world_seed, frames_per_shot, max_shots)
            t_data = time.monotonic() - t0

            qs = queries()
            cap_cols = [i for i, q in enumerate(qs) if q.kind == "caption"]
            cap_of = {qs[i].text: j for j, i in enumerate(cap_cols)}
            pos_all = torch.tensor([[q.matches(s) for q in qs] for s in specs], dtype=torch.bool)
            cap_all = torch.tensor([cap_of[s.caption] for s in specs], dtype=torch.long)
            # single-attribute kinds ("a circle", "a red shape", "a shape moving left"): per-image targets
            attr_cols, attr_tgt = [], []
            for kind in ("shape", "colour", "motion"):
                cols = [i for i, q in enumerate(qs) if q.kind == kind]
                attr_cols.append(torch.tensor(cols, dtype=torch.long, device=dev))
                attr_tgt.append(
                    torch.tensor(
                        [next(j for j, c in enumerate(cols) if qs[c].matches(s)) for s in specs], dtype=torch.long
                    )
                )
            tokens = tokenizer([q.text for q in qs])
            eot = tokens.argmax(dim=-1)
            length = int(eot.max()) + 1

            model = model.to(dev).train()
            tokens = tokens.to(dev)
            cap_cols_t = torch.tensor(cap_cols, dtype=torch.long, device=dev)
            opt = torch.optim.AdamW(
                _param_groups(model, weight_decay), lr=lr, betas=tuple(RECIPE["betas"]), eps=RECIPE["eps"]
            )
            rng = np.random.default_rng([int(seed), 0xC11F])
            n = x_all.shape[0]
            order = rng.permutation(n)
            cursor = 0
            warmup = max(1, min(RECIPE["warmup"], steps // 10)) if warmup is None else max(1, int(warmup))
            losses: list[float] = []
            accs: list[float] = []
            for step in range(steps):
                if cursor + batch_size > n:
                    order, cursor = rng.permutation(n), 0
                idx = torch.from_numpy(order[cursor : cursor + batch_size].copy())
                cursor += batch_size
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, steps, lr, warmup, schedule)
                img = torch.nn.functional.normalize(model.encode_image(x_all[idx].to(dev)), dim=-1)
                txt = torch.nn.functional.normalize(encode_text_prefix(model, tokens, length), dim=-1)
                scale = model.logit_scale.exp().clamp(max=RECIPE["max_logit_scale"])
                groups = [(c, t[idx].to(dev)) for c, t in zip(attr_cols, attr_tgt)] if attr_loss else ()
                loss, i2t, _ = contrastive_loss(
                    img, txt, scale, pos_all[idx].to(dev), cap_all[idx].to(dev), cap_cols_t, groups
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(RECIPE["max_logit_scale"]))
                    acc = ((img @ txt[cap_cols_t].T).argmax(dim=1).cpu() == cap_all[idx]).float().mean()
                losses.append(float(loss.detach()))
                accs.append(float(acc))
                if log is not None and (step % 20 == 0 or step == steps - 1):
                    log(f"step {step:4d} loss {losses[-1]:.4f} acc {accs[-1]:.3f} ({time.monotonic() - t0:.1f}s)")

            model = model.eval().to("cpu")
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            state_digest = _state_dict_digest(model)
            logit_scale = float(model.logit_scale.detach().exp())

    sha = None
    if out_path is not None:
        from framebus.models.openclip import pack_tiny_state

        sha = save_torch_atomic(pack_tiny_state(state, init_seed), Path(out_path))
    tail = losses[-10:] if losses else [float("nan")]
    return {
        "model": "tiny-clip",
        "path": str(out_path) if out_path is not None else None,
        "seed": int(seed),
        "steps": int(steps),
        "batch_size": int(batch_size),
        "shots": len(specs) // max(1, frames_per_shot),
        "frames": int(len(specs)),
        "queries": len(qs),
        "seconds": round(time.monotonic() - t0, 2),
        "data_seconds": round(t_data, 2),
        "initial_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(float(np.mean(tail)), 4),
        "train_accuracy": round(float(np.mean(accs[-10:])), 4) if accs else None,
        "logit_scale": round(logit_scale, 3),
        "threads": int(threads),
        "sha256": sha,
        "version": sha[:12] if sha else None,
        "state_digest": state_digest,
    }
