"""Training of the offline ``tiny`` models on the synthetic world (``framebus.models.world``), and where
their weights are found.

Each model is one ``TrainSpec`` in ``TRAINERS``: a name, a file name, ``train(out_path, settings) -> stats``,
the models it is trained on top of (``depends``), a ``revision`` and the trainer module's ``RECIPE`` (every
hyperparameter). Those, the training seed (``settings.train_seed``), the world's render version and the
recipes of the models it depends on hash to the model's **recipe id**: same recipe id, same model (bit for
bit with one torch build on one kind of CPU: other CPUs' kernels round floats differently; the same quality
on any, which the tests check under other seeds).

Where a model's file is (``TrainSpec.path``), first match wins:

1. ``settings.model_dir``, when set explicitly (``FRAMEBUS_MODEL_DIR``): the file there, trained when
   missing or when its ``<file>.json`` sidecar names another recipe id;
2. the **shipped** weights in ``framebus/models/tiny/`` (the repository's ``models/tiny/``), when their
   sidecar names the current recipe id: seed 0 of the current recipes, made by ``make ship-models``, so a
   fresh clone needs no training;
3. the **user cache**, ``<cache_dir>/tiny/<name>-<recipe id>/`` (``FRAMEBUS_CACHE_DIR``, default
   ``~/.cache/framebus``, as the Hugging Face cache does): trained there on first use, shared by every
   checkout on the machine.

``ensure_tiny_models(settings)`` trains whichever is missing, under a file lock, so concurrent callers train
each model once. Add a model by appending to ``TRAINERS`` after the models it depends on.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from framebus.models.base import ModelSettings

log = logging.getLogger(__name__)

LOCK_NAME = ".train.lock"

#: the shipped tiny weights (package data): seed 0 of the current recipes
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "tiny"


@dataclass(frozen=True)
class TrainSpec:
    name: str
    #: file name in the model's directory (what the serving code loads)
    filename: str
    #: ``train(out_path, settings) -> stats``; must write ``out_path`` atomically
    train: Callable[[Path, ModelSettings], dict[str, Any]]
    #: the trainer module, whose ``RECIPE`` dict holds every hyperparameter
    module: str = ""
    #: names of earlier ``TRAINERS`` this model is trained on top of
    depends: tuple[str, ...] = ()
    #: bump when the recipe changes in a way ``RECIPE`` does not show (code, data)
    revision: int = 1

    def recipe(self) -> dict[str, Any]:
        return dict(getattr(importlib.import_module(self.module), "RECIPE", {})) if self.module else {}

    def path(self, settings: ModelSettings) -> Path:
        """Where this model's file is for ``settings`` (see the module doc: explicit model dir, shipped, user
        cache)."""
        if getattr(settings, "model_dir", None) is not None:
            return Path(settings.model_dir) / self.filename
        rid = recipe_id(self, settings)
        shipped = SHIPPED_DIR / self.filename
        if _read_stats(shipped).get("recipe_id") == rid and shipped.exists():
            return shipped
        return self.cache_path(settings, rid)

    def cache_path(self, settings: ModelSettings, rid: str | None = None) -> Path:
        """This model's file in the user cache: ``<cache_dir>/tiny/<name>-<recipe id>/<filename>``."""
        rid = rid or recipe_id(self, settings)
        return Path(settings.cache_dir) / "tiny" / f"{self.name}-{rid}" / self.filename


def _train_clip(out_path: Path, settings: ModelSettings) -> dict[str, Any]:
    from framebus.models.training.clip import train_tiny_clip

    # Always on CPU: the same checkpoint (bytes, version) with this torch build on the same kind of CPU.
    return train_tiny_clip(out_path, device="cpu", seed=int(getattr(settings, "train_seed", 0)))


def _tiny_clip_filename() -> str:
    from framebus.models.openclip import TINY_CHECKPOINT

    return TINY_CHECKPOINT


def _train_captioner(out_path: Path, settings: ModelSettings) -> dict[str, Any]:
    from framebus.models.training.captioner import train_for_settings

    return train_for_settings(out_path, settings)


