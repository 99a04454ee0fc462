"""Stage state that survives crashes and moves with its partitions: a table backed by a compacted changelog.

A ``ChangelogTable`` belongs to one stage. Its changelog topic (``<app_id>-<name>-changelog``, created
with ``cleanup.policy=compact``) has as many partitions as the stage's source topic, and the state of
source partition ``p`` lives in changelog partition ``p``: whoever owns ``p`` owns its state.

* ``put``/``delete`` write the changelog first (an acknowledged produce; a delete is a tombstone), then
  the in-memory copy, so a handler that returned has its table writes on the broker.
* When the stage is assigned partitions, ``restore`` reads their changelog partitions from the start to
  the end before the stage takes any event from them; on revoke, ``drop`` forgets them.
* In exactly-once mode a write made inside a stage transaction (``delivery.current_transaction()``) goes
  through that transaction's producer (``Runtime._produce_raw`` routes it) and leaves an undo entry: if the
  transaction aborts, the in-memory copy returns to what it was (unless a later write changed it since).
  The restore consumer then reads ``read_committed`` (``consumer_kwargs``): only committed changelog
  records become state.
* Values are JSON objects that carry the wall time they were first written (``_t``), so expiry
  survives restarts: ``expired(p, ttl_s)`` lists the keys older than ``ttl_s``, restored ones included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from framebus.streams.delivery import current_transaction

log = logging.getLogger("framebus.state")
STAMP = "_t"


class ChangelogTable:
    def __init__(
        self,
        name: str,
        topic: str,
        *,
        produce: Callable[[str, bytes, bytes | None, int], Awaitable[None]],
        consumer_kwargs: dict[str, Any],
        max_keys: int = 1_000_000,
    ):
        self.name = name
        self.topic = topic
        self._produce = produce
        self._consumer_kwargs = consumer_kwargs
        self.max_keys = max_keys
        self.data: dict[int, dict[bytes, dict]] = {}

    # --- reads -------------------------------------------------------------------------------------

    def get(self, partition: int, key: bytes) -> dict | None:
        return self.data.get(partition, {}).get(key)

    def __len__(self) -> int:
        return sum(len(d) for d in self.data.values())

    def items(self, partition: int) -> Iterator[tuple[bytes, dict]]:
        return iter(list(self.data.get(partition, {}).items()))

    def expired(self, partition: int, ttl_s: float, now: float | None = None) -> list[bytes]:
        """Keys of ``partition`` first written more than ``ttl_s`` ago (restored ones too)."""
        horizon = (time.time() if now is None else now) - ttl_s
        return [k for k, v in self.data.get(partition, {}).items() if float(v.get(STAMP, 0.0)) < horizon]

    # --- writes (changelog first) -------------------------------------------------------------------

    async def put(self, partition: int, key: bytes, value: dict, now: float | None = None) -> None:
        """Write ``value`` (a JSON object); it keeps the ``_t`` of the value it replaces."""
        part = self.data.setdefault(partition, {})
        old = part.get(key)
        stamp = value.get(STAMP) or (old or {}).get(STAMP) or (time.time() if now is None else now)
        value = {**value, STAMP: stamp}
        if old is None and len(part) >= self.max_keys:
            raise OverflowError(f"table {self.name} partition {partition} holds {self.max_keys} keys")
        await self._produce(self.topic, key, orjson.dumps(value), partition)
        part[key] = value
        self._undo_on_abort(partition, key, old, value)

    async def delete(self, partition: int, key: bytes) -> None:
        if key not in self.data.get(partition, {}):
            return
        await self._produce(self.topic, key, None, partition)
        old = self.data[partition].pop(key, None)
        self._undo_on_abort(partition, key, old, None)

    def _undo_on_abort(self, partition: int, key: bytes, old: dict | None, new: dict | None) -> None:
        """Inside a stage transaction: if it aborts, ``key`` goes back to ``old``, provided it still holds
        what this write left (``new``; ``None``: deleted) and the partition was not dropped meanwhile."""
        txn = current_transaction()
        if txn is None:
            return
        part = self.data.get(partition)

        def undo() -> None:
            if part is None or self.data.get(partition) is not part or part.get(key) is not new:
                return
            if old is None:
                part.pop(key, None)
            else:
                part[key] = old

        txn.on_abort(undo)

    # --- partitions moving --------------------------------------------------------------------------

    async def restore(self, partitions: set[int]) -> None:
        """Read each partition's changelog from the start to its end (the state the last owner left)."""
        if not partitions:
            return
        started = time.monotonic()
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **self._consumer_kwargs)
        await consumer.start()
        n = 0
        try:
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                part: dict[bytes, dict] = {}
                while await consumer.position(tp) < ends[tp]:
                    got = await consumer.getmany(tp, timeout_ms=1000)
                    for rec in got.get(tp, []):
                        n += 1
                        if rec.value is None:
                            part.pop(rec.key, None)
                        else:
                            part[rec.key] = orjson.loads(rec.value)
                self.data[tp.partition] = part
        finally:
            await consumer.stop()
        log.info(
            "table %s: restored partitions %s (%d keys from %d records) in %.2fs",
            self.name,
            sorted(partitions),
            sum(len(self.data[p]) for p in partitions),
            n,
            time.monotonic() - started,
        )

    def drop(self, partitions: set[int]) -> None:
        for p in partitions:
            self.data.pop(p, None)
