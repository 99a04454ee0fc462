"""Vector stores: Qdrant (embedded on disk or server) and an in-memory FAISS alternative."""

from __future__ import annotations

from pathlib import Path

from framebus.indexing.base import SegmentHit, SegmentPoint, VectorStore, VideoHit
from framebus.indexing.ids import collection_name, point_id
from framebus.topics.errors import VectorStoreError

__all__ = ["SegmentHit", "SegmentPoint", "VectorStore", "VideoHit", "collection_name", "open_store", "point_id"]


def open_store(backend: str, *, url: str | None = None, path: Path | None = None) -> VectorStore:
    """The store ``backend`` names: ``qdrant`` (the server at ``url`` if given, else embedded on disk at
    ``path``) or ``faiss`` (in memory). Raises ``VectorStoreError`` ``index.unknown_backend`` otherwise."""
    name = (backend or "").strip().lower()
    if name == "qdrant":
        from framebus.indexing.qdrant import QdrantStore

        return QdrantStore(url=url) if url else QdrantStore(path=path)
    if name == "faiss":
        from framebus.indexing.faiss_store import FaissStore

        return FaissStore()
    raise VectorStoreError(
        f"unknown vector backend {backend!r}; use 'qdrant' or 'faiss'", code="index.unknown_backend", transient=False
    )
