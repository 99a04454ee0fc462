"""Batching efficiency of the embed agent under streaming ingest.

efficiency = items/s through the embed agent while SegmentFrames events stream in through Kafka
           / items/s of the same model on pre-made full batches in one process (same run, same items)

The aim is >= 0.9. What the benchmark does, for each ``(batch size, wait)`` setting:

* **baseline** (in this process, nothing else of ours running): ``framebus.agents.embed.embed_segments`` (JPEG
  decode + preprocessing + the model's forward + per-segment mean: the work the agent does per batch,
  here serial in one thread) on full batches of ``batch_size`` segments; best of ``--repeat`` runs.
  ``model-only`` is the same with only the time inside the forward (``AdaptiveBatcher`` busy time).
* **streaming**: one ``framebus worker --agents embed`` child process (``FRAMEBUS_EMBED_BATCH_SIZE`` /
  ``FRAMEBUS_EMBED_BATCH_WAIT_S`` set) against an embedded broker, fresh topics per setting
  (``FRAMEBUS_TOPIC_PREFIX``). This process produces the pre-encoded SegmentFrames to the frames topic
  at a steady rate (``--rate-x`` times the baseline, so the agent is saturated) and reads
  ``framebus.internal.analysis``; items/s = items after the first batch / (last - end of first
  batch), on the records' create timestamps (set by the worker's producer when it sends each result).
  The worker runs with ``--log-level debug`` and logs one line per micro-batch (``framebus.streams.runtime``:
  items, handler, prep, model-thread and forward seconds): batch sizes, and where the time went, come
  from there. The agent overlaps a batch's prep (in a prep thread) with the previous batch's forward
  (in the model thread); the baseline does not, which is the point of the comparison.

Caveat, printed with the results: on a small machine the broker, the producer/consumer (this process)
and the worker share the cores; the CPU seconds each used during the streaming window are reported,
together with the share of the machine other processes took. The baseline has no such competition.

    python -m framebus.loadtest.bench_batching [--segments N] [--batch-sizes 8,32] [--waits 0.05] [--json PATH]

Uses the tiny models of ``--model-dir`` / ``FRAMEBUS_MODEL_DIR``, else the shipped weights or the user cache
(trained there first when neither matches the recipe).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framebus.streams.demo import free_port, start_process, stop_stack, train_tiny_models

REPO = Path(__file__).resolve().parents[1]
BATCH_LINE = re.compile(r"^(\S+ \S+) .*batch agent=(\w+) items=(\d+) handler_s=([\d.]+)((?: \w+=[\d.]+)*)")


# --------------------------------------------------------------------------------------------------
# CPU accounting (Linux /proc; zeros elsewhere)
# --------------------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, since boot."""
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / _TICK, sum(vals[:8]) / _TICK


def model_thread_cpu_s(pid: int | None) -> float:
    """CPU seconds of ``pid``'s threads other than its main thread. In an embed worker the main thread
    runs the event loop (the Kafka clients, parsing, sends), the prep threads
    (``Runtime.prep_executor``) JPEG decode and preprocessing, the model thread the model; the io
    threads are idle."""
    total = 0.0
    if not pid:
        return total
    try:
        tids = [t for t in os.listdir(f"/proc/{pid}/task") if t != str(pid)]
    except OSError:
        return total
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            continue
    return total


