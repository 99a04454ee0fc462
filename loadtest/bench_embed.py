"""Embedding throughput: the raw open_clip forward vs the framebus ``Embedder.embed_images`` path.

    python -m framebus.loadtest.bench_embed [--device auto|cpu|cuda] [--arch tiny|ViT-B-32[,...]]
                                   [--batch-sizes 1,8,32,128] [--images 256] [--precision fp32|bf16|both]
                                   [--repeat 3] [--warmup 1] [--threads 8] [--json PATH]

A benchmark, not a test. For each architecture, precision and batch size it measures, in images per
second of wall time (best of ``--repeat`` timed runs after ``--warmup`` untimed ones; on CUDA every
timed region is bracketed by ``torch.cuda.synchronize()``):

* ``(a) fwd``: the offline ceiling - ``model.encode_image`` on pre-made, already preprocessed, full
  batches that already live on the device (no preprocessing, no host<->device copies);
* ``(b) framebus``: ``OpenClipEmbedder.embed_images`` on a list of ``HxWx3`` uint8 frames with a 224
  short side (what the decode agent sends: 640x360 video -> 224x398), i.e. PIL resize + center crop +
  normalize per image, ``torch.stack``, host->device copy, forward, L2-normalise, device->host copy;
* ``(c) b/a``: how much of the model's speed the framebus path keeps, plus where its time goes: the
  PIL preprocessing share (measured separately, single thread, exactly ``Embedder.preprocess``) and
  the forward share (from ``(a)``); the rest is copies, normalisation and Python;
* ``(d) t-pre``: the same path with preprocessing done by torch ops on the model's device from a
  uint8 batch (copy uint8 -> resize (bicubic, antialias, only when needed) -> center crop ->
  normalize), a measurement of what moving preprocessing onto the GPU would gain. Its embeddings are
  checked against ``(b)``'s (cosine, fp32). It lives here only: ``models/openclip.py`` is unchanged;
* ``(e) pil xK``: the PIL preprocessing spread over ``--threads`` threads (Pillow releases the GIL),
  the cheap CPU-side alternative.

Precisions: ``fp32`` (no autocast; TF32 as torch's defaults leave it) and ``bf16`` (``torch.autocast``
bf16 - what ``OpenClipEmbedder`` always does on CUDA). On CPU framebus runs fp32 only, so ``bf16`` is
skipped there. ``ViT-B-32`` is built with random init (``pretrained=None``, no weights offline):
throughput is identical to the pretrained model's, the vectors are meaningless.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

FRAME_H, FRAME_W = 224, 398  # a 640x360 source at the default frame_size (224 short side)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# --- inputs ----------------------------------------------------------------------------------------


def make_frames(n: int, h: int = FRAME_H, w: int = FRAME_W, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct, smooth-ish RGB uint8 frames (low-res noise upscaled + a little grain), like
    decoded video rather than white noise (noise is the worst case for resize differences)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        big = np.asarray(Image.fromarray(small, "RGB").resize((w, h), Image.BILINEAR), dtype=np.int16)
        big = big + rng.integers(-8, 9, size=big.shape, dtype=np.int16)
        out.append(np.clip(big, 0, 255).astype(np.uint8))
    return out


# --- embedders -------------------------------------------------------------------------------------


def build_embedder(arch: str, device: str, batch_size: int = 64):
    """The framebus embedder for ``arch`` through ``OpenClipEmbedder``'s own constructors (no
    settings): ``tiny`` -> ``OpenClipEmbedder.tiny``, anything else -> ``OpenClipEmbedder.pretrained``
    with ``pretrained=None`` (random init, nothing downloaded)."""
    from framebus.models.openclip import OpenClipEmbedder, _quiet_random_init_warning

    if arch == "tiny":
        return OpenClipEmbedder.tiny(device=device, batch_size=batch_size)
    with _quiet_random_init_warning():
        return OpenClipEmbedder.pretrained(arch, None, device=device, batch_size=batch_size)  # type: ignore[arg-type]


def autocast_for(emb, precision: str):
    """Context factory for ``precision``: bf16 autocast on CUDA, else no autocast."""
    import torch

    if precision == "bf16" and emb.device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def preprocess_params(emb) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Resize/crop size and normalisation of ``emb.preprocess`` (open_clip's Compose)."""
    size, mean, std = emb.image_size, OPENAI_MEAN, OPENAI_STD
    for t in getattr(emb.preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            mean, std = tuple(float(x) for x in t.mean), tuple(float(x) for x in t.std)
        if type(t).__name__ == "Resize":
            s = t.size
            size = int(s if isinstance(s, int) else s[0])
    return size, mean, std


class TensorPreprocess:
    """open_clip's eval transform (Resize(short side, bicubic, antialias) -> CenterCrop -> ToTensor ->
    Normalize) with torch ops on ``device``, from a uint8 ``NxHxWx3`` batch. Measurement only."""

    def __init__(self, emb):
        import torch

        self.size, mean, std = preprocess_params(emb)
        self.crop = emb.image_size
        self.device = emb.device
        std_t = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) / std_t

    def __call__(self, images: list[np.ndarray]):
        import torch
        import torch.nn.functional as F

        outs = []
        for group in _same_shape_runs(images):
            h, w = group[0].shape[:2]
            short, long = (h, w) if h <= w else (w, h)
            new_short, new_long = self.size, int(self.size * long / short)  # torchvision's rounding
            new_hw = (new_short, new_long) if h <= w else (new_long, new_short)
            if tuple(new_hw) == (h, w) and h >= self.crop and w >= self.crop:
                # no resize: center-crop on the host first (a view), so only the crop is copied
                top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
                group = [im[top : top + self.crop, left : left + self.crop] for im in group]
            x = torch.from_numpy(np.stack(group)).to(self.device, non_blocking=True)  # N,H,W,3 uint8
            x = x.permute(0, 3, 1, 2).float()
            if tuple(new_hw) != (h, w):
                x = F.interpolate(x, size=new_hw, mode="bicubic", align_corners=False, antialias=True)
                x = x.clamp_(0, 255).round_()  # PIL hands back uint8
            h, w = x.shape[-2:]
            top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
            x = x[:, :, top : top + self.crop, left : left + self.crop]
            outs.append(x * self.scale - self.shift)
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def _same_shape_runs(images: list[np.ndarray]) -> list[list[np.ndarray]]:
    runs: list[list[np.ndarray]] = []
    for im in images:
        if runs and runs[-1][0].shape == im.shape:
            runs[-1].append(im)
        else:
            runs.append([im])
    return runs


