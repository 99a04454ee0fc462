"""Backend registry: ``(task, backend name) -> factory(settings, **options)``.

Factories receive the ``ModelSettings`` (the runtime's ``Settings``) plus the profile's options; they never read the
environment. Later tasks register their backends with ``@register("captioner", "...")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from framebus.models.profiles import TASKS, get_profile
from framebus.topics.errors import ModelError

if TYPE_CHECKING:
    from framebus.models.base import Captioner, Embedder, ModelSettings, Moderator, VideoGenerator

Factory = Callable[..., Any]
_FACTORIES: dict[tuple[str, str], Factory] = {}


def register(task: str, backend: str) -> Callable[[Factory], Factory]:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")

    def deco(fn: Factory) -> Factory:
        _FACTORIES[(task, backend)] = fn
        return fn

    return deco


def backends(task: str | None = None) -> list[tuple[str, str]]:
    return sorted(k for k in _FACTORIES if task is None or k[0] == task)


def create(task: str, backend: str, settings: ModelSettings, **options: Any) -> Any:
    try:
        factory = _FACTORIES[(task, backend)]
    except KeyError:
        known = ", ".join(b for t, b in backends(task)) or "none"
        raise ModelError(
            f"no {task} backend named {backend!r} (registered: {known})", code="models.unknown_backend"
        ) from None
    return factory(settings, **options)


def load_embedder(settings: ModelSettings) -> Embedder:
    """The embedder of profile ``settings.models`` on ``settings.device``.

    Raises ``ModelError`` ``models.unknown_profile`` for an unknown profile and ``ModelNotAvailable``
    ``models.weights_missing`` when pretrained weights are not available offline.
    """
    spec = get_profile(settings.models).embedder
    return create("embedder", spec.backend, settings, **spec.options)


def _spec(settings: ModelSettings, task: str):
    spec = get_profile(settings.models).spec(task)
    if spec is None:
        raise ModelError(f"model profile {settings.models!r} has no {task}", code="models.unknown_backend")
    return spec


def load_captioner(settings: ModelSettings) -> Captioner:
    """The captioner of profile ``settings.models`` on ``settings.device`` (``ModelNotAvailable``
    ``models.weights_missing`` when pretrained weights are not available offline)."""
    spec = _spec(settings, "captioner")
    return create("captioner", spec.backend, settings, **spec.options)


def load_moderator(settings: ModelSettings, embedder: Embedder) -> Moderator:
    """The moderator of profile ``settings.models``, on top of ``embedder`` (pass the one
    ``load_embedder(settings)`` returned). The tiny profile needs its trained head
    (``ModelNotAvailable`` telling to run ``framebus models train`` otherwise)."""
    spec = _spec(settings, "moderator")
    return create("moderator", spec.backend, settings, embedder=embedder, **spec.options)


def load_generator(settings: ModelSettings) -> VideoGenerator:
    """The video generator of profile ``settings.models`` (``ModelError`` ``models.unknown_backend`` when the
    profile has none; the tiny one needs its trained weights: ``ModelNotAvailable`` otherwise)."""
    spec = _spec(settings, "generator")
    return create("generator", spec.backend, settings, **spec.options)


# --- built-in backends -----------------------------------------------------------------------------


def pretrained_checkpoint_path(settings: ModelSettings, arch: str, tag: str) -> Any:
    """Where a local checkpoint for ``arch``/``tag`` is looked for: the first existing file among
    ``<data_dir>/models/<arch>-<tag>.{safetensors,pt,bin}``, else the ``.safetensors`` name."""
    base = settings.model_cache_dir
    candidates = [base / f"{arch}-{tag}{ext}" for ext in (".safetensors", ".pt", ".bin")]
    return next((p for p in candidates if p.is_file()), candidates[0])


def hf_cache_dir(settings: ModelSettings) -> Any:
    """The Hugging Face cache framebus downloads pretrained weights into: ``<data_dir>/models/hf``."""
    return settings.model_cache_dir / "hf"


@register("embedder", "open_clip")
def _open_clip_embedder(settings: ModelSettings, *, arch: str, pretrained: str, **kw: Any) -> Embedder:
    from framebus.models.openclip import OpenClipEmbedder

    return OpenClipEmbedder.pretrained(
        arch,
        pretrained,
        cache_dir=hf_cache_dir(settings),
        checkpoint=pretrained_checkpoint_path(settings, arch, pretrained),
        device=settings.device,
        **kw,
    )


@register("embedder", "framebus_tiny_clip")
def _tiny_clip_embedder(settings: ModelSettings, **kw: Any) -> Embedder:
    from framebus.models.openclip import OpenClipEmbedder
    from framebus.models.training import tiny_path

    return OpenClipEmbedder.tiny(checkpoint=tiny_path(settings, "tiny-clip"), device=settings.device, **kw)


@register("captioner", "transformers")
def _transformers_captioner(settings: ModelSettings, *, name: str, **kw: Any) -> Captioner:
    from framebus.models.captioner import TransformersCaptioner

    return TransformersCaptioner.pretrained(name, cache_dir=hf_cache_dir(settings), device=settings.device, **kw)


@register("captioner", "tiny")
def _tiny_captioner(settings: ModelSettings, **kw: Any) -> Captioner:
    from framebus.models.captioner import TransformersCaptioner
    from framebus.models.training import tiny_path

    return TransformersCaptioner.tiny(tiny_path(settings, "tiny-captioner").parent, device=settings.device, **kw)


@register("moderator", "clip-zero-shot")
def _clip_zero_shot_moderator(settings: ModelSettings, *, embedder: Embedder, **kw: Any) -> Moderator:
    from framebus.models.moderator import ClipZeroShotModerator

    return ClipZeroShotModerator(embedder, **kw)


@register("moderator", "clip-head")
def _clip_head_moderator(
    settings: ModelSettings, *, embedder: Embedder, path: str | None = None, **kw: Any
) -> Moderator:
    from framebus.models.moderator import ClipHeadModerator
    from framebus.models.training import tiny_path

    return ClipHeadModerator.load(path or tiny_path(settings, "tiny-moderator"), embedder, **kw)


@register("generator", "tiny")
def _tiny_generator(settings: ModelSettings, *, path: str | None = None) -> VideoGenerator:
    from pathlib import Path

    from framebus.models.generator import TinyVideoGenerator
    from framebus.models.training import model_version, tiny_path

    file = Path(path) if path else tiny_path(settings, "tiny-generator")
    generator = TinyVideoGenerator.load(file, version=model_version(file) if file.is_file() else None)
    generator.contrast_guidance = float(getattr(settings, "generate_contrast_guidance", generator.contrast_guidance))
    return generator


@register("generator", "diffusers-ltx")
def _diffusers_ltx_generator(settings: ModelSettings, **kw: Any) -> VideoGenerator:
    """LTX-Video through diffusers (``model_id``, memory options; ``random_tiny: true``: random tiny weights)."""
    from framebus.models.diffusers_video import load_ltx

    return load_ltx(settings, cache_dir=hf_cache_dir(settings), **kw)


@register("generator", "diffusers-wan")
def _diffusers_wan_generator(settings: ModelSettings, **kw: Any) -> VideoGenerator:
    """Wan 2.1/2.2 through diffusers (options as ``diffusers-ltx``)."""
    from framebus.models.diffusers_video import load_wan

    return load_wan(settings, cache_dir=hf_cache_dir(settings), **kw)
