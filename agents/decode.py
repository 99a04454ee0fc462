"""decode: decode and sample a video in the process pool, send its segments as compact frames.

Reads the internal decode topic; writes one SegmentFrames per segment (JPEG at model resolution inline,
or a claim-check reference when a segment would exceed the event budget) as soon as the segment is
final, while the rest of the video is still being decoded; then, on the progress topic, how many
segments the video has and its final facts.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from framebus.agents.base import Runtime
from framebus.agents.media.pipeline import DecodedSegment, DecodeJob, decode_video_to_queue, thumbnail_dir
from framebus.agents.media.uri import resolve_media_uri
from framebus.topics import codec, registry
from framebus.topics import events as ev
from framebus.topics.errors import FramebusError
from framebus.topics.ids import digest

log = logging.getLogger("framebus.agents.decode")


def blob_key(tenant: str, video_id: str, run_id: str | None) -> str:
    """The claim-check folder of one run of one video: a digest, never the (caller-chosen) video id."""
    return digest("frames", tenant, video_id, run_id or "")


def frames_payload(seg: DecodedSegment, budget: int, blob_dir: Path) -> list[ev.Frame]:
    """Inline JPEGs while they fit ``budget`` bytes (base64 included); beyond it, claim-check refs. The
    file names are deterministic (segment, frame), so a replay overwrites instead of adding files."""
    inline = sum(len(jpeg) * 4 // 3 + 64 for _, jpeg in seg.frames)
    if inline <= budget:
        return [ev.Frame(pts_s=pts, jpeg_b64=base64.b64encode(jpeg).decode()) for pts, jpeg in seg.frames]
    blob_dir.mkdir(parents=True, exist_ok=True)
    refs = []
    for i, (pts, jpeg) in enumerate(seg.frames):
        path = blob_dir / f"{seg.index:05d}-{i:04d}.jpg"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(jpeg)
        os.replace(tmp, path)
        refs.append(ev.Frame(pts_s=pts, ref=path.as_uri()))
    return refs


async def handle(rt: Runtime, record: Any) -> None:
    s = rt.settings
    try:
        task = codec.decode(ev.DecodeTask, record.value, max_bytes=s.max_event_bytes)
    except FramebusError as err:
        await rt.fail_records("decode", [record], err)
        return
    trace_id = task.trace_id
    try:
        # the path came from an internal topic: check it against the allowed roots again
        path = resolve_media_uri(task.path, s, task.tenant)
    except FramebusError as err:
        await rt.dead_letter("decode", registry.DECODE, record, err, trace_id)
        await rt.fail_video(
            video_id=task.video_id, tenant=task.tenant, error=err, trace_id=trace_id, uri=task.uri, run_id=task.run_id
        )
        return
    job = DecodeJob.from_settings(s, path, task.video_id, thumb_dir=thumbnail_dir(s.blob_dir, task.tenant))
    budget = s.max_event_bytes // 2
    blob_dir = frames_dir(s.blob_dir) / blob_key(task.tenant, task.video_id, task.run_id)

    async def send_segment(seg: DecodedSegment) -> None:
        frames = frames_payload(seg, budget, blob_dir)
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
            run_id=task.run_id,
        )
        await rt.send(registry.FRAMES, task.video_id, msg, trace_id)
        await rt.hold("decode")

    try:
        decoded = await rt.in_process_streaming(decode_video_to_queue, job, on_item=send_segment)
    except FramebusError as err:
        await rt.dead_letter("decode", registry.DECODE, record, err, trace_id)
        await rt.fail_video(
            video_id=task.video_id, tenant=task.tenant, error=err, trace_id=trace_id, uri=task.uri, run_id=task.run_id
        )
        return
    info = decoded.info
    facts = task.video.model_copy(update={"duration_s": info.duration_s, "fps": info.fps})
    plan = ev.SegmentDone(
        video_id=task.video_id,
        tenant=task.tenant,
        uri=task.uri,
        trace_id=trace_id,
        run_id=task.run_id,
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


def frames_dir(blob_dir: Path) -> Path:
    """The claim-check store: one folder per run (``blob_key``), deleted by publish when the video is done."""
    return Path(blob_dir) / "frames"


def sweep_blobs(root: Path, *, cap_bytes: int, ttl_s: float, now: float | None = None) -> tuple[int, int]:
    """The claim-check store's backstop (publish deletes a run's frames when its document is out): delete
    run folders older than ``ttl_s``, then the oldest until the store holds at most ``cap_bytes``.
    Returns ``(folders deleted, bytes left)``. A video whose frames go this way fails with
    ``event.frames_missing`` rather than the disk filling up."""
    now = time.time() if now is None else now
    runs = []
    if root.is_dir():
        for d in os.scandir(root):
            if not d.is_dir(follow_symlinks=False):
                continue
            size, newest = 0, d.stat(follow_symlinks=False).st_mtime
            for f in os.scandir(d.path):
                st = f.stat(follow_symlinks=False)
                size += st.st_size
                newest = max(newest, st.st_mtime)
            runs.append((newest, size, d.path))
    runs.sort()
    total, deleted = sum(size for _, size, _ in runs), 0
    for newest, size, path in runs:
        if now - newest <= ttl_s and total <= cap_bytes:
            break
        shutil.rmtree(path, ignore_errors=True)
        total -= size
        deleted += 1
    return deleted, total


def _as_uri(path: str | None) -> str | None:
    return Path(path).resolve().as_uri() if path else None


def register(rt: Runtime) -> None:
    async def decode(records: list[Any]) -> None:
        for record in records:
            await handle(rt, record)

    # one handler call per process-pool worker: every worker can have a video in flight
    rt.stage("decode", registry.DECODE, decode, concurrency=rt.decode_workers)
    s = rt.settings

    async def sweep() -> None:
        deleted, left = await rt.in_io_thread(
            lambda: sweep_blobs(frames_dir(s.blob_dir), cap_bytes=s.blob_cap_bytes, ttl_s=s.blob_ttl_s)
        )
        if deleted:
            rt.count("decode.blobs_evicted", deleted)
            log.warning(
                "decode: the claim-check store's backstop deleted %d run folder(s); %d bytes left", deleted, left
            )

    rt.every(30.0, sweep)
