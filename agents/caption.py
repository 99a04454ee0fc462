"""caption: one caption per segment, from its keyframe, micro-batched across videos and partitions.

Reads SegmentFrames (segments whose tasks include ``caption``); writes SegmentAnalysis with the caption.
"""

from __future__ import annotations

from typing import Any

from framebus.agents.base import Runtime
from framebus.agents.embed import analysis, keyframes, model_batch
from framebus.topics import registry

TASK = "caption"


async def handle_batch(rt: Runtime, records: list[Any]) -> None:
    captioner, batcher = rt.captioner, rt.batchers[TASK]
    done = await model_batch(
        rt,
        TASK,
        records,
        lambda pixels: batcher.run(captioner.caption_prepared, pixels),
        prepare=lambda items: captioner.prepare_images(keyframes(items, captioner.image_size)),
    )
    if done is None:
        return
    await rt.send_all(
        registry.ANALYSIS,
        [(item.video_id, analysis(item, TASK, captioner, caption=text), item.trace_id) for item, text in zip(*done)],
    )


def register(rt: Runtime) -> None:
    s = rt.settings
    rt.batched_agent(
        TASK, registry.FRAMES, handle_batch, batch_size=s.caption_batch_size, wait_s=s.caption_batch_wait_s
    )