def embed_tensor_pre(emb, tpre: TensorPreprocess, images: list[np.ndarray], autocast) -> np.ndarray:
    """``embed_images`` with ``TensorPreprocess`` instead of PIL: same batching, same output."""
    import torch

    out = []
    for lo in range(0, len(images), emb.batch_size):
        with torch.inference_mode(), autocast():
            batch = tpre(images[lo : lo + emb.batch_size])
            feats = emb.model.encode_image(batch)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def embed_images_instrumented(emb, images: list[np.ndarray]) -> tuple[float, float]:
    """A replica of ``OpenClipEmbedder.embed_images`` that returns ``(preprocess s, model s)``:
    preprocess = PIL + ``torch.stack``; model = host->device copy, forward, normalise, device->host
    (synchronised). Uses ``emb._autocast`` like the real method."""
    import torch

    t_pre = t_model = 0.0
    for lo in range(0, len(images), emb.batch_size):
        t0 = time.perf_counter()
        batch = torch.stack([emb.preprocess(emb._to_pil(im)) for im in images[lo : lo + emb.batch_size]])
        t1 = time.perf_counter()
        with emb._lock, torch.inference_mode(), emb._autocast():
            feats = emb.model.encode_image(batch.to(emb.device, non_blocking=True))
            torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        t2 = time.perf_counter()
        t_pre, t_model = t_pre + t1 - t0, t_model + t2 - t1
    return t_pre, t_model


