"""The embedded broker: explicit topic creation and supervision of the child process."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from framebus.streams.broker import EmbeddedBroker, ensure_topics, topic_partitions
from framebus.streams.config import load_settings
from framebus.streams.demo import free_port
from framebus.topics.errors import BrokerError

pytestmark = pytest.mark.integration


def test_topics_are_created_with_the_configured_partitions_and_recreated_after_a_crash():
    settings = load_settings(embedded_broker=f"127.0.0.1:{free_port()}", partitions=3, topic_prefix="t.")
    restarted = []
    broker = EmbeddedBroker(
        settings.embedded_broker, on_restart=lambda: restarted.append(asyncio.run(ensure_topics(settings)))
    )
    broker.start()
    try:
        found = asyncio.run(ensure_topics(settings))
        assert found == topic_partitions(settings)
        assert set(found.values()) == {3} and "t.framebus.ingest" in found
        first_pid = broker.pid
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not restarted and time.monotonic() < deadline:
            time.sleep(0.2)
        assert restarted, "the supervisor did not restart the broker"
        assert broker.pid != first_pid and broker.restarts == 1
        assert restarted[0] == topic_partitions(settings)
    finally:
        broker.stop()


def test_a_busy_address_is_a_clear_error():
    address = f"127.0.0.1:{free_port()}"
    first = EmbeddedBroker(address)
    first.start()
    try:
        with pytest.raises(BrokerError) as info:
            EmbeddedBroker(address).start()
        assert info.value.code == "broker.address_in_use"
    finally:
        first.stop()