def _train_moderator(out_path: Path, settings: ModelSettings) -> dict[str, Any]:
    from framebus.models.training.moderator import train_for_settings

    return train_for_settings(out_path, settings)


def _train_generator(out_path: Path, settings: ModelSettings) -> dict[str, Any]:
    from framebus.models.training.generator import train_for_settings

    return train_for_settings(out_path, settings)


TRAINERS: list[TrainSpec] = [
    # revision 2: 4 frames per shot over the whole shot, 1200 steps
    TrainSpec("tiny-clip", _tiny_clip_filename(), _train_clip, "framebus.models.training.clip", revision=2),
    # a save_pretrained directory; its marker file is what ensure_tiny_models checks.
    # revision 2: 4 frames per shot, centre crop, shifts, label smoothing, lr 2e-3, 1 thread
    TrainSpec(
        "tiny-captioner",
        "tiny-captioner/model.safetensors",
        _train_captioner,
        "framebus.models.training.captioner",
        revision=2,
    ),
    # after tiny-clip: the head is trained on the (trained) tiny CLIP's image embeddings.
    # revision 4: the head plus zero-shot prompts (a sum of log-odds), thresholds on the sum
    # revision 3: fit and calibration on fresh shots, per-shot threshold in the widest gap of the scores
    TrainSpec(
        "tiny-moderator",
        "tiny-moderator.pt",
        _train_moderator,
        "framebus.models.training.moderator",
        depends=("tiny-clip",),
        revision=4,
    ),
    # the latent video diffusion model (autoencoder, text encoder, diffusion transformer); trained from pixels
    TrainSpec("tiny-generator", "tiny-generator.pt", _train_generator, "framebus.models.training.generator"),
]


def trainer(name: str) -> TrainSpec:
    for spec in TRAINERS:
        if spec.name == name:
            return spec
    raise KeyError(f"no tiny model named {name!r}")


