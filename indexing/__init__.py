"""Vector stores: Qdrant (embedded on disk or server) and an in-memory FAISS alternative."""

from __future__ import annotations

from typing import TYPE_CHECKING

from indexing.base import SegmentHit, SegmentPoint, VectorStore, VideoHit
from indexing.ids import collection_name, point_id

if TYPE_CHECKING:
    from streams.config import Settings

__all__ = ["SegmentHit", "SegmentPoint", "VectorStore", "VideoHit", "collection_name", "open_store", "point_id"]


def open_store(settings: "Settings") -> VectorStore:
    """The store ``settings.vector_backend`` names: ``qdrant`` (server at ``qdrant_url`` if set, else
    embedded at ``<data_dir>/qdrant``) or ``faiss`` (in memory)."""
    from streams.errors import VectorStoreError

    backend = (settings.vector_backend or "").strip().lower()
    if backend == "qdrant":
        from indexing.qdrant import QdrantStore

        if settings.qdrant_url:
            return QdrantStore(url=settings.qdrant_url)
        return QdrantStore(path=settings.qdrant_path)
    if backend == "faiss":
        from indexing.faiss_store import FaissStore

        return FaissStore()
    raise VectorStoreError(f"unknown vector backend {settings.vector_backend!r}; use 'qdrant' or 'faiss'",
                           code="index.unknown_backend", transient=False)
