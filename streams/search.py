"""Semantic search over indexed segments: the one function the CLI and the HTTP API both call."""

from __future__ import annotations

from dataclasses import asdict

from pydantic import BaseModel, Field

from indexing.ids import collection_name
from streams.config import Settings


class SegmentResult(BaseModel):
    index: int
    start_s: float
    end_s: float
    score: float
    thumbnail: str | None = None


class VideoResult(BaseModel):
    video_id: str
    score: float
    segments: list[SegmentResult]


class SearchResponse(BaseModel):
    query: str
    tenant: str
    model: str
    results: list[VideoResult] = Field(default_factory=list)


def search(settings: Settings, embedder, store, query: str, *, tenant: str, limit: int = 10,
           segments_per_video: int = 3) -> SearchResponse:
    """Embed ``query`` as text and return the best videos of ``tenant`` with their best segments.

    The tenant filter is applied inside the store query; a caller cannot widen it.
    """
    vector = embedder.embed_texts([query])[0]
    collection = collection_name(settings.collection_prefix, embedder.info)
    hits = store.search(collection, vector, tenant=tenant, limit=limit, segments_per_video=segments_per_video)
    results = [VideoResult(video_id=h.video_id, score=h.score,
                           segments=[SegmentResult(index=s.segment_index, **{k: v for k, v in asdict(s).items()
                                                                            if k != "segment_index"})
                                     for s in h.segments])
               for h in hits]
    return SearchResponse(query=query, tenant=tenant, model=f"{embedder.info.name}/{embedder.info.version}",
                          results=results)
