"""Qdrant backend: embedded (on disk, ``path=``) or server (``url=``).

qdrant-client >= 1.15 dropped ``search()``; queries go through ``query_points_groups`` (supported by
the local mode too). The local mode is not thread-safe, so every client call holds one lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
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
from framebus.topics.errors import FramebusError, VectorStoreError

_UPSERT_CHUNK = 256


class QdrantStore:
    """``VectorStore`` on Qdrant. ``path``: embedded on disk; ``url``: server; neither: in memory."""

    def __init__(
        self,
        path: Path | str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | None = None,
    ):
        if path is not None and url is not None:
            raise ValueError("QdrantStore takes path= or url=, not both")
        from qdrant_client import QdrantClient

        self._lock = threading.RLock()
        self._dims: dict[str, int] = {}
        self.local = url is None
        self.location = str(url) if url is not None else (str(path) if path is not None else ":memory:")
        try:
            if url is not None:
                kwargs: dict[str, Any] = {"url": url, "api_key": api_key}
                if timeout is not None:
                    kwargs["timeout"] = int(timeout)
                self._client = QdrantClient(**kwargs)
            elif path is not None:
                Path(path).mkdir(parents=True, exist_ok=True)
                self._client = QdrantClient(path=str(path))
            else:
                self._client = QdrantClient(location=":memory:")
        except RuntimeError as e:  # local storage held by another client (another process)
            raise VectorStoreError(
                f"cannot open Qdrant storage at {self.location}: {e}", code="index.locked", transient=False
            ) from e
        except Exception as e:
            raise VectorStoreError(f"cannot open Qdrant at {self.location}: {e}") from e

    # --- plumbing ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[Any]:
        with self._lock:
            try:
                yield self._client
            except FramebusError:
                raise
            except Exception as e:
                raise VectorStoreError(f"qdrant {what} failed ({self.location}): {type(e).__name__}: {e}") from e

    def _known_dim(self, name: str) -> int | None:
        """Vector size of an existing collection, ``None`` when it does not exist."""
        if name in self._dims:
            return self._dims[name]
        with self._call("collection lookup") as c:
            if not c.collection_exists(name):
                return None
            info = c.get_collection(name)
        vectors = info.config.params.vectors
        size = vectors.size if hasattr(vectors, "size") else next(iter(vectors.values())).size
        self._dims[name] = int(size)
        return self._dims[name]

    @staticmethod
    def _filter(tenant: str | None = None, video_id: str | None = None, where: SegmentFilter | None = None):
        from qdrant_client import models

        must = []
        if where is not None and where.flagged is not None:
            must.append(models.FieldCondition(key="extra.flagged", match=models.MatchValue(value=where.flagged)))
        if where is not None and where.origin is not None:
            must.append(models.FieldCondition(key="extra.origin", match=models.MatchValue(value=where.origin)))
        if where is not None and where.start_s is not None:
            must.append(models.FieldCondition(key="end_s", range=models.Range(gte=where.start_s)))
        if where is not None and where.end_s is not None:
            must.append(models.FieldCondition(key="start_s", range=models.Range(lte=where.end_s)))
        if tenant is not None:
            must.append(models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)))
        if video_id is not None:
            must.append(models.FieldCondition(key="video_id", match=models.MatchValue(value=video_id)))
        return models.Filter(must=must) if must else None

    # --- VectorStore -------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int) -> None:
        from qdrant_client import models

        dim = int(dim)
        with self._lock:
            have = self._known_dim(name)
            if have is not None:
                if have != dim:
                    raise dim_mismatch(name, have, dim)
                return
            with self._call("create_collection") as c:
                try:
                    c.create_collection(
                        name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
                    )
                except Exception:
                    if not c.collection_exists(name):  # not a lost creation race: a real failure
                        raise
                if not self.local:  # payload indexes only matter (and only exist) on a server
                    c.create_payload_index(
                        name,
                        "tenant",
                        field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
                    )
                    c.create_payload_index(name, "video_id", field_schema=models.PayloadSchemaType.KEYWORD)
            self._dims.pop(name, None)
            have = self._known_dim(name)
            if have != dim:
                raise dim_mismatch(name, have or 0, dim)

    def upsert(self, collection: str, points: list[SegmentPoint]) -> None:
        from qdrant_client import models

        if not points:
            return
        mat = points_matrix(points)
        self.ensure_collection(collection, mat.shape[1])
        with self._call("upsert") as c:
            for lo in range(0, len(points), _UPSERT_CHUNK):
                chunk = points[lo : lo + _UPSERT_CHUNK]
                c.upsert(
                    collection,
                    wait=True,
                    points=models.Batch(
                        ids=[p.id for p in chunk],
                        vectors=mat[lo : lo + _UPSERT_CHUNK].tolist(),
                        payloads=[p.payload() for p in chunk],
                    ),
                )

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
            have = self._known_dim(collection)
            if have is None:
                return []
            if have != query.size:
                raise dim_mismatch(collection, have, query.size)
            with self._call("query_points_groups") as c:
                res = c.query_points_groups(
                    collection,
                    group_by="video_id",
                    query=query.tolist(),
                    query_filter=self._filter(tenant=tenant, where=where),
                    limit=int(limit),
                    group_size=int(segments_per_video),
                    with_payload=True,
                )
        out: list[VideoHit] = []
        for group in res.groups:
            hits = [
                hit_from_payload(h.payload or {}, h.score)
                for h in group.hits
                if (h.payload or {}).get("tenant") == tenant  # belt and braces; the filter did it
                and (where is None or where.matches(h.payload or {}))
            ]
            if not hits:
                continue
            hits.sort(key=lambda h: h.score, reverse=True)
            out.append(VideoHit(video_id=str(group.id), tenant=tenant, score=hits[0].score, segments=hits))
        out.sort(key=lambda v: v.score, reverse=True)
        return out

    def count(self, collection: str, *, tenant: str | None = None, video_id: str | None = None) -> int:
        with self._lock:
            if self._known_dim(collection) is None:
                return 0
            with self._call("count") as c:
                return int(c.count(collection, count_filter=self._filter(tenant, video_id), exact=True).count)

    def delete_video(self, collection: str, video_id: str, tenant: str) -> None:
        from qdrant_client import models

        tenant = require_tenant(tenant)
        with self._lock:
            if self._known_dim(collection) is None:
                return
            with self._call("delete") as c:
                c.delete(
                    collection, wait=True, points_selector=models.FilterSelector(filter=self._filter(tenant, video_id))
                )

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(Exception):
                self._client.close()
            self._dims.clear()

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
