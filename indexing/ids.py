"""Deterministic point ids and collection names."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Protocol


class ModelIdentity(Protocol):
    """What names a collection: a model's name and version (``framebus.models.base.ModelInfo`` is one)."""

    name: str
    version: str


# Fixed forever: changing it changes every point id (re-index from scratch).
POINT_NAMESPACE = uuid.UUID("6f1c3e52-9a0d-5b7e-8c41-2d9f0a7b3e15")

_UNSAFE = re.compile(r"[^a-z0-9]+")


def point_id(video_id: str, segment_index: int, model_version: str, *, tenant: str | None = None) -> str:
    """uuid5 (string form) of one segment's vector.

    Same inputs give the same id on every machine, so re-indexing a video overwrites its points.
    The stores pass ``tenant`` so that two tenants that happen to share a ``video_id`` (content
    hashes) can never overwrite each other's points; without it the id is the tenant-less form.
    """
    key = f"{video_id}\x1f{int(segment_index)}\x1f{model_version}"
    if tenant is not None:
        key = f"{tenant}\x1f{key}"
    return str(uuid.uuid5(POINT_NAMESPACE, key))


def point_id_int64(pid: str) -> int:
    """A non-negative int64 derived from a ``point_id`` (for stores with integer ids, e.g. FAISS)."""
    return uuid.UUID(pid).int >> 65  # top 63 bits


def _sanitize(text: str) -> str:
    return _UNSAFE.sub("_", text.lower()).strip("_") or "x"


def _version_part(version: str) -> str:
    v = _sanitize(version)
    if v == version and len(v) <= 32:  # hashes and simple tags pass through unchanged
        return v
    # lossy sanitising or long tags: keep a readable head plus a hash of the exact version, so two
    # versions never share a collection (``ViT-B-32/laion2b_s34b_b79k`` vs ``ViT-B-32/laion2b_e16``)
    return f"{v[:23].rstrip('_')}_{hashlib.sha256(version.encode()).hexdigest()[:8]}"


def collection_name(prefix: str, model: ModelIdentity) -> str:
    """``<prefix>_<model name>_<version>``, lowercase, ``[a-z0-9_]`` only.

    The version part is the version itself when it is already short and safe (the tiny model's
    12-hex hash), else a readable prefix plus 8 hex of its sha256. A different model name or version
    always gives a different collection, so vectors from two models are never compared.
    """
    parts = [_sanitize(prefix) if prefix else "framebus", _sanitize(model.name), _version_part(model.version)]
    return "_".join(parts)