class CpuWindow:
    """CPU seconds used by named pids (and the worker's model thread), and by the whole machine,
    between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int | None]):
        self.pids = pids

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.p0 = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        self.model0 = model_thread_cpu_s(self.pids.get("worker"))
        self.m0 = machine_cpu_s()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        used = {k: proc_cpu_s(p) - self.p0[k] for k, p in self.pids.items()}
        busy1, total1 = machine_cpu_s()
        busy, total = busy1 - self.m0[0], total1 - self.m0[1]
        cores = os.cpu_count() or 1
        out = {f"{k}_cpu_s": round(v, 2) for k, v in used.items()}
        out["worker_model_thread_cpu_s"] = round(model_thread_cpu_s(self.pids.get("worker")) - self.model0, 2)
        out["wall_s"] = round(wall, 2)
        out["machine_busy_pct"] = round(100 * busy / total, 1) if total else None
        out["others_cpu_s"] = round(max(0.0, busy - sum(used.values())), 2) if total else None
        out["cores"] = cores
        return out


# --------------------------------------------------------------------------------------------------
# the items: real frames from generated clips, as the decode agent sends them
# --------------------------------------------------------------------------------------------------


def make_source_segments(workdir: Path, settings, *, videos: int = 2, shots_per_video: int = 6) -> list:
    """Render ``videos`` world clips, decode them like the decode agent, return their SegmentFrames."""
    from framebus.agents.media.pipeline import DecodeJob, decode_video
    from framebus.models.world import make_world_video, sample_shots
    from framebus.topics import events as ev

    out = []
    for v in range(videos):
        path = workdir / f"clip{v}.mp4"
        make_world_video(path, sample_shots(100 + v, shots_per_video))
        decoded = decode_video(DecodeJob.from_settings(settings, path, f"clip{v}"))
        info = decoded.info
        facts = ev.VideoFacts(
            duration_s=info.duration_s,
            fps=info.fps,
            width=info.width,
            height=info.height,
            codec=info.codec,
            pix_fmt=info.pix_fmt,
            rotation=info.rotation,
        )
        for seg in decoded.segments:
            frames = [ev.Frame(pts_s=pts, jpeg_b64=base64.b64encode(jpeg).decode()) for pts, jpeg in seg.frames]
            segment = ev.Segment(index=seg.index, start_s=seg.start_s, end_s=seg.end_s, keyframe_s=seg.keyframe_s)
            out.append(
                ev.SegmentFrames(
                    video_id=f"clip{v}",
                    tenant="bench",
                    uri=path.as_uri(),
                    segment=segment,
                    segment_count=len(decoded.segments),
                    frames=frames,
                    video=facts,
                    tasks=["embed"],
                    trace_id=f"trace-clip{v}",
                )
            )
    return out


def replicate(sources: list, n: int) -> list:
    """``n`` items: the sources over and over, each copy under its own video id (spread over partitions)."""
    per_video = max(1, max(s.segment_count for s in sources))
    items = []
    for i in range(n):
        src = sources[i % len(sources)]
        vid = f"bench-{i // per_video:05d}"
        items.append(
            src.model_copy(
                update={
                    "video_id": vid,
                    "trace_id": f"trace-{vid}",
                    "segment": src.segment.model_copy(update={"index": i % per_video}),
                    "segment_count": per_video,
                }
            )
        )
    return items


# --------------------------------------------------------------------------------------------------
# baseline: the same model on pre-made full batches, in process
# --------------------------------------------------------------------------------------------------


def baseline_runs(embedder, items: list, batch_size: int, repeat: int) -> list[dict[str, float]]:
    """``repeat`` timed runs of ``embed_segments`` over ``items`` in full batches (after one warm-up batch)."""
    from framebus.agents.embed import embed_segments
    from framebus.streams.batching import AdaptiveBatcher

    n = max(batch_size, len(items) // batch_size * batch_size)
    items = (items * (n // len(items) + 1))[:n]
    embed_segments(embedder, AdaptiveBatcher("warmup", batch_size), items[:batch_size])
    runs = []
    for _ in range(repeat):
        batcher = AdaptiveBatcher("embed", batch_size)
        t0, c0 = time.perf_counter(), time.process_time()
        for lo in range(0, n, batch_size):
            embed_segments(embedder, batcher, items[lo : lo + batch_size])
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs.append(
            {
                "items": n,
                "items_per_s": n / dt,
                "model_items_per_s": n / batcher.stats.busy_s,
                "items_per_cpu_s": n / cpu if cpu > 0 else 0.0,
            }
        )
    return runs


def summarise_baseline(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Best of the runs (the figure the ratio uses), plus the median and the spread (noise)."""
    out: dict[str, Any] = {"items": runs[0]["items"], "runs": len(runs)}
    for key in ("items_per_s", "model_items_per_s", "items_per_cpu_s"):
        vals = [r[key] for r in runs]
        out[key] = max(vals)
        out[f"{key}_median"] = statistics.median(vals)
        out[f"{key}_min"] = min(vals)
    return out


