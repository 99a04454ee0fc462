"""Two workers in one consumer group share the partitions and process every video exactly once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import orjson
import pytest

from framebus.loadtest import videos
from framebus.streams.broker import EmbeddedBroker, ensure_topics
from framebus.streams.client import MetadataWatcher, publish_ingest
from framebus.streams.config import load_settings
from framebus.streams.demo import free_port, start_process, stop_stack
from framebus.topics.events import IngestRequest
from tests.integration.conftest import stack_env

pytestmark = pytest.mark.integration


def start_worker(name: str, broker: str, env: dict, log_path) -> subprocess.Popen:
    return start_process(
        [
            sys.executable,
            "-m",
            "framebus.streams.cli",
            "worker",
            "--agents",
            "all",
            "--broker",
            broker,
            "--name",
            name,
            "--log-level",
            "info",
        ],
        env,
        "framebus worker ready",
        log_path,
        timeout_s=180,
    )


def test_two_workers_share_partitions_and_publish_each_video_once(tmp_path, tiny_models):
    broker = EmbeddedBroker(f"127.0.0.1:{free_port()}")
    broker.start()
    procs = []
    try:
        media = tmp_path / "media"
        media.mkdir()
        paths = [
            videos.make_clip(media / f"v{i}.mp4", "h264", 64, 48, 24, 1.0 + (i % 3) * 0.5, "squares", seed=i)
            for i in range(12)
        ]
        settings = load_settings(broker=broker.address)
        asyncio.run(ensure_topics(settings))
        for name in ("w1", "w2"):
            env = stack_env(
                tmp_path / f"data-{name}", [media], FRAMEBUS_BROKER=broker.address, FRAMEBUS_DECODE_WORKERS="1"
            )
            procs.append((name, start_worker(name, broker.address, env, tmp_path / f"{name}.log")))

        # Both joined; the group has rebalanced once the second one said ready.
        requests = [
            IngestRequest(video_id=f"so-{i}-{uuid.uuid4().hex[:6]}", uri=str(p), tenant="scale")
            for i, p in enumerate(paths)
        ]

        async def ingest_and_collect():
            watcher = MetadataWatcher(settings)
            await watcher.start()
            await publish_ingest(settings, requests)
            seen: list[str] = []
            wanted = {r.video_id for r in requests}
            deadline = time.monotonic() + 240
            # read everything until all arrived, plus a grace period to catch duplicates
            grace = None
            while time.monotonic() < deadline:
                for recs in (await watcher.consumer.getmany(timeout_ms=500)).values():
                    seen.extend(orjson.loads(r.value)["video_id"] for r in recs)
                if wanted <= set(seen):
                    grace = grace or time.monotonic() + 5
                    if time.monotonic() > grace:
                        break
            await watcher.stop()
            return seen

        seen = asyncio.run(ingest_and_collect())
        ours = [v for v in seen if v.startswith("so-")]
        assert sorted(ours) == sorted(r.video_id for r in requests), "each video exactly once"
        logs = {name: (tmp_path / f"{name}.log").read_text() for name, _ in procs}
        for name, text in logs.items():
            assert f"by {name}" in text, f"worker {name} published nothing: partitions not shared"
    finally:
        for _, proc in procs:
            stop_stack(proc)
        broker.stop()
