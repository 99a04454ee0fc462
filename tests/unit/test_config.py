from __future__ import annotations

from pathlib import Path

import pytest

from framebus.streams.config import load_settings


def test_contract_environment_variables(monkeypatch):
    monkeypatch.setenv("FRAMEBUS_BROKER", "k1:9092,k2:9092")
    monkeypatch.setenv("FRAMEBUS_DATA_DIR", "/srv/fb")
    monkeypatch.setenv("FRAMEBUS_MODELS", "tiny")
    monkeypatch.setenv("FRAMEBUS_INGEST_ROOTS", "/media/a:/media/b")
    monkeypatch.setenv("FRAMEBUS_TOPIC_PREFIX", "prod.")
    s = load_settings()
    assert s.broker == s.bootstrap == "k1:9092,k2:9092"
    assert s.data_dir == Path("/srv/fb") and s.models == "tiny"
    assert s.ingest_roots == [Path("/media/a"), Path("/media/b")]
    assert s.topic("framebus.ingest") == "prod.framebus.ingest"


def test_file_then_environment_then_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "framebus.toml"
    cfg.write_text('models = "default"\npartitions = 8\nsample_fps = 2.0\n')
    monkeypatch.setenv("FRAMEBUS_PARTITIONS", "6")
    s = load_settings(cfg, sample_fps=None, models="tiny")
    assert (s.models, s.partitions, s.sample_fps) == ("tiny", 6, 2.0)


def test_security_settings_pass_through(monkeypatch):
    monkeypatch.setenv("FRAMEBUS_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FRAMEBUS_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FRAMEBUS_SASL_USERNAME", "u")
    monkeypatch.setenv("FRAMEBUS_SASL_PASSWORD", "p")
    sec = load_settings().kafka_security()
    assert sec == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    # every Kafka client of a worker gets them: stage consumers, table restores, the producer
    from framebus.streams.runtime import Runtime

    kwargs = Runtime.consumer_kwargs(type("R", (), {"settings": load_settings(), "client_kwargs": lambda self: sec})())
    assert {k: kwargs[k] for k in sec} == sec


def test_invalid_values_are_rejected(monkeypatch):
    monkeypatch.setenv("FRAMEBUS_SAMPLE_FPS", "-1")
    with pytest.raises(ValueError):  # pydantic's ValidationError
        load_settings()
