"""Frame moderation on top of an open_clip ``Embedder``: per-category scores in ``[0, 1]``.

* ``ClipZeroShotModerator`` (default profile): no training. Each policy category has a few text
  prompts; a frame's score for a category is a two-way softmax with temperature between the
  category's prompts and a set of neutral ("safe") prompts, on cosine similarities of the image
  embedding with the prompt embeddings. The policy is a plain dict
  (``framebus.models.profiles.DEFAULT_MODERATION_POLICY``).
* ``ClipHeadModerator`` (tiny profile): a logistic-regression head (one sigmoid per category) on the
  image embedding, optionally summed in log-odds with a zero-shot part (policy prompts, stored in the
  file), trained by ``framebus.models.training.moderator.train_tiny_moderator`` and read from its file
  together with its per-category decision thresholds (calibrated on the summed score).

Both expose ``thresholds``: a frame is flagged for a category when its score is at or above it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from framebus.models.base import Embedder, ModelInfo
from framebus.topics.errors import ModelError, ModelNotAvailable

HEAD_FORMAT = "framebus-clip-head/1"
TINY_HEAD_FILE = "tiny-moderator.pt"  # under <data_dir>/models
TRAIN_HINT = "run `framebus models train` (models.training.ensure_tiny_models) to train the tiny models"


@dataclass(frozen=True)
class ZeroShotCalibration:
    """How similarities become scores: ``score = sigmoid((lme(cat) - lme(safe)) / temperature + bias)``
    where ``lme`` is the log-mean-exp over a prompt group's cosine similarities (scaled by
    ``1/temperature``). ``0.01`` is CLIP's own logit scale (100). ``thresholds`` per category,
    ``threshold`` for the rest."""

    temperature: float = 0.01
    bias: Mapping[str, float] = field(default_factory=dict)
    threshold: float = 0.5
    thresholds: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, value: ZeroShotCalibration | Mapping[str, Any] | None) -> ZeroShotCalibration:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**dict(value))

    def as_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "bias": dict(self.bias),
            "threshold": self.threshold,
            "thresholds": dict(self.thresholds),
        }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float64)  # stable for large |x|


def _log_mean_exp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.mean(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def _normalise_policy(categories: Mapping[str, Sequence[str] | str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, prompts in categories.items():
        plist = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
        plist = [p for p in plist if p.strip()]
        if not plist:
            raise ModelError(f"moderation category {name!r} has no prompts", code="models.bad_config")
        out[str(name)] = plist
    if not out:
        raise ModelError("moderation policy has no categories", code="models.bad_config")
    return out


class _OnEmbeddings:
    """A moderator that scores the embedder's image embeddings (``score_embeddings``)."""

    embedder: Embedder

    @property
    def image_size(self) -> int:
        """The side the embedder resizes images to."""
        return self.embedder.image_size

    def score_embeddings(self, vectors: np.ndarray) -> list[dict[str, float]]:
        raise NotImplementedError

    def score(self, images: list[np.ndarray]) -> list[dict[str, float]]:
        if not len(images):
            return []
        return self.score_embeddings(self.embedder.embed_images(images))

    def prepare_images(self, images: list[np.ndarray]):
        return self.embedder.prepare_images(images)

    def score_prepared(self, batch) -> list[dict[str, float]]:
        return self.score_embeddings(self.embedder.embed_prepared(batch)) if len(batch) else []


