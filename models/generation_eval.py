"""Evaluation of a text -> video generator on the synthetic world's prompts ("a red circle moving left").

``evaluate_generation(generator, captioner, embedder, prompts, seeds)`` generates one clip per
``(prompt, seed)`` and measures:

* **attribute accuracy**: the tiny captioner, shown frames of the clip as the decode agent would send them
  (resized so the short side is 224, then a JPEG round trip), names the prompt's colour, shape and
  motion; the verdict per clip is the majority over ``CAPTION_FRAMES`` (a quarter, half and three
  quarters through the clip). Reported over all prompts and separately over the held-out combinations
  (``heldout``: by default those the tiny generator never saw in training);
* **text-video similarity**: the embedder's cosine between the prompt and the clip (mean of its frame
  embeddings), for the matching prompt and for a shuffled one (another prompt of the suite);
* **temporal consistency** (mean cosine of consecutive frame embeddings), **flicker** (mean absolute
  difference of consecutive frames, 0-255), **sharpness** (variance of the Laplacian of the grey frames);
* seconds per denoising step and per clip, and the model's name and version.

``word_reliance(model, prompts, seeds)`` (the tiny generator only) measures how much its transformer's flow
loss rises when the prompt's colour, shape or motion word is swapped: whether it uses each word at all.

``reference_clips`` renders the same prompts from the world itself, so the same measures on real
clips (``evaluate_clips``) give the ceiling the captioner allows. ``compare(result, baseline)`` lists
the regressions of a result against an earlier one. Pure functions of the models passed in: the
CLI (``framebus eval generation``) loads them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from framebus.models.base import GenerationSpec

#: which frames (fractions of the clip) the captioner sees; the verdict is their majority
CAPTION_FRAMES = (0.25, 0.5, 0.75)
#: what the captioner was trained on: 320x240 frames, short side 224, JPEG quality 85
CAPTION_FRAME = {"width": 320, "height": 240, "short_side": 224, "jpeg_quality": 85}
#: seeds of the evaluation (the trainer draws noise from its own stream, never from these)
EVAL_SEED_BASE = 900_000
ATTRIBUTES = ("colour", "shape", "motion")


def suite(n: int = 40, *, world_seed: int = 0) -> list[str]:
    """``n`` prompts "a {colour} {shape} moving {motion}": the world's combinations in a fixed shuffled
    order (every one before any repeats)."""
    from framebus.models.world import all_combinations, query_text

    combos = all_combinations()
    order = np.random.default_rng([int(world_seed), 77]).permutation(len(combos))
    return [
        query_text(shape=s, colour=c, motion=m) for s, c, m in (combos[int(order[i % len(combos)])] for i in range(n))
    ]


def heldout_prompts(combos: Iterable[Sequence[str]] | None = None) -> list[str]:
    """The prompts of the held-out combinations (default: the tiny generator's ``HELDOUT_COMBOS``)."""
    from framebus.models.world import query_text

    if combos is None:
        from framebus.models.training.generator import HELDOUT_COMBOS

        combos = HELDOUT_COMBOS
    return [query_text(shape=s, colour=c, motion=m) for s, c, m in combos]


def prompt_attributes(prompt: str) -> dict[str, str | None]:
    from framebus.models.training.captioner import parse_caption

    return parse_caption(prompt)


def caption_view(frame: np.ndarray) -> np.ndarray:
    """``frame`` as the captioner was trained to see it: resized (bicubic) to the decode agent's size for a
    4:3 320x240 source (short side 224), then a JPEG round trip."""
    from PIL import Image

    from framebus.topics.frames import decode_jpeg, encode_jpeg, output_size

    w, h = output_size(CAPTION_FRAME["width"], CAPTION_FRAME["height"], CAPTION_FRAME["short_side"])
    img = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((w, h), Image.Resampling.BICUBIC))
    return decode_jpeg(encode_jpeg(img, CAPTION_FRAME["jpeg_quality"]))