def recipe_id(spec: TrainSpec, settings: ModelSettings) -> str:
    """12 hex of the sha256 of everything that determines ``spec``'s weights: its name, revision and
    ``RECIPE``, the training seed, the world's render version and the recipe ids of its dependencies."""
    from framebus.models.world import RENDER_VERSION

    payload = {
        "model": spec.name,
        "revision": spec.revision,
        "recipe": spec.recipe(),
        "seed": int(getattr(settings, "train_seed", 0)),
        "world": RENDER_VERSION,
        "depends": {dep: recipe_id(trainer(dep), settings) for dep in spec.depends},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def tiny_path(settings: ModelSettings, name: str) -> Path:
    """The file of tiny model ``name`` (``tiny-clip``, ``tiny-captioner``, ``tiny-moderator``, ``tiny-generator``) for
    ``settings``; it may not exist yet (``ensure_tiny_models`` trains it)."""
    return trainer(name).path(settings)


@contextlib.contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Inside: ``threads`` torch intra-op threads (the result depends on it) and
    ``torch.use_deterministic_algorithms``; both restored on the way out. What every trainer runs in."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def stats_path(model_path: Path) -> Path:
    """Where the training stats of ``model_path`` are kept (``<file>.json``)."""
    return model_path.with_name(model_path.name + ".json")


@contextlib.contextmanager
def train_lock(directory: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``<directory>/.train.lock`` (blocks until free)."""
    directory.mkdir(parents=True, exist_ok=True)
    fh = open(directory / LOCK_NAME, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        fh.close()  # releases the flock


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _read_stats(path: Path) -> dict[str, Any]:
    try:
        stats = json.loads(stats_path(path).read_text())
    except (OSError, ValueError):
        return {}
    return stats if isinstance(stats, dict) else {}


def model_version(path: Path) -> str:
    """A trained file's version: its sidecar's ``version``, else the first 12 hex of its sha256."""
    version = _read_stats(path).get("version")
    if isinstance(version, str) and version:
        return version
    from framebus.models.common import file_digest

    return file_digest(path)[:12]


def why_stale(spec: TrainSpec, settings: ModelSettings) -> str | None:
    """Why ``spec``'s file must be (re)trained, or None when it is current."""
    path = spec.path(settings)
    if not path.is_file():
        return "missing"
    stats = _read_stats(path)
    current = recipe_id(spec, settings)
    if stats.get("recipe_id") != current:
        return f"recipe {stats.get('recipe_id')} != {current}"
    trained_on = stats.get("inputs") or {}
    for dep in spec.depends:  # the same recipe can give other bytes (another torch build): follow them
        dep_path = trainer(dep).path(settings)
        if dep_path.is_file() and trained_on.get(dep) != model_version(dep_path):
            return f"trained on {dep} {trained_on.get(dep)}, now {model_version(dep_path)}"
    return None


def _lock_dir(settings: ModelSettings) -> Path:
    explicit = getattr(settings, "model_dir", None)
    return Path(explicit) if explicit is not None else Path(settings.cache_dir) / "tiny"


def ensure_tiny_models(
    settings: ModelSettings,
    *,
    force: bool = False,
    only: tuple[str, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train every model of ``TRAINERS`` whose file is missing or stale (all of them with ``force``).

    ``progress``, when given, gets a line before and after each model it trains.
    Returns ``{name: {"status": "trained" | "cached" | "shipped", "path": str, "stats": {...}}}`` (a trained
    entry also says ``why``); ``stats`` of a cached or shipped model come from its ``<file>.json`` sidecar.
    Holds a file lock while checking and training, so concurrent callers train each model once. Shipped
    weights are never overwritten (``force`` trains into the user cache or the explicit model dir instead).

    Trainers get ``settings`` with ``models="tiny"`` whatever the caller's profile: these are the tiny
    profile's models (a trainer that needs another one, e.g. the tiny CLIP's embeddings, finds it
    through ``load_embedder`` without reaching for pretrained weights).
    """
    if getattr(settings, "models", "tiny") != "tiny":
        settings = settings.model_copy(update={"models": "tiny"})
    out: dict[str, Any] = {}
    with train_lock(_lock_dir(settings)):
        for spec in TRAINERS:
            if only and spec.name not in only:
                continue
            path = spec.path(settings)
            shipped = path.is_relative_to(SHIPPED_DIR)
            why = "forced" if force else why_stale(spec, settings)
            if why is None:
                out[spec.name] = {
                    "status": "shipped" if shipped else "cached",
                    "path": str(path),
                    "stats": _read_stats(path),
                }
                continue
            if shipped:  # forced: train a copy into the cache, leave the shipped file alone
                path = spec.cache_path(settings)
            log.info("training %s into %s (%s)", spec.name, path, why)
            if progress is not None:
                progress(f"training {spec.name} ({why}) into {path.parent}...")
            t0 = time.monotonic()
            stats = dict(spec.train(path, settings) or {})
            stats.setdefault("seconds", round(time.monotonic() - t0, 2))
            if progress is not None:
                progress(f"{spec.name}: trained in {stats['seconds']:.0f}s, version {stats.get('version')}")
            stats.update(
                revision=spec.revision,
                recipe_id=recipe_id(spec, settings),
                seed=int(getattr(settings, "train_seed", 0)),
                inputs={dep: model_version(trainer(dep).path(settings)) for dep in spec.depends},
            )
            _write_json_atomic(stats_path(path), stats)
            out[spec.name] = {"status": "trained", "path": str(path), "stats": stats, "why": why}
    return out


def missing_models(settings: ModelSettings) -> list[str]:
    """Names of the ``TRAINERS`` models that ``ensure_tiny_models`` would train (missing or stale)."""
    todo: list[str] = []
    for spec in TRAINERS:
        if any(dep in todo for dep in spec.depends) or why_stale(spec, settings) is not None:
            todo.append(spec.name)
    return todo


__all__ = [
    "SHIPPED_DIR",
    "TRAINERS",
    "TrainSpec",
    "deterministic_torch",
    "ensure_tiny_models",
    "missing_models",
    "model_version",
    "recipe_id",
    "stats_path",
    "tiny_path",
    "train_lock",
    "trainer",
    "why_stale",
]
