"""Media library for the decode agent: URI checks, probing, frame sampling, the pipeline.

Pure functions and dataclasses - no Kafka, no asyncio. The decode agent runs ``decode_video`` in a
process pool; everything it takes and returns pickles, and every failure is a ``FramebusError``
with a stable ``code``.
"""

from framebus.agents.media.decoders import (
    Decoder,
    DecordDecoder,
    PyAVDecoder,
    SampledFrame,
    SampleRun,
    SampleStats,
    get_decoder,
)
from framebus.agents.media.pipeline import DecodedSegment, DecodedVideo, DecodeJob, decode_video
from framebus.agents.media.probe import Limits, ProbeResult, VideoInfo, probe, probe_detailed
from framebus.agents.media.sampling import assign_frames_to_segments, plan_segments, sample_times
from framebus.agents.media.uri import resolve_uri
from framebus.topics.frames import decode_jpeg, encode_jpeg

__all__ = [
    "DecodeJob",
    "DecodedSegment",
    "DecodedVideo",
    "Decoder",
    "DecordDecoder",
    "Limits",
    "ProbeResult",
    "PyAVDecoder",
    "SampleRun",
    "SampleStats",
    "SampledFrame",
    "VideoInfo",
    "assign_frames_to_segments",
    "decode_jpeg",
    "decode_video",
    "encode_jpeg",
    "get_decoder",
    "plan_segments",
    "probe",
    "probe_detailed",
    "resolve_uri",
    "sample_times",
]