def embed_pil_threads(emb, pool: ThreadPoolExecutor, images: list[np.ndarray], autocast) -> np.ndarray:
    """``embed_images`` with the PIL preprocessing spread over ``pool``."""
    import torch

    def pre(im):
        return emb.preprocess(emb._to_pil(im))

    out = []
    for lo in range(0, len(images), emb.batch_size):
        batch = torch.stack(list(pool.map(pre, images[lo : lo + emb.batch_size])))
        with torch.inference_mode(), autocast():
            feats = emb.model.encode_image(batch.to(emb.device, non_blocking=True))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


# --- timing ----------------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device, *, warmup: int, repeat: int) -> float:
    """Best (minimum) wall seconds of ``fn()`` over ``repeat`` runs, after ``warmup`` untimed runs.
    The minimum, as in ``bench_decode``: it is the figure least disturbed by other load on the host."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(axis=1)


# --- the benchmark ---------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
        env["torchvision_ops_loaded"] = bool(torchvision.extension._has_ops())
    except Exception as e:  # noqa: BLE001 - report, don't fail
        env["torchvision"] = f"import failed: {type(e).__name__}: {e}"
    try:
        from framebus.models._torchvision_compat import _applied, extension_loads

        env["tv_extension_loads"] = extension_loads()
        env["tv_compat_shim_applied"] = bool(_applied)
    except Exception as e:  # noqa: BLE001
        env["tv_compat"] = f"{type(e).__name__}: {e}"
    try:
        import open_clip

        env["open_clip"] = open_clip.__version__
    except Exception as e:  # noqa: BLE001
        env["open_clip"] = f"import failed: {type(e).__name__}: {e}"
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return env


def settings_free_check() -> dict[str, Any]:
    """What ``OpenClipEmbedder.tiny()`` does with no device argument and no Settings: which device it
    picks, whether it autocasts, and in which dtype ``encode_image`` then really computes."""
    import torch

    from framebus.models.openclip import OpenClipEmbedder

    emb = OpenClipEmbedder.tiny()
    ctx = emb._autocast()
    x = torch.zeros(2, 3, emb.image_size, emb.image_size, device=emb.device)
    with torch.inference_mode(), ctx:
        feats = emb.model.encode_image(x)
    vecs = emb.embed_images(make_frames(2, seed=7))
    return {
        "device": str(emb.device),
        "autocast": type(ctx).__name__,
        "autocast_dtype": str(getattr(ctx, "fast_dtype", None)) if isinstance(ctx, torch.autocast) else None,
        "encode_image_dtype": str(feats.dtype),
        "weights_dtype": str(next(emb.model.parameters()).dtype),
        "embed_images_out": f"{vecs.dtype} {tuple(vecs.shape)}",
    }


def jpeg_decode_ms(n: int = 64, repeat: int = 3, quality: int = 85) -> tuple[float, str]:
    """Per-frame cost of the embed agent's own JPEG decode (``framebus.topics.frames.decode_jpeg``), which
    runs in the same model thread right before ``embed_images`` (not part of (b)). Where
    ``framebus.agents.media`` cannot be imported (its package imports PyAV), the same Pillow calls are timed."""
    import io

    import torch
    from PIL import Image

    try:
        from framebus.topics.frames import decode_jpeg

        what = "framebus.topics.frames.decode_jpeg"
    except ImportError as e:

        def decode_jpeg(data: bytes) -> np.ndarray:  # decode_jpeg's body
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"))

        what = f"Pillow, as decode_jpeg does (agents.media not importable: {e})"

    blobs = []
    for f in make_frames(n, seed=3):
        buf = io.BytesIO()
        Image.fromarray(f, "RGB").save(buf, format="JPEG", quality=quality)  # as encode_jpeg does
        blobs.append(buf.getvalue())
    ms = timed(lambda: [decode_jpeg(b) for b in blobs], torch.device("cpu"), warmup=1, repeat=repeat) / n * 1e3
    return ms, what


def bench_arch(
    arch: str,
    device: str,
    batch_sizes: list[int],
    n_images: int,
    precisions: list[str],
    *,
    repeat: int,
    warmup: int,
    threads: int,
    max_batches: int = 128,
    log=print,
) -> dict[str, Any]:
    import torch

    emb = build_embedder(arch, device)
    dev = emb.device
    n_params = sum(p.numel() for p in emb.model.visual.parameters())
    size, _, _ = preprocess_params(emb)
    max_bs = max(batch_sizes)
    frames = make_frames(max(n_images, max_bs))
    res: dict[str, Any] = {
        "arch": arch,
        "device": str(dev),
        "image_size": emb.image_size,
        "resize_to": size,
        "visual_params": n_params,
        "frame": [FRAME_H, FRAME_W, 3],
        "random_init": True,
        "rows": [],
    }
    log(
        f"\n== {arch}: visual tower {n_params / 1e6:.2f} M params, input {emb.image_size}x{emb.image_size}, "
        f"frames {FRAME_H}x{FRAME_W}x3 uint8, device {dev}"
    )
    if arch == "tiny":
        log("   (framebus tiny CLIP, seeded random init)")
    else:
        log(
            "   (random init via open_clip pretrained=None: no weights offline; throughput equals the "
            "pretrained model's, vectors are meaningless)"
        )

    # Preprocessing alone, exactly Embedder.preprocess(Embedder._to_pil(frame)) + torch.stack.
    sample = frames[: min(len(frames), max(64, min(n_images, 256)))]

    def pil_pre():
        torch.stack([emb.preprocess(emb._to_pil(im)) for im in sample])

    pil_ms = timed(pil_pre, torch.device("cpu"), warmup=1, repeat=repeat) / len(sample) * 1e3
    pool = ThreadPoolExecutor(max_workers=threads)

    def pil_pre_threads():
        torch.stack(list(pool.map(lambda im: emb.preprocess(emb._to_pil(im)), sample)))

    pil_t_ms = timed(pil_pre_threads, torch.device("cpu"), warmup=1, repeat=repeat) / len(sample) * 1e3
    tpre = TensorPreprocess(emb)

    def t_pre():
        for lo in range(0, len(sample), 64):
            tpre(sample[lo : lo + 64])

    t_ms = timed(t_pre, dev, warmup=1, repeat=repeat) / len(sample) * 1e3
    res["preprocess_ms_per_image"] = {
        "pil_1_thread": pil_ms,
        f"pil_{threads}_threads": pil_t_ms,
        f"torch_ops_on_{dev.type}_b64": t_ms,
    }
    log(
        f"   preprocessing per image: PIL (framebus) {pil_ms:.3f} ms | PIL x{threads} threads {pil_t_ms:.3f} ms"
        f" | torch ops on {dev.type} (uint8 copy incl., batch 64) {t_ms:.3f} ms"
    )

    # Correctness of the tensor path and bf16 drift, on fp32 weights.
    chk = frames[: min(64, len(frames))]
    emb.batch_size = 64
    fp32 = contextlib.nullcontext
    saved = emb._autocast
    emb._autocast = fp32
    ref = emb.embed_images(chk)
    emb._autocast = saved
    cos_t = cosine_rows(ref, embed_tensor_pre(emb, tpre, chk, fp32))
    with torch.inference_mode():
        pil_px = torch.stack([emb.preprocess(emb._to_pil(im)) for im in chk]).to(dev)
        px_diff = (pil_px - tpre(chk)).abs()
    res["tensor_pre_vs_pil"] = {
        "cos_min": float(cos_t.min()),
        "cos_mean": float(cos_t.mean()),
        "pixel_absdiff_max": float(px_diff.max()),
        "pixel_absdiff_mean": float(px_diff.mean()),
    }
    log(
        f"   torch-ops vs PIL preprocessing: normalized pixels |diff| max {float(px_diff.max()):.4f} "
        f"mean {float(px_diff.mean()):.5f}; embeddings cos min {cos_t.min():.6f} mean {cos_t.mean():.6f}"
    )
    if dev.type == "cuda" and "bf16" in precisions:
        cos_bf = cosine_rows(ref, emb.embed_images(chk))  # the framebus default (bf16 autocast)
        res["bf16_vs_fp32_cos"] = {"min": float(cos_bf.min()), "mean": float(cos_bf.mean())}
        log(f"   framebus bf16 autocast vs fp32 embeddings: cos min {cos_bf.min():.6f} mean {cos_bf.mean():.6f}")

    for prec in precisions:
        if prec == "bf16" and dev.type != "cuda":
            log("   bf16: skipped on cpu (framebus does not autocast on cpu)")
            continue
        autocast = autocast_for(emb, prec)
        emb._autocast = autocast  # (b) with this precision; bf16 on cuda is OpenClipEmbedder's own default
        for bs in batch_sizes:
            n = bs * min(max_batches, max(1, math.ceil(n_images / bs)))  # whole batches only, like (a)
            imgs = frames[:n] if n <= len(frames) else (frames * math.ceil(n / len(frames)))[:n]
            emb.batch_size = bs
            x = torch.randn(bs, 3, emb.image_size, emb.image_size, device=dev)
            iters = n // bs

            def fwd():  # autocast entered per batch, as embed_images does (no weight-cast cache across batches)
                with torch.inference_mode():
                    for _ in range(iters):
                        with autocast():
                            emb.model.encode_image(x)

            t_a = timed(fwd, dev, warmup=warmup, repeat=repeat)
            t_b = timed(lambda: emb.embed_images(imgs), dev, warmup=warmup, repeat=repeat)
            t_d = timed(lambda: embed_tensor_pre(emb, tpre, imgs, autocast), dev, warmup=warmup, repeat=repeat)
            t_e = timed(lambda: embed_pil_threads(emb, pool, imgs, autocast), dev, warmup=warmup, repeat=repeat)
            for _ in range(warmup):
                embed_images_instrumented(emb, imgs)
            t_pre, t_model = min((embed_images_instrumented(emb, imgs) for _ in range(repeat)), key=sum)
            a, b, d, e = n / t_a, n / t_b, n / t_d, n / t_e
            ms_b, ms_a = 1e3 / b, 1e3 / a
            row = {
                "precision": prec,
                "batch": bs,
                "images": n,
                "fwd_ips": a,
                "framebus_ips": b,
                "ratio_b_a": b / a,
                "framebus_ms": ms_b,
                "fwd_ms": ms_a,
                # from the instrumented replica of (b), one run: shares add up to 100 %
                "pre_ms": t_pre / n * 1e3,
                "model_ms": t_model / n * 1e3,
                "pre_share": t_pre / (t_pre + t_model),
                "model_share": t_model / (t_pre + t_model),
                "fwd_of_model": min(1.0, ms_a / (t_model / n * 1e3)),
                "tensor_pre_ips": d,
                "ratio_d_a": d / a,
                "gain_d_b": d / b,
                "pil_threads_ips": e,
                "gain_e_b": e / b,
            }
            res["rows"].append(row)
            log(f"   .. {prec} batch {bs}: (a) {a:,.0f} (b) {b:,.0f} (d) {d:,.0f} (e) {e:,.0f} img/s")
    emb._autocast = saved
    pool.shutdown()
    return res


def format_table(res: dict[str, Any], threads: int) -> str:
    hdr = [
        "prec",
        "batch",
        "n",
        "(a) fwd img/s",
        "(b) framebus img/s",
        "b/a",
        "b ms/img",
        "pre ms",
        "pre %",
        "model ms",
        "fwd/model",
        "(d) t-pre img/s",
        "d/a",
        "d/b",
        f"(e) pil x{threads} img/s",
        "e/b",
    ]
    rows = []
    for r in res["rows"]:
        rows.append(
            [
                r["precision"],
                str(r["batch"]),
                str(r["images"]),
                f"{r['fwd_ips']:,.0f}",
                f"{r['framebus_ips']:,.0f}",
                f"{r['ratio_b_a']:.2f}",
                f"{r['framebus_ms']:.3f}",
                f"{r['pre_ms']:.3f}",
                f"{100 * r['pre_share']:.0f}",
                f"{r['model_ms']:.3f}",
                f"{100 * r['fwd_of_model']:.0f}%",
                f"{r['tensor_pre_ips']:,.0f}",
                f"{r['ratio_d_a']:.2f}",
                f"{r['gain_d_b']:.1f}x",
                f"{r['pil_threads_ips']:,.0f}",
                f"{r['gain_e_b']:.1f}x",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(hdr)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(hdr), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)


LEGEND = """\
(a) model.encode_image on pre-made preprocessed full batches already on the device (the ceiling)
(b) OpenClipEmbedder.embed_images on HxWx3 uint8 frames (PIL preprocessing, copies, normalise)
    pre ms / model ms: per image, from an instrumented replica of (b) (same code, timers between the
    steps, best of --repeat): pre = PIL resize/crop/normalise + torch.stack (single thread);
    model = host->device copy + forward + normalise + device->host; pre % = pre / (pre + model);
    fwd/model = (a)'s forward time per image / model ms (the rest is copies and normalisation)
