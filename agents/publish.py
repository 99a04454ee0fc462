"""publish: one VideoMetadata document per video on ``framebus.metadata``, once all its work is done.

Reads the internal progress topic (keyed by video id, so one video's events arrive in order on one
partition) and keeps the progress of each run of a video (a run: one ingest request) in a table backed
by a compacted changelog (``framebus.streams.state``), so a restarted or rebalanced worker picks up where
the last one stopped. A run is published when every planned segment is done (the decode stage says how
many there are once it has decoded the whole video, while the first ones may already be done), at once
with ``status: failed`` when any stage failed it, or as ``publish.timeout`` after ``publish_timeout_s``.
The document's ``event_id`` is derived from (video id, run id), so every copy of it is recognisable.
A finished run leaves a small "closed" marker for ``closed_ttl_s`` so late or replayed events of that run
are not published twice; a new ingest of the same video id is a new run. The run's claim-check frames are
deleted once its document is out.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import Any

from framebus.agents.base import Runtime
from framebus.agents.decode import blob_key, frames_dir
from framebus.topics import codec, registry
from framebus.topics import events as ev
from framebus.topics.errors import FramebusError
from framebus.topics.errors import PublishTimeout as TimeoutError_
from framebus.topics.ids import metadata_event_id

log = logging.getLogger("framebus.agents.publish")
TABLE = "publish-progress"


def build_metadata(state: dict) -> ev.VideoMetadata:
    """The finished document from accumulated progress (pure; unit-tested)."""
    video = state.get("video_final") or state.get("video") or {}
    segments = sorted((ev.Segment.model_validate(s) for s in state.get("segments", {}).values()), key=lambda s: s.index)
    models = {(m["task"], m["name"], m["version"]): m for m in state.get("models", [])}
    error = state.get("error")
    return ev.VideoMetadata(
        video_id=state["video_id"],
        tenant=state["tenant"],
        status="failed" if error else "ok",
        error=ev.ErrorInfo.model_validate(error) if error else None,
        duration_s=video.get("duration_s"),
        fps=video.get("fps"),
        width=video.get("width"),
        height=video.get("height"),
        codec=video.get("codec"),
        origin=video.get("origin"),
        shots=[] if error else segments,
        models=[ev.ModelRef.model_validate(m) for m in models.values()],
        trace_id=state.get("trace_id"),
        uri=state.get("uri"),
        run_id=state.get("run_id"),
        event_id=metadata_event_id(state["video_id"], state.get("run_id")),
    )


def apply_progress(state: dict | None, done: ev.SegmentDone) -> tuple[dict, bool]:
    """Fold one progress event into a video's state; return (state, finished)."""
    state = state or {"video_id": done.video_id, "tenant": done.tenant, "segments": {}, "models": []}
    state["trace_id"] = state.get("trace_id") or done.trace_id
    state["run_id"] = state.get("run_id") or done.run_id
    state["uri"] = state.get("uri") or done.uri
    if done.video is not None:
        # the decode stage's plan carries the final facts (duration refined after the whole decode)
        state["video_final" if done.segment is None else "video"] = done.video.model_dump()
    for m in done.models:
        if m.model_dump() not in state["models"]:
            state["models"].append(m.model_dump())
    if done.error is not None:
        state["error"] = done.error.model_dump()
        return state, True
    if done.segment is not None:
        state["segments"][str(done.segment.index)] = done.segment.model_dump()
    if done.segment_count:
        state["segment_count"] = done.segment_count
    return state, len(state["segments"]) >= state.get("segment_count", 1 << 30)


def state_key(video_id: str, run_id: str | None) -> bytes:
    return f"{video_id}\x00{run_id or ''}".encode()


def register(rt: Runtime) -> None:
    s = rt.settings
    table = rt.table(TABLE)
    lock = asyncio.Lock()  # the handler and the timer's sweep never interleave on one key

    async def finish(p: int, key: bytes, state: dict) -> None:
        # Order: the document first (acknowledged), then the closed marker, then the run's claim-check
        # frames. A crash between the first two publishes the same document again: same event_id, same
        # content (it is built from the same table state).
        doc = build_metadata(state)
        await rt.send(registry.METADATA, doc.video_id, doc, doc.trace_id)
        marker = {"closed": True, "status": doc.status, "run_id": doc.run_id, "closed_at": time.time()}
        await table.put(p, key, marker)
        await rt.in_io_thread(
            shutil.rmtree, frames_dir(s.blob_dir) / blob_key(doc.tenant, doc.video_id, doc.run_id), True
        )
        rt.count(f"publish.{doc.status}")
        log.info("publish: %s status=%s segments=%d by %s", doc.video_id, doc.status, len(doc.shots), rt.worker_name)

    async def handle(record: Any) -> None:
        try:
            done = codec.decode(ev.SegmentDone, record.value, max_bytes=s.max_event_bytes)
        except FramebusError as err:
            await rt.dead_letter("publish", registry.PROGRESS, record, err, rt.trace_id(record))
            return
        p, key = record.partition, state_key(done.video_id, done.run_id)
        state = table.get(p, key)
        if state and state.get("closed"):
            log.info("publish: %s (run %s) already published; ignoring a late event", done.video_id, done.run_id)
            return
        state, finished = apply_progress(state, done)
        if finished:
            await finish(p, key, state)
        else:
            await table.put(p, key, state)

    async def sweep() -> None:
        """Closed markers older than ``closed_ttl_s`` go; a video still in progress after
        ``publish_timeout_s`` is published as failed (``publish.timeout``): nothing waits forever."""
        now = time.time()
        async with lock:
            for p in list(table.data):
                for key, state in table.items(p):
                    if state.get("closed"):
                        if now - float(state.get("closed_at", state.get("_t", 0.0))) > s.closed_ttl_s:
                            await table.delete(p, key)
                    elif now - float(state.get("_t", now)) > s.publish_timeout_s:
                        err = TimeoutError_(
                            f"the video was not finished within {s.publish_timeout_s:.0f}s "
                            f"({len(state.get('segments', {}))} of {state.get('segment_count', '?')} segments done)"
                        )
                        await finish(p, key, {**state, "error": err.as_dict()})

    async def publish(records: list[Any]) -> None:
        async with lock:
            for record in records:  # in order: one video's progress events are applied one after the other
                await handle(record)

    rt.stage("publish", registry.PROGRESS, publish, batch_size=16, tables=(table,))
    rt.every(min(30.0, max(1.0, s.publish_timeout_s / 10)), sweep)
