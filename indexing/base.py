"""Vector store contract shared by the Qdrant and FAISS backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from framebus.topics.errors import VectorStoreError


@dataclass
class SegmentPoint:
    """One indexed segment: its vector plus everything search results show."""

    video_id: str
    tenant: str
    segment_index: int
    start_s: float
    end_s: float
    keyframe_s: float
    vector: np.ndarray
    model: str
    model_version: str
    thumbnail: str | None = None
    trace_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The store id: deterministic per (tenant, video, segment, model version)."""
        from framebus.indexing.ids import point_id

        return point_id(self.video_id, self.segment_index, self.model_version, tenant=self.tenant)

    def payload(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "tenant": self.tenant,
            "segment_index": int(self.segment_index),
            "start_s": float(self.start_s),
            "end_s": float(self.end_s),
            "keyframe_s": float(self.keyframe_s),
            "model": self.model,
            "model_version": self.model_version,
            "thumbnail": self.thumbnail,
            "trace_id": self.trace_id,
            "extra": dict(self.extra),
        }


@dataclass
class SegmentHit:
    segment_index: int
    start_s: float
    end_s: float
    score: float
    thumbnail: str | None = None
    caption: str | None = None
    flagged: bool | None = None
    origin: str | None = None


@dataclass(frozen=True)
class SegmentFilter:
    """Optional narrowing of a search, applied inside the store query with the tenant filter.

    ``flagged``: only segments whose moderation verdict flagged (True) or did not flag (False) them;
    ``start_s``/``end_s``: only segments overlapping that time range of their video;
    ``origin``: only segments of videos of that origin (``generated``: what framebus generated).
    """

    flagged: bool | None = None
    origin: str | None = None
    start_s: float | None = None
    end_s: float | None = None

    def matches(self, payload: dict[str, Any]) -> bool:
        if self.flagged is not None and bool((payload.get("extra") or {}).get("flagged")) != self.flagged:
            return False
        if self.origin is not None and (payload.get("extra") or {}).get("origin") != self.origin:
            return False
        if self.start_s is not None and float(payload["end_s"]) < self.start_s:
            return False
        return self.end_s is None or float(payload["start_s"]) <= self.end_s


@dataclass
class VideoHit:
    video_id: str
    tenant: str
    score: float  # best segment's score
    segments: list[SegmentHit]  # best first


@runtime_checkable
class VectorStore(Protocol):
    """Cosine-similarity store of segment vectors, one collection per model version.

    * ``upsert`` is idempotent (same point id overwrites) and creates the collection if needed.
    * ``search`` always filters by ``tenant`` inside the store query; results are grouped per video,
      best video first, at most ``segments_per_video`` segments each, best segment first. Searching a
      collection that does not exist returns ``[]``.
    * All methods are thread-safe. Failures raise ``VectorStoreError`` (``index.*`` codes).
    """

    def ensure_collection(self, name: str, dim: int) -> None: ...

    def upsert(self, collection: str, points: list[SegmentPoint]) -> None: ...

    def search(
        self,
        collection: str,
        vector: np.ndarray,
        *,
        tenant: str,
        limit: int = 10,
        segments_per_video: int = 3,
        where: SegmentFilter | None = None,
    ) -> list[VideoHit]: ...

    def count(self, collection: str, *, tenant: str | None = None, video_id: str | None = None) -> int: ...

    def delete_video(self, collection: str, video_id: str, tenant: str) -> None: ...

    def close(self) -> None: ...


# --- helpers shared by the backends -------------------------------------------------------------


def require_tenant(tenant: Any) -> str:
    if not isinstance(tenant, str) or not tenant:
        raise VectorStoreError("search needs a non-empty tenant", code="index.tenant_required", transient=False)
    return tenant


def as_query_vector(vector: Any) -> np.ndarray:
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise VectorStoreError(
            f"query vector must be 1-d, got shape {arr.shape}", code="index.bad_vector", transient=False
        )
    if not np.all(np.isfinite(arr)):
        raise VectorStoreError("query vector has NaN or inf", code="index.bad_vector", transient=False)
    return arr


def points_matrix(points: list[SegmentPoint]) -> np.ndarray:
    """Stack point vectors into an (n, dim) float32 matrix, validating shape and finiteness."""
    vecs = [np.asarray(p.vector, dtype=np.float32).reshape(-1) for p in points]
    dims = {v.size for v in vecs}
    if len(dims) != 1 or 0 in dims:
        raise VectorStoreError(
            f"points have inconsistent vector sizes {sorted(dims)}", code="index.bad_vector", transient=False
        )
    mat = np.stack(vecs)
    if not np.all(np.isfinite(mat)):
        raise VectorStoreError("a point vector has NaN or inf", code="index.bad_vector", transient=False)
    for p in points:
        if not isinstance(p.tenant, str) or not p.tenant:
            raise VectorStoreError(
                f"point of video {p.video_id!r} has no tenant", code="index.tenant_required", transient=False
            )
    return mat


def dim_mismatch(collection: str, expected: int, got: int) -> VectorStoreError:
    return VectorStoreError(
        f"collection {collection!r} holds {expected}-d vectors, got {got}-d", code="index.dim_mismatch", transient=False
    )


def hit_from_payload(payload: dict[str, Any], score: float) -> SegmentHit:
    extra = payload.get("extra") or {}
    return SegmentHit(
        segment_index=int(payload["segment_index"]),
        start_s=float(payload["start_s"]),
        end_s=float(payload["end_s"]),
        score=float(score),
        thumbnail=payload.get("thumbnail"),
        caption=extra.get("caption"),
        flagged=extra.get("flagged"),
        origin=extra.get("origin"),
    )
