"""Deterministic event ids (part of the contract: ``topics/CONTRACTS.md``, "Delivery").

Every public event carries an ``event_id`` that is the same on every replay of the work that made it, so
a consumer drops an event whose ``event_id`` it has seen. A *run* is one ingest request: its Kafka
coordinates (or the ``framebus-run-id`` header its producer sent), never a random id.
"""

from __future__ import annotations

import hashlib


def digest(*parts: object, n: int = 32) -> str:
    """Hex digest of ``parts`` (NUL-separated)."""
    return hashlib.sha256("\x00".join(map(str, parts)).encode("utf-8", "surrogatepass")).hexdigest()[:n]


def metadata_event_id(video_id: str, run_id: str | None) -> str:
    """One VideoMetadata document per (video, run)."""
    return digest("metadata", video_id, run_id or "")


def alert_event_id(video_id: str, run_id: str | None, segment_index: int | None, category: str) -> str:
    """One ModerationAlert per (video, run, segment, category)."""
    return digest("alert", video_id, run_id or "", segment_index if segment_index is not None else "", category)


def dlq_event_id(stage: str, topic: str, partition: int, offset: int) -> str:
    """One DLQ entry per (stage, original event)."""
    return digest("dlq", stage, topic, partition, offset)


def run_id_of(topic: str, partition: int, offset: int) -> str:
    """The run of an ingest request read at these coordinates."""
    return digest("run", topic, partition, offset, n=24)


def generation_result_event_id(tenant: str, job_id: str) -> str:
    """One GenerationResult per job: the same ``job_id`` twice gives one result."""
    return digest("generate.result", tenant, job_id)


def generation_progress_event_id(tenant: str, job_id: str, step: int, resumed_from: int | None = None) -> str:
    """One GenerationProgress per (job, step, resume point)."""
    return digest("generate.progress", tenant, job_id, step, resumed_from if resumed_from is not None else "")


def generated_video_id(job_id: str) -> str:
    """The video id a finished job's video is ingested under (closed loop)."""
    return f"generated/{job_id}"
