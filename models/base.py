"""Model-facing types shared by every backend.

Importing this module is cheap (no torch, no open_clip): the indexer and the search API depend on
``ModelInfo`` without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a loaded model.

    ``name`` is human readable (``open_clip/ViT-B-32``), ``version`` is a short stable tag or hash
    that changes whenever the vectors the model produces change (it names the vector collection),
    ``task`` says what the model does (``embed``, later ``caption``, ``moderate``, ``generate``).
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
        """RGB uint8 ``HxWx3`` arrays of any size -> ``(n, dim)`` float32, L2-normalised."""
        ...

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Strings -> ``(n, dim)`` float32, L2-normalised."""
        ...