# --------------------------------------------------------------------------------------------------
# streaming: one embed worker, a paced producer, a consumer of the analysis topic
# --------------------------------------------------------------------------------------------------


@dataclass
class Setting:
    batch_size: int
    wait_s: float

    @property
    def label(self) -> str:
        return f"b{self.batch_size} w{self.wait_s:g}s"


def start_worker(env: dict[str, str], broker: str, log_path: Path, timeout_s: float = 180.0) -> subprocess.Popen:
    """``framebus worker --agents embed`` with debug logging; returns after its ready line."""
    return start_process(
        [
            sys.executable,
            "-m",
            "framebus.streams.cli",
            "worker",
            "--agents",
            "embed",
            "--broker",
            broker,
            "--name",
            "bench-embed",
            "--log-level",
            "debug",
        ],
        env,
        "framebus worker ready",
        log_path,
        timeout_s=timeout_s,
        cwd=str(REPO),
    )


async def stream_items(
    settings, payloads: list[tuple[bytes, bytes]], rate: float, timeout_s: float, cpu: CpuWindow
) -> dict[str, Any]:
    """Produce ``payloads`` to the frames topic at ``rate``/s (0: as fast as possible) while reading the
    analysis topic; returns per-result (create timestamp, receipt time) and the producer's timing."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from framebus.loadtest._kafka import assign_partitions
    from framebus.topics import registry

    frames_topic = settings.topic(registry.FRAMES.name)
    analysis_topic = settings.topic(registry.ANALYSIS.name)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_bytes=16 * 1024 * 1024,
        **settings.kafka_security(),
    )
    await consumer.start()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        linger_ms=2,
        max_request_size=max(settings.max_event_bytes * 2, 1_048_576),
        **settings.kafka_security(),
    )
    await producer.start()
    try:
        await assign_partitions(consumer, [analysis_topic], at_end=False)

        seen: dict[tuple[str, int], tuple[float, float]] = {}
        duplicates = 0
        want = len(payloads)
        produced: dict[str, float] = {}

        async def produce() -> None:
            t0 = time.monotonic()
            produced["start_wall"] = time.time()
            futures = []
            for i, (key, value) in enumerate(payloads):
                if rate > 0:
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                futures.append(await producer.send(frames_topic, value, key=key))
            await asyncio.gather(*futures)
            produced["seconds"] = time.monotonic() - t0
            produced["end_wall"] = time.time()

        cpu.start()
        producing = asyncio.create_task(produce())
        deadline = time.monotonic() + timeout_s
        while len(seen) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            now = time.time()
            for records in batch.values():
                for rec in records:
                    doc = json.loads(rec.value)
                    key = (doc["video_id"], doc["segment"]["index"])
                    if key in seen:
                        duplicates += 1
                        continue
                    seen[key] = (rec.timestamp / 1000.0, now)
            if producing.done() and producing.exception():
                raise producing.exception()
        usage = cpu.stop()
        if not producing.done():
            producing.cancel()
        return {
            "arrivals": sorted(seen.values()),
            "duplicates": duplicates,
            "produced": produced,
            "cpu": usage,
            "complete": len(seen) >= want,
        }
    finally:
        await producer.stop()
        await consumer.stop()


def parse_batches(log_path: Path, agent: str = "embed") -> list[dict[str, float]]:
    """Per micro-batch, from the worker's debug lines (``framebus.streams.runtime``): ``items``, ``handler_s``,
    the ``BATCH_TIMINGS`` (``prep_s``, ``model_s``, ``forward_s``, waits) and ``at`` (logged at)."""
    from datetime import datetime

    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = BATCH_LINE.search(line)
        if m and m.group(2) == agent:
            rec = {k: float(v) for k, v in (kv.split("=") for kv in m.group(5).split())}
            rec.update(
                items=int(m.group(3)),
                handler_s=float(m.group(4)),
                at=datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(),
            )
            out.append(rec)
    return out


def summarise_stream(
    arrivals: list[tuple[float, float]],
    batches: list[dict[str, float]],
    setting: Setting,
    worker_cpu_s: float | None,
    model_thread_cpu_s: float | None = None,
) -> dict[str, Any]:
    """Throughput after the warm-up (the first micro-batch), batch sizes, where the batches' time went."""
    first = int(batches[0]["items"]) if batches else setting.batch_size
    first = max(1, min(first, len(arrivals) - 2))
    out: dict[str, Any] = {"results": len(arrivals), "warmup_items": first}
    for name, idx in (("created", 0), ("received", 1)):
        times = sorted(a[idx] for a in arrivals)
        span = times[-1] - times[first - 1] if len(times) > first else 0.0
        out[f"items_per_s_{name}"] = (len(times) - first) / span if span > 0 else None
        out[f"window_s_{name}"] = span
    out["items_per_cpu_s"] = len(arrivals) / worker_cpu_s if worker_cpu_s else None
    if worker_cpu_s and model_thread_cpu_s is not None and arrivals:
        out["model_thread_cpu_ms_per_item"] = 1e3 * model_thread_cpu_s / len(arrivals)
        out["other_cpu_ms_per_item"] = 1e3 * (worker_cpu_s - model_thread_cpu_s) / len(arrivals)
    rest = batches[1:]
    sizes = [int(b["items"]) for b in batches]
    if rest:
        items = sum(b["items"] for b in rest)
        total = {
            k: sum(b.get(k, 0.0) for b in rest)
            for k in ("handler_s", "prep_s", "model_s", "forward_s", "model_wait_s", "prep_wait_s")
        }
        window = out["window_s_created"]
        out.update(
            {
                "batches": len(batches),
                "batch_sizes": dict(sorted(Counter(sizes).items())),
                "batch_mean": statistics.fmean(sizes),
                "batch_median": statistics.median(sizes),
                "full_batch_share": sum(1 for s in sizes if s >= setting.batch_size) / len(sizes),
                "model_items_per_s": items / total["forward_s"] if total["forward_s"] else None,
                **{f"{k}_per_batch": v / len(rest) for k, v in total.items()},
                # the share of the streaming window the model thread was working: 1 = never waiting for input
                "model_thread_busy": total["model_s"] / window if window else None,
            }
        )
    return out


