"""Event models, wire encoding and the topic registry: the public contracts."""

from __future__ import annotations

import json

import jsonschema
import pytest

from framebus.topics import codec, registry
from framebus.topics import events as ev
from framebus.topics.errors import EventTooLarge, InvalidEvent


def test_ingest_request_round_trip_keeps_schema_field_and_unknown_fields():
    raw = b'{"schema":"framebus.ingest/v1","video_id":"v-1","uri":"file:///m/a.mp4","tenant":"acme","x":1}'
    req = codec.decode(ev.IngestRequest, raw)
    assert (req.video_id, req.uri, req.tenant, req.priority) == ("v-1", "file:///m/a.mp4", "acme", 0)
    out = json.loads(codec.encode(req))
    assert out["schema"] == "framebus.ingest/v1" and out["x"] == 1


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"video_id": "v", "tenant": "t"}', "uri"),
        (b'{"video_id": "", "uri": "/a", "tenant": "t"}', "video_id"),
        (b'{"video_id": "v w", "uri": "/a", "tenant": "t"}', "video_id"),
        (b'{"video_id": "v", "uri": "/a", "tenant": "../t"}', "tenant"),
        (b'{"schema": "framebus.ingest/v9", "video_id": "v", "uri": "/a", "tenant": "t"}', "schema"),
        (None, "tombstone"),
    ],
)
def test_invalid_ingest_requests_raise_invalid_event_with_a_reason(raw, fragment):
    with pytest.raises(InvalidEvent) as info:
        codec.decode(ev.IngestRequest, raw)
    assert info.value.code == ("event.unsupported_schema" if fragment == "schema" else "event.invalid")
    assert fragment in info.value.message


def test_size_limits_are_enforced_both_ways():
    big = ev.IngestRequest(video_id="v", uri="/" + "a" * 3000, tenant="t")
    with pytest.raises(EventTooLarge):
        codec.encode(big, max_bytes=1000)
    with pytest.raises(EventTooLarge) as info:
        codec.decode(ev.IngestRequest, codec.encode(big), max_bytes=1000)
    assert info.value.code == "event.too_large"


def test_public_topics_have_the_contract_names_and_required_fields():
    names = {spec.name for spec in registry.PUBLIC}
    assert names == {
        "framebus.ingest",
        "framebus.metadata",
        "framebus.moderation",
        "framebus.generate",
        "framebus.generate.progress",
        "framebus.generate.results",
        "framebus.generate.cancel",
        "framebus.dlq",
    }
    schemas = registry.json_schemas()
    required = {
        "framebus.ingest": {"video_id", "uri", "tenant"},
        "framebus.metadata": {"video_id", "tenant", "status"},
        "framebus.moderation": {"video_id", "tenant", "start_s", "end_s", "category", "score", "threshold", "action"},
        "framebus.generate": {"job_id", "prompt", "tenant"},
        "framebus.generate.results": {"job_id", "status"},
    }
    for topic, fields in required.items():
        assert fields <= set(schemas[topic]["required"]), topic
    meta_props = schemas["framebus.metadata"]["properties"]
    for field in ("error", "duration_s", "fps", "width", "height", "codec", "shots", "models", "trace_id"):
        assert field in meta_props


def test_json_schema_validates_what_a_foreign_producer_sends():
    schema = registry.json_schemas()["framebus.ingest"]
    jsonschema.validate({"schema": "framebus.ingest/v1", "video_id": "v1", "uri": "/a.mp4", "tenant": "t"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"video_id": "v1", "tenant": "t"}, schema)


def test_every_topic_is_declared_once_with_a_model():
    names = [spec.name for spec in registry.ALL]
    assert len(names) == len(set(names))
    assert all(issubclass(spec.model, ev.Event) for spec in registry.ALL)
    assert all(spec.name.startswith("framebus.internal.") for spec in registry.INTERNAL)
