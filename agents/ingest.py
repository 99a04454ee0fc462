"""ingest: validate the request, check the URI, probe the container, plan decode work.

Reads ``framebus.ingest``; writes a DecodeTask to the internal decode topic, or, for anything it cannot
handle, a DLQ entry plus a failure that becomes a ``status: failed`` metadata document.
"""

from __future__ import annotations

import logging

import faust
import orjson

from framebus.agents.base import Runtime
from framebus.agents.media.probe import Limits, probe
from framebus.agents.media.uri import resolve_uri
from framebus.topics import codec, registry
from framebus.topics import events as ev
from framebus.topics.errors import FramebusError

log = logging.getLogger("framebus.agents.ingest")


def salvage_ids(raw: bytes | None, key: bytes | None) -> tuple[str | None, str]:
    """Best-effort video id and tenant of an event that failed validation, so it can still fail loudly."""
    video_id = tenant = None
    try:
        obj = orjson.loads(raw or b"")
        if isinstance(obj, dict):
            video_id = obj.get("video_id") if isinstance(obj.get("video_id"), str) else None
            tenant = obj.get("tenant") if isinstance(obj.get("tenant"), str) else None
    except orjson.JSONDecodeError:
        pass
    if not video_id and key:
        video_id = key.decode("utf-8", "replace")
    return (video_id[:256] if video_id else None), (tenant or "unknown")[:128]


async def handle(rt: Runtime, event: faust.EventT) -> None:
    s = rt.settings
    trace_id = rt.trace_id(event)
    try:
        req = codec.decode(ev.IngestRequest, event.value, max_bytes=s.max_event_bytes)
    except FramebusError as err:
        await rt.dead_letter("ingest", registry.INGEST, event, err, trace_id)
        video_id, tenant = salvage_ids(event.value, event.key)
        if video_id:
            await rt.fail_video(video_id=video_id, tenant=tenant, error=err, trace_id=trace_id)
        return
    try:
        path = resolve_uri(req.uri, s.allowed_roots)
        info = await rt.in_process(probe, path, Limits.from_settings(s))
    except FramebusError as err:
        await rt.dead_letter("ingest", registry.INGEST, event, err, trace_id)
        await rt.fail_video(video_id=req.video_id, tenant=req.tenant, error=err, trace_id=trace_id, uri=req.uri)
        return
    facts = ev.VideoFacts(
        duration_s=info.duration_s,
        fps=info.fps,
        width=info.width,
        height=info.height,
        codec=info.codec,
        pix_fmt=info.pix_fmt,
        rotation=info.rotation,
    )
    task = ev.DecodeTask(
        video_id=req.video_id,
        tenant=req.tenant,
        path=str(path),
        uri=req.uri,
        tasks=[t for t in (req.tasks or s.tasks) if t in s.tasks] or list(s.tasks),
        video=facts,
        trace_id=trace_id,
    )
    await rt.send(registry.DECODE, req.video_id, task, trace_id)
    log.info("ingest: %s planned (%.2fs %s %dx%d)", req.video_id, info.duration_s, info.codec, info.width, info.height)


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topic(registry.INGEST), name="framebus.ingest", concurrency=1)
    async def ingest(stream):
        async for event in stream.events():
            await handle(rt, event)
