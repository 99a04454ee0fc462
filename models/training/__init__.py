"""Training of the offline ``tiny`` models on the synthetic world (``loadtest.world``).

The trained weights are a cache, not a source file: they live under the model directory
(``Settings.model_cache_dir``, ``<data_dir>/models`` by default), are never committed, and
``ensure_tiny_models(settings)`` rebuilds whichever is missing. Training is deterministic, so a
rebuilt file has the same bytes (and the same model version) on the same torch build.

Each model is one ``TrainSpec`` in ``TRAINERS``: a name, a file name under the model directory and
``train(out_path, settings) -> stats``. Add a model by appending to ``TRAINERS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from streams.config import Settings

LOCK_NAME = ".train.lock"


@dataclass(frozen=True)
class TrainSpec:
    name: str
    #: file name under the model directory (what the serving code loads)
    filename: str
    #: ``train(out_path, settings) -> stats``; must write ``out_path`` atomically
    train: Callable[[Path, "Settings"], dict[str, Any]]

    def path(self, settings: "Settings") -> Path:
        return Path(settings.model_cache_dir) / self.filename


def _train_clip(out_path: Path, settings: "Settings") -> dict[str, Any]:
    from models.training.clip import train_tiny_clip

    # Always on CPU: the same checkpoint (bytes, version) on every machine with this torch build.
    return train_tiny_clip(out_path, device="cpu")


def _tiny_clip_filename() -> str:
    from models.openclip import TINY_CHECKPOINT

    return TINY_CHECKPOINT


def _train_captioner(out_path: Path, settings: "Settings") -> dict[str, Any]:
    from models.training.captioner import train_for_settings

    return train_for_settings(out_path, settings)


def _train_moderator(out_path: Path, settings: "Settings") -> dict[str, Any]:
    from models.training.moderator import train_for_settings

    return train_for_settings(out_path, settings)


TRAINERS: list[TrainSpec] = [
    TrainSpec("tiny-clip", _tiny_clip_filename(), _train_clip),
    # a save_pretrained directory; its marker file is what ensure_tiny_models checks
    TrainSpec("tiny-captioner", "tiny-captioner/model.safetensors", _train_captioner),
    # after tiny-clip: the head is trained on the (trained) tiny CLIP's image embeddings
    TrainSpec("tiny-moderator", "tiny-moderator.pt", _train_moderator),
]


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


def ensure_tiny_models(settings: "Settings", *, force: bool = False,
                       only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Train every model of ``TRAINERS`` whose file is missing (all of them with ``force``).

    Returns ``{name: {"status": "trained" | "cached", "path": str, "stats": {...}}}``; ``stats`` of a
    cached model come from its ``<file>.json`` sidecar when there is one. Holds a file lock in the
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
            if path.is_file() and not force:
                stats: dict[str, Any] = {}
                with contextlib.suppress(OSError, ValueError):
                    stats = json.loads(stats_path(path).read_text())
                out[spec.name] = {"status": "cached", "path": str(path), "stats": stats}
                continue
            t0 = time.monotonic()
            stats = dict(spec.train(path, settings) or {})
            stats.setdefault("seconds", round(time.monotonic() - t0, 2))
            _write_json_atomic(stats_path(path), stats)
            out[spec.name] = {"status": "trained", "path": str(path), "stats": stats}
    return out


def missing_models(settings: "Settings") -> list[str]:
    """Names of the ``TRAINERS`` models whose file does not exist yet."""
    return [spec.name for spec in TRAINERS if not spec.path(settings).is_file()]


__all__ = ["TRAINERS", "TrainSpec", "ensure_tiny_models", "missing_models", "stats_path", "train_lock"]
