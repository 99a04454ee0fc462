"""Kafka plumbing the benchmarks share: a consumer reading whole topics by partition assignment."""

from __future__ import annotations

import asyncio
import time


async def assign_partitions(consumer, topics: list[str], *, at_end: bool, wait_s: float = 10.0) -> list:
    """Assign every partition of ``framebus.topics`` to a started ``AIOKafkaConsumer`` (no group), waiting up to
    ``wait_s`` for each topic's metadata, and seek to the end (only what comes next) or the beginning."""
    from aiokafka import TopicPartition

    tps = []
    for topic in topics:
        parts = consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + wait_s
        while not parts and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            await consumer.topics()
            parts = consumer.partitions_for_topic(topic) or set()
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    if at_end:
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the positions now, before anything is produced
            await consumer.position(tp)
    else:
        await consumer.seek_to_beginning(*tps)
    return tps
