"""embed: image embeddings per segment, micro-batched across videos and partitions.

Reads SegmentFrames (the segments whose tasks include ``embed``); one model call per micro-batch, in the
model thread; writes one SegmentAnalysis per segment with the normalised mean of its frames' embeddings.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from framebus.agents.base import Runtime, retry
from framebus.agents.decode import frames_dir
from framebus.topics import events as ev
from framebus.topics import registry
from framebus.topics.errors import FramebusError, InvalidEvent, ModelError
from framebus.topics.frames import decode_jpeg

log = logging.getLogger("framebus.agents.embed")
TASK = "embed"


def frame_pixels(frame: ev.Frame, min_side: int | None = None) -> np.ndarray:
    """A frame's pixels (inline JPEG or claim-check file); ``min_side``: see ``decode_jpeg``."""
    if frame.jpeg_b64 is not None:
        return decode_jpeg(base64.b64decode(frame.jpeg_b64), min_side)
    try:
        with open(ref_path(frame.ref), "rb") as fh:
            return decode_jpeg(fh.read(), min_side)
    except FileNotFoundError:
        raise InvalidEvent(
            f"claim-check frame {frame.ref} is gone (its video was finished and its frames deleted, or the "
            "blob store's cap evicted it)",
            code="event.frames_missing",
        ) from None


def ref_path(ref: str | None) -> str:
    return url2pathname(urlparse(ref or "").path)


def check_refs(item: ev.SegmentFrames, root: Path) -> None:
    """Every claim-check reference of ``item`` must name a file inside the blob store's frames folder
    (the event came from an internal topic: check again, symlinks resolved)."""
    real_root = Path(os.path.realpath(root))
    for frame in item.frames:
        if frame.ref is None:
            continue
        if urlparse(frame.ref).scheme != "file":
            raise InvalidEvent(f"frame reference {frame.ref[:200]!r} is not a file URI", code="event.bad_ref")
        real = Path(os.path.realpath(ref_path(frame.ref)))
        if not real.is_relative_to(real_root):
            raise InvalidEvent(f"frame reference {frame.ref[:200]!r} is outside the blob store", code="event.bad_ref")


