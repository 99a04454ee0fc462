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


class TopicTail:
    """Reads public topics from their current end, without joining a consumer group."""

    def __init__(self, settings: Settings, specs: Iterable[registry.TopicSpec]):
        self.settings = settings
        self.topics = [settings.topic(s.name) for s in specs]
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap, enable_auto_commit=False, group_id=None, **settings.kafka_security()
        )

    async def start(self) -> None:
        await self.consumer.start()
        tps: list[TopicPartition] = []
        deadline = time.monotonic() + 10
        for topic in self.topics:
            parts = self.consumer.partitions_for_topic(topic) or set()
            while not parts and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                await self.consumer.topics()
                parts = self.consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)

    async def records(self, timeout_ms: int = 500) -> list:
        """What arrived within ``timeout_ms`` (possibly nothing)."""
        batch = await self.consumer.getmany(timeout_ms=timeout_ms)
        return [r for records in batch.values() for r in records]

    async def stop(self) -> None:
        await self.consumer.stop()


async def publish_event(settings: Settings, spec: registry.TopicSpec, key: str, event: ev.Event) -> str:
    """Send one public event (with a fresh trace id, which it returns)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, **settings.kafka_security())
    await producer.start()
    trace = uuid.uuid4().hex
    try:
        await producer.send_and_wait(
            settings.topic(spec.name),
            key=key.encode(),
            value=codec.encode(event),
            headers=[(TRACE_HEADER, trace.encode())],
        )
    finally:
        await producer.stop()
    return trace


async def generate(
    settings: Settings,
    request: ev.GenerationRequest,
    *,
    wait: bool,
    timeout_s: float = 600.0,
    on_progress=None,
) -> ev.GenerationResult | None:
    """Publish a generation request; with ``wait`` follow its progress (``on_progress(event)``) to its result."""
    tail = TopicTail(settings, [registry.GENERATE_PROGRESS, registry.GENERATE_RESULTS]) if wait else None
    if tail:
        await tail.start()
    try:
        await publish_event(settings, registry.GENERATE, request.job_id, request)
        if tail is None:
            return None
        results_topic = settings.topic(registry.GENERATE_RESULTS.name)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for rec in await tail.records():
                if rec.key != request.job_id.encode():
                    continue
                if rec.topic == results_topic:
                    return codec.decode(ev.GenerationResult, rec.value)
                if on_progress is not None:
                    on_progress(codec.decode(ev.GenerationProgress, rec.value))
        return None
    finally:
        if tail:
            await tail.stop()
