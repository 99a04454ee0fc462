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
import orjson
from rich.console import Console
from rich.markup import escape

from framebus.streams.client import ingest
from framebus.streams.cliutil import print_metadata_table, print_search_results
from framebus.streams.config import load_settings
from framebus.topics.events import IngestRequest

console = Console(width=None if sys.stdout.isatty() else 160)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(
    cmd: list[str],
    env: dict[str, str],
    ready_marker: str,
    log_path: Path,
    *,
    timeout_s: float = 240.0,
    cwd: str | None = None,
) -> subprocess.Popen:
    """Start a framebus command and return once its stdout printed ``ready_marker``.

    Its stdout and stderr go to ``log_path``; a process that exits or stays silent past ``timeout_s``
    is stopped and reported with the end of its log.
    """
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=log, text=True)
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            if ready_marker in line:
                ready.set()
            log.write(line.encode())
            log.flush()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_stack(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(cmd[2:4])} did not become ready (exit {proc.returncode}):\n{tail}")
    return proc


def start_stack(
    env: dict[str, str], broker: str, http: str, log_path: Path, timeout_s: float = 240.0
) -> subprocess.Popen:
    """Start ``framebus up`` and return once it printed its ready line."""
    return start_process(
        [sys.executable, "-m", "framebus.streams.cli", "up", "--embedded-broker", broker, "--http", http],
        env,
        "framebus ready",
        log_path,
        timeout_s=timeout_s,
    )


