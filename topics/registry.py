"""Every topic framebus reads or writes: name, key, value model, visibility.

Names get ``Settings.topic_prefix`` in front. Public topics are the contract with producers and
consumers (``topics/CONTRACTS.md``); internal ones carry work between agents and are keyed by video
id so that all events of one video stay in one partition, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from framebus.topics import events as ev


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    model: type[ev.Event]
    public: bool
    description: str
    #: created with ``cleanup.policy=compact``: its compacted view keeps the last event per key
    compacted: bool = False


INGEST = TopicSpec("framebus.ingest", "video id", ev.IngestRequest, True, "ingest requests from producers")
METADATA = TopicSpec("framebus.metadata", "video id", ev.VideoMetadata, True, "one document per video", compacted=True)
MODERATION = TopicSpec("framebus.moderation", "video id", ev.ModerationAlert, True, "real-time alerts")
GENERATE = TopicSpec("framebus.generate", "job id", ev.GenerationRequest, True, "generation requests")
GENERATE_PROGRESS = TopicSpec(
    "framebus.generate.progress", "job id", ev.GenerationProgress, True, "generation progress"
)
GENERATE_RESULTS = TopicSpec(
    "framebus.generate.results", "job id", ev.GenerationResult, True, "generation results", compacted=True
)
GENERATE_CANCEL = TopicSpec("framebus.generate.cancel", "job id", ev.GenerationCancel, True, "generation job cancels")
DLQ = TopicSpec("framebus.dlq", "original key", ev.DeadLetter, True, "events a stage gave up on")

DECODE = TopicSpec("framebus.internal.decode", "video id", ev.DecodeTask, False, "decode work")
FRAMES = TopicSpec("framebus.internal.frames", "video id", ev.SegmentFrames, False, "compact frames per segment")
ANALYSIS = TopicSpec(
    "framebus.internal.analysis",
    "video id",
    ev.SegmentAnalysis,
    False,
    "per-segment model results (embedding, caption, moderation)",
)
PROGRESS = TopicSpec(
    "framebus.internal.progress", "video id", ev.SegmentDone, False, "finished segments and failed videos"
)

PUBLIC = (INGEST, METADATA, MODERATION, GENERATE, GENERATE_PROGRESS, GENERATE_RESULTS, GENERATE_CANCEL, DLQ)
INTERNAL = (DECODE, FRAMES, ANALYSIS, PROGRESS)
ALL = PUBLIC + INTERNAL


def json_schemas() -> dict[str, dict]:
    """JSON Schema of every public event value, by topic name (what ``framebus topics schema`` prints)."""
    return {spec.name: spec.model.model_json_schema(by_alias=True, mode="validation") for spec in PUBLIC}