class ClipZeroShotModerator(_OnEmbeddings):
    """``Moderator``: zero-shot policy prompts vs neutral prompts on a CLIP embedder."""

    def __init__(
        self,
        embedder: Embedder,
        categories: Mapping[str, Sequence[str] | str] | None = None,
        calibration: ZeroShotCalibration | Mapping[str, Any] | None = None,
        *,
        safe_prompts: Sequence[str] | None = None,
    ):
        from framebus.models.profiles import DEFAULT_MODERATION_POLICY, DEFAULT_SAFE_PROMPTS

        self.embedder = embedder
        self.policy = _normalise_policy(categories if categories is not None else DEFAULT_MODERATION_POLICY)
        self.safe_prompts = [str(p) for p in (safe_prompts if safe_prompts is not None else DEFAULT_SAFE_PROMPTS)]
        if not self.safe_prompts:
            raise ModelError("zero-shot moderation needs at least one safe prompt", code="models.bad_config")
        self.calibration = ZeroShotCalibration.of(calibration)
        if not self.calibration.temperature > 0:
            raise ModelError("calibration temperature must be > 0", code="models.bad_config")
        self.categories = list(self.policy)
        self.thresholds = {
            c: float(self.calibration.thresholds.get(c, self.calibration.threshold)) for c in self.categories
        }
        prompts = [p for c in self.categories for p in self.policy[c]] + self.safe_prompts
        self._text = np.asarray(embedder.embed_texts(prompts), dtype=np.float32)  # (P, dim), unit rows
        self._groups: list[np.ndarray] = []
        at = 0
        for c in self.categories:
            self._groups.append(np.arange(at, at + len(self.policy[c])))
            at += len(self.policy[c])
        self._safe = np.arange(at, at + len(self.safe_prompts))
        h = hashlib.sha256(
            json.dumps(
                {
                    "embedder": [embedder.info.name, embedder.info.version],
                    "policy": self.policy,
                    "safe": self.safe_prompts,
                    "calibration": self.calibration.as_dict(),
                },
                sort_keys=True,
            ).encode()
        )
        self.info = ModelInfo(name=f"clip-zero-shot/{embedder.info.name}", version=h.hexdigest()[:12], task="moderate")

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, categories)``: each category's log-odds against the safe prompts (before the sigmoid)."""
        vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, self._text.shape[1])
        sims = vectors @ self._text.T.astype(np.float64) / self.calibration.temperature  # (n, P)
        safe = _log_mean_exp(sims[:, self._safe], axis=1)
        cols = [
            _log_mean_exp(sims[:, idx], axis=1) - safe + float(self.calibration.bias.get(c, 0.0))
            for c, idx in zip(self.categories, self._groups)
        ]
        return np.stack(cols, axis=1) if cols else np.zeros((len(vectors), 0))

    def config(self) -> dict[str, Any]:
        """What rebuilds this moderator on the same embedder (stored in a head file)."""
        return {"policy": self.policy, "safe": list(self.safe_prompts), "calibration": self.calibration.as_dict()}

    def score_embeddings(self, vectors: np.ndarray) -> list[dict[str, float]]:
        scores = _sigmoid(self.logits(vectors))
        return [{c: float(s) for c, s in zip(self.categories, row)} for row in scores]

    def __repr__(self) -> str:
        return (
            f"ClipZeroShotModerator({self.categories}, version={self.info.version}, embedder={self.embedder.info.name})"
        )