(d) same as (b) but preprocessing with torch ops on the device from uint8 (measurement only)
(e) same as (b) but PIL preprocessing in a thread pool"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m framebus.loadtest.bench_embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--arch", default="tiny", help="tiny or an open_clip architecture (ViT-B-32); comma list ok")
    p.add_argument("--batch-sizes", default="1,8,32,128", help="comma list (default 1,8,32,128)")
    p.add_argument("--images", type=int, default=256, help="images per timed run (rounded up to whole batches)")
    p.add_argument("--precision", default="both", choices=("fp32", "bf16", "both"))
    p.add_argument("--repeat", type=int, default=3, help="timed runs per figure (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=8, help="threads for the (e) PIL thread-pool variant")
    p.add_argument(
        "--max-batches", type=int, default=128, help="cap on batches per timed run (keeps batch 1 short; default 128)"
    )
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    args.archs = [a.strip() for a in str(args.arch).split(",") if a.strip()]
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes must be positive integers")
    if min(args.images, args.repeat, args.threads, args.max_batches) < 1 or args.warmup < 0:
        p.error("--images, --repeat, --threads, --max-batches must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from framebus.models.openclip import resolve_device

    device = resolve_device(args.device)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    env = environment(device)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    sf = settings_free_check()
    print("settings-free OpenClipEmbedder.tiny(): " + ", ".join(f"{k}={v}" for k, v in sf.items()))
    jpeg_ms, jpeg_how = jpeg_decode_ms(repeat=args.repeat)
    print(
        f"embed agent JPEG decode ({FRAME_H}x{FRAME_W}, q85; {jpeg_how}), before embed_images: {jpeg_ms:.3f} ms/frame"
    )
    results = {"argv": sys.argv, "env": env, "settings_free": sf, "jpeg_decode_ms": jpeg_ms, "archs": []}
    for arch in args.archs:
        res = bench_arch(
            arch,
            device,
            args.batch_sizes,
            args.images,
            precisions,
            repeat=args.repeat,
            warmup=args.warmup,
            threads=args.threads,
            max_batches=args.max_batches,
        )
        results["archs"].append(res)
        print(
            f"\n{arch} on {res['device']} ({env.get('gpu', platform.processor() or 'cpu')}), images/s, "
            f"best of {args.repeat}:"
        )
        print(format_table(res, args.threads))
    print("\n" + LEGEND)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
