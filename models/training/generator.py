"""Train the tiny video generator (``framebus.models.generator``) on the synthetic world.

``train_tiny_generator(out_path, seed=)`` renders clips of world shots (``sample_shots`` over every
combination except ``HELDOUT_COMBOS``, which no training clip shows, so the evaluation can report
compositional generalisation), then trains, in order:

1. the video autoencoder, on the clips (reconstruction loss with the object's pixels weighted up, the same
   on the error's spatial differences so outlines stay sharp, a small L2 on the latents), and records the
   per-channel mean and std of the latents;
2. the text encoder and the diffusion transformer together, on the standardised latents of the same clips
   with their captions, by rectified flow matching (``x_t = (1 - t) x_0 + t noise``, target
   ``noise - x_0``, ``t`` a shifted logit-normal weighted to high noise, a share uniform; the object's
   latent cells weighed up), the caption replaced by the empty prompt ``cfg_dropout`` of the time
   (classifier-free guidance); the transformer's weights are an exponential moving average.

Deterministic for a seed with one torch build on one kind of CPU (fixed thread count,
``torch.use_deterministic_algorithms``, every random draw from a seeded generator; another CPU's kernels
round floats differently, and its weights differ). Writes ``out_path`` atomically, with no timings in it:
the same weights, the same bytes.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from framebus.models.training import deterministic_torch
from framebus.models.world import RENDER_VERSION

#: ``(shape, colour, motion)`` combinations no training clip shows (each shape, motion and colour but one
#: appears once): the evaluation's held-out combinations
HELDOUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("circle", "yellow", "up"),
    ("square", "red", "left"),
    ("triangle", "blue", "down"),
    ("star", "green", "right"),
)

#: Every hyperparameter that determines the trained generator (with the seed and the torch build):
#: ``framebus.models.training`` hashes it to key its cache, so change a value here, never in code.
RECIPE: dict[str, Any] = {
    "world_seed": 0,
    #: training clips per (non-held-out) combination; rendered at render_scale x the native size and
    #: box-filtered down (anti-aliased edges, like the decode agent's downscaled frames)
    "clips_per_combo": 12,
    "render_scale": 2,
    "heldout_combos": [list(c) for c in HELDOUT_COMBOS],
    #: GeneratorConfig fields
    "model": {
        "frames": 16,
        "fps": 8.0,
        "width": 64,
        "height": 48,
        "ae_channels": [16, 64],
        "latent_channels": 16,
        "patch": [2, 2, 2],
        "dim": 128,
        "depth": 4,
        "heads": 4,
        "mlp_ratio": 3.0,
        "text_layers": 2,
        "text_len": 8,
        #: the sampler's shift, matched to the training noise below (most steps at high noise)
        "shift": 4.0,
    },
    #: the autoencoder: weighted L1 (object pixels weigh 1 + object_weight), L2 on the latents
    #: and Gaussian noise of latent_noise x the batch's latent std added before decoding, so the decoder
    #: turns the transformer's imperfect latents into clean frames
    #: crop_frames: each step trains on an 8-frame window of the clips (the autoencoder is convolutional in
    #: time): half the cost of whole clips for the same reconstruction
    "ae": {
        "steps": 800,
        "batch": 8,
        "crop_frames": 8,
        "lr": 2e-3,
        "object_weight": 4.0,
        "latent_l2": 1e-3,
        "latent_noise": 0.1,
        #: an L1 on the horizontal and vertical differences of the error (object pixels weighed up the same):
        #: the plain L1 alone leaves the outlines soft; with it the tiny captioner names the reconstructions'
        #: shape 0.85 of the time rather than 0.60 (40 evaluation prompts), for ~30 s more training
        "edge_weight": 1.0,
    },
    "dit": {
        #: with the noise levels below, 1500 steps of 8 clips name motion 1.00 where 4000 steps at
        #: logit-normal(0, 1) named it 0.89
        "steps": 1500,
        "batch": 8,
        "lr": 1e-3,
        "warmup": 100,
        "weight_decay": 0.0,
        "cfg_dropout": 0.1,
        #: latent cells that show the object weigh 1 + object_weight in the flow loss (the background
        #: textures are most of the latents, the object is what the prompt names; 12 rather than 4 named
        #: shape 0.50 rather than 0.45 on 40 prompts, within one run's noise, and no worse anywhere else)
        "object_weight": 12.0,
        "ema": 0.99,
        "logit_normal_std": 1.0,
        #: t = shift(sigmoid(N(mean, std))) with t_shift 3: median t 0.89. The object is a large, coherent
        #: signal over many latent cells, so it stays readable in x_t up to t ~ 0.95; at logit-normal(0, 1)
        #: (median 0.5) the transformer rarely trains where the prompt, not x_t, must decide the clip
        "logit_normal_mean": 1.0,
        "t_shift": 3.0,
        #: ...but that leaves almost nothing below t 0.5 (1.8 % of draws), where the sampler's last steps
        #: sharpen the outline: this share of the batch draws t ~ U(0, 1) instead
        "t_uniform": 0.3,
    },
    "threads": 2,
    "render_version": RENDER_VERSION,
}


def render_clips(
    shots: list[Any], frames: int, fps: float, width: int, height: int, scale: int = 1, *, workers: int = 1
) -> np.ndarray:
    """``(n, frames, height, width, 3)`` uint8: frame ``k`` of each shot at ``k / fps`` seconds, rendered at
    ``scale`` x the size and box-filtered down. ``workers`` > 1 splits the shots over that many processes
    (the same bytes: each clip depends on its own spec only)."""
    args = (frames, fps, width, height, scale)
    workers = max(1, min(int(workers), len(shots) // 32))  # a process is worth it for dozens of clips
    if workers == 1:
        return _render_chunk(shots, *args)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [shots[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_render_chunk, chunks, *([a] * workers for a in args)))
    out = np.empty((len(shots), frames, height, width, 3), np.uint8)
    for i, part in enumerate(parts):
        out[i::workers] = part
    return out


def _render_chunk(shots: list[Any], frames: int, fps: float, width: int, height: int, scale: int) -> np.ndarray:
    from framebus.models.world import render_frame

    out = np.empty((len(shots), frames, height, width, 3), np.uint8)
    for i, spec in enumerate(shots):
        for k in range(frames):
            f = render_frame(spec, k / fps, width * scale, height * scale).astype(np.float32)
            if scale > 1:
                f = f.reshape(height, scale, width, scale, 3).mean(axis=(1, 3))
            out[i, k] = np.clip(f + 0.5, 0, 255).astype(np.uint8)
    return out


def object_pixels(video: Any) -> Any:
    """``(B, 1, T, H, W)`` 1.0 where a ``(B, 3, T, H, W)`` clip in ``[-1, 1]`` shows the object or its trail
    (any channel above -0.2: the world's backgrounds are darker), else 0.0."""
    return (video.amax(dim=1, keepdim=True) > -0.2).float()


def object_cells(video: Any, spatial_down: int) -> Any:
    """``object_pixels`` on the latent grid (``2 x spatial_down x spatial_down`` pixels a cell): 1.0 for
    the cells that show any of the object."""
    import torch

    return torch.nn.functional.max_pool3d(object_pixels(video), (2, spatial_down, spatial_down))


def training_shots(recipe: dict[str, Any] | None = None) -> list[Any]:
    from framebus.models.world import all_combinations, sample_shots

    r = recipe or RECIPE
    exclude = {tuple(c) for c in r["heldout_combos"]}
    n = (len(all_combinations()) - len(exclude)) * int(r["clips_per_combo"])
    return sample_shots(np.random.default_rng([int(r["world_seed"]), 11]), n, exclude=exclude)


def _lr(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))


