"""Event models: one pydantic model per topic value, defined once and imported everywhere.

Public events (their contracts: ``topics/CONTRACTS.md``) carry a ``schema`` field such as
``"framebus.ingest/v1"``. A breaking change to a public event means a new ``/vN`` and a new model;
additive optional fields do not.
Internal events (agent to agent) are versioned the same way but may change with the code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Event(BaseModel):
    """Base of every topic value. Unknown fields are kept (forward compatible producers)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ErrorInfo(BaseModel):
    code: str = Field(description="stable error code, e.g. ingest.not_a_video")
    message: str


class ModelRef(BaseModel):
    task: str = Field(description="embed, caption, moderate, generate")
    name: str
    version: str


# --- public -------------------------------------------------------------------------------------


class IngestRequest(Event):
    schema_: Literal["framebus.ingest/v1"] = Field("framebus.ingest/v1", alias="schema")
    video_id: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:@/+=-]+$")
    uri: str = Field(min_length=1, max_length=4096, description="local path or file:// URI")
    tenant: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
    tasks: list[str] | None = Field(None, description="subset of embed, caption, moderate; default all")
    priority: int = Field(0, ge=0, le=9)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("video_id")
    @classmethod
    def _no_path_parts(cls, v: str) -> str:
        # "/" may structure an id ("cam1/2026-01-01"), but no part may be empty, "." or "..": an id is an
        # identifier, never a path (and framebus never uses it as a path component either)
        if any(part in ("", ".", "..") for part in v.split("/")):
            raise ValueError("video_id must not contain empty, '.' or '..' parts (no '//', no leading '/')")
        return v


EVENT_ID = Field(
    None,
    description="deterministic id of this event, equal on every replay: drop events whose event_id you have seen",
)
RUN_ID = Field(None, description="the ingest request this belongs to (its Kafka coordinates, or its run header)")


class ModerationVerdict(BaseModel):
    """A shot's moderation: every category's score and the categories over their threshold."""

    scores: dict[str, float]
    flagged: list[str] = Field(default_factory=list, description="categories at or over their threshold")
    action: str = Field("allow", description="the strongest action of the flagged categories, or allow")


class Segment(BaseModel):
    """A time range of the video: a detected shot (or a fixed window when shot detection is off)."""

    index: int = Field(ge=0)
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    keyframe_s: float = Field(ge=0)
    thumbnail: str | None = Field(None, description="thumbnail reference (file URI under the data dir)")
    caption: str | None = None
    moderation: ModerationVerdict | None = None
    quality: dict[str, float] | None = Field(None, description="sharpness, motion, temporal_consistency")


class VideoMetadata(Event):
    schema_: Literal["framebus.metadata/v1"] = Field("framebus.metadata/v1", alias="schema")
    video_id: str
    tenant: str
    status: Literal["ok", "failed"]
    error: ErrorInfo | None = None
    duration_s: float | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    shots: list[Segment] = Field(default_factory=list)
    models: list[ModelRef] = Field(default_factory=list)
    trace_id: str | None = None
    uri: str | None = None
    event_id: str | None = EVENT_ID
    run_id: str | None = RUN_ID
    origin: str | None = Field(None, description='"generated" for a video framebus generated (the closed loop)')


class ModerationAlert(Event):
    schema_: Literal["framebus.moderation/v1"] = Field("framebus.moderation/v1", alias="schema")
    video_id: str
    tenant: str
    start_s: float
    end_s: float
    category: str
    score: float
    threshold: float
    action: str
    trace_id: str | None = None
    segment_index: int | None = None
    model: str | None = Field(None, description="moderation model name/version")
    event_id: str | None = EVENT_ID
    run_id: str | None = RUN_ID


Mode = Literal["t2v", "i2v", "v2v", "upscale", "interpolate"]
#: a job id is an identifier (no "/", not "." or ".."): the generated video is ingested as ``generated/<job_id>``
JOB_ID = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@+=-]+$")


def _not_dots(v: str) -> str:
    if v in (".", ".."):
        raise ValueError("job_id must not be '.' or '..'")
    return v


TENANT = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


class GenerationRequest(Event):
    schema_: Literal["framebus.generate/v1"] = Field("framebus.generate/v1", alias="schema")
    job_id: str = JOB_ID
    prompt: str = Field(min_length=1, max_length=4000)
    tenant: str = TENANT
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = None
    num_frames: int | None = Field(None, ge=1, le=1024)
    fps: float | None = Field(None, gt=0, le=240)
    width: int | None = Field(None, ge=16, le=4096)
    height: int | None = Field(None, ge=16, le=4096)
    mode: Mode = "t2v"
    source_uri: str | None = Field(None, max_length=4096, description="v2v, i2v, upscale, interpolate: local file")
    strength: float | None = Field(None, gt=0, le=1, description="v2v: how much of the source is re-noised")
    scale: float | None = Field(None, gt=1, le=8, description="upscale: factor")
    priority: int = Field(0, ge=0, le=9, description="higher runs first (interactive 5-9, batch 0-4)")

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, v: str) -> str:
        return _not_dots(v)


