"""Ingest-to-alert latency of moderation, end to end through Kafka.

Starts the whole stack (``framebus up`` with the ``tiny`` models, as ``framebus.streams.demo`` does), renders
``--videos`` world clips (``framebus.models.world``: 2-4 shots each, some showing the unsafe shape, a star),
publishes one ingest request every ``--interval`` seconds (each send timestamped), and reads
``framebus.moderation`` and ``framebus.metadata`` meanwhile. For every unsafe shot the first alert
that falls on it counts:

* alert latency    = receipt of that shot's first alert - send of the video's ingest request
* metadata latency = receipt of the video's metadata document - send of its ingest request
* recall           = unsafe shots alerted / unsafe shots; false alerts = safe shots alerted / safe shots

An alert counts for every unsafe ground-truth shot its ``[start_s, end_s]`` overlaps (by >= 0.25 s: a
segment where the shot detector merged two shots covers both); an alert that covers no unsafe shot is a
false alert on the shot it overlaps most. The first alert's time is also split by stage, on the
producers' create timestamps of the internal events (DecodeTask, the segment's SegmentFrames, the
alert). Percentiles are over few samples (one per unsafe shot): p95 is close to the maximum.

    python -m framebus.loadtest.bench_alerts [--videos K] [--interval S] [--json PATH]

Uses the tiny models of ``--model-dir`` / ``FRAMEBUS_MODEL_DIR``, else the shipped weights or the user cache
(trained there first when neither matches the recipe).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# the videos
# --------------------------------------------------------------------------------------------------


def plan_videos(k: int, seed: int = 7, shot_s: float = 2.0) -> list[list]:
    """``k`` shot lists of 2-4 shots of ``shot_s`` seconds. Every other video gets one or two unsafe shots
    (a star); the others none, so both the alerted and the clean case are covered."""
    from framebus.models.world import SHAPES, UNSAFE_SHAPE, sample_shots

    rng = np.random.default_rng(seed)
    safe_shapes = [s for s in SHAPES if s != UNSAFE_SHAPE]
    plans = []
    for v in range(k):
        n = 2 + v % 3
        shots = sample_shots(rng, n)
        shots = [
            dataclasses.replace(s, shape=safe_shapes[int(rng.integers(len(safe_shapes)))]) if s.unsafe else s
            for s in shots
        ]
        if v % 2 == 0:
            for i in rng.choice(n, size=1 + int(n == 4), replace=False):
                shots[int(i)] = dataclasses.replace(shots[int(i)], shape=UNSAFE_SHAPE)
        plans.append([dataclasses.replace(s, duration_s=shot_s) for s in shots])
    return plans


@dataclasses.dataclass
class Video:
    video_id: str
    path: Path
    bounds: list[tuple[float, float]]
    unsafe: list[bool]
    sent_at: float | None = None
    metadata_at: float | None = None
    status: str | None = None
    shots_detected: int | None = None
    #: create timestamps (the producing agent's clock) of the video's DecodeTask and of each segment's
    #: SegmentFrames: where the time goes between ingest and an alert
    decode_task_at: float | None = None
    frames_at: dict[int, float] = dataclasses.field(default_factory=dict)


def make_videos(media: Path, k: int, run: str, shot_s: float = 2.0) -> list[Video]:
    from framebus.models.world import make_world_video

    out = []
    for v, shots in enumerate(plan_videos(k, shot_s=shot_s)):
        path = media / f"world{v:02d}.mp4"
        wv = make_world_video(path, shots)
        out.append(
            Video(video_id=f"alerts-{run}-{v:02d}", path=path, bounds=list(wv.bounds), unsafe=[s.unsafe for s in shots])
        )
    return out


def covered_shots(video: Video, start_s: float, end_s: float, min_overlap_s: float = 0.25) -> list[int]:
    """Ground-truth shots ``[start_s, end_s]`` overlaps by at least ``min_overlap_s`` (several when the
    shot detector merged shots), else the one it overlaps most."""
    hits = [i for i, (a, b) in enumerate(video.bounds) if min(end_s, b) - max(start_s, a) >= min_overlap_s]
    return hits or [shot_of(video, start_s, end_s)]


def shot_of(video: Video, start_s: float, end_s: float) -> int:
    """Index of the ground-truth shot ``[start_s, end_s]`` overlaps most (nearest middle on a tie of 0)."""
    overlaps = [max(0.0, min(end_s, b) - max(start_s, a)) for a, b in video.bounds]
    if max(overlaps) > 0:
        return int(np.argmax(overlaps))
    mid = (start_s + end_s) / 2
    return int(np.argmin([abs(mid - (a + b) / 2) for a, b in video.bounds]))


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


async def run_ingest(settings, videos: list[Video], interval_s: float, timeout_s: float) -> list[dict[str, Any]]:
    """Publish the ingest requests (paced), collect alerts and metadata until every video has its
    metadata (plus a short drain) or the timeout; returns the alerts with their receipt times."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from framebus.loadtest._kafka import assign_partitions
    from framebus.streams.runtime import TRACE_HEADER
    from framebus.topics import codec, registry
    from framebus.topics import events as ev

    by_id = {v.video_id: v for v in videos}
    topics = [
        settings.topic(spec.name) for spec in (registry.MODERATION, registry.METADATA, registry.DECODE, registry.FRAMES)
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False, group_id=None, **settings.kafka_security()
    )
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, **settings.kafka_security())
    await producer.start()
    alerts: list[dict[str, Any]] = []
    try:
        await assign_partitions(consumer, topics, at_end=True)

        async def publish() -> None:
            t0 = time.monotonic()
            for i, v in enumerate(videos):
                delay = t0 + i * interval_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                req = ev.IngestRequest(video_id=v.video_id, uri=v.path.as_uri(), tenant="bench")
                v.sent_at = time.time()
                await producer.send_and_wait(
                    settings.topic(registry.INGEST.name),
                    key=v.video_id.encode(),
                    value=codec.encode(req),
                    headers=[(TRACE_HEADER, uuid.uuid4().hex.encode())],
                )

        publishing = asyncio.create_task(publish())
        deadline = time.monotonic() + timeout_s
        drain_until = None
        while time.monotonic() < deadline and (drain_until is None or time.monotonic() < drain_until):
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for tp, records in batch.items():
                for rec in records:
                    if tp.topic == topics[0]:
                        a = codec.decode(ev.ModerationAlert, rec.value)
                        if a.video_id in by_id:
                            alerts.append(
                                {
                                    **a.model_dump(mode="json", by_alias=True),
                                    "received_at": now,
                                    "created_at": rec.timestamp / 1000,
                                }
                            )
                    elif tp.topic in topics[2:]:  # internal: only the create time matters
                        doc = json.loads(rec.value)
                        v = by_id.get(doc.get("video_id"))
                        if v is None:
                            continue
                        if tp.topic == topics[2]:
                            v.decode_task_at = v.decode_task_at or rec.timestamp / 1000
                        else:
                            v.frames_at.setdefault(int(doc["segment"]["index"]), rec.timestamp / 1000)
                    else:
                        doc = codec.decode(ev.VideoMetadata, rec.value)
                        v = by_id.get(doc.video_id)
                        if v is not None and v.metadata_at is None:
                            v.metadata_at, v.status, v.shots_detected = now, doc.status, len(doc.shots)
            if publishing.done() and publishing.exception():
                raise publishing.exception()
            if drain_until is None and publishing.done() and all(v.metadata_at for v in videos):
                drain_until = time.monotonic() + 1.0  # alerts precede metadata; a last look anyway
    finally:
        await producer.stop()
        await consumer.stop()
    return alerts


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "min": None, "mean": None}
    arr = np.asarray(values)
    return {
        "n": len(values),
        "min": float(arr.min()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


def evaluate(videos: list[Video], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    by_id = {v.video_id: v for v in videos}
    first_alert: dict[tuple[str, int], dict[str, Any]] = {}
    false: set[tuple[str, int]] = set()
    merged = 0
    for a in sorted(alerts, key=lambda a: a["received_at"]):
        v = by_id[a["video_id"]]
        covered = covered_shots(v, a["start_s"], a["end_s"])
        merged += len(covered) > 1
        hits = [i for i in covered if v.unsafe[i]]
        for i in hits:  # an alert on a segment the detector merged counts for every unsafe shot in it
            first_alert.setdefault((v.video_id, i), a)
        if not hits:
            false.add((v.video_id, shot_of(v, a["start_s"], a["end_s"])))
    first = {k: a["received_at"] for k, a in first_alert.items()}
    unsafe = [(v.video_id, i) for v in videos for i, u in enumerate(v.unsafe) if u]
    safe = [(v.video_id, i) for v in videos for i, u in enumerate(v.unsafe) if not u]
    alert_lat = [first[k] - by_id[k[0]].sent_at for k in unsafe if k in first]
    # where the time of each first alert went, on the producers' create timestamps
    stages: dict[str, list[float]] = {"ingest": [], "decode": [], "moderate": [], "delivery": []}
    for (vid, _), a in first_alert.items():
        v = by_id[vid]
        framed = v.frames_at.get(a.get("segment_index"))
        if v.decode_task_at and framed and v.sent_at:
            stages["ingest"].append(v.decode_task_at - v.sent_at)
            stages["decode"].append(framed - v.decode_task_at)
            stages["moderate"].append(a["created_at"] - framed)
            stages["delivery"].append(a["received_at"] - a["created_at"])
    meta_lat = [v.metadata_at - v.sent_at for v in videos if v.metadata_at and v.sent_at]
    # per video with an alerted unsafe shot: how much earlier the first alert came than the metadata
    lead = []
    for v in videos:
        times = [first[(v.video_id, i)] for i, u in enumerate(v.unsafe) if u and (v.video_id, i) in first]
        if times and v.metadata_at:
            lead.append(v.metadata_at - min(times))
    return {
        "videos": len(videos),
        "shots": len(unsafe) + len(safe),
        "unsafe_shots": len(unsafe),
        "safe_shots": len(safe),
        "alerts": len(alerts),
        "unsafe_alerted": sum(1 for k in unsafe if k in first),
        "safe_alerted": len(false),
        "alerts_on_merged_segments": merged,
        "recall": sum(1 for k in unsafe if k in first) / len(unsafe) if unsafe else None,
        "false_alert_rate": len(false) / len(safe) if safe else None,
        "alert_latency_s": percentiles(alert_lat),
        "alert_stages_s": {k: percentiles(v) for k, v in stages.items()},
        "metadata_latency_s": percentiles(meta_lat),
        "metadata_minus_first_alert_s": percentiles(lead),
        "metadata_ok": sum(1 for v in videos if v.status == "ok"),
        "metadata_missing": [v.video_id for v in videos if v.metadata_at is None],
        "shot_count_mismatch": [
            v.video_id for v in videos if v.shots_detected is not None and v.shots_detected != len(v.bounds)
        ],
    }


def report(res: dict[str, Any]) -> str:
    def row(name: str, p: dict[str, Any]) -> str:
        f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        cells = " | ".join(f"{f(p[k]):>6}" for k in ("p50", "p95", "max", "min"))
        return f"| {name:<38} | {p['n']:>3} | {cells} |"

    lines = [
        f"| {'latency (s)':<38} | {'n':>3} | {'p50':>6} | {'p95':>6} | {'max':>6} | {'min':>6} |",
        f"|{'-' * 40}|-----|--------|--------|--------|--------|",
        row("ingest -> first alert (unsafe shot)", res["alert_latency_s"]),
        row("ingest -> metadata (video)", res["metadata_latency_s"]),
        row("metadata - first alert (video)", res["metadata_minus_first_alert_s"]),
        row("  alert: ingest agent (probe)", res["alert_stages_s"]["ingest"]),
        row("  alert: decode agent (until the shot is sent)", res["alert_stages_s"]["decode"]),
        row("  alert: moderate agent (batch+model)", res["alert_stages_s"]["moderate"]),
        row("  alert: delivery to the consumer", res["alert_stages_s"]["delivery"]),
    ]
    rec = "-" if res["recall"] is None else f"{100 * res['recall']:.0f}%"
    far = "-" if res["false_alert_rate"] is None else f"{100 * res['false_alert_rate']:.0f}%"
    lines.append(
        f"\nunsafe shots alerted: {res['unsafe_alerted']}/{res['unsafe_shots']} ({rec}); safe shots "
        f"falsely alerted: {res['safe_alerted']}/{res['safe_shots']} ({far}); {res['alerts']} alerts; "
        f"metadata ok {res['metadata_ok']}/{res['videos']}"
        + (
            f"; {res['alerts_on_merged_segments']} alerts on a segment spanning several shots (detector "
            f"merged them; counted for each unsafe shot in it)"
            if res["alerts_on_merged_segments"]
            else ""
        )
    )
    if res["metadata_missing"]:
        lines.append(f"no metadata in time for: {', '.join(res['metadata_missing'])}")
    if res["shot_count_mismatch"]:
        lines.append(f"detected shot count differs from the ground truth for: {', '.join(res['shot_count_mismatch'])}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m framebus.loadtest.bench_alerts", description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=16, help="world videos to ingest (default 16)")
    p.add_argument(
        "--shot-s",
        type=float,
        default=2.0,
        help="length of every shot (default 2): longer videos show what streaming out of decode buys",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between ingest requests (default 2; 0 = all at once, a burst)",
    )
    p.add_argument(
        "--tasks",
        default="embed,caption,moderate",
        help="FRAMEBUS_TASKS of the stack (default embed,caption,moderate; must include moderate)",
    )
    p.add_argument(
        "--model-dir",
        default=os.environ.get("FRAMEBUS_MODEL_DIR"),
        help="tiny models from this directory (default: the shipped weights or the user cache)",
    )
    p.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for results after the first send")
    p.add_argument("--workdir", default=None, help="keep videos, data and the stack's log here")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    args = p.parse_args(argv)
    if args.videos < 1 or args.interval < 0:
        p.error("--videos must be >= 1 and --interval >= 0")
    if "moderate" not in [t.strip() for t in args.tasks.split(",")]:
        p.error("--tasks must include moderate")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    from framebus.streams.config import load_settings
    from framebus.streams.demo import free_port, start_stack, stop_stack, train_tiny_models

    work = Path(args.workdir or tempfile.mkdtemp(prefix="framebus-bench-alerts-")).resolve()
    media = work / "media"
    media.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir).resolve() if args.model_dir else None
    check = load_settings(models="tiny", model_dir=model_dir, data_dir=work / "data")
    train_tiny_models(check)

    run = uuid.uuid4().hex[:6]
    t0 = time.monotonic()
    videos = make_videos(media, args.videos, run, args.shot_s)
    n_unsafe = sum(sum(v.unsafe) for v in videos)
    print(
        f"framebus bench_alerts: {len(videos)} world videos, {sum(len(v.bounds) for v in videos)} shots "
        f"({n_unsafe} unsafe) rendered in {time.monotonic() - t0:.1f}s; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; workdir {work}",
        flush=True,
    )

    broker, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEBUS_")}
    env.update(
        {
            "FRAMEBUS_MODELS": "tiny",
            **({"FRAMEBUS_MODEL_DIR": str(model_dir)} if model_dir else {}),
            "FRAMEBUS_DATA_DIR": str(work / "data"),
            "FRAMEBUS_INGEST_ROOTS": str(media),
            "FRAMEBUS_TASKS": args.tasks,
            "FRAMEBUS_SESSION_TIMEOUT_S": "6",
            "FRAMEBUS_DECODE_WORKERS": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    t0 = time.monotonic()
    proc = start_stack(env, broker, http, work / "framebus-up.log")
    print(
        f"framebus up ready in {time.monotonic() - t0:.1f}s (broker {broker}, tasks {args.tasks}); "
        f"log {work / 'framebus-up.log'}",
        flush=True,
    )
    try:
        settings = load_settings(embedded_broker=broker)
        t0 = time.monotonic()
        alerts = asyncio.run(run_ingest(settings, videos, args.interval, args.timeout))
        ingest_s = time.monotonic() - t0
    finally:
        stop_stack(proc)
    res = evaluate(videos, alerts)
    res.update(
        {
            "tasks": args.tasks,
            "interval_s": args.interval,
            "ingest_window_s": round(ingest_s, 1),
            "cores": os.cpu_count(),
        }
    )
    print(
        f"\ningest -> moderation alert, {len(videos)} videos one every {args.interval:g}s "
        f"({ingest_s:.0f}s from the first send to the last result), tiny models, tasks {args.tasks}, "
        f"{os.cpu_count()} cores:"
    )
    print(report(res))
    print(
        f"\nnote: latencies include queueing behind earlier videos on this machine's {os.cpu_count()} cores "
        f"(decode, embed, caption and moderate share them); p95 over {res['alert_latency_s']['n']} samples is "
        f"close to the maximum. total {time.monotonic() - started:.0f}s"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "result": res,
                    "videos": [{**dataclasses.asdict(v), "path": str(v.path)} for v in videos],
                    "alerts": alerts,
                },
                indent=1,
                default=str,
            )
        )
    return 0 if not res["metadata_missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
