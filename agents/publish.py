"""publish: one VideoMetadata document per video on ``framebus.metadata``, once all its work is done.

Reads the internal progress topic (keyed by video id, so one video's events arrive in order on one
partition) and keeps per-video progress in a faust table backed by a changelog topic, so a restarted or
rebalanced worker picks up where the last one stopped. A video is published when every planned segment
is done (the decode stage says how many there are once it has decoded the whole video, while the
first ones may already be done), or at once with ``status: failed`` when any stage failed it. Finished
videos leave a small
"closed" marker (with the run's trace id) for ``closed_ttl_s`` so late or replayed events of that run are
not published twice, while a new ingest of the same video id starts a new run.
"""

from __future__ import annotations

import logging

import faust
import orjson

from framebus.agents.base import Runtime
from framebus.agents.expiry import ExpiringKeys
from framebus.topics import codec, registry
from framebus.topics import events as ev
from framebus.topics.errors import FramebusError

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
        shots=[] if error else segments,
        models=[ev.ModelRef.model_validate(m) for m in models.values()],
        trace_id=state.get("trace_id"),
        uri=state.get("uri"),
    )


def apply_progress(state: dict | None, done: ev.SegmentDone) -> tuple[dict, bool]:
    """Fold one progress event into a video's state; return (state, finished)."""
    state = state or {"video_id": done.video_id, "tenant": done.tenant, "segments": {}, "models": []}
    state["trace_id"] = state.get("trace_id") or done.trace_id
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
    closed = ExpiringKeys()

    async def handle(event: faust.EventT) -> None:
        try:
            done = codec.decode(ev.SegmentDone, event.value)
        except FramebusError as err:
            await rt.dead_letter("publish", registry.PROGRESS, event, err, rt.trace_id(event))
            return
        key = done.video_id.encode()
        raw = table.get(key)
        state = orjson.loads(raw) if raw else None
        if state and state.get("closed"):
            if state.get("trace_id") == done.trace_id:
                log.info("publish: %s already published; ignoring a late event", done.video_id)
                return
            state = None  # the same video ingested again: a new run

        state, finished = apply_progress(state, done)
        if not finished:
            table[key] = orjson.dumps(state)
            return
        doc = build_metadata(state)
        await rt.send(registry.METADATA, done.video_id, doc, doc.trace_id)
        table[key] = orjson.dumps({"closed": True, "status": doc.status, "trace_id": doc.trace_id})
        closed.note(event.message.partition, key)
        rt.count(f"publish.{doc.status}")
        log.info("publish: %s status=%s segments=%d by %s", done.video_id, doc.status, len(doc.shots), rt.worker_name)

    def sweep(partition: int) -> None:
        # Markers are deleted from inside stream iteration of their own partition, as faust requires.
        for key in closed.due(partition, s.closed_ttl_s):
            table.pop(key, None)

    @rt.app.agent(rt.topic(registry.PROGRESS), name="framebus.publish", concurrency=1)
    async def publish(stream):
        async for event in stream.events():
            await handle(event)
            sweep(event.message.partition)
