"""Time-to-live for faust table entries, swept from inside the stream of their own partition (faust
ties a table change to the partition of the event being processed)."""

from __future__ import annotations

import time
from collections import defaultdict, deque


class ExpiringKeys:
    """Per partition, the keys noted and when, oldest first. ``due(partition, ttl_s)`` removes and
    returns the keys noted more than ``ttl_s`` ago; the caller deletes what is still stale."""

    def __init__(self) -> None:
        self._noted: defaultdict[int, deque[tuple[float, bytes]]] = defaultdict(deque)

    def note(self, partition: int, key: bytes, now: float | None = None) -> None:
        self._noted[partition].append((time.monotonic() if now is None else now, key))

    def due(self, partition: int, ttl_s: float, now: float | None = None) -> list[bytes]:
        horizon = (time.monotonic() if now is None else now) - ttl_s
        noted, out = self._noted[partition], []
        while noted and noted[0][0] < horizon:
            out.append(noted.popleft()[1])
        return out

    def __len__(self) -> int:
        return sum(len(q) for q in self._noted.values())
