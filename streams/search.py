"""Semantic search over indexed segments: the one function the CLI and the HTTP API both call."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlparse
from urllib.request import url2pathname

import numpy as np
from pydantic import BaseModel, Field

from framebus.indexing.base import SegmentFilter
from framebus.indexing.ids import collection_name
from framebus.streams.config import Settings


class SegmentResult(BaseModel):
    index: int
    start_s: float
    end_s: float
    score: float
    thumbnail: str | None = Field(None, description="file URI of the keyframe JPEG in the blob store")
    thumbnail_url: str | None = Field(None, description="the same JPEG through the HTTP API")
    caption: str | None = None
    flagged: bool | None = Field(None, description="the moderation verdict flagged this segment")


class VideoResult(BaseModel):
    video_id: str
    score: float
    origin: str | None = Field(None, description='"generated" for a video framebus generated')
    segments: list[SegmentResult]


class SearchResponse(BaseModel):
    query: str
    tenant: str
    model: str
    results: list[VideoResult] = Field(default_factory=list)


def thumbnail_url(settings: Settings, thumbnail: str | None) -> str | None:
    """``/thumbnails/<path under the thumbnail store>`` for a ``file://`` thumbnail reference."""
    if not thumbnail or not thumbnail.startswith("file://"):
        return None
    path = Path(url2pathname(urlparse(thumbnail).path))
    root = (settings.blob_dir / "thumbnails").resolve()
    return f"/thumbnails/{quote(path.relative_to(root).as_posix())}" if path.is_relative_to(root) else None


def search(
    settings: Settings,
    embedder,
    store,
    query: str | None = None,
    *,
    tenant: str,
    image: np.ndarray | None = None,
    limit: int = 10,
    segments_per_video: int = 3,
    where: SegmentFilter | None = None,
) -> SearchResponse:
    """The best videos of ``tenant`` for a text ``query`` or an ``image`` (RGB uint8), best segments each.

    The tenant filter (and ``where``: moderation verdict, time range) is applied inside the store query;
    a caller cannot widen it.
    """
    if (query is None) == (image is None):
        raise ValueError("give a text query or an image, not both")
    vector = embedder.embed_texts([query])[0] if image is None else embedder.embed_images([image])[0]
    collection = collection_name(settings.collection_prefix, embedder.info)
    hits = store.search(
        collection, vector, tenant=tenant, limit=limit, segments_per_video=segments_per_video, where=where
    )
    results = [
        VideoResult(
            video_id=h.video_id,
            score=h.score,
            origin=next((s.origin for s in h.segments if s.origin), None),
            segments=[
                SegmentResult(
                    index=s.segment_index,
                    start_s=s.start_s,
                    end_s=s.end_s,
                    score=s.score,
                    thumbnail=s.thumbnail,
                    thumbnail_url=thumbnail_url(settings, s.thumbnail),
                    caption=s.caption,
                    flagged=s.flagged,
                )
                for s in h.segments
            ],
        )
        for h in hits
    ]
    return SearchResponse(
        query=query if query is not None else "<image>",
        tenant=tenant,
        model=f"{embedder.info.name}/{embedder.info.version}",
        results=results,
    )
