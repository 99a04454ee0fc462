"""Model profiles: which backend (and options) serves each task.

``Settings.models`` (``FRAMEBUS_MODELS``) names a profile. The embedder, captioner and moderator are
wired; the tiny profile's generator is the project's own latent video diffusion model
(``framebus.models.generator``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from framebus.topics.errors import ModelError


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
    captioner: ModelSpec | None = None
    moderator: ModelSpec | None = None
    generator: ModelSpec | None = None

    def spec(self, task: str) -> ModelSpec | None:
        if task not in TASKS:
            raise ModelError(f"unknown model task {task!r}; known: {', '.join(TASKS)}", code="models.unknown_task")
        return getattr(self, task)


TASKS = ("embedder", "captioner", "moderator", "generator")

DEFAULT_EMBEDDER_ARCH = "ViT-B-32"
DEFAULT_EMBEDDER_TAG = "laion2b_s34b_b79k"
# Pretrained captioner, by Hugging Face name (BlipForConditionalGeneration + BlipProcessor).
DEFAULT_CAPTIONER_NAME = "Salesforce/blip-image-captioning-base"
# Pretrained text-to-video models, by Hugging Face name (diffusers format; framebus.models.diffusers_video):
# LTX-Video serves the default profile; Wan 2.1 is the ``diffusers-wan`` backend's default.
DEFAULT_GENERATOR_MODEL = "Lightricks/LTX-Video"
WAN_GENERATOR_MODEL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

# Zero-shot moderation policy of the default profile: category -> CLIP text prompts. Scores are a
# softmax (temperature ``calibration.temperature``) of each category's prompts against the safe prompts.
DEFAULT_MODERATION_POLICY: dict[str, tuple[str, ...]] = {
    "violence": (
        "a photo of a violent fight",
        "a photo of people hitting each other",
        "a photo of blood and injuries",
        "a photo of a violent attack",
    ),
    "nudity": ("a photo of a naked person", "a photo containing nudity", "an explicit sexual photo"),
    "weapons": (
        "a photo of a gun",
        "a photo of a person holding a firearm",
        "a photo of a knife used as a weapon",
        "a photo of weapons",
    ),
}
DEFAULT_SAFE_PROMPTS: tuple[str, ...] = (
    "a photo",
    "an ordinary everyday photo",
    "a photo of people",
    "a photo of a person",
    "a photo of an object",
    "a photo of a landscape",
    "a photo of a room",
    "a screenshot",
    "a drawing",
)
DEFAULT_MODERATION_CALIBRATION: dict[str, float] = {"temperature": 0.01, "threshold": 0.5}

PROFILES: dict[str, Profile] = {
    "default": Profile(
        name="default",
        description="pretrained models; weights come from the Hugging Face hub or a local cache/checkpoint",
        embedder=ModelSpec("open_clip", {"arch": DEFAULT_EMBEDDER_ARCH, "pretrained": DEFAULT_EMBEDDER_TAG}),
        captioner=ModelSpec("transformers", {"name": DEFAULT_CAPTIONER_NAME}),
        moderator=ModelSpec(
            "clip-zero-shot",
            {
                "categories": DEFAULT_MODERATION_POLICY,
                "safe_prompts": DEFAULT_SAFE_PROMPTS,
                "calibration": DEFAULT_MODERATION_CALIBRATION,
            },
        ),
        generator=ModelSpec("diffusers-ltx", {"model_id": DEFAULT_GENERATOR_MODEL}),
    ),
    "tiny": Profile(
        name="tiny",
        description="small models that need no download (tests, CI, offline demos)",
        embedder=ModelSpec("framebus_tiny_clip"),
        captioner=ModelSpec("tiny"),  # <data_dir>/models/tiny-captioner/ (trained), else seeded random init
        moderator=ModelSpec("clip-head"),  # <data_dir>/models/tiny-moderator.pt (trained; required)
        generator=ModelSpec("tiny"),  # tiny-generator.pt: the latent video diffusion model (trained; required)
    ),
}


def get_profile(name: str | None) -> Profile:
    key = (name or "").strip().lower()
    try:
        return PROFILES[key]
    except KeyError:
        raise ModelError(
            f"unknown model profile {name!r}; known profiles: {', '.join(sorted(PROFILES))} "
            "(set with FRAMEBUS_MODELS or the 'models' setting)",
            code="models.unknown_profile",
        ) from None
