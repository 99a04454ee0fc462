"""Topic values on the wire: UTF-8 JSON objects (orjson), validated against the topic's model."""

from __future__ import annotations

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
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise InvalidEvent(f"{model.__name__} invalid: {problems}") from None
