"""A small Kafka client for producers and consumers of framebus's public topics.

Plain aiokafka on the public contracts; a producer in any other language does the same with its own
Kafka client (see the README).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from framebus.streams.config import Settings
from framebus.streams.runtime import TRACE_HEADER
from framebus.topics import codec, registry
from framebus.topics import events as ev


def video_id_for(path: Path) -> str:
    """A stable id for a local file: its name plus a digest of its absolute path."""
    resolved = Path(path).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in resolved.stem)[:64] or "video"
    return f"{stem}-{digest}"


class MetadataWatcher:
    """Reads ``framebus.metadata`` from its current end, without joining a consumer group."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap, enable_auto_commit=False, group_id=None, **settings.kafka_security()
        )

    async def start(self) -> None:
        await self.consumer.start()
        topic = self.settings.topic(registry.METADATA.name)
        parts = self.consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + 10
        while not parts and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            await self.consumer.topics()  # refreshes cluster metadata
            parts = self.consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # pin the positions now, before anything is produced
            await self.consumer.position(tp)

    async def wait_for(self, video_ids: Iterable[str], timeout_s: float) -> dict[str, ev.VideoMetadata]:
        wanted, found = set(video_ids), {}
        deadline = time.monotonic() + timeout_s
        while wanted - found.keys() and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    doc = codec.decode(ev.VideoMetadata, rec.value)
                    if doc.video_id in wanted:
                        found[doc.video_id] = doc
        return found

    async def stop(self) -> None:
        await self.consumer.stop()


async def publish_ingest(settings: Settings, requests: list[ev.IngestRequest]) -> list[str]:
    """Send ingest requests; return their trace ids (also sent as the trace header)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, **settings.kafka_security())
    await producer.start()
    traces = []
    try:
        for req in requests:
            trace = uuid.uuid4().hex
            await producer.send_and_wait(
                settings.topic(registry.INGEST.name),
                key=req.video_id.encode(),
                value=codec.encode(req),
                headers=[(TRACE_HEADER, trace.encode())],
            )
            traces.append(trace)
    finally:
        await producer.stop()
    return traces


async def ingest(
    settings: Settings, requests: list[ev.IngestRequest], *, wait: bool, timeout_s: float = 300.0
) -> dict[str, ev.VideoMetadata]:
    """Publish, and with ``wait`` follow each video to its metadata document."""
    watcher = MetadataWatcher(settings) if wait else None
    if watcher:
        await watcher.start()
    try:
        await publish_ingest(settings, requests)
        if not watcher:
            return {}
        return await watcher.wait_for([r.video_id for r in requests], timeout_s)
    finally:
        if watcher:
            await watcher.stop()
