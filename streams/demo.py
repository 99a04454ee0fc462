"""``framebus demo``: the whole flow on one machine, offline, in a few minutes on 2 cores.

Makes sample videos, starts ``framebus up`` (embedded broker, all agents, embedded Qdrant, HTTP API) as a
child process, ingests the videos through Kafka, prints each video's metadata and a few searches, stops.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console

from streams.client import ingest, video_id_for
from streams.config import load_settings
from topics.events import IngestRequest

console = Console(width=None if sys.stdout.isatty() else 160)
QUERIES = ("a red ball moving", "blue squares", "green waves", "noise")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_stack(env: dict[str, str], broker: str, http: str, log_path: Path,
                timeout_s: float = 240.0) -> subprocess.Popen:
    """Start ``framebus up`` and return once it printed its ready line."""
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "up", "--embedded-broker", broker, "--http", http],
                            env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            if "framebus ready" in line:
                ready.set()
            log.write(line.encode())
            log.flush()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_stack(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"framebus up did not become ready (exit {proc.returncode}):\n{tail}")
    return proc


def stop_stack(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(workdir: Path | None = None, *, keep: bool = False) -> int:
    from loadtest.videos import make_sample_set
    from streams.cli import print_metadata_table, print_search_results

    started = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="framebus-demo-")).resolve()
    videos_dir = work / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    console.rule("framebus demo")
    videos = make_sample_set(videos_dir)
    not_a_video = videos_dir / "notes.mp4"
    not_a_video.write_text("this is a text file with a video extension\n")
    console.print(f"made {len(videos)} sample videos in {videos_dir} ({time.monotonic() - started:.1f}s)")

    broker, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**os.environ, "FRAMEBUS_MODELS": os.environ.get("FRAMEBUS_MODELS", "tiny"),
           "FRAMEBUS_DATA_DIR": str(work / "data"), "FRAMEBUS_INGEST_ROOTS": str(videos_dir),
           "FRAMEBUS_SESSION_TIMEOUT_S": os.environ.get("FRAMEBUS_SESSION_TIMEOUT_S", "6")}
    env.pop("FRAMEBUS_BROKER", None)
    proc = start_stack(env, broker, http, work / "framebus-up.log")
    console.print(f"framebus up is ready: broker {broker}, API http://{http} "
                  f"({time.monotonic() - started:.1f}s); log in {work / 'framebus-up.log'}")
    try:
        settings = load_settings(embedded_broker=broker)
        requests = [IngestRequest(video_id=video_id_for(p), uri=p.as_uri(), tenant="demo")
                    for p in [*videos, not_a_video]]
        t0 = time.monotonic()
        docs = asyncio.run(ingest(settings, requests, wait=True, timeout_s=240))
        console.print(f"ingested {len(docs)}/{len(requests)} videos through Kafka in {time.monotonic() - t0:.1f}s")
        print_metadata_table([docs[r.video_id] for r in requests if r.video_id in docs])
        if env["FRAMEBUS_MODELS"] == "tiny":
            console.print("note: the tiny profile's CLIP has seeded, untrained weights: the searches below show "
                          "the mechanics (tenant filter, grouping, time ranges), not semantic ranking yet")
        for query in QUERIES:
            resp = httpx.get(f"http://{http}/search", params={"q": query, "tenant": "demo", "limit": 3}, timeout=60)
            resp.raise_for_status()
            print_search_results(resp.json())
    finally:
        stop_stack(proc)
    ok = [docs.get(r.video_id) for r in requests[:-1]]
    bad = docs.get(requests[-1].video_id)
    success = all(d is not None and d.status == "ok" for d in ok) and bad is not None and bad.status == "failed"
    console.rule(f"demo {'finished' if success else 'FAILED'} in {time.monotonic() - started:.1f}s")
    if not keep and workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if success else 1
