"""Pretrained text-to-video generators through diffusers: LTX-Video (``LTXPipeline``) and Wan 2.1/2.2
(``WanPipeline``), behind the ``VideoGenerator`` protocol.

* Loading: ``load_ltx`` / ``load_wan`` take a Hugging Face model id (default ``Lightricks/LTX-Video`` and
  ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``; any diffusers-format LTX or Wan 2.x T2V checkpoint works) or a local
  diffusers directory, from ``<models dir>/<model id>`` when that holds a ``model_index.json``, else through
  the Hugging Face cache (``cache_dir``), download included unless the hub is offline. Missing weights raise
  ``ModelNotAvailable`` (``models.weights_missing``) naming what to download. ``random_tiny=True`` builds the
  same pipeline classes from tiny random configs instead (``build_tiny_pipeline``; nothing downloaded; the
  output is noise, ``info.name`` says ``tiny-random``): it runs the real LTX/Wan code paths end to end in
  tests and CI.
* Sampling: the pipeline's own denoising loop with its scheduler replaced by ``ResumableFlowMatchScheduler``
  (a ``FlowMatchEulerDiscreteScheduler`` with the checkpoint's shift settings; Wan checkpoints ship
  ``UniPCMultistepScheduler``, a multistep solver whose history a checkpoint would have to carry, so Wan
  samples with flow-matching Euler at the checkpoint's ``flow_shift``). The initial noise comes from
  ``torch.Generator(device).manual_seed(spec.seed)``; Euler steps draw no randomness; LTX VAEs with
  timestep conditioning draw their decode noise from the same generator after the last step.
* Checkpoints: after every step ``on_step`` gets a ``SamplerCheckpoint`` whose ``latents`` are the
  pipeline's latents of that job (LTX: packed tokens ``(seq, C)``; Wan: ``(C, F, H, W)``), ``rng_state`` the
  generator's state and ``extra["denoised"]`` the step's clean-video estimate (``x_t - sigma * v``; the
  preview decodes it). Resuming passes the latents back as ``latents=`` (what the pipeline's
  ``prepare_latents`` returns unchanged), restores the generator state and has the scheduler drop the
  first ``step`` entries of its schedule after computing all of it (LTX's resolution-dependent ``mu`` shift
  and terminal stretch included), so the remaining steps see the same sigmas: on one machine and torch
  build the output is bitwise that of an uninterrupted run.
* Constraints (``normalise``): frame counts ``kN+1`` with ``k`` the VAE's temporal compression (LTX 8, Wan 4),
  sides multiples of the VAE's spatial compression times the transformer's patch (LTX 32, Wan 2.1 16),
  caps on frames, sides and steps (at least 2 where the schedule is stretched to a terminal sigma); only ``t2v``.

Nothing here imports torch or diffusers at module import time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from framebus.models.base import GenerationSpec, ModelInfo, SamplerCheckpoint
from framebus.models.common import HF_MISSING_MARKERS, looks_like_missing_weights
from framebus.models.profiles import DEFAULT_GENERATOR_MODEL, WAN_GENERATOR_MODEL
from framebus.topics.errors import ModelError, ModelNotAvailable

FAMILIES = ("ltx", "wan")
DEFAULT_MODEL = {"ltx": DEFAULT_GENERATOR_MODEL, "wan": WAN_GENERATOR_MODEL}
PIPELINE_CLASS = {"ltx": "LTXPipeline", "wan": "WanPipeline"}
MAX_STEPS = 200
#: where a preview frame's longer side is scaled down to
PREVIEW_SIDE = 256
TINY_SEED = 0
#: the tiny pipelines' prompt length in tokens (the real ones: 128 for LTX, 512 for Wan)
TINY_MAX_SEQUENCE_LENGTH = 16


@dataclass(frozen=True)
class FamilyLimits:
    """What ``normalise`` clamps to. ``fps``: the model's native frame rate when it takes none as input
    (Wan generates at 16 fps; LTX is conditioned on the requested rate, ``None``)."""

    max_frames: int
    max_side: int
    fps: float | None


LIMITS = {
    # LTX-Video: up to 257 frames; 1216x704 is its largest trained resolution
    "ltx": FamilyLimits(max_frames=257, max_side=1280, fps=None),
    # Wan 2.1: 81 frames (5 s at 16 fps), 480p/720p
    "wan": FamilyLimits(max_frames=81, max_side=1280, fps=16.0),
}

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}
DTYPES |= {"fp16": "float16", "float16": "float16"}


def _torch_dtype(name: str, device: str):
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16``, ``fp16``, ``fp32`` -> a ``torch.dtype``."""
    import torch

    key = (name or "auto").strip().lower()
    if key == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        return getattr(torch, DTYPES[key])
    except KeyError:
        raise ModelError(f"unknown dtype {name!r}; use auto, bf16, fp16 or fp32", code="models.bad_input") from None


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ModelError(f"unknown diffusers video family {family!r}; known: {', '.join(FAMILIES)}")
    return family