def run_setting(
    idx: int,
    setting: Setting,
    *,
    broker: str,
    base_env: dict[str, str],
    workdir: Path,
    payload_items: list,
    embedder,
    baseline_items: int,
    repeat: int,
    rate_x: float,
    broker_pid: int | None,
    timeout_s: float,
) -> dict[str, Any]:
    """Start the worker; measure the baseline now (same machine load, worker idle); then stream."""
    from framebus.streams.broker import ensure_topics
    from framebus.streams.config import load_settings
    from framebus.topics import codec

    prefix = f"bench{idx}-{os.getpid()}."
    env = {
        **base_env,
        "FRAMEBUS_TOPIC_PREFIX": prefix,
        "FRAMEBUS_EMBED_BATCH_SIZE": str(setting.batch_size),
        "FRAMEBUS_EMBED_BATCH_WAIT_S": str(setting.wait_s),
        "FRAMEBUS_DATA_DIR": str(workdir / f"data{idx}"),
    }
    settings = load_settings(broker=broker, topic_prefix=prefix)
    asyncio.run(ensure_topics(settings))
    payloads = [(it.video_id.encode(), codec.encode(it, max_bytes=settings.max_event_bytes)) for it in payload_items]
    log_path = workdir / f"worker{idx}.log"
    t0 = time.monotonic()
    proc = start_worker(env, broker, log_path)
    startup = time.monotonic() - t0
    try:
        base_items = payload_items[: max(setting.batch_size, baseline_items)]
        before = baseline_runs(embedder, base_items, setting.batch_size, repeat)
        rate = rate_x * max(r["items_per_s"] for r in before) if rate_x > 0 else 0.0
        cpu = CpuWindow({"worker": proc.pid, "broker": broker_pid, "bench": os.getpid()})
        res = asyncio.run(stream_items(settings, payloads, rate, timeout_s, cpu))
        # the baseline again right after (worker idle again): the machine's load drifts
        after = baseline_runs(embedder, base_items, setting.batch_size, repeat)
    finally:
        stop_stack(proc)
    base = summarise_baseline(before + after)
    print(
        f"{setting.label}: worker ready in {startup:.1f}s; baseline best {base['items_per_s']:.0f} items/s, median "
        f"{base['items_per_s_median']:.0f}, min {base['items_per_s_min']:.0f} ({len(before)} runs before and "
        f"{len(after)} after streaming, {base['items']} items each)",
        flush=True,
    )
    batches = parse_batches(log_path)
    summary = summarise_stream(
        res["arrivals"], batches, setting, res["cpu"].get("worker_cpu_s"), res["cpu"].get("worker_model_thread_cpu_s")
    )
    summary.update(
        {
            "setting": setting.label,
            "batch_size": setting.batch_size,
            "wait_s": setting.wait_s,
            "rate": rate,
            "worker_startup_s": round(startup, 1),
            "complete": res["complete"],
            "duplicates": res["duplicates"],
            "producer_s": res["produced"].get("seconds"),
            "cpu": res["cpu"],
            "worker_log": str(log_path),
        }
    )
    return {"stream": summary, "baseline": base}


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def fmt(v: Any, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def render(hdr: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(x[i]) for x in body)) for i, h in enumerate(hdr)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(hdr), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def ms(v: float | None, digits: str = ".0f") -> str:
    return fmt(None if v is None else 1e3 * v, digits)


