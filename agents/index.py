"""index: join each segment's model results, upsert its point, report the segment done.

Reads SegmentAnalysis (embedding, caption, moderation verdict: whatever the segment's tasks are) and
keeps the parts per segment (and run) in a table backed by a compacted changelog
(``framebus.streams.state``) until all have arrived. A complete
segment becomes one point (vector plus caption, moderation verdict, quality, times, model versions in
the payload). Point ids are deterministic (tenant, video, segment, model version), so replays
overwrite; a written segment leaves a small "done" marker for ``join_ttl_s``, so a replayed result of it
is a no-op rather than a new join that would wait forever. Parts whose segment never completes (another
model's batch failed and failed the video) are dropped after ``join_ttl_s``, so the table does not grow with
failures (the expiry time is in the table values, so it survives restarts). Transient store errors are
retried with backoff; after that the segment fails its video. Then SegmentDone goes to publish, carrying
the full segment, and only then does the join entry become the done marker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from framebus.agents.base import Runtime, retry
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
    tasks = next(v for v in parts.values() if isinstance(v, dict) and "tasks" in v)["tasks"]
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
            "origin": item.video.origin,
        },
    )


def upsert(store, prefix: str, joined: JoinedSegment) -> None:
    model = joined.embed_model
    if model is None or joined.analysis.vector is None:
        return  # a segment that asked for no embedding has no point
    name = collection_name(prefix, ModelInfo(model.name, model.version, "embed"))
    store.ensure_collection(name, len(joined.analysis.vector))
    store.upsert(name, [to_point(joined)])


#: the join entry of a segment that was written
DONE = "done"


def join_key(item: ev.SegmentAnalysis) -> bytes:
    return f"{item.video_id}\x00{item.run_id or ''}\x00{item.segment.index}".encode()


def register(rt: Runtime) -> None:
    s = rt.settings
    table = rt.table(TABLE)
    swept: dict[int, float] = {}

    async def sweep(partition: int) -> None:
        now = time.time()
        if now - swept.get(partition, 0.0) < 1.0:
            return
        swept[partition] = now
        for key in table.expired(partition, s.join_ttl_s, now):
            done = (table.get(partition, key) or {}).get(DONE)
            await table.delete(partition, key)
            if not done:
                rt.count("index.parts_expired")
                log.warning("index: dropped the parts of %r: the rest did not come within %.0fs", key, s.join_ttl_s)

    async def write(joined: JoinedSegment, record: Any) -> bool:
        item = joined.analysis
        try:
            await retry(
                lambda: rt.in_io_thread(upsert, rt.store, s.collection_prefix, joined),
                attempts=RETRIES,
                is_transient=lambda e: not isinstance(e, FramebusError) or e.transient,
                what="index: upsert",
                base_s=0.5,
            )
        except Exception as exc:
            err = exc if isinstance(exc, FramebusError) else VectorStoreError(f"upsert failed: {exc!r}")
            await rt.fail_batch("index", registry.ANALYSIS, [(item, record)], err)
            return False
        done = ev.SegmentDone(
            video_id=item.video_id,
            tenant=item.tenant,
            uri=item.uri,
            segment=item.segment,
            segment_count=item.segment_count,
            video=item.video,
            models=joined.models,
            trace_id=item.trace_id,
            run_id=item.run_id,
        )
        await rt.send(registry.PROGRESS, item.video_id, done, item.trace_id)
        rt.count("index.points")
        return True

    async def handle(record: Any) -> None:
        p = record.partition
        await sweep(p)
        pairs = await rt.parse_batch("index", registry.ANALYSIS, [record])
        if not pairs:
            return
        item = pairs[0][0]
        key = join_key(item)
        parts = table.get(p, key) or {}
        if parts.get(DONE):
            rt.count("index.late_parts")  # a replayed result of a segment already written
            return
        parts = merge(parts, item)
        joined = complete(parts)
        if joined is None:
            await table.put(p, key, parts)
            return
        # Order: the point and SegmentDone first, the done marker last. A crash in between replays this
        # event, which completes the join again and repeats two idempotent effects. The marker (kept for
        # join_ttl_s) makes later replays of the segment's other results no-ops instead of new joins that
        # would wait forever.
        await write(joined, record)
        await table.put(p, key, {DONE: True})

    async def index(records: list[Any]) -> None:
        for record in records:  # in order: one partition's events are joined one after the other
            await handle(record)

    rt.stage("index", registry.ANALYSIS, index, batch_size=s.index_batch_size, tables=(table,))