def stop_stack(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


DEMO_VIDEOS = (  # (name, shots): one object each, the star shots are "unsafe" (category hazard)
    ("harbour", [("circle", "red", "left"), ("square", "blue", "up"), ("star", "yellow", "right")]),
    ("meadow", [("triangle", "green", "down"), ("circle", "white", "right")]),
    ("night", [("square", "yellow", "left"), ("star", "red", "down"), ("triangle", "blue", "up")]),
)
QUERIES = ("a red circle moving left", "a blue square moving up", "a green triangle")


def make_demo_videos(directory: Path) -> list[Path]:
    from framebus.models.world import ShotSpec, make_world_video

    paths = []
    for v, (name, shots) in enumerate(DEMO_VIDEOS):
        specs = [
            ShotSpec(shape=a, colour=b, motion=c, background=(v + k) % 6, seed=1000 + 10 * v + k)
            for k, (a, b, c) in enumerate(shots)
        ]
        paths.append(make_world_video(directory / f"{name}.mp4", specs, fps=24, width=320, height=240).path)
    return paths


def train_tiny_models(settings) -> None:
    """Train the tiny models that are missing or stale (the first run only), saying so and how long it took."""
    from framebus.models.training import TRAINERS, ensure_tiny_models, missing_models, tiny_path

    todo = missing_models(settings)
    if not todo:
        where = sorted({str(tiny_path(settings, t.name).parent) for t in TRAINERS})
        console.print(f"tiny models: {', '.join(where)}")
        return
    console.print(
        f"training the tiny models on the synthetic world ({', '.join(todo)}) into "
        f"{settings.cache_dir if settings.model_dir is None else settings.model_dir}: no shipped "
        f"weights match this recipe (seed {settings.train_seed}); once per recipe, a few minutes on 2 CPU cores..."
    )
    started = time.monotonic()
    ensure_tiny_models(settings, progress=lambda line: console.print(f"  {line}"))
    console.print(f"trained in {time.monotonic() - started:.0f}s")


GENERATE_PROMPT = "a red circle moving left"


def demo_generation(settings, http: str, strip: Path, data_dir: Path) -> bool:
    """Generate a clip from a prompt (progress bar from framebus.generate.progress), save a strip of its
    frames as an image, and find it in search as generated content (the closed loop)."""
    import uuid

    import av
    import numpy as np
    from PIL import Image
    from rich.progress import BarColumn, Progress, TextColumn

    from framebus.streams.client import generate
    from framebus.topics.events import GenerationRequest

    console.rule("generation")
    req = GenerationRequest(
        job_id=f"demo-{uuid.uuid4().hex[:8]}",
        prompt=GENERATE_PROMPT,
        tenant="demo",
        seed=1,
        num_frames=16,
        fps=8,
        width=320,
        height=240,
    )
    t0 = time.monotonic()
    with Progress(
        TextColumn(f"generating {GENERATE_PROMPT!r}"), BarColumn(), TextColumn("{task.fields[note]}"), console=console
    ) as bar:
        task = bar.add_task("gen", total=None, note="queued")

        def on_progress(p) -> None:
            bar.update(task, total=p.total_steps, completed=p.step, note=f"step {p.step}/{p.total_steps}")

        result = asyncio.run(generate(settings, req, wait=True, timeout_s=600, on_progress=on_progress))
    if result is None or result.status != "ok":
        console.print(f"[red]generation failed:[/] {result.error if result else 'no result'}")
        return False
    path = Path(result.uri.removeprefix("file://"))
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    picks = [frames[i] for i in np.linspace(0, len(frames) - 1, 6).round().astype(int)]
    big = [np.asarray(Image.fromarray(f).resize((160, 160 * f.shape[0] // f.shape[1]), Image.NEAREST)) for f in picks]
    Image.fromarray(np.concatenate(big, axis=1)).save(strip)
    console.print(
        f"generated {len(frames)} frames in {time.monotonic() - t0:.1f}s with "
        f"{result.model.name}/{result.model.version} ({result.steps} steps): {path}"
    )
    console.print(f"frames 1..{len(frames)}, six of them side by side: {strip}")
    from framebus.agents.media.provenance import trust_anchors, verify
    from framebus.agents.media.watermark import detect

    # the stack's data directory holds the local CA its generation agent signed with
    checked = verify(path, trust_anchors=trust_anchors(data_dir, settings.provenance_cert))
    mark = detect(path)
    console.print(
        f"provenance: C2PA {'valid' if checked.valid else 'NOT valid'} (signer "
        f"{(checked.signer or {}).get('subject', {}).get('CN', '-')}), invisible watermark "
        f"{'present' if mark.present else 'absent'} ({mark.marked}/{mark.checked} keyframes): "
        f"framebus provenance verify {path}"
    )
    if not checked.valid:
        console.print(f"[red]the generated clip's provenance does not verify:[/] {checked.message}")
        return False
    deadline, hit = time.monotonic() + 180, None
    while hit is None and time.monotonic() < deadline:
        resp = httpx.get(
            f"http://{http}/search",
            params={"q": GENERATE_PROMPT, "tenant": "demo", "limit": 3, "origin": "generated"},
            timeout=60,
        )
        resp.raise_for_status()
        data = resp.json()
        hit = next((v for v in data["results"] if v["video_id"] == result.video_id), None)
        if hit is None:
            time.sleep(1)
    if hit is None:
        console.print(f"[red]the generated clip {result.video_id} was not found by search[/]")
        return False
    console.print("search for generated content (origin=generated), the clip ingested back (closed loop):")
    print_search_results(data)
    return True


def run_demo(workdir: Path | None = None, *, keep: bool = False, strip_to: Path | None = None) -> int:

    started = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="framebus-demo-")).resolve()
    videos_dir = work / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    console.rule("framebus demo")
    videos = make_demo_videos(videos_dir)
    not_a_video = videos_dir / "notes.mp4"
    not_a_video.write_text("this is a text file with a video extension\n")
    console.print(f"made {len(videos)} videos of a synthetic world in {videos_dir} ({time.monotonic() - started:.1f}s)")

    profile = os.environ.get("FRAMEBUS_MODELS", "tiny")
    settings = load_settings(models=profile)
    tasks = ",".join(settings.tasks)
    if profile == "tiny" and settings.train_tiny:
        train_tiny_models(settings)

    broker, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "FRAMEBUS_MODELS": profile,
        "FRAMEBUS_TASKS": tasks,
        "FRAMEBUS_DATA_DIR": str(work / "data"),
        "FRAMEBUS_INGEST_ROOTS": str(videos_dir),
        "FRAMEBUS_SESSION_TIMEOUT_S": os.environ.get("FRAMEBUS_SESSION_TIMEOUT_S", "6"),
    }
    env.pop("FRAMEBUS_BROKER", None)
    proc = start_stack(env, broker, http, work / "framebus-up.log")
    console.print(
        f"framebus up is ready: broker {broker}, API http://{http} "
        f"({time.monotonic() - started:.1f}s); log in {work / 'framebus-up.log'}"
    )
    try:
        settings = load_settings(embedded_broker=broker)
        requests = [IngestRequest(video_id=p.stem, uri=p.as_uri(), tenant="demo") for p in [*videos, not_a_video]]
        t0 = time.monotonic()
        alerts = AlertWatcher(settings)
        docs = asyncio.run(alerts.around(ingest(settings, requests, wait=True, timeout_s=240)))
        console.print(f"ingested {len(docs)}/{len(requests)} videos through Kafka in {time.monotonic() - t0:.1f}s")
        print_metadata_table([docs[r.video_id] for r in requests if r.video_id in docs])
        truth = {name: shots for name, shots in DEMO_VIDEOS}
        right = {"captions": 0, "verdicts": 0, "shots": 0}
        for r in requests:
            doc = docs.get(r.video_id)
            for shot in doc.shots if doc else []:
                flagged = bool(shot.moderation and shot.moderation.flagged)
                flag = f"  [red]{shot.moderation.action}: {', '.join(shot.moderation.flagged)}[/]" if flagged else ""
                caption = f' "{shot.caption}"' if shot.caption else ""
                quality = ", ".join(
                    f"{k} {v:.2f}"
                    for k, v in (shot.quality or {}).items()
                    if k in ("sharpness_norm", "motion", "temporal_consistency")
                )
                known = truth.get(doc.video_id, [])
                check = ""
                if shot.index < len(known) and len(doc.shots) == len(known):  # the truth, to compare with
                    shape, colour, motion = known[shot.index]
                    unsafe = shape == "star"
                    right["shots"] += 1
                    right["captions"] += shot.caption == f"a {colour} {shape} moving {motion}"
                    right["verdicts"] += flagged == unsafe
                    check = f"  (truth: a {colour} {shape} moving {motion}, {'unsafe' if unsafe else 'safe'})"
                console.print(
                    f"  {doc.video_id} shot {shot.index} {shot.start_s:5.2f}-{shot.end_s:5.2f}s"
                    f"{escape(caption)}{flag}  {escape('[' + quality + ']')}{check}"
                )
        if right["shots"]:
            console.print(
                f"against the truth: {right['captions']}/{right['shots']} captions exactly right, "
                f"{right['verdicts']}/{right['shots']} moderation verdicts right (tiny models trained "
                f"here; `framebus models eval` measures them on held-out videos)"
            )
        if "moderate" in tasks:
            console.print(f"moderation feed (framebus.moderation): {len(alerts.alerts)} alerts")
        for a in alerts.alerts:
            console.print(
                f"  {a['video_id']} {a['start_s']:.2f}-{a['end_s']:.2f}s {a['category']} "
                f"score {a['score']:.2f} >= {a['threshold']:.2f} -> {a['action']}"
            )
        for query in QUERIES:
            resp = httpx.get(f"http://{http}/search", params={"q": query, "tenant": "demo", "limit": 3}, timeout=60)
            resp.raise_for_status()
            print_search_results(resp.json())
        resp = httpx.get(f"http://{http}/search", params={"q": "a shape", "tenant": "demo", "start_s": 3.0}, timeout=60)
        resp.raise_for_status()
        console.print("only shots after the first 3 seconds of their video:")
        print_search_results(resp.json())
        generated = demo_generation(
            settings, http, Path(strip_to or Path.cwd() / "framebus-demo-generated.png"), work / "data"
        )
    finally:
        stop_stack(proc)
    ok = [docs.get(r.video_id) for r in requests[:-1]]
    bad = docs.get(requests[-1].video_id)
    success = all(d is not None and d.status == "ok" for d in ok) and bad is not None and bad.status == "failed"
    success = success and generated
    console.rule(f"demo {'finished' if success else 'FAILED'} in {time.monotonic() - started:.1f}s")
    if not keep and workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if success else 1


class AlertWatcher:
    """Collects ``framebus.moderation`` alerts while a coroutine runs (from the topic's current end)."""

    def __init__(self, settings):
        self.settings = settings
        self.alerts: list[dict] = []

    async def around(self, coro):
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self.settings.topic("framebus.moderation"),
            bootstrap_servers=self.settings.bootstrap,
            group_id=None,
            auto_offset_reset="latest",
            **self.settings.kafka_security(),
        )
        await consumer.start()
        try:
            await consumer.seek_to_end()
            result = await coro
            for _ in range(4):  # alerts precede their video's metadata; drain what is there
                for records in (await consumer.getmany(timeout_ms=250)).values():
                    self.alerts += [orjson.loads(r.value) for r in records]
            return result
        finally:
            await consumer.stop()
