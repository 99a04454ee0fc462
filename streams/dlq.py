"""``framebus dlq list`` and ``framebus dlq replay``: what the stages gave up on, and doing it again.

Replay sends each chosen video through ingest again as a new run. The run id is derived from the DLQ
entry (``framebus-run-id`` header = a digest of the entry's ``event_id``), so replaying the same entry
twice is the same run: publish recognises it and the second replay publishes nothing new. An entry of
the ingest stage is re-sent as it was (its original request); an entry of a later stage is replayed as
the ingest request rebuilt from the original's ``video_id``, ``uri`` and ``tenant``. Several entries of
one video (a failing segment of each model task) replay the video once: its first entry decides the run.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from framebus.streams.config import Settings
from framebus.streams.runtime import RUN_HEADER, TRACE_HEADER
from framebus.topics import codec, ids, registry
from framebus.topics import events as ev
from framebus.topics.errors import FramebusError


@dataclass
class Entry:
    partition: int
    offset: int
    letter: ev.DeadLetter

    @property
    def original_bytes(self) -> bytes:
        raw = self.letter.original
        return base64.b64decode(raw) if self.letter.original_encoding == "base64" else raw.encode()

    def original_json(self) -> dict[str, Any]:
        try:
            obj = orjson.loads(self.original_bytes)
        except orjson.JSONDecodeError:
            return {}
        return obj if isinstance(obj, dict) else {}

    @property
    def video_id(self) -> str | None:
        v = self.original_json().get("video_id")
        return v if isinstance(v, str) else self.letter.key

    def as_dict(self) -> dict[str, Any]:
        d = self.letter
        return {
            "partition": self.partition,
            "offset": self.offset,
            "event_id": d.event_id,
            "stage": d.stage,
            "topic": d.topic,
            "key": d.key,
            "video_id": self.video_id,
            "code": d.error.code,
            "message": d.error.message,
            "trace_id": d.trace_id,
        }


async def read_entries(settings: Settings, *, stage: str | None = None, video_id: str | None = None) -> list[Entry]:
    """Every DLQ entry now on the topic (from its start), optionally of one stage and one video."""
    topic = settings.topic(registry.DLQ.name)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False, **settings.kafka_security()
    )
    await consumer.start()
    out: list[Entry] = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer.topics()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for rec in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    try:
                        letter = codec.decode(ev.DeadLetter, rec.value)
                    except FramebusError:
                        continue
                    entry = Entry(rec.partition, rec.offset, letter)
                    if stage and letter.stage != stage:
                        continue
                    if video_id and entry.video_id != video_id:
                        continue
                    out.append(entry)
    finally:
        await consumer.stop()
    out.sort(key=lambda e: (e.partition, e.offset))
    return out


def replay_plan(settings: Settings, entries: list[Entry]) -> list[tuple[str, bytes, bytes, str]]:
    """``(video id, key, ingest value, run id)`` per video to replay (pure): its first entry decides."""
    plan, seen = [], set()
    for e in entries:
        vid = e.video_id
        if not vid or vid in seen:
            continue
        obj = e.original_json()
        if e.letter.stage == "ingest":
            value = e.original_bytes
        elif all(isinstance(obj.get(k), str) for k in ("video_id", "uri", "tenant")):
            value = codec.encode(ev.IngestRequest(video_id=obj["video_id"], uri=obj["uri"], tenant=obj["tenant"]))
        else:
            continue  # nothing to rebuild an ingest request from
        seen.add(vid)
        run = ids.digest("replay", e.letter.event_id or f"{e.partition}:{e.offset}", n=24)
        plan.append((vid, (e.letter.key or vid).encode(), value, run))
    return plan


async def replay(settings: Settings, entries: list[Entry]) -> list[tuple[str, str]]:
    """Send the replay plan to the ingest topic; return ``(video id, run id)`` of what was sent."""
    plan = replay_plan(settings, entries)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        max_request_size=max(settings.max_event_bytes * 2, 1_048_576),
        **settings.kafka_security(),
    )
    await producer.start()
    try:
        for _, key, value, run in plan:
            await producer.send_and_wait(
                settings.topic(registry.INGEST.name),
                key=key,
                value=value,
                headers=[(RUN_HEADER, run.encode()), (TRACE_HEADER, run.encode())],
            )
    finally:
        await producer.stop()
    return [(vid, run) for vid, _, _, run in plan]


def list_sync(settings: Settings, **kw: Any) -> list[Entry]:
    return asyncio.run(read_entries(settings, **kw))


def replay_sync(settings: Settings, **kw: Any) -> list[tuple[str, str]]:
    return asyncio.run(replay(settings, asyncio.run(read_entries(settings, **kw))))
