"""In-memory FAISS backend with the same semantics as ``QdrantStore``.

Layout: one exact inner-product index (``IndexIDMap2`` over ``IndexFlatIP``, vectors L2-normalised so
scores are cosine similarities, as in Qdrant) per (collection, tenant). Tenant isolation is therefore
structural: a search only ever touches its tenant's index. Ids are int64s derived from the same uuid5
``point_id`` Qdrant uses, so re-upserting a point overwrites it.

When FAISS sees GPUs (``faiss.get_num_gpus() > 0``, i.e. a faiss-gpu build) searches run on a GPU
replica made with ``faiss.index_cpu_to_all_gpus``; the CPU index stays the source of truth (removals
are CPU-only in FAISS) and the replica is rebuilt lazily after writes. Nothing is persisted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from framebus.indexing.base import (
    SegmentFilter,
    SegmentPoint,
    VideoHit,
    as_query_vector,
    dim_mismatch,
    hit_from_payload,
    points_matrix,
    require_tenant,
)
from framebus.indexing.ids import point_id_int64
from framebus.topics.errors import FramebusError, VectorStoreError


def _normalise(mat: np.ndarray) -> np.ndarray:
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(mat / norms, dtype=np.float32)


@dataclass
class _Shard:
    """One tenant's points in one collection."""

    index: Any
    payloads: dict[int, dict[str, Any]] = field(default_factory=dict)
    gpu: Any = None  # lazily built replica, None = stale or no GPU


@dataclass
class _Collection:
    dim: int
    shards: dict[str, _Shard] = field(default_factory=dict)


class FaissStore:
    """``VectorStore`` in process memory (tests, single-process demos, GPU brute force)."""

    def __init__(self, *, use_gpu: bool | None = None):
        import faiss

        self._faiss = faiss
        self._lock = threading.RLock()
        self._collections: dict[str, _Collection] = {}
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        self.use_gpu = bool(ngpu > 0 if use_gpu is None else (use_gpu and ngpu > 0))

    # --- plumbing ----------------------------------------------------------------------------------
    def _new_shard(self, dim: int) -> _Shard:
        return _Shard(index=self._faiss.IndexIDMap2(self._faiss.IndexFlatIP(dim)))

    def _searchable(self, shard: _Shard) -> Any:
        if not self.use_gpu:
            return shard.index
        if shard.gpu is None:
            try:
                shard.gpu = self._faiss.index_cpu_to_all_gpus(shard.index)
            except Exception:  # GPU out of memory or unsupported: CPU search is still exact
                return shard.index
        return shard.gpu

    # --- VectorStore -------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int) -> None:
        dim = int(dim)
        if dim <= 0:
            raise VectorStoreError(f"bad dimension {dim}", code="index.bad_vector", transient=False)
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                self._collections[name] = _Collection(dim=dim)
            elif coll.dim != dim:
                raise dim_mismatch(name, coll.dim, dim)

    def upsert(self, collection: str, points: list[SegmentPoint]) -> None:
        if not points:
            return
        mat = _normalise(points_matrix(points))
        # The last occurrence of a repeated id wins, as in Qdrant's batch upsert.
        latest: dict[int, int] = {}
        for row, p in enumerate(points):
            latest[point_id_int64(p.id)] = row
        with self._lock:
            self.ensure_collection(collection, mat.shape[1])
            coll = self._collections[collection]
            by_tenant: dict[str, list[tuple[int, int]]] = {}
            for iid, row in latest.items():
                by_tenant.setdefault(points[row].tenant, []).append((iid, row))
            try:
                for tenant, items in by_tenant.items():
                    shard = coll.shards.get(tenant)
                    if shard is None:
                        shard = coll.shards[tenant] = self._new_shard(coll.dim)
                    ids = np.array([iid for iid, _ in items], dtype=np.int64)
                    existing = np.array([i for i in ids if int(i) in shard.payloads], dtype=np.int64)
                    if existing.size:
                        shard.index.remove_ids(existing)
                    shard.index.add_with_ids(mat[[row for _, row in items]], ids)
                    for iid, row in items:
                        shard.payloads[iid] = points[row].payload()
                    shard.gpu = None
            except FramebusError:
                raise
            except Exception as e:
                raise VectorStoreError(f"faiss upsert into {collection!r} failed: {e}") from e

    def search(
        self,
        collection: str,
        vector: np.ndarray,
        *,
        tenant: str,
        limit: int = 10,
        segments_per_video: int = 3,
        where: SegmentFilter | None = None,
    ) -> list[VideoHit]:
        tenant = require_tenant(tenant)
        query = as_query_vector(vector)
        if limit <= 0 or segments_per_video <= 0:
            return []
        with self._lock:
            coll = self._collections.get(collection)
            if coll is None:
                return []
            if coll.dim != query.size:
                raise dim_mismatch(collection, coll.dim, query.size)
            shard = coll.shards.get(tenant)
            if shard is None or shard.index.ntotal == 0:
                return []
            q = _normalise(query.reshape(1, -1))
            total = int(shard.index.ntotal)
            k = min(total, max(64, limit * segments_per_video * 4))
            try:
                while True:
                    scores, ids = self._searchable(shard).search(q, k)
                    groups: dict[str, list] = {}
                    for score, iid in zip(scores[0], ids[0]):
                        if iid < 0:
                            continue
                        payload = shard.payloads[int(iid)]
                        if where is not None and not where.matches(payload):
                            continue
                        hits = groups.setdefault(payload["video_id"], [])
                        if len(hits) < segments_per_video:
                            hits.append(hit_from_payload(payload, float(score)))
                    if len(groups) >= limit or k >= total:
                        break
                    k = min(total, k * 4)
            except FramebusError:
                raise
            except Exception as e:
                raise VectorStoreError(f"faiss search in {collection!r} failed: {e}") from e
        out = [
            VideoHit(video_id=vid, tenant=tenant, score=hits[0].score, segments=hits) for vid, hits in groups.items()
        ]  # faiss returns best first, so hits are sorted
        out.sort(key=lambda v: v.score, reverse=True)
        return out[:limit]

    def count(self, collection: str, *, tenant: str | None = None, video_id: str | None = None) -> int:
        with self._lock:
            coll = self._collections.get(collection)
            if coll is None:
                return 0
            shards = [coll.shards.get(tenant)] if tenant is not None else list(coll.shards.values())
            n = 0
            for shard in shards:
                if shard is None:
                    continue
                if video_id is None:
                    n += int(shard.index.ntotal)
                else:
                    n += sum(1 for p in shard.payloads.values() if p["video_id"] == video_id)
            return n

    def delete_video(self, collection: str, video_id: str, tenant: str) -> None:
        tenant = require_tenant(tenant)
        with self._lock:
            coll = self._collections.get(collection)
            shard = coll.shards.get(tenant) if coll else None
            if shard is None:
                return
            ids = np.array([i for i, p in shard.payloads.items() if p["video_id"] == video_id], dtype=np.int64)
            if ids.size == 0:
                return
            try:
                shard.index.remove_ids(ids)
            except Exception as e:
                raise VectorStoreError(f"faiss delete in {collection!r} failed: {e}") from e
            for i in ids:
                shard.payloads.pop(int(i), None)
            shard.gpu = None

    def close(self) -> None:
        with self._lock:
            self._collections.clear()

    def __enter__(self) -> FaissStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