# --- the resumable scheduler -----------------------------------------------------------------------


@functools.cache
def resumable_scheduler_class() -> type:
    """``ResumableFlowMatchScheduler``: ``FlowMatchEulerDiscreteScheduler`` whose ``set_timesteps`` (same
    signature: the pipelines inspect it for ``sigmas``/``timesteps``) computes the whole schedule, then drops
    its first ``skip_steps`` entries; ``step`` also keeps the step's clean estimate (``denoised``)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    class ResumableFlowMatchScheduler(FlowMatchEulerDiscreteScheduler):
        #: steps already taken by the run being resumed (0: a fresh run)
        skip_steps: int = 0
        #: ``x_t - sigma_t * v`` of the last ``step`` (float32), the flow-matching estimate of the clean latents
        denoised: Any = None

        def set_timesteps(
            self,
            num_inference_steps: int | None = None,
            device: Any = None,
            sigmas: list[float] | None = None,
            mu: float | None = None,
            timesteps: list[float] | None = None,
        ):
            super().set_timesteps(num_inference_steps, device, sigmas, mu, timesteps)
            k = int(self.skip_steps)
            if k:
                self.timesteps = self.timesteps[k:]
                self.sigmas = self.sigmas[k:]  # keeps the terminal sigma
                self.num_inference_steps = len(self.timesteps)

        def step(self, model_output, timestep, sample, *args, **kwargs):
            out = super().step(model_output, timestep, sample, *args, **kwargs)
            sigma = self.sigmas[self.step_index - 1].to(sample.device, torch.float32)  # the step just taken
            self.denoised = sample.float() - sigma * model_output.float()
            return out

    return ResumableFlowMatchScheduler


def resumable_scheduler(scheduler: Any, *, shift: float | None = None) -> Any:
    """A ``ResumableFlowMatchScheduler`` equivalent to ``scheduler``: a ``FlowMatchEulerDiscreteScheduler``'s
    config as is; a flow-prediction ``UniPCMultistepScheduler`` (Wan's) as Euler at its ``flow_shift``.
    ``shift`` overrides the (static) shift. Other schedulers: ``ModelError`` ``models.unsupported``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    cls = resumable_scheduler_class()
    config = dict(scheduler.config)
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return cls.from_config(config, **({"shift": float(shift)} if shift is not None else {}))
    if config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
        return cls(
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            shift=float(shift if shift is not None else config.get("flow_shift") or 1.0),
        )
    raise ModelError(
        f"scheduler {type(scheduler).__name__} is not a flow-matching scheduler; the diffusers video backend "
        "samples with flow-matching Euler",
        code="models.unsupported",
    )


def _first_frame(source: Any) -> np.ndarray:
    """The conditioning image of an ``i2v`` job: the source's first frame (or the source itself, one image),
    RGB uint8 ``(H, W, 3)``."""
    a = np.asarray(source)
    return np.ascontiguousarray(a[0] if a.ndim == 4 else a).astype(np.uint8)


# --- the generator ---------------------------------------------------------------------------------


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float RGB in ``[0, 1]`` -> uint8 (rounded)."""
    return np.ascontiguousarray((np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8))


class DiffusersVideoGenerator:
    """``VideoGenerator`` around a diffusers ``LTXPipeline`` (``family="ltx"``) or ``WanPipeline`` (``"wan"``).

    ``pipe`` is moved to ``device`` (or model CPU offload to it with ``cpu_offload``), its transformer(s) and
    text encoder cast to ``dtype`` (``auto``: bf16 on CUDA, fp32 on CPU), the VAE to ``vae_dtype`` (default:
    fp32 for Wan, whose VAE diffusers runs in fp32; ``dtype`` for LTX); ``vae_tiling`` / ``vae_slicing`` switch
    on the VAE's tiled / per-sample decode where it has them. Its scheduler becomes a
    ``ResumableFlowMatchScheduler`` (``shift`` overrides the static shift). ``max_sequence_length``: prompt
    tokens (default: the pipeline's); ``decode_timestep`` / ``decode_noise_scale``: LTX's decode conditioning
    (default: the pipeline's). One job at a time (a re-entrant lock: ``preview`` may be called from ``on_step``).
    """

    batchable = True

    def __init__(
        self,
        pipe: Any,
        *,
        family: str,
        name: str,
        version: str,
        device: str = "cpu",
        dtype: str = "auto",
        vae_dtype: str | None = None,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
        vae_slicing: bool = False,
        shift: float | None = None,
        max_sequence_length: int | None = None,
        decode_timestep: float | None = None,
        decode_noise_scale: float | None = None,
        max_frames: int | None = None,
        max_side: int | None = None,
        max_steps: int = MAX_STEPS,
        fps: float | None = None,
        preview_side: int = PREVIEW_SIDE,
    ):
        import torch

        self.family = _check_family(family)
        self.info = ModelInfo(name=name, version=version, task="generate")
        limits = LIMITS[family]
        self.limits = FamilyLimits(
            max_frames=int(max_frames or limits.max_frames),
            max_side=int(max_side or limits.max_side),
            fps=float(fps) if fps is not None else limits.fps,
        )
        self.max_steps = int(max_steps)
        self.max_sequence_length = max_sequence_length
        self.decode_timestep = decode_timestep
        self.decode_noise_scale = decode_noise_scale
        self.preview_side = int(preview_side)
        self.dtype = _torch_dtype(dtype, device)
        vae_dt = _torch_dtype(vae_dtype, device) if vae_dtype else (torch.float32 if family == "wan" else self.dtype)

        pipe.scheduler = resumable_scheduler(pipe.scheduler, shift=shift)
        for attr in ("transformer", "transformer_2", "text_encoder", "vae"):
            module = getattr(pipe, attr, None)
            if module is None:
                continue
            target = vae_dt if attr == "vae" else self.dtype
            # only when it differs: from_pretrained(torch_dtype=) already cast, keeping fp32-only modules in fp32
            if module.dtype != target:
                module.to(dtype=target)
            module.eval()
        vae = pipe.vae
        if vae_tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        if vae_slicing and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()
        if cpu_offload and str(device).startswith("cuda"):
            try:
                pipe.enable_model_cpu_offload(device=device)
            except (ImportError, ValueError) as e:  # diffusers asks for accelerate
                raise ModelError(f"cpu_offload needs accelerate: {e}", code="models.unsupported") from e
        else:
            pipe.to(device)
        self.device = torch.device(device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self._lock = threading.RLock()
        self._i2v: Any = None  # LTXImageToVideoPipeline over the same modules, built on the first i2v job

    # --- model constraints -------------------------------------------------------------------------
    @property
    def temporal_multiple(self) -> int:
        """Frame counts are ``temporal_multiple * N + 1``."""
        p = self.pipe
        return int(p.vae_temporal_compression_ratio if self.family == "ltx" else p.vae_scale_factor_temporal)

    @property
    def spatial_multiple(self) -> int:
        """Widths and heights are multiples of this (VAE compression times the transformer's patch)."""
        p = self.pipe
        if self.family == "ltx":
            return int(p.vae_spatial_compression_ratio * p.transformer_spatial_patch_size)
        transformer = p.transformer if p.transformer is not None else p.transformer_2
        return int(p.vae_scale_factor_spatial * transformer.config.patch_size[1])

    @property
    def min_steps(self) -> int:
        """2 when the scheduler stretches its schedule to a terminal sigma (LTX 0.9.1+): from a one-step
        schedule that stretch divides by zero."""
        return 2 if self.pipe.scheduler.config.get("shift_terminal") else 1

    def latent_shape(self, spec: GenerationSpec) -> tuple[int, int, int]:
        """``(frames, height, width)`` of the latent video of a normalised ``spec``."""
        p = self.pipe
        s = p.vae_spatial_compression_ratio if self.family == "ltx" else p.vae_scale_factor_spatial
        return ((spec.num_frames - 1) // self.temporal_multiple + 1, spec.height // s, spec.width // s)

    def normalise(self, spec: GenerationSpec) -> GenerationSpec:
        """``spec`` snapped to the model: ``num_frames`` to the nearest ``kN+1`` (``k``: ``temporal_multiple``)
        within ``1..max_frames``; width and height scaled together so the longer side is at most ``max_side``,
        then each rounded to a multiple of ``spatial_multiple`` (at least one); steps within ``min_steps..max_steps``;
        ``fps`` the model's native rate (Wan) or a positive integer (LTX, which takes it as conditioning).
        ``ModelError`` ``generate.unsupported``: a mode other than ``t2v`` (and, for LTX, ``i2v`` with a
        source: ``LTXImageToVideoPipeline`` over the same modules, conditioned on the source's first frame),
        or a non-positive size, frame count, step count or fps."""
        modes = ("t2v", "i2v") if self.family == "ltx" else ("t2v",)
        if spec.mode not in modes:
            raise ModelError(
                f"{self.info.name} does {' and '.join(modes)}, not {spec.mode!r}", code="generate.unsupported"
            )
        if spec.mode == "i2v" and (spec.source is None or np.asarray(spec.source).ndim not in (3, 4)):
            raise ModelError("i2v needs a source image (its first frame)", code="generate.unsupported")
        if min(spec.width, spec.height, spec.num_frames, spec.steps) < 1 or not spec.fps > 0:
            raise ModelError("width, height, num_frames, steps and fps must be positive", code="generate.unsupported")
        k, m, lim = self.temporal_multiple, self.spatial_multiple, self.limits
        max_frames = (lim.max_frames - 1) // k * k + 1
        frames = min(max_frames, (spec.num_frames - 1 + k // 2) // k * k + 1)  # nearest, halves up
        scale = min(1.0, lim.max_side / max(spec.width, spec.height))
        max_side = max(m, lim.max_side // m * m)

        def side(v: int) -> int:
            return int(min(max_side, max(m, int(v * scale / m + 0.5) * m)))

        fps = lim.fps if lim.fps is not None else float(max(1, round(spec.fps)))
        return replace(
            spec,
            num_frames=frames,
            width=side(spec.width),
            height=side(spec.height),
            steps=int(min(self.max_steps, max(self.min_steps, spec.steps))),
            fps=fps,
        )

    # --- sampling ----------------------------------------------------------------------------------
    def _generator(self, seed: int):
        import torch

        return torch.Generator(self.device).manual_seed(int(seed))

    def _check_resume(self, ckpt: SamplerCheckpoint, spec: GenerationSpec) -> None:
        """``ModelError`` ``generate.bad_checkpoint`` unless ``ckpt`` belongs to this model and ``spec``."""
        extra = ckpt.extra or {}
        want = {"model": self.info.version, "shape": [spec.num_frames, spec.height, spec.width], "mode": spec.mode}
        got = {
            "model": extra.get("model"),
            "shape": list(extra.get("shape") or []),
            "mode": extra.get("mode", "t2v"),
        }
        if ckpt.total_steps != spec.steps or got != want or not 0 <= ckpt.step <= spec.steps:
            raise ModelError(
                f"checkpoint (step {ckpt.step}/{ckpt.total_steps}, {got}) does not belong to this job "
                f"({spec.steps} steps, {want})",
                code="generate.bad_checkpoint",
            )

    def _call(
        self,
        specs: list[GenerationSpec],
        *,
        resume: SamplerCheckpoint | None,
        on_step: Callable[[int, SamplerCheckpoint], None] | None,
    ) -> list[np.ndarray]:
        """One pipeline call for normalised ``specs`` (same shape, steps, guidance, fps)."""
        import torch

        first = specs[0]
        generators = [self._generator(s.seed) for s in specs]
        latents = None
        skip = 0
        if resume is not None:
            self._check_resume(resume, first)
            skip = int(resume.step)
            if resume.rng_state is not None:
                generators[0].set_state(resume.rng_state)
            latents = resume.latents.unsqueeze(0).to(self.device, torch.float32)
        shape = [first.num_frames, first.height, first.width]
        scheduler = self.pipe.scheduler
        pipe = self._i2v_pipe() if first.mode == "i2v" else self.pipe
        lf, lh, lw = self.latent_shape(first)

        def callback(pipe, i, t, kwargs):
            step = skip + i + 1
            lat = kwargs["latents"].detach()
            denoised = scheduler.denoised
            if denoised is not None and first.mode == "i2v":  # LTX i2v steps frames 1.. unpacked: add 0, pack
                ps, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
                cond = pipe._unpack_latents(lat.float(), lf, lh, lw, ps, pt)[:, :, :1]
                denoised = pipe._pack_latents(torch.cat([cond, denoised], dim=2), ps, pt)
            for b, gen in enumerate(generators):
                extra = {"model": self.info.version, "shape": shape, "family": self.family, "mode": first.mode}
                if denoised is not None:
                    extra["denoised"] = denoised[b].to("cpu", copy=True)
                ckpt = SamplerCheckpoint(
                    step=step,
                    total_steps=first.steps,
                    latents=lat[b].to("cpu", torch.float32, copy=True),
                    rng_state=gen.get_state(),
                    extra=extra,
                )
                on_step(b, ckpt)
            return kwargs

        kw: dict[str, Any] = {
            "prompt": [s.prompt for s in specs],
            "negative_prompt": [s.negative_prompt or "" for s in specs],
            "height": first.height,
            "width": first.width,
            "num_frames": first.num_frames,
            "num_inference_steps": first.steps,
            "guidance_scale": float(first.guidance),
            "generator": generators,
            "latents": latents,
            "output_type": "np",
            "callback_on_step_end": callback if on_step is not None else None,
        }
        if self.max_sequence_length is not None:
            kw["max_sequence_length"] = int(self.max_sequence_length)
        if self.family == "ltx":
            kw["frame_rate"] = int(first.fps)
            if self.decode_timestep is not None:
                kw["decode_timestep"] = float(self.decode_timestep)
            if self.decode_noise_scale is not None:
                kw["decode_noise_scale"] = float(self.decode_noise_scale)
        if first.mode == "i2v":
            from PIL import Image

            kw["image"] = [Image.fromarray(_first_frame(s.source)) for s in specs]
            # LTXImageToVideoPipeline's decode noise takes one torch.Generator, not a list (diffusers 0.42):
            # i2v jobs run one per call (generate_batch groups them alone)
            kw["generator"] = generators[0]
        scheduler.skip_steps = skip
        try:
            frames = pipe(**kw).frames
        finally:
            scheduler.skip_steps = 0
            scheduler.denoised = None
        return [_to_uint8(np.asarray(frames[b])) for b in range(len(specs))]

    def _i2v_pipe(self) -> Any:
        """``LTXImageToVideoPipeline`` over this pipeline's own modules (built once; no copy of any weight)."""
        if self._i2v is None:
            from diffusers import LTXImageToVideoPipeline

            self._i2v = LTXImageToVideoPipeline(**self.pipe.components)
            self._i2v.set_progress_bar_config(disable=True)
        return self._i2v

    def generate(
        self,
        spec: GenerationSpec,
        *,
        resume: SamplerCheckpoint | None = None,
        on_step: Callable[[SamplerCheckpoint], None] | None = None,
    ) -> np.ndarray:
        """RGB uint8 ``(num_frames, height, width, 3)`` of the normalised ``spec``; from ``resume`` (a
        checkpoint of the same model and normalised spec, else ``ModelError`` ``generate.bad_checkpoint``)
        only the remaining steps run. ``on_step(checkpoint)`` after every step; what it raises propagates."""
        spec = self.normalise(spec)
        relay = (lambda _b, ckpt: on_step(ckpt)) if on_step is not None else None
        with self._lock:
            return self._call([spec], resume=resume, on_step=relay)[0]

    def generate_batch(
        self, specs: list[GenerationSpec], *, on_step: Callable[[int, SamplerCheckpoint], None] | None = None
    ) -> list[np.ndarray]:
        """``generate`` for each spec, in order; specs that agree on mode, shape, steps, guidance and fps (after
        ``normalise``) share one pipeline call (prompt and generator lists); ``i2v`` jobs run one per call.
        ``on_step(index, checkpoint)`` with ``index`` into ``specs``. Batched and single runs agree to float
        tolerance, not bitwise (batched kernels sum in another order)."""
        specs = [self.normalise(s) for s in specs]
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(specs):
            key = (s.mode, s.num_frames, s.height, s.width, s.steps, s.guidance, s.fps, i if s.mode == "i2v" else -1)
            groups.setdefault(key, []).append(i)
        out: list[np.ndarray | None] = [None] * len(specs)
        with self._lock:
            for idx in groups.values():
                relay = (lambda b, ckpt, idx=idx: on_step(idx[b], ckpt)) if on_step is not None else None
                for i, frames in zip(idx, self._call([specs[i] for i in idx], resume=None, on_step=relay)):
                    out[i] = frames
        return out  # type: ignore[return-value]

    def preview(self, checkpoint: SamplerCheckpoint, spec: GenerationSpec) -> np.ndarray:
        """The middle frame of ``checkpoint``'s clean-video estimate (``extra["denoised"]``, else its noisy
        latents): that one latent frame decoded through the VAE (LTX: with its decode timestep), then scaled
        so its longer side is at most ``preview_side``. RGB uint8 ``(h, w, 3)``."""
        import torch

        spec = self.normalise(spec)
        z = (checkpoint.extra or {}).get("denoised", checkpoint.latents)
        lf, lh, lw = self.latent_shape(spec)
        pipe, vae = self.pipe, self.pipe.vae
        with self._lock, torch.inference_mode():
            vae_device = next(vae.parameters()).device
            z = z.unsqueeze(0).to(vae_device, torch.float32)
            timestep = None
            if self.family == "ltx":
                z = pipe._unpack_latents(
                    z, lf, lh, lw, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
                )
                z = pipe._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
                if vae.config.timestep_conditioning:
                    timestep = torch.tensor([float(self.decode_timestep or 0.0)], device=vae_device, dtype=vae.dtype)
            else:
                cfg = vae.config
                mean = torch.tensor(cfg.latents_mean, device=vae_device).view(1, cfg.z_dim, 1, 1, 1)
                std = torch.tensor(cfg.latents_std, device=vae_device).view(1, cfg.z_dim, 1, 1, 1)
                z = z * std + mean
            mid = z[:, :, lf // 2 : lf // 2 + 1].to(vae.dtype)
            if self.family == "ltx":
                video = vae.decode(mid, timestep, return_dict=False)[0]
            else:
                video = vae.decode(mid, return_dict=False)[0]
            frame = video[:, :, 0].float()  # (1, 3, H, W) in [-1, 1]
            h, w = frame.shape[-2:]
            scale = self.preview_side / max(h, w)
            if scale < 1:
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                frame = torch.nn.functional.interpolate(frame, size=size, mode="bilinear", antialias=True)
            rgb = (frame[0] / 2 + 0.5).permute(1, 2, 0).cpu().numpy()
        return _to_uint8(rgb)

    def __repr__(self) -> str:
        return f"DiffusersVideoGenerator({self.info.name}, version={self.info.version}, device={self.device})"


# --- tiny random pipelines -------------------------------------------------------------------------

#: the tiny tokenizer's words (anything else is ``<unk>``)
TINY_WORDS = (
    "a an the of in on over under and with red green blue yellow white black orange purple cat dog bird fish "
    "car boat person ball tree house sky sea city forest street circle square triangle star runs walks flies "
    "swims moves jumps spins left right up down slowly fast sunset night day rain snow"
).split()


def build_tiny_tokenizer():
    """A word-level T5-style ``PreTrainedTokenizerFast`` over ``TINY_WORDS``: ``<pad>`` 0, ``</s>`` 1 (appended
    to every text), ``<unk>`` 2; lower-cased, split on whitespace and punctuation."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in TINY_WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


#: the tiny configs (``build_tiny_pipeline``); the LTX VAE compresses like the real one (32x spatial,
#: 8x temporal, timestep-conditioned decode) and its scheduler shifts like LTX 0.9.1's
TINY_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "ltx": {
        "transformer": dict(
            in_channels=8,
            out_channels=8,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=4,
            attention_head_dim=8,
            cross_attention_dim=32,
            num_layers=1,
            caption_channels=32,
        ),
        "vae": dict(
            in_channels=3,
            out_channels=3,
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True, False),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1),
            timestep_conditioning=True,
            patch_size=4,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
        ),
        "scheduler": dict(
            use_dynamic_shifting=True,
            base_shift=0.95,
            max_shift=2.05,
            base_image_seq_len=1024,
            max_image_seq_len=4096,
            shift_terminal=0.1,
        ),
    },
    "wan": {
        "transformer": dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
        "vae": dict(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        ),
        "scheduler": dict(shift=7.0),
    },
}
TINY_T5: dict[str, Any] = dict(
    d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, relative_attention_num_buckets=8, vocab_size=1103
)


def build_tiny_pipeline(family: str, seed: int = TINY_SEED) -> Any:
    """The real ``LTXPipeline`` / ``WanPipeline`` over tiny randomly initialised modules (``TINY_CONFIGS``, the
    sizes of diffusers' own pipeline tests), a tiny ``T5EncoderModel`` and ``build_tiny_tokenizer``: nothing
    is downloaded, the output is structured noise. Seeded (the caller's global RNG state is left alone),
    every module in eval mode, on the CPU in fp32."""
    import diffusers
    import torch
    from transformers import T5Config, T5EncoderModel

    cfg = TINY_CONFIGS[_check_family(family)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "ltx":
            transformer = diffusers.LTXVideoTransformer3DModel(**cfg["transformer"]).eval()
            vae = diffusers.AutoencoderKLLTXVideo(**cfg["vae"]).eval()
            vae.use_framewise_encoding = vae.use_framewise_decoding = False
        else:
            transformer = diffusers.WanTransformer3DModel(**cfg["transformer"]).eval()
            vae = diffusers.AutoencoderKLWan(**cfg["vae"]).eval()
        text_encoder = T5EncoderModel(T5Config(**TINY_T5)).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**cfg["scheduler"])
    pipeline = getattr(diffusers, PIPELINE_CLASS[family])
    return pipeline(
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder=text_encoder,
        tokenizer=build_tiny_tokenizer(),
    )


def tiny_version(family: str, pipe: Any, seed: int) -> str:
    """12 hex digits over the tiny configs, the seed and the weights (which depend on the torch build)."""
    import torch

    h = hashlib.sha256(
        json.dumps({"cfg": TINY_CONFIGS[family], "t5": TINY_T5, "seed": seed}, sort_keys=True, default=str).encode()
    )
    for attr in ("transformer", "vae", "text_encoder"):
        for key, t in sorted(getattr(pipe, attr).state_dict().items()):
            h.update(key.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


# --- loading pretrained pipelines ------------------------------------------------------------------


#: the pipeline folders a download needs (repositories such as ``Lightricks/LTX-Video`` also hold large
#: single-file checkpoints at their root, which diffusers does not read)
COMPONENTS = {
    "ltx": ("scheduler", "text_encoder", "tokenizer", "transformer", "vae"),
    "wan": ("scheduler", "text_encoder", "tokenizer", "transformer", "transformer_2", "vae"),
}


def weights_missing_message(
    model_id: str, *, family: str, cache_dir: Path | None, local_dir: Path | None, cause: str = ""
) -> str:
    """The ``models.weights_missing`` text for a diffusers video model."""
    include = " ".join(["model_index.json", *(f"'{c}/*'" for c in COMPONENTS[family])])
    lines = [
        f"pretrained weights for the diffusers text-to-video model {model_id} are not available locally and could "
        "not be downloaded (offline, or the Hugging Face hub is unreachable)."
    ]
    if cause:
        lines.append(f"cause: {cause}")
    lines.append("provide them in one of these ways:")
    if cache_dir is not None:
        lines.append(
            f"  - fill the Hugging Face cache framebus uses, {cache_dir}: run framebus once with hub access, "
            f"or `hf download {model_id} --cache-dir {cache_dir} --include {include}` (it lives under the "
            "data_dir setting, FRAMEBUS_DATA_DIR)"
        )
    else:
        lines.append(f"  - run once with hub access, or `hf download {model_id} --include {include}`")
    if local_dir is not None:
        lines.append(f"  - or put a diffusers-format copy (model_index.json and its folders) at {local_dir}")
    lines.append('or run fully offline with the tiny model profile: FRAMEBUS_MODELS=tiny (models = "tiny").')
    return "\n".join(lines)


_MISSING_MARKERS = (*HF_MISSING_MARKERS, "Cannot load", "model_index.json")


def _is_missing_weights(exc: BaseException) -> bool:
    return looks_like_missing_weights(exc, (OSError, ConnectionError, TimeoutError), _MISSING_MARKERS)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


def _hub_offline() -> bool:
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return False


def _from_pretrained(
    family: str,
    model_id: str,
    *,
    local_dir: Path | None,
    cache_dir: Path | None,
    torch_dtype: Any,
    local_files_only: bool | None,
    variant: str | None,
) -> tuple[Any, str]:
    """``(pipeline, version)`` of ``model_id``: from ``model_id`` itself when it is a directory, else from
    ``local_dir`` when it holds a ``model_index.json``, else through the hub cache ``cache_dir``. Wan's VAE
    loads in fp32. ``version``: ``<model id>@<snapshot commit[:12]>`` (``@local`` for a directory)."""
    import diffusers
    import torch

    pipeline = getattr(diffusers, PIPELINE_CLASS[family])
    if Path(model_id).is_dir():
        folder, revision = Path(model_id), "local"
    elif local_dir is not None and (local_dir / "model_index.json").is_file():
        folder, revision = local_dir, "local"
    else:
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
        offline = _hub_offline() if local_files_only is None else bool(local_files_only)
        folder = Path(
            pipeline.download(
                model_id,
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                local_files_only=offline,
                variant=variant,
            )
        )
        revision = folder.name if folder.parent.name == "snapshots" else "local"
    if family == "wan" and importlib.util.find_spec("accelerate") is None:
        # WanTransformer3DModel keeps some modules in fp32, which diffusers only loads with low_cpu_mem_usage
        raise ModelError(
            f"loading {model_id} needs the accelerate package (diffusers loads Wan transformers through it): "
            "pip install accelerate",
            code="models.unsupported",
        )
    extra = {"variant": variant} if variant else {}
    dtype_kw = "dtype" if _version_tuple(diffusers.__version__) >= (0, 42) else "torch_dtype"  # renamed in 0.42
    if family == "wan":
        extra["vae"] = diffusers.AutoencoderKLWan.from_pretrained(
            str(folder), subfolder="vae", **{dtype_kw: torch.float32}, **extra
        )
    pipe = pipeline.from_pretrained(str(folder), **{dtype_kw: torch_dtype}, **extra)
    return pipe, f"{model_id}@{revision[:12]}"


def load_diffusers_video(
    settings: Any,
    family: str,
    *,
    model_id: str | None = None,
    cache_dir: Path | str | None = None,
    random_tiny: bool = False,
    tiny_seed: int = TINY_SEED,
    dtype: str = "auto",
    local_files_only: bool | None = None,
    variant: str | None = None,
    **options: Any,
) -> DiffusersVideoGenerator:
    """A ``DiffusersVideoGenerator`` of ``family`` on ``settings.device``; ``options`` go to its constructor
    (memory options, caps, ``shift``, ...). ``random_tiny``: ``build_tiny_pipeline(family, tiny_seed)`` (named
    ``diffusers/<family>-tiny-random``), else the pretrained ``model_id`` (default ``DEFAULT_MODEL[family]``;
    ``local_files_only`` default: whether the hub is offline). Missing weights: ``ModelNotAvailable``."""
    from framebus.models.openclip import resolve_device

    _check_family(family)
    device = resolve_device(settings.device)
    if random_tiny:
        pipe = build_tiny_pipeline(family, seed=tiny_seed)
        options.setdefault("max_sequence_length", TINY_MAX_SEQUENCE_LENGTH)
        name, version = f"diffusers/{family}-tiny-random", tiny_version(family, pipe, tiny_seed)
    else:
        model_id = model_id or DEFAULT_MODEL[family]
        cache = Path(cache_dir) if cache_dir is not None else None
        local_dir = Path(settings.model_cache_dir) / model_id if not Path(model_id).is_absolute() else None
        try:
            pipe, version = _from_pretrained(
                family,
                model_id,
                local_dir=local_dir,
                cache_dir=cache,
                torch_dtype=_torch_dtype(dtype, device),
                local_files_only=local_files_only,
                variant=variant,
            )
        except ModelError:
            raise
        except Exception as e:
            if _is_missing_weights(e):
                cause = (str(e).splitlines() or [type(e).__name__])[0][:300]
                raise ModelNotAvailable(
                    weights_missing_message(model_id, family=family, cache_dir=cache, local_dir=local_dir, cause=cause)
                ) from e
            raise ModelError(f"cannot load diffusers video model {model_id}: {type(e).__name__}: {e}") from e
        name = f"diffusers/{model_id}"
    return DiffusersVideoGenerator(
        pipe, family=family, name=name, version=version, device=device, dtype=dtype, **options
    )


def load_ltx(settings: Any, **options: Any) -> DiffusersVideoGenerator:
    """LTX-Video (``LTXPipeline``; default ``Lightricks/LTX-Video``): ``load_diffusers_video(settings, "ltx", ...)``."""
    return load_diffusers_video(settings, "ltx", **options)


def load_wan(settings: Any, **options: Any) -> DiffusersVideoGenerator:
    """Wan 2.1/2.2 text-to-video (``WanPipeline``; default ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``; Wan 2.2 A14B's
    two transformers are handled by the pipeline): ``load_diffusers_video(settings, "wan", ...)``."""
    return load_diffusers_video(settings, "wan", **options)
