"""Model-facing types shared by every backend.

Importing this module is cheap (no torch, no open_clip): the indexer and the search API depend on
``ModelInfo`` without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


class ModelSettings(Protocol):
    """What the model layer reads of the engine's configuration. The runtime's
    ``framebus.streams.config.Settings`` is one; the model layer never imports it."""

    #: the model profile (``default``, ``tiny``)
    models: str
    #: ``auto``, ``cpu``, ``cuda``, ``cuda:N``
    device: str
    #: the tiny models' training seed (``0``: the shipped weights)
    train_seed: int
    #: explicit model directory (pretrained weights; the tiny models too when set), or None
    model_dir: Path | None
    #: user-level cache of trained tiny models (``framebus.models.training``)
    cache_dir: Path

    @property
    def model_cache_dir(self) -> Path: ...

    def model_copy(self, *, update: dict[str, Any]) -> ModelSettings: ...


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a loaded model.

    ``name`` is human readable (``open_clip/ViT-B-32``), ``version`` is a short stable tag or hash
    that changes whenever the vectors the model produces change (it names the vector collection),
    ``task`` says what the model does (``embed``, ``caption``, ``moderate``, later ``generate``).
    """

    name: str
    version: str
    task: str


@runtime_checkable
class Embedder(Protocol):
    """Joint image/text embedder.

    Both methods return float32 arrays of shape ``(n, dim)`` with L2-normalised rows, batch
    internally, run under ``torch.inference_mode()`` and may be called from any thread.
    """

    info: ModelInfo
    dim: int
    image_size: int

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 ``HxWx3`` arrays of any size -> ``(n, dim)`` float32, L2-normalised.
        The same as ``embed_prepared(prepare_images(images))``."""
        ...

    def prepare_images(self, images: list[np.ndarray]) -> Any:
        """CPU preprocessing only (resize, crop, normalise; no model): a batch ``embed_prepared`` takes,
        sliceable along its first axis. Thread-safe, and runs while another thread is in the model:
        agents prepare the next batch while the current one is in the model."""
        ...

    def embed_prepared(self, batch: Any) -> np.ndarray:
        """A ``prepare_images`` batch (or a slice of one) -> ``(n, dim)`` float32, L2-normalised."""
        ...

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Strings -> ``(n, dim)`` float32, L2-normalised."""
        ...


@runtime_checkable
class Captioner(Protocol):
    """Image captioner: one short English caption per RGB uint8 ``HxWx3`` frame (any size).

    For a shot, callers pass its keyframe. Runs under ``torch.inference_mode()``, batches
    internally, greedy decoding (deterministic), and may be called from any thread.
    """

    info: ModelInfo

    def caption(self, images: list[np.ndarray]) -> list[str]:
        """RGB uint8 ``HxWx3`` arrays -> one caption per image, in order
        (``caption_prepared(prepare_images(images))``)."""
        ...

    def prepare_images(self, images: list[np.ndarray]) -> Any:
        """CPU preprocessing only, as ``Embedder.prepare_images``."""
        ...

    def caption_prepared(self, batch: Any) -> list[str]:
        """A ``prepare_images`` batch (or a slice of one) -> one caption per image."""
        ...


@runtime_checkable
class Moderator(Protocol):
    """Content moderator over frames: per-category scores in ``[0, 1]``.

    ``categories`` lists the policy categories every score dict carries (in that order);
    ``thresholds`` maps each category to the score at or above which a frame counts as flagged.
    """

    info: ModelInfo
    categories: list[str]
    thresholds: dict[str, float]

    def score(self, images: list[np.ndarray]) -> list[dict[str, float]]:
        """RGB uint8 ``HxWx3`` arrays -> one ``{category: score}`` dict per image, in order
        (``score_prepared(prepare_images(images))``)."""
        ...

    def prepare_images(self, images: list[np.ndarray]) -> Any:
        """CPU preprocessing only, as ``Embedder.prepare_images``."""
        ...

    def score_prepared(self, batch: Any) -> list[dict[str, float]]:
        """A ``prepare_images`` batch (or a slice of one) -> one score dict per image."""
        ...


# --- generation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSpec:
    """What one generation job asks of a ``VideoGenerator`` (validated by the agent; snapped to the
    model's constraints by ``VideoGenerator.normalise``).

    ``source`` holds the source clip's RGB uint8 frames ``(T, H, W, 3)`` for ``v2v``/``i2v`` (``i2v``: one
    frame); ``strength`` is how much of it is re-noised (``1.0``: all of it, as text-to-video)."""

    prompt: str
    seed: int
    steps: int
    guidance: float
    num_frames: int
    fps: float
    width: int
    height: int
    negative_prompt: str | None = None
    mode: str = "t2v"
    source: np.ndarray | None = None
    strength: float = 0.6


@dataclass
class SamplerCheckpoint:
    """The sampling state after ``step`` of ``total_steps`` denoising steps: enough to resume the job in
    another process and end with the same output as an uninterrupted run (same seed, same steps).

    ``latents`` is a CPU ``torch.Tensor``; ``rng_state`` the sampler's ``torch.Generator`` state (a uint8
    tensor) or ``None`` for a deterministic sampler; ``extra`` any backend-specific tensors or numbers."""

    step: int
    total_steps: int
    latents: Any
    rng_state: Any = None
    extra: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        import io

        import torch

        buf = io.BytesIO()
        torch.save(
            {
                "step": self.step,
                "total_steps": self.total_steps,
                "latents": self.latents,
                "rng_state": self.rng_state,
                "extra": self.extra or {},
            },
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SamplerCheckpoint:
        import io

        import torch

        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return cls(d["step"], d["total_steps"], d["latents"], d["rng_state"], d["extra"] or None)


@runtime_checkable
class VideoGenerator(Protocol):
    """Text (or video) to video. ``generate`` runs the whole sampler and returns RGB uint8 frames
    ``(num_frames, height, width, 3)``; it may be called from any thread, one job at a time.

    ``on_step(checkpoint)`` is called after every denoising step with the state after it; it may raise
    (e.g. to cancel) and the exception propagates out of ``generate``. ``resume`` starts from such a
    checkpoint instead of step 0: the output equals an uninterrupted run of the same spec.
    ``generate_batch`` runs compatible specs (same shape and steps) in one sampler call where the backend
    can; ``batchable`` says whether it can."""

    info: ModelInfo
    batchable: bool

    def normalise(self, spec: GenerationSpec) -> GenerationSpec:
        """``spec`` snapped to what the model accepts (frame counts such as 8N+1, size multiples, step
        and frame caps), or ``ModelError`` ``generate.unsupported`` when it cannot be."""
        ...

    def generate(
        self,
        spec: GenerationSpec,
        *,
        resume: SamplerCheckpoint | None = None,
        on_step: Any = None,
    ) -> np.ndarray: ...

    def generate_batch(self, specs: list[GenerationSpec], *, on_step: Any = None) -> list[np.ndarray]:
        """``on_step(index_in_batch, checkpoint)``."""
        ...

    def preview(self, checkpoint: SamplerCheckpoint, spec: GenerationSpec) -> np.ndarray:
        """A small RGB uint8 frame (the middle frame, cheaply decoded) of the state in ``checkpoint``."""
        ...