def train_tiny_generator(
    out_path: Path | None, *, seed: int = 0, recipe: dict[str, Any] | None = None, log: Any = None
) -> dict[str, Any]:
    """Train the generator (see the module docstring) and save it to ``out_path`` (skipped when ``None``).
    Returns stats: ``seconds``, ``data_seconds``, ``ae_seconds``, ``dit_seconds``, ``ae_final_loss``,
    ``final_loss`` (flow-matching loss, mean of the last 50 steps), ``params``, ``clips``, ``version``."""
    import torch

    from framebus.models.generator import GeneratorConfig, TinyVideoModel, frames_to_tensor, tokenize

    r = recipe or RECIPE
    t_start = time.monotonic()
    with deterministic_torch(int(r["threads"])):
        torch.manual_seed(int(seed))
        cfg = GeneratorConfig.from_dict(r["model"])
        model = TinyVideoModel.fresh(cfg, seed=int(seed))
        shots = training_shots(r)
        clips = render_clips(
            shots, cfg.frames, cfg.fps, cfg.width, cfg.height, int(r["render_scale"]), workers=int(r["threads"])
        )
        video = torch.cat([frames_to_tensor(c) for c in clips])  # (n, 3, T, H, W)
        captions = [s.caption for s in shots]
        data_s = time.monotonic() - t_start
        gen = torch.Generator().manual_seed(int(seed) * 1000 + 7)

        # 1. the autoencoder
        ae, a = model.autoencoder.train(), r["ae"]
        opt = torch.optim.Adam(ae.parameters(), lr=a["lr"])
        t0 = time.monotonic()
        ae_losses = []
        for step in range(int(a["steps"])):
            for g in opt.param_groups:
                g["lr"] = _lr(step, int(a["steps"]), a["lr"], 20)
            x = video[torch.randint(len(video), (int(a["batch"]),), generator=gen)]
            crop = int(a.get("crop_frames") or cfg.frames)  # a window of the clip: the AE is convolutional in time
            if crop < cfg.frames:
                start = 2 * int(torch.randint((cfg.frames - crop) // 2 + 1, (1,), generator=gen))
                x = x[:, :, start : start + crop]
            z = ae.encode(x)
            rec = ae.decode(z + a["latent_noise"] * z.detach().std() * torch.randn(z.shape, generator=gen))
            # the object and its trail are bright on a dark background: weigh them up
            weight = 1 + a["object_weight"] * object_pixels(x)
            err = rec - x
            loss = (weight * err.abs()).mean() + a["latent_l2"] * z.pow(2).mean()
            if a.get("edge_weight"):  # the error's own gradients: edges and corners where the world has them
                loss = loss + a["edge_weight"] * (
                    (weight[..., 1:] * (err[..., 1:] - err[..., :-1]).abs()).mean()
                    + (weight[..., 1:, :] * (err[..., 1:, :] - err[..., :-1, :]).abs()).mean()
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ae_losses.append(float(loss.detach()))
            if log is not None and step % 50 == 0:
                log(f"ae {step} {float(loss):.4f}")
        ae.eval()
        ae_s = time.monotonic() - t0
        with torch.no_grad():
            lat = torch.cat([ae.encode(video[i : i + 64]) for i in range(0, len(video), 64)])
            ae.latent_mean.copy_(lat.mean(dim=(0, 2, 3, 4)))
            ae.latent_std.copy_(lat.std(dim=(0, 2, 3, 4)).clamp_min(1e-4))
            lat = ae.normalise_latents(lat)
            # where the object (and its trail) is, on the latent grid: the flow loss weighs those cells up
            focus = 1 + r["dit"]["object_weight"] * object_cells(video, cfg.spatial_down)
        for p in ae.parameters():
            p.requires_grad_(False)

        # 2. text encoder + transformer by flow matching
        d = r["dit"]
        te, dit = model.text_encoder.train(), model.transformer.train()
        params = list(te.parameters()) + list(dit.parameters())
        opt = torch.optim.AdamW(params, lr=d["lr"], weight_decay=d["weight_decay"])
        ema_te, ema_dit = copy.deepcopy(te).eval(), copy.deepcopy(dit).eval()
        ema_params = list(ema_te.parameters()) + list(ema_dit.parameters())
        t0 = time.monotonic()
        losses = []
        for step in range(int(d["steps"])):
            for g in opt.param_groups:
                g["lr"] = _lr(step, int(d["steps"]), d["lr"], int(d["warmup"]))
            idx = torch.randint(len(lat), (int(d["batch"]),), generator=gen)
            x0 = lat[idx]
            drop = torch.rand(len(idx), generator=gen) < d["cfg_dropout"]
            prompts = ["" if dr else captions[int(i)] for i, dr in zip(idx, drop)]
            t = torch.sigmoid(
                torch.randn(len(idx), generator=gen) * d["logit_normal_std"] + d.get("logit_normal_mean", 0.0)
            )
            t_shift = float(d.get("t_shift", 1.0))  # as the sampler's shift: more of the training at high noise
            t = t_shift * t / (1 + (t_shift - 1) * t)
            if d.get("t_uniform"):  # a share of the batch at t ~ U(0, 1): the sampler's last, low-noise steps
                uniform = torch.rand(len(idx), generator=gen) < d["t_uniform"]
                t = torch.where(uniform, torch.rand(len(idx), generator=gen), t)
            noise = torch.randn(x0.shape, generator=gen)
            tb = t.view(-1, 1, 1, 1, 1)
            xt = (1 - tb) * x0 + tb * noise
            v = model.velocity(xt, t, te(tokenize(prompts, cfg.text_len)))
            loss = (focus[idx] * (v - (noise - x0)).pow(2)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - d["ema"])
            losses.append(float(loss.detach()))
            if log is not None and step % 50 == 0:
                log(f"dit {step} {np.mean(losses[-50:]):.4f} {time.monotonic() - t0:.0f}s")
        dit_s = time.monotonic() - t0
        model.text_encoder, model.transformer = ema_te, ema_dit
        n_params = sum(p.numel() for m in (ae, ema_te, ema_dit) for p in m.parameters())
        stats = {
            "model": "tiny-generator",
            "seed": int(seed),
            "clips": len(clips),
            "params": int(n_params),
            "data_seconds": round(data_s, 2),
            "ae_seconds": round(ae_s, 2),
            "dit_seconds": round(dit_s, 2),
            "ae_final_loss": round(float(np.mean(ae_losses[-20:])), 5),
            "initial_loss": round(float(np.mean(losses[:20])), 5),
            "final_loss": round(float(np.mean(losses[-50:])), 5),
            "steps": int(a["steps"]) + int(d["steps"]),
            "heldout_combos": [" ".join(c) for c in r["heldout_combos"]],
        }
        # the file holds only what the recipe determines (timings stay in the returned stats and the
        # sidecar): its bytes, and so its version, are the same for the same weights
        model.meta = {k: v for k, v in stats.items() if not k.endswith("_seconds")}
        if out_path is not None:
            model.save(Path(out_path))
            from framebus.models.common import file_digest

            stats["version"] = file_digest(Path(out_path))[:12]
    stats["seconds"] = round(time.monotonic() - t_start, 2)
    return stats


def train_for_settings(out_path: Path, settings: Any) -> dict[str, Any]:
    """``TrainSpec.train``: always on CPU, seed ``settings.train_seed``."""
    return train_tiny_generator(Path(out_path), seed=int(getattr(settings, "train_seed", 0) or 0))
