"""``FRAMEBUS_DELIVERY_GUARANTEE=exactly_once`` against the real embedded broker (Tansu), which has no working
Kafka transactions (it fails at InitProducerId): a real ``framebus worker`` / ``framebus up`` must stop at
once with ``broker.transactions_unsupported`` and one clear line, and the default mode must still start.

The exactly-once mode itself (one transaction per micro-batch) is NOT verified against a broker with
transactions here: none is available to this project's tests (``tests/unit/test_exactly_once.py`` checks
its order of effects with stand-ins).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framebus.streams.broker import EmbeddedBroker, ensure_topics
from framebus.streams.config import load_settings
from framebus.streams.demo import free_port, start_process, stop_stack
from tests.integration.conftest import stack_env

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "framebus.streams.cli"]
UNSUPPORTED = "broker.transactions_unsupported"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    base = tmp_path_factory.mktemp("eos")
    b = EmbeddedBroker(f"127.0.0.1:{free_port()}", log_path=base / "broker.log")
    b.start()
    try:
        asyncio.run(ensure_topics(load_settings(broker=b.address, data_dir=base / "data")))
        yield b
    finally:
        b.stop()


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 120) -> tuple[int, str, float]:
    env = {**env, "COLUMNS": "500"}  # the CLI's console wraps at the terminal's width (80 without one)
    started = time.monotonic()
    proc = subprocess.Popen(CLI + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # a clean stop: `up` stops its embedded broker too
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"{args[0]} did not exit within {timeout_s:.0f}s:\n{(out + err)[-4000:]}") from None
    return proc.returncode, out + err, time.monotonic() - started


def assert_one_clear_line(rc: int, out: str, took: float) -> None:
    assert rc != 0, out
    lines = [line for line in out.splitlines() if UNSUPPORTED in line]
    assert lines, out[-4000:]
    assert "Apache Kafka >= 2.5" in lines[-1] and "FRAMEBUS_DELIVERY_GUARANTEE=at_least_once" in lines[-1], lines
    assert "Traceback" not in out, out[-4000:]
    assert took < 60, f"took {took:.0f}s to fail"


def test_a_worker_in_exactly_once_mode_fails_fast_on_a_broker_without_transactions(broker, tmp_path: Path):
    env = stack_env(
        tmp_path / "data",
        [tmp_path],
        FRAMEBUS_BROKER=broker.address,
        FRAMEBUS_DELIVERY_GUARANTEE="exactly_once",
    )
    rc, out, took = run_cli(["worker", "--agents", "publish,index", "--name", "eos"], env)
    assert_one_clear_line(rc, out, took)
    assert "framebus worker ready" not in out


def test_up_in_exactly_once_mode_fails_fast_on_the_embedded_broker(tmp_path: Path):
    env = stack_env(
        tmp_path / "data",
        [tmp_path],
        FRAMEBUS_DELIVERY_GUARANTEE="exactly_once",
        # no model to load or train first: the check runs when the stages start (Runtime.start), after
        # `up` loaded the models its agents need
        FRAMEBUS_TASKS=",",
        FRAMEBUS_TRAIN_TINY="false",
        FRAMEBUS_EMBEDDED_BROKER=f"127.0.0.1:{free_port()}",
        FRAMEBUS_HTTP=f"127.0.0.1:{free_port()}",
    )
    rc, out, took = run_cli(["up"], env, timeout_s=180)
    assert_one_clear_line(rc, out, took)
    assert "framebus ready" not in out


def test_the_default_mode_still_starts_on_the_same_broker(broker, tmp_path: Path):
    env = stack_env(tmp_path / "data", [tmp_path], FRAMEBUS_BROKER=broker.address)
    log = tmp_path / "worker.log"
    proc = start_process(
        CLI + ["worker", "--agents", "publish,index", "--name", "alo"], env, "framebus worker ready", log, timeout_s=120
    )
    try:
        assert proc.poll() is None
    finally:
        stop_stack(proc)
    assert proc.returncode == 0, log.read_text(errors="replace")[-4000:]
    assert UNSUPPORTED not in log.read_text(errors="replace")
