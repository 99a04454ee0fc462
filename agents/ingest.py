"""ingest: validate the request, check the URI, probe the container, plan decode work.

Reads ``framebus.ingest``; writes a DecodeTask to the internal decode topic, or, for anything it cannot
handle, a DLQ entry plus a failure that becomes a ``status: failed`` metadata document.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from framebus.agents.base import Runtime
from framebus.agents.media.probe import Limits, probe
from framebus.agents.media.uri import resolve_media_uri
from framebus.topics import codec, registry
from framebus.topics import events as ev
from framebus.topics.errors import FramebusError

log = logging.getLogger("framebus.agents.ingest")


async def handle(rt: Runtime, record: Any) -> None:
    s = rt.settings
    trace_id, run_id = rt.trace_id(record), rt.run_id(record)
    try:
        req = codec.decode(ev.IngestRequest, record.value, max_bytes=s.max_event_bytes)
    except FramebusError as err:
        await rt.fail_records("ingest", [record], err)
        return
    try:
        path = _resolve(req, s)
        info = await rt.in_process(probe, path, Limits.from_settings(s))
    except FramebusError as err:
        await rt.dead_letter("ingest", registry.INGEST, record, err, trace_id)
        await rt.fail_video(
            video_id=req.video_id, tenant=req.tenant, error=err, trace_id=trace_id, uri=req.uri, run_id=run_id
        )
        return
    facts = ev.VideoFacts(
        duration_s=info.duration_s,
        fps=info.fps,
        width=info.width,
        height=info.height,
        codec=info.codec,
        pix_fmt=info.pix_fmt,
        rotation=info.rotation,
        origin="generated" if req.options.get("origin") == "generated" else None,
    )
    task = ev.DecodeTask(
        video_id=req.video_id,
        tenant=req.tenant,
        path=str(path),
        uri=req.uri,
        tasks=[t for t in (req.tasks or s.tasks) if t in s.tasks] or list(s.tasks),
        video=facts,
        trace_id=trace_id,
        run_id=run_id,
    )
    await rt.send(registry.DECODE, req.video_id, task, trace_id)
    log.info("ingest: %s planned (%.2fs %s %dx%d)", req.video_id, info.duration_s, info.codec, info.width, info.height)


def _resolve(req: ev.IngestRequest, s) -> Path:
    """The request's file: under the allowed roots, or a generated video of the request's own tenant."""
    return resolve_media_uri(req.uri, s, req.tenant)


def register(rt: Runtime) -> None:
    async def ingest(records: list[Any]) -> None:
        for record in records:
            await handle(rt, record)

    rt.stage("ingest", registry.INGEST, ingest, concurrency=2)
