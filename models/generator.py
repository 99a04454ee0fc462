"""The project's own tiny latent video diffusion model (text -> video), trained offline on the synthetic
world (``framebus.models.training.generator``), and the ``VideoGenerator`` backend that serves it.

Three parts, one file (``tiny-generator.pt``):

* ``VideoAutoencoder``: RGB clips ``(B, 3, T, H, W)`` in ``[-1, 1]`` <-> latents ``(B, C, T/2, H/4, W/4)``;
  2x4x4 pixel blocks to channels (2x temporal, 4x spatial downsampling), 3-D convolutions on the latent grid;
  trained with a reconstruction loss that weighs the object (bright pixels) more, plus a small L2 on
  the latents; its latents are standardised per channel (``latent_mean`` / ``latent_std``).
* ``TextEncoder``: a word-level embedding of the world's vocabulary and two transformer layers;
  the empty prompt (``[bos]`` alone) is the unconditional input of classifier-free guidance.
* ``DiffusionTransformer``: spacetime patches (``2x2x2`` latent cells) with factorised learned
  positions, blocks that alternate spatial attention (tokens of one latent frame) and temporal
  attention (one spatial position over time), each with cross-attention to the text tokens and an
  AdaLN-Zero modulation by the timestep plus the pooled text; predicts the flow-matching velocity.

Sampling (``TinyVideoGenerator``): rectified flow, ``x_t = (1 - t) x_0 + t noise``, ``v = noise - x_0``,
an Euler sampler from ``t = 1`` to ``0`` on a shifted schedule, classifier-free guidance on the
conditional/unconditional pair plus a contrast term against the prompt less its shape word
(``TinyVideoGenerator.contrast_prompt``), all in one batch. The only randomness is the initial noise, drawn from a
``torch.Generator`` seeded by ``spec.seed`` at step 0, so a ``SamplerCheckpoint`` (latents + step index)
resumes to the same bits as an uninterrupted run on the same torch build and thread count.

Output: the model generates ``NATIVE`` frames (16 frames of 64x48 at 8 fps, a 2 s shot); ``normalise``
snaps the frame count and fps to those and keeps the requested size, and ``generate`` resizes the
decoded frames to it (bicubic, per frame).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from framebus.models.base import GenerationSpec, ModelInfo, SamplerCheckpoint
from framebus.models.world import COLOURS, MOTIONS, SHAPES
from framebus.topics.errors import ModelError, ModelNotAvailable

#: words the text encoder knows; any other word is ``<unk>``
VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<unk>", "a", "an", "moving", "shape", *SHAPES, *COLOURS, *MOTIONS)
PAD, BOS, UNK = 0, 1, 2
_WORD = re.compile(r"[a-z]+")

MODES = ("t2v", "v2v", "i2v")
MAX_STEPS = 200
MAX_SIDE = 1280


@dataclass(frozen=True)
class GeneratorConfig:
    """The architecture (every size the weights depend on). Stored in the checkpoint."""

    frames: int = 16
    fps: float = 8.0
    width: int = 64
    height: int = 48
    ae_channels: tuple[int, int] = (16, 96)
    latent_channels: int = 16
    #: the autoencoder's spatial downsampling (each ``2 x s x s`` block of pixels is one latent cell)
    spatial_down: int = 4
    patch: tuple[int, int, int] = (2, 2, 2)
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 3.0
    text_layers: int = 2
    text_len: int = 8
    #: the sampler's timestep shift (``t' = s t / (1 + (s - 1) t)``): more steps at high noise
    shift: float = 2.0
    #: what the AdaLN modulation sees of the prompt besides the timestep: ``pooled`` (the mean of the text
    #: tokens) or ``tokens`` (every token position, concatenated: each word of "a red circle moving left"
    #: reaches every block's modulation on its own, not averaged away)
    text_cond: str = "pooled"
    #: a depthwise 3x3 convolution over each latent frame's token grid inside every block's MLP (a Mix-FFN,
    #: as in SegFormer and Sana): local, relative-position structure (an object's edges and corners)
    #: that learned absolute positions give the attention only slowly
    mlp_conv: bool = False
    #: the text encoder's word embeddings fixed at an orthonormal basis (never trained): every word, each
    #: shape included, is as distinct as any other from the first step, rather than only as distinct as the
    #: transformer's early gradients made it
    text_frozen: bool = False

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        s = self.spatial_down
        return (self.latent_channels, self.frames // 2, self.height // s, self.width // s)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        d = dict(d)
        for k in ("ae_channels", "patch"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def tokenize(prompts: Sequence[str], length: int) -> Any:
    """Prompts -> ``(n, length)`` int64 token ids: ``<bos>`` then the known words (``<unk>`` for others),
    lower-cased, padded with ``<pad>`` and cut at ``length``."""
    import torch

    index = {w: i for i, w in enumerate(VOCAB)}
    out = torch.full((len(prompts), length), PAD, dtype=torch.long)
    for row, text in enumerate(prompts):
        ids = [BOS] + [index.get(w, UNK) for w in _WORD.findall((text or "").lower())]
        ids = ids[:length]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def _nn():
    import torch
    from torch import nn

    return torch, nn


def build_modules(cfg: GeneratorConfig) -> tuple[Any, Any, Any]:
    """``(autoencoder, text encoder, transformer)`` for ``cfg`` (fresh, in eval mode, float32)."""
    torch, nn = _nn()
    F = torch.nn.functional

    def conv(ci: int, co: int, k: tuple[int, int, int], s: tuple[int, int, int] = (1, 1, 1)) -> Any:
        return nn.Conv3d(
            ci, co, k, stride=s, padding=tuple(kk // 2 if ss == 1 else (kk - ss) // 2 for kk, ss in zip(k, s))
        )

    class VideoAutoencoder(nn.Module):
        """``encode``: ``(B, 3, T, H, W)`` in ``[-1, 1]`` -> ``(B, C, T/2, H/4, W/4)``; ``decode``: back.

        Space-to-time-to-depth (each 2x4x4 block of pixels becomes 96 channels of one latent cell), then
        3-D convolutions at the latent resolution; the decoder mirrors it and ends in a full-resolution
        per-frame refinement. Cheap (every wide layer runs on 1/32 of the pixels) and quick to train."""

        def __init__(self) -> None:
            super().__init__()
            c1, c2 = cfg.ae_channels
            act = nn.SiLU
            block = 3 * 2 * cfg.spatial_down**2
            self.encoder = nn.Sequential(
                conv(block, c2, (1, 1, 1)),
                act(),
                conv(c2, c2, (3, 3, 3)),
                act(),
                conv(c2, cfg.latent_channels, (1, 1, 1)),
            )
            self.decoder = nn.Sequential(
                conv(cfg.latent_channels, c2, (3, 3, 3)),
                act(),
                conv(c2, c2, (3, 3, 3)),
                act(),
                conv(c2, block, (1, 1, 1)),
            )
            self.refine = nn.Sequential(conv(3, c1, (1, 3, 3)), act(), conv(c1, 3, (1, 3, 3)))
            nn.init.zeros_(self.refine[2].weight)
            nn.init.zeros_(self.refine[2].bias)
            self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
            self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

        @staticmethod
        def to_blocks(video: Any) -> Any:
            b, c, t, h, w = video.shape
            s = cfg.spatial_down
            x = video.reshape(b, c, t // 2, 2, h // s, s, w // s, s)
            return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * 2 * s * s, t // 2, h // s, w // s)

        @staticmethod
        def from_blocks(x: Any) -> Any:
            b, _, t, h, w = x.shape
            s = cfg.spatial_down
            x = x.reshape(b, 3, 2, s, s, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
            return x.reshape(b, 3, t * 2, h * s, w * s)

        def encode(self, video: Any) -> Any:
            return self.encoder(self.to_blocks(video))

        def decode(self, z: Any) -> Any:
            x = self.from_blocks(self.decoder(z))
            return x + self.refine(x)

        def normalise_latents(self, z: Any) -> Any:
            return (z - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

        def denormalise_latents(self, z: Any) -> Any:
            return z * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)

    class TextEncoder(nn.Module):
        """Token ids ``(B, L)`` -> ``(tokens (B, L, dim), pooled (B, dim), key padding mask (B, L))``."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(len(VOCAB), cfg.dim)
            if cfg.text_frozen:
                nn.init.orthogonal_(self.embed.weight)
                self.embed.weight.requires_grad_(False)
            self.pos = nn.Parameter(torch.zeros(1, cfg.text_len, cfg.dim))
            nn.init.normal_(self.pos, std=0.02)
            layer = nn.TransformerEncoderLayer(
                cfg.dim, cfg.heads, int(cfg.dim * 2), dropout=0.0, batch_first=True, norm_first=True
            )
            self.layers = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(cfg.dim)

        def forward(self, ids: Any) -> tuple[Any, Any, Any]:
            pad = ids == PAD
            x = self.embed(ids) + self.pos[:, : ids.shape[1]]
            x = self.norm(self.layers(x, src_key_padding_mask=pad))
            keep = (~pad).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)
            return x, pooled, pad

    def modulate(x: Any, shift: Any, scale: Any) -> Any:
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    class Attention(nn.Module):
        def __init__(self, cross: bool) -> None:
            super().__init__()
            self.q = nn.Linear(cfg.dim, cfg.dim)
            self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)
            self.out = nn.Linear(cfg.dim, cfg.dim)
            self.cross = cross

        def forward(self, x: Any, ctx: Any = None, mask: Any = None) -> Any:
            b, n, d = x.shape
            h = cfg.heads
            ctx = x if ctx is None else ctx
            q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
            k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.out(y.transpose(1, 2).reshape(b, n, d))

    class Block(nn.Module):
        """Self-attention over one axis (``spatial``: within a latent frame; ``temporal``: across frames at
        one position), cross-attention to the text, MLP; AdaLN-Zero (shift, scale, gate) from ``c``."""

        def __init__(self, axis: str) -> None:
            super().__init__()
            self.axis = axis
            self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
            self.attn = Attention(cross=False)
            self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
            self.cross = Attention(cross=True)
            self.norm3 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
            hidden = int(cfg.dim * cfg.mlp_ratio)
            self.mlp = nn.Sequential(
                nn.Linear(cfg.dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, cfg.dim)
            )
            self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if cfg.mlp_conv else None
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
            nn.init.zeros_(self.ada[1].weight)
            nn.init.zeros_(self.ada[1].bias)

        def forward(self, x: Any, c: Any, grid: tuple[int, int, int], text: Any, text_mask: Any) -> Any:
            b, n, d = x.shape
            t, hw = grid[0], grid[1] * grid[2]
            s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
            y = modulate(self.norm1(x), s1, sc1)
            if self.axis == "spatial":
                y = self.attn(y.reshape(b * t, hw, d)).reshape(b, n, d)
            else:
                y = y.reshape(b, t, hw, d).transpose(1, 2).reshape(b * hw, t, d)
                y = self.attn(y).reshape(b, hw, t, d).transpose(1, 2).reshape(b, n, d)
            x = x + g1.unsqueeze(1) * y
            x = x + self.cross(self.norm2(x), text, text_mask)
            y = modulate(self.norm3(x), s2, sc2)
            if self.dw is None:
                return x + g2.unsqueeze(1) * self.mlp(y)
            y = self.mlp[0](y)  # (B, T*H*W, hidden) -> per frame (B*T, hidden, H, W), depthwise 3x3, back
            hid = y.shape[-1]
            y = y.view(b * t, grid[1], grid[2], hid).permute(0, 3, 1, 2)
            y = self.dw(y).permute(0, 2, 3, 1).reshape(b, n, hid)
            return x + g2.unsqueeze(1) * self.mlp[2](self.mlp[1](y))

    class DiffusionTransformer(nn.Module):
        """``(latents (B, C, T, H, W), t (B,) in [0, 1], text tokens, pooled text, text padding mask)`` ->
        velocity of the same shape as the latents."""

        def __init__(self) -> None:
            super().__init__()
            c, t, h, w = cfg.latent_shape
            pt, ph, pw = cfg.patch
            self.grid = (t // pt, h // ph, w // pw)
            self.embed = nn.Conv3d(c, cfg.dim, cfg.patch, stride=cfg.patch)
            self.pos_t = nn.Parameter(torch.zeros(1, self.grid[0], 1, cfg.dim))
            self.pos_s = nn.Parameter(torch.zeros(1, 1, self.grid[1] * self.grid[2], cfg.dim))
            nn.init.normal_(self.pos_t, std=0.02)
            nn.init.normal_(self.pos_s, std=0.02)
            self.time = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
            text_in = cfg.dim * (cfg.text_len if cfg.text_cond == "tokens" else 1)
            self.text_proj = nn.Sequential(nn.Linear(text_in, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
            self.blocks = nn.ModuleList(Block("spatial" if i % 2 == 0 else "temporal") for i in range(cfg.depth))
            self.final_norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
            self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
            self.unembed = nn.Linear(cfg.dim, pt * ph * pw * c)
            for m in (self.final_ada[1], self.unembed):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

        def timestep_embedding(self, t: Any) -> Any:
            half = cfg.dim // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
            args = (t.float() * 1000.0)[:, None] * freqs[None]
            return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

        def forward(self, z: Any, t: Any, text: Any, pooled: Any, text_mask: Any) -> Any:
            b = z.shape[0]
            gt, gh, gw = self.grid
            x = self.embed(z).flatten(3).transpose(1, 2).transpose(2, 3)  # (B, T', H'W', dim)
            x = (x + self.pos_t + self.pos_s).reshape(b, gt * gh * gw, cfg.dim)
            if cfg.text_cond == "tokens":
                pooled = (text * (~text_mask).unsqueeze(-1).to(text.dtype)).flatten(1)
            c = self.time(self.timestep_embedding(t)) + self.text_proj(pooled)
            mask = (~text_mask)[:, None, None, :]
            for block in self.blocks:
                x = block(x, c, self.grid, text, mask)
            shift, scale = self.final_ada(c).chunk(2, dim=-1)
            x = self.unembed(modulate(self.final_norm(x), shift, scale))  # (B, N, pt*ph*pw*C)
            ch, pt, ph, pw = cfg.latent_channels, *cfg.patch
            x = x.view(b, gt, gh, gw, pt, ph, pw, ch).permute(0, 7, 1, 4, 2, 5, 3, 6)
            return x.reshape(b, ch, gt * pt, gh * ph, gw * pw)

    return VideoAutoencoder().eval(), TextEncoder().eval(), DiffusionTransformer().eval()


# --- sampling (pure functions of tensors) ------------------------------------------------------------


def timesteps(steps: int, shift: float) -> Any:
    """``steps + 1`` noise levels from 1 to 0 (the Euler grid), shifted towards high noise."""
    import torch

    t = torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64)
    t = shift * t / (1 + (shift - 1) * t)
    return t.to(torch.float32)


def start_step(steps: int, strength: float) -> int:
    """The step a ``v2v`` job starts at: the last ``round(strength * steps)`` steps are run."""
    return int(steps) - int(round(min(max(float(strength), 0.0), 1.0) * int(steps)))


def frames_to_tensor(frames: np.ndarray) -> Any:
    """RGB uint8 ``(T, H, W, 3)`` -> ``(1, 3, T, H, W)`` float32 in ``[-1, 1]``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return x.permute(3, 0, 1, 2).unsqueeze(0)


def tensor_to_frames(video: Any) -> np.ndarray:
    """``(3, T, H, W)`` in ``[-1, 1]`` -> RGB uint8 ``(T, H, W, 3)``."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()


def resize_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Each frame resized to ``width`` x ``height`` (bicubic); unchanged when already that size."""
    if frames.shape[1:3] == (height, width):
        return frames
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames])


def fit_source(frames: np.ndarray, cfg: GeneratorConfig) -> np.ndarray:
    """A source clip as the model takes it: ``cfg.frames`` frames picked evenly over the clip (repeating
    frames of a shorter one) and resized to the native size."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ModelError(f"source must be (T, H, W, 3) RGB frames, got {frames.shape}", code="generate.unsupported")
    idx = np.minimum((np.arange(cfg.frames) * len(frames)) // cfg.frames, len(frames) - 1)
    return resize_frames(frames[idx].astype(np.uint8), cfg.width, cfg.height)


@dataclass
class TinyVideoModel:
    """The three trained modules and their config, as one unit (``load`` / ``save``)."""

    config: GeneratorConfig
    autoencoder: Any
    text_encoder: Any
    transformer: Any
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fresh(cls, config: GeneratorConfig | None = None, seed: int = 0) -> TinyVideoModel:
        """Untrained modules, initialised from ``seed``."""
        import torch

        cfg = config or GeneratorConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            ae, te, dit = build_modules(cfg)
        return cls(cfg, ae, te, dit)

    def state(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "autoencoder": self.autoencoder.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "transformer": self.transformer.state_dict(),
            "meta": self.meta,
        }

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically, weights as float16 (the same weights and meta, the same bytes)."""
        from framebus.models.common import save_torch_atomic

        state = self.state()
        for key in ("autoencoder", "text_encoder", "transformer"):  # float16 on disk: half the size
            state[key] = {k: v.half() if v.is_floating_point() else v for k, v in state[key].items()}
        save_torch_atomic(state, Path(path))

    @classmethod
    def load(cls, path: Path) -> TinyVideoModel:
        import torch

        d = torch.load(Path(path), map_location="cpu", weights_only=True)
        m = cls.fresh(GeneratorConfig.from_dict(d["config"]))
        for key in ("autoencoder", "text_encoder", "transformer"):
            getattr(m, key).load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in d[key].items()})
        m.meta = dict(d.get("meta") or {})
        return m

    def encode_text(self, prompts: Sequence[str]) -> tuple[Any, Any, Any]:
        return self.text_encoder(tokenize(prompts, self.config.text_len))

    def velocity(self, x: Any, t: Any, text: tuple[Any, Any, Any]) -> Any:
        tokens, pooled, mask = text
        return self.transformer(x, t, tokens, pooled, mask)


class TinyVideoGenerator:
    """``VideoGenerator`` over a ``TinyVideoModel``: see the module docstring. ``batchable`` (one sampler
    call for specs with the same steps). Calls are serialised (one job at a time, any thread)."""

    batchable = True
    #: what a job that names none gets (the agent reads these)
    default_steps = 20
    #: chosen with ``contrast_guidance`` on 40 prompts with seeds outside the evaluation's (shape named 0.70
    #: there, 0.425 at guidance 4 alone)
    default_guidance = 3.0
    default_frames = 16
    default_fps = 8.0
    default_width = 64
    default_height = 48

    def __init__(
        self,
        model: TinyVideoModel,
        *,
        version: str = "untrained",
        name: str = "framebus/tiny-generator",
        contrast_guidance: float = 5.0,
        contrast_words: Sequence[str] = SHAPES,
    ):
        self.model = model
        #: the second guidance term (see ``contrast_prompt``); 0 turns it off
        self.contrast_guidance = float(contrast_guidance)
        self.contrast_words = tuple(contrast_words)
        self.config = model.config
        self.info = ModelInfo(name=name, version=version, task="generate")
        self._lock = threading.RLock()  # preview() is called from inside on_step

    @classmethod
    def load(cls, path: Path, *, version: str | None = None) -> TinyVideoGenerator:
        """The trained generator in ``path`` (``ModelNotAvailable`` ``models.weights_missing`` when it is
        not there: ``framebus models train`` makes it). ``version``: default the file's first 12 hex of
        sha256."""
        from framebus.models.common import file_digest

        path = Path(path)
        if not path.is_file():
            raise ModelNotAvailable(
                f"tiny generator weights not found at {path}; run `framebus models train`",
                code="models.weights_missing",
            )
        return cls(TinyVideoModel.load(path), version=version or file_digest(path)[:12])

    # --- VideoGenerator -------------------------------------------------------------------------

    def normalise(self, spec: GenerationSpec) -> GenerationSpec:
        """Frames and fps snapped to the native ``16`` frames at ``8`` fps; width and height kept (even,
        ``16..1280``; the decoded 64x48 frames are resized to them); steps clamped to ``1..200``;
        ``mode`` ``t2v``, ``v2v`` or ``i2v`` (the last two need ``source``)."""
        if spec.mode not in MODES:
            raise ModelError(
                f"the tiny generator does not do {spec.mode!r} (only {MODES})", code="generate.unsupported"
            )
        if spec.mode in ("v2v", "i2v") and spec.source is None:
            raise ModelError(f"{spec.mode} needs source frames", code="generate.unsupported")
        if spec.width < 1 or spec.height < 1 or spec.steps < 1:
            raise ModelError("width, height and steps must be positive", code="generate.unsupported")
        cfg = self.config

        def side(v: int) -> int:
            return int(min(MAX_SIDE, max(16, 2 * ((int(v) + 1) // 2))))

        return replace(
            spec,
            num_frames=cfg.frames,
            fps=cfg.fps,
            width=side(spec.width),
            height=side(spec.height),
            steps=int(min(MAX_STEPS, spec.steps)),
            strength=float(min(max(spec.strength, 0.0), 1.0)),
        )

    def generate(
        self, spec: GenerationSpec, *, resume: SamplerCheckpoint | None = None, on_step: Callable | None = None
    ) -> np.ndarray:
        def relay(_: int, ck: SamplerCheckpoint) -> None:
            on_step(ck)

        return self._sample([spec], [resume], relay if on_step is not None else None)[0]

    def generate_batch(self, specs: list[GenerationSpec], *, on_step: Callable | None = None) -> list[np.ndarray]:
        if not specs:
            return []
        if len({s.steps for s in specs}) != 1:
            raise ModelError("a batch needs the same number of steps", code="generate.unsupported")
        return self._sample(list(specs), [None] * len(specs), on_step)

    def preview(self, checkpoint: SamplerCheckpoint, spec: GenerationSpec) -> np.ndarray:
        """The middle frame of the checkpoint's denoised estimate (``extra["denoised"]``; the raw latents
        when absent), decoded at the native size."""
        import torch

        z = (checkpoint.extra or {}).get("denoised", checkpoint.latents)
        with self._lock, torch.inference_mode():
            video = self.model.autoencoder.decode(self.model.autoencoder.denormalise_latents(z.unsqueeze(0).float()))
        return tensor_to_frames(video[0])[self.config.frames // 2]

    # --- the sampler ----------------------------------------------------------------------------

    def contrast_prompt(self, prompt: str) -> str:
        """``prompt`` without its ``contrast_words`` ("a red circle moving left" -> "a red moving left").

        The sampler's velocity is ``v_u + g (v_c - v_u) + g_x (v_c - v_x)``: classifier-free guidance
        (``g``, against the empty prompt) plus a contrast term (``g_x = contrast_guidance``) against this
        prompt, the same prompt less its shape word. The second term is guidance along the shape word's
        direction alone, as composable diffusion's negation is along a negative prompt's. It is there
        because the flow loss barely pays for shape: swapping the shape word raises the trained
        transformer's loss on the object by 4 %, the colour word by 230 % (``word_reliance``), so the
        shape's share of ``v_c - v_u`` is small and ``g`` large enough to lift it overshoots colour and
        motion. A prompt with no contrast word gets ``v_x = v_c``: the term vanishes."""
        return " ".join(w for w in prompt.split() if w.lower() not in self.contrast_words)

    def _initial(self, spec: GenerationSpec, steps: int) -> tuple[Any, int, Any]:
        """``(latents, first step, rng state)`` of a fresh job: noise from ``spec.seed``; for ``v2v`` the
        encoded source (``i2v``: the image as a still clip) noised to the level of its first step."""
        import torch

        gen = torch.Generator().manual_seed(int(spec.seed))
        noise = torch.randn(self.config.latent_shape, generator=gen, dtype=torch.float32)
        if spec.mode not in ("v2v", "i2v"):
            return noise, 0, gen.get_state()
        # v2v: the source clip; i2v: the image held still for the whole clip (then its first frame is pinned)
        ae = self.model.autoencoder
        z0 = ae.normalise_latents(ae.encode(frames_to_tensor(fit_source(spec.source, self.config))))[0]
        k0 = start_step(steps, spec.strength)
        t = timesteps(steps, self.config.shift)[k0]
        return (1 - t) * z0 + t * noise, k0, gen.get_state()

    def _pinned(self, specs: list[GenerationSpec]) -> list[tuple[int, Any, Any]]:
        """``i2v`` by replacement: for each ``i2v`` spec, ``(index, z, noise)``: ``z`` the source image's first
        latent frame (the image held for two frames, encoded), ``noise`` that frame of the job's initial noise.
        After every step the job's first latent frame is set to ``(1 - t) z + t noise`` at the new noise level
        (``z`` itself at the end), and the transformer's temporal attention carries the image into the later
        frames. A function of the seed and the source only, so a resumed job pins the same values."""
        import torch

        out = []
        ae = self.model.autoencoder
        for i, spec in enumerate(specs):
            if spec.mode != "i2v":
                continue
            image = np.asarray(spec.source)
            image = image[0] if image.ndim == 4 else image
            clip = fit_source(image[None], self.config)  # the one frame, held for the whole clip
            z = ae.normalise_latents(ae.encode(frames_to_tensor(clip)))[0, :, :1]
            gen = torch.Generator().manual_seed(int(spec.seed))
            noise = torch.randn(self.config.latent_shape, generator=gen, dtype=torch.float32)[:, :1]
            out.append((i, z, noise))
        return out

    def _sample(
        self, specs: list[GenerationSpec], resumes: list[SamplerCheckpoint | None], on_step: Callable | None
    ) -> list[np.ndarray]:
        import torch

        specs = [self.normalise(s) for s in specs]
        steps = specs[0].steps
        with self._lock, torch.inference_mode():
            xs, ks, rngs = [], [], []
            for spec, ck in zip(specs, resumes):
                if ck is not None:
                    if ck.total_steps != spec.steps:
                        raise ModelError(
                            f"checkpoint of a {ck.total_steps}-step run, spec has {spec.steps}",
                            code="generate.bad_checkpoint",
                        )
                    x, k, rng = ck.latents.float().clone(), int(ck.step), ck.rng_state
                else:
                    x, k, rng = self._initial(spec, steps)
                xs.append(x)
                ks.append(k)
                rngs.append(rng)
            x = torch.stack(xs)
            n = len(specs)
            pinned = self._pinned(specs)  # i2v: (index, clean first latent frame, its noise)
            cond = [s.prompt for s in specs]
            uncond = [s.negative_prompt or "" for s in specs]
            contrast = [self.contrast_prompt(p) for p in cond] if self.contrast_guidance else []
            if contrast == cond:  # no prompt names a contrast word: the term is zero, skip its pass
                contrast = []
            passes = 3 if contrast else 2
            text = self.model.encode_text(cond + uncond + contrast)
            guidance = torch.tensor([float(s.guidance) for s in specs]).view(n, 1, 1, 1, 1)
            ts = timesteps(steps, self.config.shift)
            for step in range(min(ks), steps):
                active = torch.tensor([k <= step for k in ks])
                t = ts[step]
                v = self.model.velocity(torch.cat([x] * passes), t.expand(passes * n), text)
                v_c, v_u = v[:n], v[n : 2 * n]
                v_guided = v_u + guidance * (v_c - v_u)
                v = v_guided + self.contrast_guidance * (v_c - v[2 * n :]) if contrast else v_guided
                denoised = x - t * v
                x_next = x + (ts[step + 1] - t) * v
                x = torch.where(active.view(n, 1, 1, 1, 1), x_next, x)
                t_next = ts[step + 1]
                for i, z_img, noise0 in pinned:  # the first latent frame follows the image's own noising path
                    x[i, :, :1] = (1 - t_next) * z_img + t_next * noise0
                if on_step is not None:
                    for i in range(n):
                        if ks[i] <= step:
                            ck = SamplerCheckpoint(
                                step + 1, steps, x[i].clone(), rngs[i], {"denoised": denoised[i].clone()}
                            )
                            on_step(i, ck)
            ae = self.model.autoencoder
            video = ae.decode(ae.denormalise_latents(x))
        return [resize_frames(tensor_to_frames(video[i]), s.width, s.height) for i, s in enumerate(specs)]
