"""Topic values on the wire: UTF-8 JSON objects (orjson), validated against the topic's model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import orjson
from pydantic import ValidationError

from framebus.topics.errors import EventTooLarge, InvalidEvent
from framebus.topics.events import Event

E = TypeVar("E", bound=Event)


def encode(event: Event, *, max_bytes: int | None = None) -> bytes:
    data = orjson.dumps(event.model_dump(mode="json", by_alias=True, exclude_none=True))
    if max_bytes is not None and len(data) > max_bytes:
        raise EventTooLarge(f"{type(event).__name__} is {len(data)} bytes, over the {max_bytes} byte limit")
    return data


def decode(model: type[E], data: bytes | str | None, *, max_bytes: int | None = None) -> E:
    """Parse and validate; raise :class:`InvalidEvent` (``event.invalid``) with a readable reason."""
    if data is None:
        raise InvalidEvent("empty message value (tombstone)")
    if max_bytes is not None and len(data) > max_bytes:
        raise EventTooLarge(f"message is {len(data)} bytes, over the {max_bytes} byte limit")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"value is JSON {type(obj).__name__}, expected an object")
    wanted = model.model_fields["schema_"].default if "schema_" in model.model_fields else None
    if wanted and isinstance(obj.get("schema"), str) and obj["schema"] != wanted:
        raise InvalidEvent(
            f"schema {obj['schema'][:80]!r} is not supported here; this topic takes {wanted!r}",
            code="event.unsupported_schema",
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise InvalidEvent(f"{model.__name__} invalid: {problems}") from None


@dataclass(frozen=True)
class Salvaged:
    """What can still be read from an event that failed: enough to fail its video loudly."""

    video_id: str | None
    tenant: str
    trace_id: str | None = None
    run_id: str | None = None
    uri: str | None = None


def salvage_ids(raw: bytes | str | None, key: bytes | None = None, *, max_bytes: int = 16 * 1024 * 1024) -> Salvaged:
    """Best-effort ids of an event that did not parse or whose handler failed (pure): the JSON fields when
    the value is a JSON object, else the Kafka key as the video id."""
    obj: dict = {}
    if raw is not None and len(raw) <= max_bytes:
        try:
            loaded = orjson.loads(raw)
            obj = loaded if isinstance(loaded, dict) else {}
        except orjson.JSONDecodeError:
            pass

    def text(name: str, limit: int) -> str | None:
        v = obj.get(name)
        return v[:limit] if isinstance(v, str) and v else None

    video_id = text("video_id", 256)
    if not video_id and key:
        video_id = key.decode("utf-8", "replace")[:256] or None
    return Salvaged(
        video_id=video_id,
        tenant=text("tenant", 128) or "unknown",
        trace_id=text("trace_id", 128),
        run_id=text("run_id", 64),
        uri=text("uri", 4096),
    )
