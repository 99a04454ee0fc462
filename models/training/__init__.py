"""Training of the offline ``tiny`` models on the synthetic world (``framebus.models.world``).

The trained weights are a cache, not a source file: they live under the model directory
(``ModelSettings.model_cache_dir``, ``<data_dir>/models`` by default), are never committed, and
``ensure_tiny_models(settings)`` rebuilds whichever is missing or stale. Training is deterministic,
so a rebuilt file has the same bytes (and the same model version) on the same torch build.

Each model is one ``TrainSpec`` in ``TRAINERS``: a name, a file name under the model directory,
``train(out_path, settings) -> stats``, the models it is trained on top of (``depends``) and a
``revision`` of its recipe. A cached file is stale, and retrained, when its ``<file>.json`` sidecar
names another revision or another version of a model it depends on (a moderation head trained on
the embeddings of an older tiny CLIP, say). Add a model by appending to ``TRAINERS`` after the
models it depends on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from framebus.models.base import ModelSettings

log = logging.getLogger(__name__)

LOCK_NAME = ".train.lock"

#: where a checkout keeps its trained tiny models (``framebus-data/models``, the default data dir's model
#: dir when run from the checkout): ``make demo``, ``make test`` and the benchmarks share this one cache
CHECKOUT_MODEL_DIR = Path(__file__).resolve().parents[2] / "framebus-data" / "models"


@dataclass(frozen=True)
class TrainSpec:
    name: str
    #: file name under the model directory (what the serving code loads)
    filename: str
    #: ``train(out_path, settings) -> stats``; must write ``out_path`` atomically
    train: Callable[[Path, "ModelSettings"], dict[str, Any]]
    #: names of earlier ``TRAINERS`` this model is trained on top of
    depends: tuple[str, ...] = ()
    #: bump when the recipe changes: caches of another revision are retrained
    revision: int = 1

    def path(self, settings: "ModelSettings") -> Path:
        return Path(settings.model_cache_dir) / self.filename


def _train_clip(out_path: Path, settings: "ModelSettings") -> dict[str, Any]:
    from framebus.models.training.clip import train_tiny_clip

    # Always on CPU: the same checkpoint (bytes, version) on every machine with this torch build.
    return train_tiny_clip(out_path, device="cpu")


def _tiny_clip_filename() -> str:
    from framebus.models.openclip import TINY_CHECKPOINT

    return TINY_CHECKPOINT


def _train_captioner(out_path: Path, settings: "ModelSettings") -> dict[str, Any]:
    from framebus.models.training.captioner import train_for_settings

    return train_for_settings(out_path, settings)


def _train_moderator(out_path: Path, settings: "ModelSettings") -> dict[str, Any]:
    from framebus.models.training.moderator import train_for_settings

    return train_for_settings(out_path, settings)


TRAINERS: list[TrainSpec] = [
    # revision 2: 4 frames per shot over the whole shot, 1200 steps
    TrainSpec("tiny-clip", _tiny_clip_filename(), _train_clip, revision=2),
    # a save_pretrained directory; its marker file is what ensure_tiny_models checks
    TrainSpec("tiny-captioner", "tiny-captioner/model.safetensors", _train_captioner),
    # after tiny-clip: the head is trained on the (trained) tiny CLIP's image embeddings
    TrainSpec("tiny-moderator", "tiny-moderator.pt", _train_moderator, depends=("tiny-clip",), revision=2),
]


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


def _inputs(spec: TrainSpec, settings: "ModelSettings") -> dict[str, str]:
    by_name = {s.name: s for s in TRAINERS}
    return {dep: model_version(by_name[dep].path(settings)) for dep in spec.depends
            if dep in by_name and by_name[dep].path(settings).is_file()}


def why_stale(spec: TrainSpec, settings: "ModelSettings") -> str | None:
    """Why ``spec``'s cached file must be (re)trained, or None when it is current."""
    path = spec.path(settings)
    if not path.is_file():
        return "missing"
    stats = _read_stats(path)
    if int(stats.get("revision", 1)) != spec.revision:
        return f"recipe revision {stats.get('revision', 1)} != {spec.revision}"
    trained_on = dict(stats.get("inputs") or {})
    if not trained_on and "embedder" in stats:  # sidecars written before ``inputs`` existed
        trained_on = {"tiny-clip": (stats["embedder"] or {}).get("version")}
    for dep, version in _inputs(spec, settings).items():
        if trained_on.get(dep) != version:
            return f"trained on {dep} {trained_on.get(dep)}, now {version}"
    return None


def ensure_tiny_models(settings: "ModelSettings", *, force: bool = False,
                       only: tuple[str, ...] | None = None,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every model of ``TRAINERS`` whose file is missing or stale (all of them with ``force``).

    ``progress``, when given, gets a line before and after each model it trains.
    Returns ``{name: {"status": "trained" | "cached", "path": str, "stats": {...}}}`` (a trained
    entry also says ``why``); ``stats`` of a cached model come from its ``<file>.json`` sidecar. Holds a file lock in the
    model directory while checking and training, so concurrent callers train each model once.

    Trainers get ``settings`` with ``models="tiny"`` whatever the caller's profile: these are the tiny
    profile's models (a trainer that needs another one, e.g. the tiny CLIP's embeddings, finds it
    through ``load_embedder`` without reaching for pretrained weights).
    """
    directory = Path(settings.model_cache_dir)
    if getattr(settings, "models", "tiny") != "tiny":
        settings = settings.model_copy(update={"models": "tiny"})
    out: dict[str, Any] = {}
    with train_lock(directory):
        for spec in TRAINERS:
            if only and spec.name not in only:
                continue
            path = spec.path(settings)
            why = "forced" if force else why_stale(spec, settings)
            if why is None:
                out[spec.name] = {"status": "cached", "path": str(path), "stats": _read_stats(path)}
                continue
            log.info("training %s into %s (%s)", spec.name, path, why)
            if progress is not None:
                progress(f"training {spec.name} ({why})...")
            t0 = time.monotonic()
            stats = dict(spec.train(path, settings) or {})
            stats.setdefault("seconds", round(time.monotonic() - t0, 2))
            if progress is not None:
                progress(f"{spec.name}: trained in {stats['seconds']:.0f}s, version {stats.get('version')}")
            stats.update(revision=spec.revision, inputs=_inputs(spec, settings))
            _write_json_atomic(stats_path(path), stats)
            out[spec.name] = {"status": "trained", "path": str(path), "stats": stats, "why": why}
    return out


def missing_models(settings: "ModelSettings") -> list[str]:
    """Names of the ``TRAINERS`` models that ``ensure_tiny_models`` would train (missing or stale)."""
    todo: list[str] = []
    for spec in TRAINERS:
        if any(dep in todo for dep in spec.depends) or why_stale(spec, settings) is not None:
            todo.append(spec.name)
    return todo


__all__ = ["CHECKOUT_MODEL_DIR", "TRAINERS", "TrainSpec", "ensure_tiny_models", "missing_models", "model_version", "stats_path",
           "train_lock", "why_stale"]
