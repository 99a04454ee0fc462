"""index: upsert segment vectors into the vector store, then report each segment done.

Reads SegmentEmbedding in micro-batches; one upsert per batch and collection. Point ids are
deterministic (video id, segment, model version), so a replayed batch overwrites its own points.
Transient store errors are retried with backoff; after that the items fail their videos.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import faust
import numpy as np

from indexing.base import SegmentPoint
from indexing.ids import collection_name
from models.base import ModelInfo
from streams.errors import FramebusError, VectorStoreError
from streams.runtime import Runtime
from topics import registry
from topics import events as ev

log = logging.getLogger("framebus.agents.index")
RETRIES = 3


def to_point(item: ev.SegmentEmbedding) -> SegmentPoint:
    seg = item.segment
    return SegmentPoint(video_id=item.video_id, tenant=item.tenant, segment_index=seg.index, start_s=seg.start_s,
                        end_s=seg.end_s, keyframe_s=seg.keyframe_s,
                        vector=np.asarray(item.vector, dtype=np.float32), model=item.model.name,
                        model_version=item.model.version, thumbnail=seg.thumbnail, trace_id=item.trace_id,
                        extra={"uri": item.uri})


def upsert_all(store, prefix: str, items: list[ev.SegmentEmbedding]) -> None:
    by_collection: dict[str, list[SegmentPoint]] = defaultdict(list)
    dims: dict[str, int] = {}
    for item in items:
        name = collection_name(prefix, ModelInfo(item.model.name, item.model.version, "embed"))
        by_collection[name].append(to_point(item))
        dims[name] = len(item.vector)
    for name, points in by_collection.items():
        store.ensure_collection(name, dims[name])
        store.upsert(name, points)


async def handle_batch(rt: Runtime, events: list[faust.EventT]) -> None:
    pairs = await rt.parse_batch("index", registry.EMBEDDINGS, events)
    if not pairs:
        return
    items = [item for item, _ in pairs]
    prefix = rt.settings.collection_prefix
    for attempt in range(RETRIES):
        try:
            await rt.in_io_thread(upsert_all, rt.store, prefix, items)
            break
        except Exception as exc:
            err = exc if isinstance(exc, FramebusError) else VectorStoreError(f"upsert failed: {exc!r}")
            if err.transient and attempt + 1 < RETRIES:
                log.warning("index: %s, retrying in %.1fs", err.message, 0.5 * 2**attempt)
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            await rt.fail_batch("index", registry.EMBEDDINGS, pairs, err)
            return
    for item in items:
        done = ev.SegmentDone(video_id=item.video_id, tenant=item.tenant, uri=item.uri, segment=item.segment,
                              segment_count=item.segment_count, video=item.video, models=[item.model],
                              trace_id=item.trace_id)
        await rt.send(registry.PROGRESS, item.video_id, done, item.trace_id)
    rt.count("index.points", len(items))


def register(rt: Runtime) -> None:
    s = rt.settings

    @rt.app.agent(rt.topic(registry.EMBEDDINGS), name="framebus.index", concurrency=1)
    async def index(stream):
        async for events in stream.take_events(s.index_batch_size, within=s.index_batch_wait_s):
            await handle_batch(rt, list(events))
