"""Model profiles: which backend (and options) serves each task.

``Settings.models`` (``FRAMEBUS_MODELS``) names a profile. Only the embedder is wired today; the
other task slots are reserved for later work (captioner, moderator, generator) and are ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    """A registry ``backend`` name plus keyword options for its factory."""

    backend: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    embedder: ModelSpec
    captioner: ModelSpec | None = None  # reserved
    moderator: ModelSpec | None = None  # reserved
    generator: ModelSpec | None = None  # reserved

    def spec(self, task: str) -> ModelSpec | None:
        if task not in TASKS:
            raise ModelError(f"unknown model task {task!r}; known: {', '.join(TASKS)}", code="models.unknown_task")
        return getattr(self, task)


TASKS = ("embedder", "captioner", "moderator", "generator")

DEFAULT_EMBEDDER_ARCH = "ViT-B-32"
DEFAULT_EMBEDDER_TAG = "laion2b_s34b_b79k"

PROFILES: dict[str, Profile] = {
    "default": Profile(
        name="default",
        description="pretrained models; weights come from the Hugging Face hub or a local cache/checkpoint",
        embedder=ModelSpec("open_clip", {"arch": DEFAULT_EMBEDDER_ARCH, "pretrained": DEFAULT_EMBEDDER_TAG}),
    ),
    "tiny": Profile(
        name="tiny",
        description="small models that need no download (tests, CI, offline demos)",
        embedder=ModelSpec("framebus_tiny_clip"),
    ),
}


def get_profile(name: str | None) -> Profile:
    key = (name or "").strip().lower()
    try:
        return PROFILES[key]
    except KeyError:
        raise ModelError(f"unknown model profile {name!r}; known profiles: {', '.join(sorted(PROFILES))} "
                         "(set with FRAMEBUS_MODELS or the 'models' setting)", code="models.unknown_profile") from None