def segment_images(items: list[ev.SegmentFrames], min_side: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Every frame of every segment, and for each frame the index of its segment."""
    images, owner = [], []
    for i, item in enumerate(items):
        for frame in item.frames:
            images.append(frame_pixels(frame, min_side))
            owner.append(i)
    return images, np.asarray(owner)


def keyframes(items: list[ev.SegmentFrames], min_side: int | None = None) -> list[np.ndarray]:
    """Each segment's frame nearest its keyframe time."""
    return [
        frame_pixels(min(item.frames, key=lambda f: abs(f.pts_s - item.segment.keyframe_s)), min_side) for item in items
    ]


def prepare_segments(model, items: list[ev.SegmentFrames]) -> tuple[object, np.ndarray, int]:
    """Decode every frame of ``items`` and preprocess them for ``model`` (CPU only: runs in a prep
    thread while the model works on the previous batch): ``(batch, owner, len(items))``, ``owner[j]``
    the item of frame ``j``."""
    images, owner = segment_images(items, getattr(model, "image_size", None))
    return model.prepare_images(images), owner, len(items)


def embed_prepared_segments(embedder, batcher, prepared: tuple[object, np.ndarray, int]) -> np.ndarray:
    """One unit vector per segment: the normalised mean of its frames' embeddings."""
    batch, owner, n = prepared
    vectors = np.asarray(batcher.run(embedder.embed_prepared, batch))
    out = np.stack([vectors[owner == i].mean(axis=0) for i in range(n)])
    return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def embed_segments(embedder, batcher, items: list[ev.SegmentFrames]) -> np.ndarray:
    """``embed_prepared_segments(prepare_segments(items))`` in the calling thread."""
    return embed_prepared_segments(embedder, batcher, prepare_segments(embedder, items))


def analysis(item: ev.SegmentFrames, task: str, model, **result) -> ev.SegmentAnalysis:
    return ev.SegmentAnalysis(
        video_id=item.video_id,
        tenant=item.tenant,
        uri=item.uri,
        segment=item.segment,
        segment_count=item.segment_count,
        tasks=item.tasks,
        task=task,
        model=ev.ModelRef(task=task, name=model.info.name, version=model.info.version),
        video=item.video,
        trace_id=item.trace_id,
        run_id=item.run_id,
        **result,
    )


#: attempts of a model call that fails with a transient error (out of memory: the batcher halves the batch)
MODEL_ATTEMPTS = 3


async def model_batch(rt: Runtime, task: str, records: list[Any], run, prepare=None) -> list | None:
    """Parse a batch, keep the items that ask for ``task``, run ``prepare(items)`` in a prep thread (frame
    decode and preprocessing, overlapping the model's work on the previous batch), then
    ``run(prepared)`` in the model thread (``run(items)`` without ``prepare``).

    Returns ``(items, outputs)``, or ``None`` when nothing was left. A transient model error is retried
    with backoff. When the batch still fails, each item is tried alone, so that only the items that
    fail alone (a corrupt frame) are dead-lettered and fail their video, not their batch neighbours.
    """
    frames_root = frames_dir(rt.settings.blob_dir)
    pairs = []
    for item, record in await rt.parse_batch(task, registry.FRAMES, records):
        if task not in item.tasks:
            continue
        try:
            check_refs(item, frames_root)
        except FramebusError as err:
            await rt.fail_batch(task, registry.FRAMES, [(item, record)], err)
            continue
        pairs.append((item, record))
    if not pairs:
        return None

    async def attempt(items: list[ev.SegmentFrames]):
        async def once():
            prepared = await rt.in_prep_thread(prepare, items) if prepare is not None else items
            return await rt.in_model_thread(run, prepared, task=task)

        return await retry(
            once,
            attempts=MODEL_ATTEMPTS,
            is_transient=lambda e: isinstance(e, FramebusError) and e.transient,
            what=f"{task} model call",
        )

    def as_error(exc: Exception) -> FramebusError:
        return exc if isinstance(exc, FramebusError) else ModelError(f"{task} failed: {exc!r}")

    items = [item for item, _ in pairs]
    try:
        outputs = list(await attempt(items))
    except Exception as exc:
        if len(pairs) == 1:
            await rt.fail_batch(task, registry.FRAMES, pairs, as_error(exc))
            return None
        log.warning("%s: a batch of %d failed (%r); trying each item alone", task, len(pairs), exc)
        kept, outputs = [], []
        for pair in pairs:
            try:
                outputs.extend(await attempt([pair[0]]))
                kept.append(pair[0])
            except Exception as one:
                await rt.fail_batch(task, registry.FRAMES, [pair], as_error(one))
        items = kept
        if not items:
            return None
    await rt.hold(task)
    rt.count(f"{task}.batches")
    rt.count(f"{task}.segments", len(items))
    return [items, outputs]


async def handle_batch(rt: Runtime, records: list[Any]) -> None:
    embedder, batcher = rt.embedder, rt.batchers[TASK]
    done = await model_batch(
        rt,
        TASK,
        records,
        lambda prepared: embed_prepared_segments(embedder, batcher, prepared),
        prepare=lambda items: prepare_segments(embedder, items),
    )
    if done is None:
        return
    await rt.send_all(
        registry.ANALYSIS,
        [
            (item.video_id, analysis(item, TASK, embedder, vector=vec.tolist()), item.trace_id)
            for item, vec in zip(*done)
        ],
    )


def register(rt: Runtime) -> None:
    s = rt.settings
    rt.batched_agent(TASK, registry.FRAMES, handle_batch, batch_size=s.embed_batch_size, wait_s=s.embed_batch_wait_s)
