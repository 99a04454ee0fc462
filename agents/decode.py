"""decode: decode and sample a video in the process pool, send its segments as compact frames.

Reads the internal decode topic; writes one SegmentFrames per segment (JPEG at model resolution inline,
or a claim-check reference when a segment would exceed the event budget) as soon as the segment is
final, while the rest of the video is still being decoded; then, on the progress topic, how many
segments the video has and its final facts.
"""

from __future__ import annotations

import base64
import logging
import uuid
from pathlib import Path

import faust

from framebus.agents.base import Runtime
from framebus.agents.media.pipeline import DecodedSegment, DecodeJob, decode_video_to_queue
from framebus.topics import codec, registry
from framebus.topics import events as ev
from framebus.topics.errors import FramebusError

log = logging.getLogger("framebus.agents.decode")


def frames_payload(seg: DecodedSegment, budget: int, blob_dir) -> list[ev.Frame]:
    """Inline JPEGs while they fit ``budget`` bytes (base64 included); beyond it, claim-check refs."""
    inline = sum(len(jpeg) * 4 // 3 + 64 for _, jpeg in seg.frames)
    if inline <= budget:
        return [ev.Frame(pts_s=pts, jpeg_b64=base64.b64encode(jpeg).decode()) for pts, jpeg in seg.frames]
    blob_dir.mkdir(parents=True, exist_ok=True)
    refs = []
    for pts, jpeg in seg.frames:
        path = blob_dir / f"{uuid.uuid4().hex}.jpg"
        path.write_bytes(jpeg)
        refs.append(ev.Frame(pts_s=pts, ref=path.as_uri()))
    return refs


async def handle(rt: Runtime, event: faust.EventT) -> None:
    s = rt.settings
    trace_id = rt.trace_id(event)
    try:
        task = codec.decode(ev.DecodeTask, event.value)
    except FramebusError as err:
        await rt.dead_letter("decode", registry.DECODE, event, err, trace_id)
        return
    job = DecodeJob.from_settings(s, task.path, task.video_id, thumb_dir=s.blob_dir / "thumbnails" / task.tenant)
    budget = s.max_event_bytes // 2

    async def send_segment(seg: DecodedSegment) -> None:
        frames = frames_payload(seg, budget, s.blob_dir / "frames" / task.video_id)
        segment = ev.Segment(
            index=seg.index,
            start_s=seg.start_s,
            end_s=seg.end_s,
            keyframe_s=seg.keyframe_s,
            thumbnail=_as_uri(seg.thumbnail),
            quality=seg.quality,
        )
        msg = ev.SegmentFrames(
            video_id=task.video_id,
            tenant=task.tenant,
            uri=task.uri,
            segment=segment,
            frames=frames,
            video=task.video,
            tasks=task.tasks,
            trace_id=trace_id,
        )
        await rt.send(registry.FRAMES, task.video_id, msg, trace_id)

    try:
        decoded = await rt.in_process_streaming(decode_video_to_queue, job, on_item=send_segment)
    except FramebusError as err:
        await rt.dead_letter("decode", registry.DECODE, event, err, trace_id)
        await rt.fail_video(video_id=task.video_id, tenant=task.tenant, error=err, trace_id=trace_id, uri=task.uri)
        return
    info = decoded.info
    facts = task.video.model_copy(update={"duration_s": info.duration_s, "fps": info.fps})
    plan = ev.SegmentDone(
        video_id=task.video_id,
        tenant=task.tenant,
        uri=task.uri,
        trace_id=trace_id,
        segment_count=decoded.segment_count,
        video=facts,
    )
    await rt.send(registry.PROGRESS, task.video_id, plan, trace_id)
    rt.count("frames.decoded", decoded.frames_decoded)
    log.info(
        "decode: %s -> %d segments (%d sent before the end of the file), %d frames decoded",
        task.video_id,
        decoded.segment_count,
        decoded.emitted_early,
        decoded.frames_decoded,
    )


def _as_uri(path: str | None) -> str | None:
    return Path(path).resolve().as_uri() if path else None


def register(rt: Runtime) -> None:
    # one actor per process-pool worker: every worker can have a video in flight
    @rt.app.agent(rt.topic(registry.DECODE), name="framebus.decode", concurrency=rt.decode_workers)
    async def decode(stream):
        async for event in stream.events():
            await handle(rt, event)