class ClipHeadModerator(_OnEmbeddings):
    """``Moderator``: a trained logistic-regression head (one sigmoid per category) on CLIP image embeddings."""

    def __init__(
        self,
        embedder: Embedder,
        categories: Sequence[str],
        weight: np.ndarray,
        bias: np.ndarray,
        thresholds: Mapping[str, float],
        info: ModelInfo,
        *,
        zero_shot: ClipZeroShotModerator | None = None,
        logit_offset: Sequence[float] | None = None,
        logit_scale: Sequence[float] | None = None,
    ):
        self.embedder = embedder
        self.zero_shot = zero_shot
        k = len(categories)
        self.logit_offset = np.asarray(logit_offset if logit_offset is not None else [0.0] * k, dtype=np.float64)
        self.logit_scale = np.asarray(logit_scale if logit_scale is not None else [1.0] * k, dtype=np.float64)
        if self.logit_offset.shape != (k,) or self.logit_scale.shape != (k,) or not (self.logit_scale > 0).all():
            raise ModelError("moderation head calibration does not fit its categories", code="models.failed")
        missing = sorted(set(categories) - set(zero_shot.categories)) if zero_shot is not None else []
        if missing:
            raise ModelError(
                f"the zero-shot part of a moderation head lacks categories {missing}", code="models.bad_config"
            )
        self.categories = [str(c) for c in categories]
        self.weight = np.asarray(weight, dtype=np.float64)  # (k, dim)
        self.bias = np.asarray(bias, dtype=np.float64).reshape(-1)  # (k,)
        if self.weight.shape != (len(self.categories), embedder.dim) or self.bias.shape != (len(self.categories),):
            raise ModelError(
                f"moderation head shape {self.weight.shape} does not fit {len(self.categories)} "
                f"categories on a {embedder.dim}-d embedder",
                code="models.failed",
            )
        self.thresholds = {c: float(thresholds.get(c, 0.5)) for c in self.categories}
        self.info = info

    @classmethod
    def load(cls, path: Path | str, embedder: Embedder, *, check_embedder: bool = True) -> ClipHeadModerator:
        """Read a head saved by ``save_head``. A missing file, or a head trained on a different
        embedder version, raises ``ModelNotAvailable`` telling how to (re)train it."""
        import torch

        path = Path(path)
        if not path.is_file():
            raise ModelNotAvailable(
                f"the tiny moderation head {path} does not exist; {TRAIN_HINT} "
                f"(it lives under the data_dir setting, FRAMEBUS_DATA_DIR)"
            )
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != HEAD_FORMAT:
                raise ValueError(f"not a {HEAD_FORMAT} file")
            trained_on = blob.get("embedder", {})
            weight, bias = blob["weight"].float().numpy(), blob["bias"].float().numpy()
        except Exception as e:
            raise ModelError(f"cannot read the moderation head {path} ({TRAIN_HINT}): {type(e).__name__}: {e}") from e
        if check_embedder and (trained_on.get("name"), trained_on.get("version")) != (
            embedder.info.name,
            embedder.info.version,
        ):
            raise ModelNotAvailable(
                f"the moderation head {path} was trained on embedder {trained_on.get('name')} / "
                f"{trained_on.get('version')}, but the loaded embedder is {embedder.info.name} / "
                f"{embedder.info.version}; {TRAIN_HINT} again (force retrains)"
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        info = ModelInfo(name=f"clip-head/{embedder.info.name}", version=digest[:12], task="moderate")
        zs = blob.get("zero_shot")
        zero_shot = (
            ClipZeroShotModerator(embedder, zs["policy"], zs.get("calibration"), safe_prompts=zs["safe"])
            if zs
            else None
        )
        return cls(
            embedder,
            blob["categories"],
            weight,
            bias,
            blob.get("thresholds", {}),
            info,
            zero_shot=zero_shot,
            logit_offset=blob.get("logit_offset"),
            logit_scale=blob.get("logit_scale"),
        )

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, categories)`` log-odds: the head's, plus the zero-shot part's when the head has one (a sum
        of log-odds: the two must agree for a confident score, and either can carry a shot the other
        scores near the middle)."""
        vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, self.weight.shape[1])
        z = vectors @ self.weight.T + self.bias
        if self.zero_shot is not None:
            zl = self.zero_shot.logits(vectors)
            z = z + zl[:, [self.zero_shot.categories.index(c) for c in self.categories]]
        # recalibrated (when the file says so) so that scores are readable probabilities: the decision
        # point at 0.5 and the nearest calibration shots near 0.12 / 0.88, not everything at 0.9999...
        return (z - self.logit_offset) / self.logit_scale

    def score_embeddings(self, vectors: np.ndarray) -> list[dict[str, float]]:
        scores = _sigmoid(self.logits(vectors))
        return [{c: float(s) for c, s in zip(self.categories, row)} for row in scores]

    def __repr__(self) -> str:
        return f"ClipHeadModerator({self.categories}, version={self.info.version}, embedder={self.embedder.info.name})"


def save_head(
    path: Path | str,
    *,
    categories: Sequence[str],
    weight: Any,
    bias: Any,
    thresholds: Mapping[str, float],
    embedder: Embedder,
    metrics: Mapping[str, Any] | None = None,
    zero_shot: Mapping[str, Any] | None = None,
    logit_offset: Sequence[float] | None = None,
    logit_scale: Sequence[float] | None = None,
) -> Path:
    """Write a ``ClipHeadModerator`` file atomically (temp file + rename)."""
    import torch

    from framebus.models.common import save_torch_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": HEAD_FORMAT,
        "categories": [str(c) for c in categories],
        "weight": torch.as_tensor(np.asarray(weight, dtype=np.float32)).contiguous(),
        "bias": torch.as_tensor(np.asarray(bias, dtype=np.float32)).reshape(-1).contiguous(),
        "thresholds": {str(k): float(v) for k, v in thresholds.items()},
        "embedder": {"name": embedder.info.name, "version": embedder.info.version, "dim": int(embedder.dim)},
        "metrics": json.loads(json.dumps(dict(metrics or {}), default=float)),
    }
    if zero_shot:
        blob["zero_shot"] = json.loads(json.dumps(dict(zero_shot)))
    if logit_offset is not None:
        blob["logit_offset"] = [float(v) for v in logit_offset]
        blob["logit_scale"] = [
            float(v) for v in (logit_scale if logit_scale is not None else [1.0] * len(logit_offset))
        ]
    save_torch_atomic(blob, path)
    return path
