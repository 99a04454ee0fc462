"""index: join each segment's model results, upsert its point, report the segment done.

Reads SegmentAnalysis (embedding, caption, moderation verdict: whatever the segment's tasks are) and
keeps the parts per segment in a changelog-backed faust table until all have arrived. A complete
segment becomes one point (vector plus caption, moderation verdict, quality, times, model versions in
the payload). Point ids are deterministic (tenant, video, segment, model version), so replays
overwrite; a replayed result after its segment was written starts a new join that completes when the
rest is replayed too (at-least-once). Parts whose segment never completes (another model's batch failed
and failed the video, a lone replay) are dropped after ``join_ttl_s``, so the table does not grow with
failures. Transient store errors are retried with backoff; after that the segment fails its video. Then
SegmentDone goes to publish, carrying the full segment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import faust
import numpy as np
import orjson

from framebus.agents.base import Runtime
from framebus.agents.expiry import ExpiringKeys
from framebus.indexing.base import SegmentPoint
from framebus.indexing.ids import collection_name
from framebus.models.base import ModelInfo
from framebus.topics import events as ev
from framebus.topics import registry
from framebus.topics.errors import FramebusError, VectorStoreError

log = logging.getLogger("framebus.agents.index")
RETRIES = 3
TABLE = "index-join"


@dataclass
class JoinedSegment:
    """A segment with every model result it waited for."""

    analysis: ev.SegmentAnalysis  # carries the merged segment (caption, moderation) and the vector
    models: list[ev.ModelRef]

    @property
    def embed_model(self) -> ev.ModelRef | None:
        return next((m for m in self.models if m.task == "embed"), None)


SINCE = "_since"  # wall time the segment's first part arrived


def merge(parts: dict, item: ev.SegmentAnalysis, now: float | None = None) -> dict:
    """Fold one model result into a segment's parts (pure but for the clock; a replayed result
    overwrites itself)."""
    since = parts.get(SINCE, time.time() if now is None else now)
    return {**parts, SINCE: since, item.task: item.model_dump(mode="json", by_alias=True, exclude_none=True)}


def stale(parts: dict, ttl_s: float, now: float | None = None) -> bool:
    """Whether a segment's parts have waited more than ``ttl_s`` for the rest."""
    return parts.get(SINCE, 0.0) < (time.time() if now is None else now) - ttl_s


def complete(parts: dict) -> JoinedSegment | None:
    """The joined segment once every task it waits for has a result, else None (pure)."""
    tasks = next(v for k, v in parts.items() if k != SINCE)["tasks"]
    if not all(t in parts for t in tasks):
        return None
    base = ev.SegmentAnalysis.model_validate(parts[tasks[0]])
    segment = base.segment.model_copy()
    if "caption" in parts:
        segment.caption = parts["caption"].get("caption")
    if "moderate" in parts:
        segment.moderation = ev.ModerationVerdict.model_validate(parts["moderate"]["moderation"])
    vector = parts["embed"]["vector"] if "embed" in parts else None
    return JoinedSegment(
        analysis=base.model_copy(update={"segment": segment, "vector": vector}),
        models=[ev.ModelRef.model_validate(parts[t]["model"]) for t in tasks],
    )


def to_point(joined: JoinedSegment) -> SegmentPoint:
    item, model = joined.analysis, joined.embed_model
    seg = item.segment
    return SegmentPoint(
        video_id=item.video_id,
        tenant=item.tenant,
        segment_index=seg.index,
        start_s=seg.start_s,
        end_s=seg.end_s,
        keyframe_s=seg.keyframe_s,
        vector=np.asarray(item.vector, dtype=np.float32),
        model=model.name,
        model_version=model.version,
        thumbnail=seg.thumbnail,
        trace_id=item.trace_id,
        extra={
            "uri": item.uri,
            "caption": seg.caption,
            "moderation": seg.moderation.model_dump() if seg.moderation else None,
            "flagged": bool(seg.moderation and seg.moderation.flagged),
            "quality": seg.quality,
        },
    )


def upsert(store, prefix: str, joined: JoinedSegment) -> None:
    model = joined.embed_model
    if model is None or joined.analysis.vector is None:
        return  # a segment that asked for no embedding has no point
    name = collection_name(prefix, ModelInfo(model.name, model.version, "embed"))
    store.ensure_collection(name, len(joined.analysis.vector))
    store.upsert(name, [to_point(joined)])


def register(rt: Runtime) -> None:
    s = rt.settings
    table = rt.app.Table(
        TABLE,
        partitions=s.partitions,
        key_type=bytes,
        value_type=bytes,
        changelog_topic=rt.app.topic(
            f"{s.app_id}-{TABLE}-changelog", key_type=bytes, value_type=bytes, partitions=s.partitions, compacting=True
        ),
    )

    waiting = ExpiringKeys()

    def sweep(partition: int) -> None:
        for key in waiting.due(partition, s.join_ttl_s):
            raw = table.get(key)
            if raw and stale(orjson.loads(raw), s.join_ttl_s):
                table.pop(key, None)
                rt.count("index.parts_expired")
                log.warning("index: dropped the parts of %r: the rest did not come within %.0fs", key, s.join_ttl_s)

    async def write(joined: JoinedSegment, event: faust.EventT) -> None:
        item = joined.analysis
        for attempt in range(RETRIES):
            try:
                await rt.in_io_thread(upsert, rt.store, s.collection_prefix, joined)
                break
            except Exception as exc:
                err = exc if isinstance(exc, FramebusError) else VectorStoreError(f"upsert failed: {exc!r}")
                if err.transient and attempt + 1 < RETRIES:
                    log.warning("index: %s, retrying in %.1fs", err.message, 0.5 * 2**attempt)
                    await asyncio.sleep(0.5 * 2**attempt)
                    continue
                await rt.fail_batch("index", registry.ANALYSIS, [(item, event)], err)
                return
        done = ev.SegmentDone(
            video_id=item.video_id,
            tenant=item.tenant,
            uri=item.uri,
            segment=item.segment,
            segment_count=item.segment_count,
            video=item.video,
            models=joined.models,
            trace_id=item.trace_id,
        )
        await rt.send(registry.PROGRESS, item.video_id, done, item.trace_id)
        rt.count("index.points")

    @rt.app.agent(rt.topic(registry.ANALYSIS), name="framebus.index", concurrency=1)
    async def index(stream):
        # Per event, not in micro-batches: faust ties each table update to the current event's partition.
        async for event in stream.events():
            sweep(event.message.partition)
            pairs = await rt.parse_batch("index", registry.ANALYSIS, [event])
            if not pairs:
                continue
            item = pairs[0][0]
            key = f"{item.video_id}\x00{item.segment.index}".encode()
            raw = table.get(key)
            parts = merge(orjson.loads(raw) if raw else {}, item)
            joined = complete(parts)
            if joined is None:
                if raw is None:
                    waiting.note(event.message.partition, key)
                table[key] = orjson.dumps(parts)
                continue
            table.pop(key, None)
            await write(joined, event)