def _majority(values: list[str | None]) -> str | None:
    named = [v for v in values if v]
    if not named:
        return None
    counts = {v: named.count(v) for v in named}
    best = max(counts.values())
    return next(v for v in named if counts[v] == best)  # ties: the earliest frame's


def laplacian_variance(frame: np.ndarray) -> float:
    g = np.asarray(frame, np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def reference_clips(
    prompts: Sequence[str], seeds: Sequence[int], frames: int = 16, fps: float = 8.0, width: int = 64, height: int = 48
) -> list[np.ndarray]:
    """The world's own clips for ``prompts`` (seed ``s`` -> a shot of that seed, background ``s % 6``),
    rendered at the generator's native size: what a perfect generator would produce."""
    from framebus.models.training.generator import render_clips
    from framebus.models.world import N_BACKGROUNDS, ShotSpec

    shots = []
    for p, s in zip(prompts, seeds):
        a = prompt_attributes(p)
        shots.append(ShotSpec(a["shape"], a["colour"], a["motion"], int(s) % N_BACKGROUNDS, int(s)))
    return list(render_clips(shots, frames, fps, width, height, scale=2))


def evaluate_clips(
    clips: Sequence[np.ndarray],
    prompts: Sequence[str],
    captioner: Any,
    embedder: Any,
    *,
    heldout: Iterable[str] = (),
) -> dict[str, Any]:
    """The measures of the module docstring (all but timing) of ``clips`` (RGB uint8 ``(T, H, W, 3)``)
    generated for ``prompts``."""
    n = len(clips)
    if n != len(prompts) or n < 2:
        raise ValueError("need at least two clips, one per prompt")
    held = set(heldout)
    views, owners = [], []
    for i, clip in enumerate(clips):
        for f in CAPTION_FRAMES:
            views.append(caption_view(clip[min(len(clip) - 1, int(f * len(clip)))]))
            owners.append(i)
    captions = captioner.caption(views)
    from framebus.models.training.captioner import parse_caption

    parsed = [parse_caption(c) for c in captions]
    k = len(CAPTION_FRAMES)
    per_clip = []
    for i, p in enumerate(prompts):
        want = prompt_attributes(p)
        got = {a: _majority([parsed[i * k + j][a] for j in range(k)]) for a in ATTRIBUTES}
        per_clip.append(
            {"prompt": p, "caption": captions[i * k + k // 2], "hits": {a: got[a] == want[a] for a in ATTRIBUTES}}
        )

    def accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            return {"n": 0}
        out: dict[str, Any] = {a: round(float(np.mean([r["hits"][a] for r in rows])), 4) for a in ATTRIBUTES}
        out["all"] = round(float(np.mean([all(r["hits"].values()) for r in rows])), 4)
        out["n"] = len(rows)
        return out

    # similarity: mean of each clip's frame embeddings vs the prompt (and vs a shuffled prompt)
    frame_emb = [embedder.embed_images(list(clip)) for clip in clips]
    clip_emb = np.stack([e.mean(0) / max(np.linalg.norm(e.mean(0)), 1e-8) for e in frame_emb])
    text_emb = embedder.embed_texts(list(prompts))
    matched = np.sum(clip_emb * text_emb, axis=1)
    perm = _derangement(list(prompts))
    shuffled = np.sum(clip_emb * text_emb[perm], axis=1)
    consistency = [float(np.mean(np.sum(e[1:] * e[:-1], axis=1))) for e in frame_emb]
    flicker = [float(np.abs(np.diff(c.astype(np.float32), axis=0)).mean()) for c in clips]
    sharp = [float(np.mean([laplacian_variance(f) for f in c])) for c in clips]
    return {
        "clips": n,
        "accuracy": accuracy(per_clip),
        "heldout_accuracy": accuracy([r for r in per_clip if r["prompt"] in held]),
        "seen_accuracy": accuracy([r for r in per_clip if r["prompt"] not in held]),
        "similarity": {
            "matched": round(float(matched.mean()), 4),
            "shuffled": round(float(shuffled.mean()), 4),
            "gap": round(float((matched - shuffled).mean()), 4),
            "matched_wins": round(float((matched > shuffled).mean()), 4),
        },
        "temporal_consistency": round(float(np.mean(consistency)), 4),
        "flicker": round(float(np.mean(flicker)), 3),
        "sharpness": round(float(np.mean(sharp)), 2),
        "examples": [[r["prompt"], r["caption"]] for r in per_clip[:6]],
    }


def _derangement(prompts: list[str]) -> np.ndarray:
    """A fixed permutation that pairs every prompt with a different prompt text (when there is one)."""
    n = len(prompts)
    perm = np.roll(np.arange(n), 1)
    for i in range(n):
        if prompts[perm[i]] == prompts[i]:
            j = next((j for j in range(n) if prompts[j] != prompts[i] and prompts[perm[j]] != prompts[i]), None)
            if j is not None:
                perm[i], perm[j] = perm[j], perm[i]
    return perm


def evaluate_generation(
    generator: Any,
    captioner: Any,
    embedder: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 20,
    guidance: float = 4.0,
    heldout: Iterable[str] | None = None,
    clips_out: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Generate one clip per ``(prompt, seed)`` with ``generator`` (``steps``, ``guidance``, native size)
    and measure it (``evaluate_clips``); adds timing and the model's identity. ``heldout``: the prompts to
    report separately (default: ``heldout_prompts()``). ``clips_out``: a list the generated clips are
    appended to (for ``contact_sheet``)."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    held = heldout_prompts() if heldout is None else list(heldout)
    clips, seconds, step_count = [], 0.0, 0
    for prompt, seed in zip(prompts, seeds):
        spec = GenerationSpec(
            prompt=prompt, seed=int(seed), steps=steps, guidance=guidance, num_frames=16, fps=8.0, width=64, height=48
        )
        spec = generator.normalise(spec)
        count = [0]

        def tick(_: Any, c: list[int] = count) -> None:
            c[0] += 1

        t0 = time.perf_counter()
        clips.append(generator.generate(spec, on_step=tick))
        seconds += time.perf_counter() - t0
        step_count += count[0]
    if clips_out is not None:
        clips_out.extend(clips)
    out = evaluate_clips(clips, prompts, captioner, embedder, heldout=held)
    out.update(
        model={"name": generator.info.name, "version": generator.info.version},
        captioner={"name": captioner.info.name, "version": captioner.info.version},
        embedder={"name": embedder.info.name, "version": embedder.info.version},
        steps=steps,
        guidance=guidance,
        contrast_guidance=getattr(generator, "contrast_guidance", None),
        size=list(clips[0].shape),
        seconds_per_clip=round(seconds / len(clips), 4),
        seconds_per_step=round(seconds / max(1, step_count), 4),
    )
    return out


#: the noise levels ``word_reliance`` measures at
RELIANCE_T = (0.3, 0.6, 0.8, 0.95)


def _swap_word(prompt: str, words: Sequence[str]) -> str:
    """``prompt`` with its word from ``words`` replaced by the next one of ``words``."""
    return " ".join(words[(words.index(w) + 1) % len(words)] if w in words else w for w in prompt.split())


def word_reliance(
    model: Any, prompts: Sequence[str], seeds: Sequence[int], *, ts: Sequence[float] = RELIANCE_T, seed: int = 0
) -> dict[str, Any]:
    """How much the tiny generator's transformer (``model``: a ``TinyVideoModel``) uses each word of the
    prompt. The world's own clips for ``prompts`` are encoded and noised to each ``t`` of ``ts``; the
    flow-matching loss over the latent cells that show the object is measured with the right prompt and
    with its colour, shape or motion word swapped for the next of its kind. ``reliance[attribute]`` is the
    mean relative rise of that loss: 0 when the word is ignored. A transformer that draws the shape the
    prompt names shows a rise for shape, as it does for colour."""
    import torch

    from framebus.models.generator import frames_to_tensor
    from framebus.models.training.generator import object_cells
    from framebus.models.world import COLOURS, MOTIONS, SHAPES

    cfg = model.config
    kinds = {"colour": COLOURS, "shape": SHAPES, "motion": MOTIONS}
    clips = reference_clips(prompts, seeds, cfg.frames, cfg.fps, cfg.width, cfg.height)
    variants = {"right": list(prompts)} | {k: [_swap_word(p, words) for p in prompts] for k, words in kinds.items()}
    loss: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        video = torch.cat([frames_to_tensor(c) for c in clips])
        ae = model.autoencoder
        x0 = ae.normalise_latents(ae.encode(video))
        cells = object_cells(video, cfg.spatial_down)
        texts = {k: model.encode_text(v) for k, v in variants.items()}
        gen = torch.Generator().manual_seed(int(seed))
        for t in ts:
            noise = torch.randn(x0.shape, generator=gen)
            xt = (1 - t) * x0 + t * noise
            tt = torch.full((len(x0),), float(t))
            for k, text in texts.items():
                err = (model.velocity(xt, tt, text) - (noise - x0)).pow(2).mean(dim=1, keepdim=True)
                loss[k].append(round(float((err * cells).sum() / cells.sum().clamp_min(1.0)), 4))
    reliance = {
        k: round(float(np.mean([(a - r) / max(r, 1e-8) for a, r in zip(loss[k], loss["right"])])), 4) for k in kinds
    }
    return {"t": [float(t) for t in ts], "loss": loss, "reliance": reliance}


def contact_sheet(
    generated: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    prompts: Sequence[str],
    path: Any,
    *,
    title: str = "",
    fractions: Sequence[float] = CAPTION_FRAMES,
) -> None:
    """A PNG at ``path``: one row per prompt, the world's own clip (the ceiling) then the generated one,
    each as the frames at ``fractions`` of the clip (the frames the captioner reads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(prompts), 2 * len(fractions)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.25 * rows + 0.6), squeeze=False)
    for r, prompt in enumerate(prompts):
        for side, clip in enumerate((reference[r], generated[r])):
            for k, f in enumerate(fractions):
                ax = axes[r][side * len(fractions) + k]
                ax.imshow(clip[min(len(clip) - 1, int(f * len(clip)))], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{'world' if side == 0 else 'generated'} t={f:.2f}", fontsize=7)
        axes[r][0].set_ylabel(prompt.removeprefix("a ").replace(" moving ", "\n"), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: metric path -> (direction, tolerance): +1 higher is better, -1 lower is better; absolute tolerance
#: for fractions and similarities, relative for the rest
COMPARED: dict[str, tuple[int, float, str]] = {
    "accuracy.colour": (1, 0.05, "abs"),
    "accuracy.shape": (1, 0.05, "abs"),
    "accuracy.motion": (1, 0.05, "abs"),
    "heldout_accuracy.colour": (1, 0.25, "abs"),
    "heldout_accuracy.shape": (1, 0.25, "abs"),
    "heldout_accuracy.motion": (1, 0.25, "abs"),
    "similarity.gap": (1, 0.02, "abs"),
    "temporal_consistency": (1, 0.02, "abs"),
    "flicker": (-1, 0.25, "rel"),
    "sharpness": (1, 0.3, "rel"),
}


def _get(d: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def compare(result: dict[str, Any], baseline: dict[str, Any], *, scale: float = 1.0) -> list[str]:
    """Regressions of ``result`` against ``baseline``: one line per metric of ``COMPARED`` that got worse
    by more than its tolerance (times ``scale``). Metrics missing from either side are skipped."""
    out = []
    for path, (direction, tol, kind) in COMPARED.items():
        new, old = _get(result, path), _get(baseline, path)
        if not isinstance(new, (int, float)) or not isinstance(old, (int, float)):
            continue
        allowed = tol * scale * (abs(old) if kind == "rel" else 1.0)
        if direction * (old - new) > allowed:
            out.append(f"{path}: {new:.4g} vs baseline {old:.4g} (tolerance {allowed:.3g})")
    return out