class GenerationProgress(Event):
    schema_: Literal["framebus.generate.progress/v1"] = Field("framebus.generate.progress/v1", alias="schema")
    job_id: str
    tenant: str
    step: int = Field(description="denoising steps done")
    total_steps: int
    message: str | None = None
    eta_s: float | None = Field(None, ge=0, description="estimated seconds until the last step")
    preview: str | None = Field(None, description="a small preview frame of the current state (file:// URI, JPEG)")
    resumed_from: int | None = Field(None, ge=0, description="the step a resumed job started from")
    run_id: str | None = RUN_ID
    event_id: str | None = EVENT_ID


GenerationStatus = Literal["ok", "failed", "blocked", "cancelled"]


class GenerationResult(Event):
    schema_: Literal["framebus.generate.results/v1"] = Field("framebus.generate.results/v1", alias="schema")
    job_id: str
    tenant: str
    status: GenerationStatus
    uri: str | None = Field(None, description="the encoded MP4 (file:// URI); absent unless status is ok")
    video_id: str | None = Field(None, description="the id under which the video was ingested (closed loop)")
    provenance: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    thumbnail: str | None = None
    model: ModelRef | None = None
    steps: int | None = None
    resumed_from: int | None = None
    seconds: float | None = Field(None, description="wall time of the sampling, this run")
    trace_id: str | None = None
    event_id: str | None = EVENT_ID


class GenerationCancel(Event):
    """Stops a queued or running job at its next step (it ends ``status: cancelled``)."""

    schema_: Literal["framebus.generate.cancel/v1"] = Field("framebus.generate.cancel/v1", alias="schema")
    job_id: str = JOB_ID
    tenant: str = TENANT
    reason: str | None = Field(None, max_length=500)

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, v: str) -> str:
        return _not_dots(v)


class DeadLetter(Event):
    schema_: Literal["framebus.dlq/v1"] = Field("framebus.dlq/v1", alias="schema")
    stage: str = Field(description="agent that gave up: ingest, decode, embed, index, publish")
    topic: str = Field(description="topic the original event was read from")
    key: str | None = None
    error: ErrorInfo
    error_class: str
    original: str = Field(description="the original value, UTF-8 text (or base64 when not UTF-8)")
    original_encoding: Literal["utf-8", "base64"] = "utf-8"
    original_partition: int | None = None
    original_offset: int | None = None
    trace_id: str | None = None
    event_id: str | None = EVENT_ID


# --- internal -----------------------------------------------------------------------------------


class VideoFacts(BaseModel):
    """What the probe learned; carried along so later stages need not reopen the file."""

    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str | None = None
    rotation: int = 0
    origin: str | None = Field(None, description='"generated" for a video framebus generated (the closed loop)')


class DecodeTask(Event):
    schema_: Literal["framebus.internal.decode/v1"] = Field("framebus.internal.decode/v1", alias="schema")
    video_id: str
    tenant: str
    path: str
    uri: str
    tasks: list[str]
    video: VideoFacts
    trace_id: str
    run_id: str | None = None


class Frame(BaseModel):
    pts_s: float
    jpeg_b64: str | None = Field(None, description="compact payload: JPEG at model resolution")
    ref: str | None = Field(None, description="claim-check reference to a JPEG in the blob store")


class SegmentFrames(Event):
    schema_: Literal["framebus.internal.frames/v1"] = Field("framebus.internal.frames/v1", alias="schema")
    video_id: str
    tenant: str
    uri: str
    segment: Segment
    segment_count: int = Field(
        0,
        ge=0,
        description="0: not known yet (decode sends shots while it goes on; the total follows on the progress topic)",
    )
    tasks: list[str] = Field(default_factory=lambda: ["embed"])
    frames: list[Frame]
    video: VideoFacts
    trace_id: str
    run_id: str | None = None


Task = Literal["embed", "caption", "moderate"]


class SegmentAnalysis(Event):
    """One model's result for one segment; index joins a segment's results before it writes the point."""

    schema_: Literal["framebus.internal.analysis/v1"] = Field("framebus.internal.analysis/v1", alias="schema")
    video_id: str
    tenant: str
    uri: str
    segment: Segment
    segment_count: int
    tasks: list[Task] = Field(description="every task this segment waits for")
    task: Task
    model: ModelRef
    vector: list[float] | None = None
    caption: str | None = None
    moderation: ModerationVerdict | None = None
    video: VideoFacts
    trace_id: str
    run_id: str | None = None


class SegmentDone(Event):
    """One segment's work is finished; or the decode stage's plan (no segment: how many segments the
    video has, and its final facts); or a whole video failed (``error``, no segment)."""

    schema_: Literal["framebus.internal.progress/v1"] = Field("framebus.internal.progress/v1", alias="schema")
    video_id: str
    tenant: str
    uri: str | None = None
    segment: Segment | None = None
    segment_count: int = Field(0, ge=0, description="0: not known to the sender")
    video: VideoFacts | None = None
    models: list[ModelRef] = Field(default_factory=list)
    error: ErrorInfo | None = None
    trace_id: str | None = None
    run_id: str | None = None
