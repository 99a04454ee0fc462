"""embed: image embeddings per segment, micro-batched across videos and partitions.

Reads SegmentFrames; takes up to ``embed_batch_size`` segments or whatever arrived within
``embed_batch_wait_s`` (so one video never waits for a full batch), runs one model call in the model
thread, and writes one SegmentEmbedding per segment (the normalised mean of its frames' embeddings).
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import urlparse
from urllib.request import url2pathname

import faust
import numpy as np

from agents.media.frames import decode_jpeg
from streams.errors import FramebusError, ModelError
from streams.runtime import Runtime
from topics import registry
from topics import events as ev

log = logging.getLogger("framebus.agents.embed")


def frame_pixels(frame: ev.Frame) -> np.ndarray:
    if frame.jpeg_b64 is not None:
        return decode_jpeg(base64.b64decode(frame.jpeg_b64))
    with open(url2pathname(urlparse(frame.ref).path), "rb") as fh:
        return decode_jpeg(fh.read())


def embed_segments(embedder, items: list[ev.SegmentFrames]) -> np.ndarray:
    """One forward pass over every frame of every segment; one unit vector per segment."""
    images, owner = [], []
    for i, item in enumerate(items):
        for frame in item.frames:
            images.append(frame_pixels(frame))
            owner.append(i)
    vectors = embedder.embed_images(images)
    owner_arr = np.asarray(owner)
    out = np.stack([vectors[owner_arr == i].mean(axis=0) for i in range(len(items))])
    return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


async def handle_batch(rt: Runtime, events: list[faust.EventT]) -> None:
    pairs = await rt.parse_batch("embed", registry.FRAMES, events)
    if not pairs:
        return
    items = [item for item, _ in pairs]
    embedder = rt.embedder
    try:
        vectors = await rt.in_model_thread(embed_segments, embedder, items)
    except Exception as exc:  # a model failure fails these items, not the worker
        err = exc if isinstance(exc, FramebusError) else ModelError(f"embedding failed: {exc!r}")
        await rt.fail_batch("embed", registry.FRAMES, pairs, err)
        return
    model = ev.ModelRef(task="embed", name=embedder.info.name, version=embedder.info.version)
    for item, vec in zip(items, vectors):
        out = ev.SegmentEmbedding(video_id=item.video_id, tenant=item.tenant, uri=item.uri, segment=item.segment,
                                  segment_count=item.segment_count, vector=vec.tolist(), model=model,
                                  video=item.video, trace_id=item.trace_id)
        await rt.send(registry.EMBEDDINGS, item.video_id, out, item.trace_id)
    rt.count("embed.batches")
    rt.count("embed.segments", len(items))


def register(rt: Runtime) -> None:
    s = rt.settings

    @rt.app.agent(rt.topic(registry.FRAMES), name="framebus.embed", concurrency=1)
    async def embed(stream):
        async for events in stream.take_events(s.embed_batch_size, within=s.embed_batch_wait_s):
            await handle_batch(rt, list(events))