def tables(rows: list[dict[str, Any]]) -> str:
    """Efficiency, then where the time went."""
    eff = []
    for r in rows:
        s, b = r["stream"], r["baseline"]
        eff.append(
            [
                s["setting"],
                fmt(b["items_per_s"]),
                fmt(b["items_per_s_median"]),
                fmt(s["items_per_s_created"]),
                fmt(r["ratio"], ".2f"),
                fmt(r["ratio_median"], ".2f"),
                fmt(r["cpu_ratio"], ".2f"),
                fmt(r["model_ratio"], ".2f"),
                fmt(s.get("batches"), "d"),
                fmt(s.get("batch_mean"), ".1f"),
                fmt(100 * s["full_batch_share"] if "full_batch_share" in s else None, ".0f"),
            ]
        )
    where = []
    for r in rows:
        s, b = r["stream"], r["baseline"]
        c = s["cpu"]
        where.append(
            [
                s["setting"],
                ms(s.get("handler_s_per_batch")),
                ms(s.get("prep_s_per_batch")),
                ms(s.get("model_wait_s_per_batch")),
                ms(s.get("model_s_per_batch")),
                ms(s.get("forward_s_per_batch")),
                fmt(100 * s["model_thread_busy"] if s.get("model_thread_busy") is not None else None, ".0f"),
                fmt(s.get("model_thread_cpu_ms_per_item"), ".2f"),
                fmt(s.get("other_cpu_ms_per_item"), ".2f"),
                fmt(1e3 / b["items_per_cpu_s"] if b.get("items_per_cpu_s") else None, ".2f"),
                f"{c.get('worker_cpu_s')} / {c.get('broker_cpu_s')} / {c.get('bench_cpu_s')} / "
                f"{c.get('others_cpu_s')} in {c.get('wall_s')}s",
            ]
        )
    return "\n".join(
        [
            render(
                [
                    "setting",
                    "base it/s",
                    "base median",
                    "stream it/s",
                    "RATIO",
                    "vs median",
                    "per-CPU ratio",
                    "model-only ratio",
                    "batches",
                    "mean size",
                    "full %",
                ],
                eff,
            ),
            "",
            "where the time went (per micro-batch, after the first; CPU per item over the streaming window):",
            render(
                [
                    "setting",
                    "handler ms",
                    "prep ms",
                    "queued ms",
                    "model thread ms",
                    "forward ms",
                    "model busy %",
                    "threads CPU ms/it",
                    "event-loop CPU ms/it",
                    "baseline CPU ms/it",
                    "CPU s worker / broker / bench / others",
                ],
                where,
            ),
        ]
    )


LEGEND = """\
base it/s          embed_segments on full batches in this process, --repeat runs right before and
                   --repeat right after the setting's streaming run (worker started, idle); the best
                   of them (base median: their median); items = segments
stream it/s        results/s out of the embed worker after its first batch (create timestamps of the
                   analysis records), the producer offering --rate-x times the baseline
RATIO              stream / base: the batching efficiency (aim >= 0.9); vs median: stream / base median
per-CPU ratio      items per CPU-second of the worker process over the streaming window / of the best
                   baseline run: the efficiency with "did not get a CPU" factored out
model-only ratio   items / time inside the model's forward only (AdaptiveBatcher busy time, from the
                   worker's per-batch log lines, first batch excluded) / the same in the baseline
batches, mean size, full %  micro-batches the worker's handler received (log lines)
handler ms         handler time per batch: parse, prep, wait for the model thread, model, sends. Two
                   batches are in flight (FRAMEBUS_MODEL_BATCHES_IN_FLIGHT), so handlers overlap
prep ms            JPEG decode + preprocessing in a prep thread (overlaps the model on the other batch)
queued ms          waiting for the model thread (busy with the other batch): > 0 means no bubble
model thread ms    time in the model thread (forward + per-segment means); forward ms: the forward only
model busy %       model thread time / streaming window: 100 = the model never waited for input
CPU ms/it          worker CPU per item: its threads (model + prep) and its main thread (event loop:
                   Kafka clients, parse, sends); baseline: the same work, serial, in process
CPU s              CPU seconds during the streaming window: the worker, the broker, this process
                   (producer + consumer), and every other process on the machine"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m framebus.loadtest.bench_batching", description=__doc__.split("\n\n")[0])
    p.add_argument("--segments", type=int, default=1024, help="segments streamed per setting (default 1024)")
    p.add_argument("--batch-sizes", default="8,32", help="FRAMEBUS_EMBED_BATCH_SIZE values (default 8,32)")
    p.add_argument("--waits", default="0.05", help="FRAMEBUS_EMBED_BATCH_WAIT_S values (default 0.05)")
    p.add_argument(
        "--rate-x",
        type=float,
        default=2.0,
        help="producer rate as a multiple of the baseline items/s; 0 = as fast as possible",
    )
    p.add_argument("--repeat", type=int, default=3, help="baseline repeats (best of)")
    p.add_argument("--baseline-items", type=int, default=256, help="items per baseline run (whole batches)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads in the baseline and the worker (OMP_NUM_THREADS); 0 = torch's "
        "default. 1 by default: on 2 shared cores more threads spin against the broker",
    )
    p.add_argument(
        "--in-flight",
        type=int,
        default=None,
        help="FRAMEBUS_MODEL_BATCHES_IN_FLIGHT of the worker (default: the setting's default)",
    )
    p.add_argument(
        "--model-dir",
        default=os.environ.get("FRAMEBUS_MODEL_DIR"),
        help="tiny models from this directory (default: the shipped weights or the user cache)",
    )
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for one setting's results")
    p.add_argument("--workdir", default=None, help="keep clips, worker logs and broker log here")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    args = p.parse_args(argv)
    args.settings = [
        Setting(int(b), float(w))
        for b in args.batch_sizes.split(",")
        if b.strip()
        for w in args.waits.split(",")
        if w.strip()
    ]
    if not args.settings or min(s.batch_size for s in args.settings) < 1 or args.segments < 2:
        p.error("--batch-sizes must be positive integers and --segments >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    if args.torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)  # before torch is imported
    from framebus.models.registry import load_embedder
    from framebus.streams.broker import EmbeddedBroker
    from framebus.streams.config import load_settings

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="framebus-bench-batching-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir).resolve() if args.model_dir else None
    settings = load_settings(models="tiny", model_dir=model_dir, data_dir=workdir / "data", tasks="embed")
    train_tiny_models(settings)

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(
        f"framebus bench_batching: {args.segments} segments per setting, settings "
        f"{', '.join(s.label for s in args.settings)}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; workdir {workdir}",
        flush=True,
    )

    t0 = time.monotonic()
    sources = make_source_segments(workdir, settings)
    items = replicate(sources, args.segments)
    frames = sum(len(s.frames) for s in sources) / len(sources)
    print(
        f"prepared {len(sources)} real segments ({frames:.1f} frames each, JPEG inline) from 2 clips, "
        f"replicated to {len(items)} in {time.monotonic() - t0:.1f}s",
        flush=True,
    )

    embedder = load_embedder(settings)
    broker_addr = f"127.0.0.1:{free_port()}"
    broker = EmbeddedBroker(broker_addr, log_path=workdir / "broker.log")
    broker.start()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEBUS_")}
    base_env.update(
        {
            "FRAMEBUS_MODELS": "tiny",
            **({"FRAMEBUS_MODEL_DIR": str(model_dir)} if model_dir else {}),
            "FRAMEBUS_TASKS": "embed",
            "FRAMEBUS_SESSION_TIMEOUT_S": "6",
            "FRAMEBUS_APP_ID": "bench-batching",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if args.torch_threads:
        base_env["OMP_NUM_THREADS"] = str(args.torch_threads)
    if args.in_flight:
        base_env["FRAMEBUS_MODEL_BATCHES_IN_FLIGHT"] = str(args.in_flight)
    rows = []
    try:
        for idx, setting in enumerate(args.settings):
            r = run_setting(
                idx,
                setting,
                broker=broker_addr,
                base_env=base_env,
                workdir=workdir,
                payload_items=items,
                embedder=embedder,
                baseline_items=args.baseline_items,
                repeat=args.repeat,
                rate_x=args.rate_x,
                broker_pid=broker.pid,
                timeout_s=args.timeout,
            )
            s, b = r["stream"], r["baseline"]
            r["ratio"] = s["items_per_s_created"] / b["items_per_s"] if s.get("items_per_s_created") else None
            r["ratio_median"] = (
                s["items_per_s_created"] / b["items_per_s_median"] if s.get("items_per_s_created") else None
            )
            r["model_ratio"] = s["model_items_per_s"] / b["model_items_per_s"] if s.get("model_items_per_s") else None
            r["cpu_ratio"] = s["items_per_cpu_s"] / b["items_per_cpu_s"] if s.get("items_per_cpu_s") else None
            rows.append(r)
            print(
                f"{setting.label}: stream {fmt(s.get('items_per_s_created'))} items/s "
                f"(received-side {fmt(s.get('items_per_s_received'))}), ratio {fmt(r['ratio'], '.2f')}, "
                f"per CPU-s ratio {fmt(r['cpu_ratio'], '.2f')}, batches {s.get('batch_sizes')}; worker CPU per "
                f"item: model + prep threads {fmt(s.get('model_thread_cpu_ms_per_item'), '.2f')} ms, rest (event loop, "
                f"Kafka clients) {fmt(s.get('other_cpu_ms_per_item'), '.2f')} ms; baseline "
                f"{fmt(1e3 / b['items_per_cpu_s'] if b['items_per_cpu_s'] else None, '.2f')} ms"
                f"{'' if s['complete'] else ' INCOMPLETE: ' + str(s['results']) + ' results'}",
                flush=True,
            )
    finally:
        broker.stop()

    print(
        f"\nembed agent batching efficiency, {args.segments} segments, torch threads "
        f"{args.torch_threads or 'default'}, {os.cpu_count()} cores:"
    )
    print(tables(rows))
    print("\n" + LEGEND)
    busiest = max((r["stream"]["cpu"].get("machine_busy_pct") or 0 for r in rows), default=0)
    print(
        f"\ncaveat: one machine with {os.cpu_count()} cores; during streaming the machine was up to {busiest:.0f}% "
        f"busy and the broker and this process (producer, consumer) competed with the worker for it; the "
        f"baseline ran without them. Numbers are ratios within this run, not absolute capacity."
    )
    print(f"total {time.monotonic() - started:.0f}s; worker logs in {workdir}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "segments": args.segments,
                    "torch_threads": args.torch_threads,
                    "cores": os.cpu_count(),
                    "rows": rows,
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
