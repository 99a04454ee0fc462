"""A load generator and soak test: ingest (and optionally search) at a steady rate, measure the stack.

``framebus loadtest`` (or ``python -m framebus.loadtest``) renders ``--distinct`` synthetic-world clips of
``--video-seconds`` at ``--width`` x ``--height`` once (shots of coloured shapes with hard cuts; about one
shot in four shows the unsafe star, so the moderation feed has alerts to time), then publishes one ingest
request with a fresh video id every ``1 / --rate`` seconds for ``--duration`` seconds, cycling through the
clips, and optionally sends ``GET /search?q=...`` at ``--search-rate``. It attaches to a running stack
(``--broker``, ``--http``; ``--pid`` and ``--data-dir`` for RSS and the blob store) or starts its own
``framebus up`` with the embedded broker in a temporary data directory (``--start-stack``) and stops it
at the end. After the load phase it waits up to ``--drain`` seconds for the last metadata documents, then
stops by itself.

Measured:

* throughput: metadata documents per second (``ok`` and ``failed`` counted apart);
* ingest -> metadata latency: from the publish of a video's ingest request to the receipt of its first
  document on ``framebus.metadata``; ingest -> alert: to its first ``ModerationAlert``, when it has one;
* consumer lag per stage over time: end offset - committed offset of the stage's consumer group, summed
  over the partitions of the topic it consumes (``stage_groups`` names the groups; a missing group is
  unknown, not zero);
* RSS over time of the ``framebus up`` process and all its descendants (``/proc``: a sum of resident sets,
  so pages shared after a fork count once per process), and the blob store's size (apparent bytes under
  ``<data dir>/blobs``).

Writes ``loadtest.json`` and ``loadtest.png`` into ``--out``. Exits 1 when a video was not published or
got no metadata document within the drain, or when a stated bound (``--max-rss-mb``,
``--max-rss-growth-mb``, ``--max-lag``, ``--max-blob-mb``) is exceeded; 0 otherwise.

    framebus loadtest --start-stack --rate 1 --duration 600 --video-seconds 4 --width 320 --height 240 \\
        --search-rate 2 --max-rss-mb 6000 --max-lag 200 --max-blob-mb 500 --out soak
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("ingest", "decode", "embed", "caption", "moderate", "index", "publish")
#: the topic each stage consumes (before ``Settings.topic`` adds the prefix)
STAGE_TOPICS = {
    "ingest": "framebus.ingest",
    "decode": "framebus.internal.decode",
    "embed": "framebus.internal.frames",
    "caption": "framebus.internal.frames",
    "moderate": "framebus.internal.frames",
    "index": "framebus.internal.analysis",
    "publish": "framebus.internal.progress",
}
#: the consumer group of each stage; ``{app_id}`` and ``{stage}`` are filled in (``--group-template``)
GROUP_TEMPLATE = "{app_id}.{stage}"
MB = 1024 * 1024


def stage_groups(
    app_id: str, topic: Callable[[str], str], template: str = GROUP_TEMPLATE
) -> dict[str, tuple[str, str]]:
    """``stage -> (consumer group, topic it consumes)``: the one place that names the groups whose lag is
    measured. ``topic`` applies the topic prefix (``Settings.topic``)."""
    return {s: (template.format(app_id=app_id, stage=s), topic(STAGE_TOPICS[s])) for s in STAGES}


# --------------------------------------------------------------------------------------------------
# pure parts: schedule, percentiles, lag, /proc, growth
# --------------------------------------------------------------------------------------------------


def send_offsets(rate: float, duration_s: float) -> list[float]:
    """Seconds after the start at which to send, ``rate`` per second for ``duration_s``: ``i / rate`` for
    every ``i`` with ``i / rate < duration_s``. Absolute offsets, so a late send does not delay the rest."""
    if rate <= 0 or duration_s <= 0:
        return []
    n = math.ceil(rate * duration_s - 1e-9)
    return [i / rate for i in range(n)]


def percentiles(values: Iterable[float]) -> dict[str, float | int | None]:
    """``n``, ``min``, ``p50``, ``p90``, ``p99``, ``max``, ``mean`` (linear interpolation); ``None`` when empty."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"n": 0, "min": None, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    p50, p90, p99 = (float(x) for x in np.percentile(arr, [50, 90, 99]))
    return {
        "n": int(arr.size),
        "min": float(arr.min()),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


def group_lag(
    end: dict[int, int], committed: dict[int, int], beginning: dict[int, int], *, group_exists: bool
) -> int | None:
    """Lag of one group on one topic: ``sum(end - committed)`` over the topic's partitions (``end``).

    A partition without a commit (absent or ``-1``) counts from its beginning offset when the group exists
    (everything still on it is unconsumed); a group that neither exists nor committed anything is unknown:
    ``None``. A commit ahead of the end (a stale end offset) counts 0, never negative."""
    has_commit = any(committed.get(p, -1) >= 0 for p in end)
    if not has_commit and not group_exists:
        return None
    total = 0
    for p, e in end.items():
        c = committed.get(p, -1)
        if c < 0:
            c = beginning.get(p, 0)
        total += max(0, e - c)
    return total


def parse_vmrss_kb(status_text: str) -> int | None:
    """``VmRSS`` of a ``/proc/<pid>/status`` text, in kB (``None`` for a kernel thread or a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return None


def parse_stat(stat_text: str) -> tuple[int, str, int]:
    """``(pid, comm, ppid)`` of a ``/proc/<pid>/stat`` line; ``comm`` may hold spaces and parentheses."""
    head, _, rest = stat_text.rpartition(")")
    pid_s, _, comm = head.partition(" (")
    fields = rest.split()
    return int(pid_s), comm, int(fields[1])


def descendants(ppids: dict[int, int], root: int) -> list[int]:
    """``root`` and every process below it, from a ``pid -> ppid`` map; parents before children."""
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out, todo, seen = [], [root], set()
    while todo:
        pid = todo.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        todo += sorted(children.get(pid, []))
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:  # the process exited between listing and reading, or no permission
        return None


def process_table(proc: Path = Path("/proc")) -> dict[int, tuple[str, int]]:
    """``pid -> (comm, ppid)`` of every process visible under ``proc``."""
    out = {}
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        text = _read(entry / "stat")
        if text:
            try:
                pid, comm, ppid = parse_stat(text)
            except (ValueError, IndexError):
                continue
            out[pid] = (comm, ppid)
    return out


def tree_rss(root: int, proc: Path = Path("/proc")) -> dict[str, Any] | None:
    """RSS of ``root`` and its descendants: ``{"total_kb", "main_kb", "processes": {"pid:comm": kb}}``;
    ``None`` when ``root`` is gone."""
    table = process_table(proc)
    if root not in table:
        return None
    per: dict[str, int] = {}
    main = None
    for pid in descendants({p: pp for p, (_, pp) in table.items()}, root):
        text = _read(proc / str(pid) / "status")
        kb = parse_vmrss_kb(text) if text else None
        if kb is None:
            continue
        per[f"{pid}:{table[pid][0]}"] = kb
        if pid == root:
            main = kb
    return {"total_kb": sum(per.values()), "main_kb": main, "processes": per}


def find_up_pids(proc: Path = Path("/proc")) -> list[int]:
    """Processes whose command line runs ``framebus up`` (the console script or ``-m framebus.streams.cli``)."""
    out = []
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in args if a]
        if is_up_command(args):
            out.append(int(entry.name))
    return sorted(out)


def is_up_command(args: Sequence[str]) -> bool:
    for i, a in enumerate(args):
        if a == "framebus.streams.cli" or Path(a).name == "framebus":
            return i + 1 < len(args) and args[i + 1] == "up"
    return False


def dir_bytes(path: Path) -> int | None:
    """Apparent size of every file under ``path`` (``None`` when it does not exist yet)."""
    if not path.is_dir():
        return None
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:  # deleted meanwhile
                pass
    return total


def growth(ts: Sequence[float], ys: Sequence[float | None], start: float, end: float) -> dict[str, float | None]:
    """Change of ``ys`` over ``[start, end]``: ``delta`` (last - first sample in the window) and ``slope``
    (least squares, per minute). ``None`` with fewer than two samples."""
    pts = [(t, y) for t, y in zip(ts, ys) if y is not None and start <= t <= end]
    if len(pts) < 2:
        return {"delta": None, "slope_per_min": None}
    t, y = np.asarray(pts, dtype=float).T
    slope = float(np.polyfit(t, y, 1)[0]) * 60 if np.ptp(t) > 0 else None
    return {"delta": float(y[-1] - y[0]), "slope_per_min": slope}


# --------------------------------------------------------------------------------------------------
# the run's records and the report
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class VideoRecord:
    video_id: str
    clip: int
    scheduled_at: float
    #: seconds after the start, this process's monotonic clock
    sent_at: float | None = None
    send_error: str | None = None
    metadata_at: float | None = None
    status: str | None = None
    error_code: str | None = None
    alert_at: float | None = None
    documents: int = 0

    @property
    def metadata_latency(self) -> float | None:
        return None if self.metadata_at is None or self.sent_at is None else self.metadata_at - self.sent_at

    @property
    def alert_latency(self) -> float | None:
        return None if self.alert_at is None or self.sent_at is None else self.alert_at - self.sent_at


@dataclasses.dataclass
class SearchRecord:
    scheduled_at: float
    latency_s: float | None
    status: int | None
    error: str | None = None


@dataclasses.dataclass
class Run:
    duration_s: float
    videos: list[VideoRecord] = dataclasses.field(default_factory=list)
    searches: list[SearchRecord] = dataclasses.field(default_factory=list)
    #: ``{"t", "lag": {stage: int|None}, "rss": tree_rss(...)|None, "blob_bytes": int|None}``
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    groups: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    ended_at: float = 0.0


@dataclasses.dataclass
class Bounds:
    max_rss_mb: float | None = None
    max_rss_growth_mb: float | None = None
    max_lag: int | None = None
    max_blob_mb: float | None = None


def _mb(kb_or_bytes: float | None, unit: int) -> float | None:
    return None if kb_or_bytes is None else kb_or_bytes * unit / MB


def summarize(run: Run, bounds: Bounds | None = None) -> dict[str, Any]:
    """Every figure of the report, from the run's records (pure)."""
    bounds = bounds or Bounds()
    vids = run.videos
    sent = [v for v in vids if v.sent_at is not None and v.send_error is None]
    docs = [v for v in sent if v.metadata_at is not None]
    ok = [v for v in docs if v.status == "ok"]
    failed = [v for v in docs if v.status != "ok"]
    missing = [v.video_id for v in sent if v.metadata_at is None]
    half = run.duration_s / 2
    first_send = min((v.sent_at for v in sent), default=0.0)
    last_doc = max((v.metadata_at for v in docs), default=None)
    span = (last_doc - first_send) if last_doc is not None else None
    second_half_done = sum(1 for v in docs if half <= v.metadata_at <= run.duration_s)
    error_codes: dict[str, int] = {}
    for v in failed:
        error_codes[v.error_code or "?"] = error_codes.get(v.error_code or "?", 0) + 1

    ts = [s["t"] for s in run.samples]
    lag: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        series = [s["lag"].get(stage) for s in run.samples]
        known = [x for x in series if x is not None]
        group, topic = run.groups.get(stage, (None, None))
        lag[stage] = {
            "group": group,
            "topic": topic,
            "max": max(known) if known else None,
            "final": series[-1] if series else None,
            "known_samples": len(known),
            "samples": len(series),
        }
    rss_total = [_mb(s["rss"]["total_kb"], 1024) if s.get("rss") else None for s in run.samples]
    rss_main = [_mb(s["rss"]["main_kb"], 1024) if s.get("rss") else None for s in run.samples]
    known_rss = [x for x in rss_total if x is not None]
    known_main = [x for x in rss_main if x is not None]
    blobs = [_mb(s.get("blob_bytes"), 1) for s in run.samples]
    known_blobs = [x for x in blobs if x is not None]
    per_process: dict[str, dict[str, float]] = {}
    for s in run.samples:
        for name, kb in ((s.get("rss") or {}).get("processes") or {}).items():
            p = per_process.setdefault(name, {"max_mb": 0.0, "final_mb": 0.0})
            p["max_mb"] = max(p["max_mb"], kb / 1024)
            p["final_mb"] = kb / 1024
    top = dict(sorted(per_process.items(), key=lambda kv: -kv[1]["max_mb"])[:8])

    searches = run.searches
    summary: dict[str, Any] = {
        "duration_s": run.duration_s,
        "ended_at_s": run.ended_at,
        "videos": {
            "scheduled": len(vids),
            "sent": len(sent),
            "send_failed": sum(1 for v in vids if v.send_error is not None),
            "documents": len(docs),
            "ok": len(ok),
            "failed": len(failed),
            "failed_codes": error_codes,
            "missing": missing,
            "duplicate_documents": sum(max(0, v.documents - 1) for v in vids),
            "alerted": sum(1 for v in sent if v.alert_at is not None),
        },
        "throughput": {
            "offered_vps": len(sent) / run.duration_s if run.duration_s else None,
            "completed_vps": len(docs) / span if span else None,
            "second_half_vps": second_half_done / half if half else None,
            "first_send_to_last_document_s": span,
        },
        "schedule_slip_s": percentiles(v.sent_at - v.scheduled_at for v in sent),
        "latency_s": {
            "metadata_ok": percentiles(v.metadata_latency for v in ok),
            "metadata_failed": percentiles(v.metadata_latency for v in failed),
            "alert": percentiles(v.alert_latency for v in sent),
        },
        "search": {
            "sent": len(searches),
            "ok": sum(1 for s in searches if s.status == 200),
            "errors": sum(1 for s in searches if s.status != 200),
            "latency_s": percentiles(s.latency_s for s in searches if s.status == 200),
        },
        "lag": lag,
        "rss_mb": {
            "min": min(known_rss) if known_rss else None,
            "max": max(known_rss) if known_rss else None,
            "final": known_rss[-1] if known_rss else None,
            "main_max": max(known_main) if known_main else None,
            "main_final": known_main[-1] if known_main else None,
            "second_half_growth": growth(ts, rss_total, half, run.duration_s),
            "main_second_half_growth": growth(ts, rss_main, half, run.duration_s),
            "processes": top,
        },
        "blob_mb": {
            "max": max(known_blobs) if known_blobs else None,
            "final": known_blobs[-1] if known_blobs else None,
        },
        "notes": list(run.notes),
    }
    summary["checks"] = checks(summary, bounds)
    summary["passed"] = all(c["ok"] for c in summary["checks"])
    return summary


def checks(summary: dict[str, Any], bounds: Bounds) -> list[dict[str, Any]]:
    """Pass/fail of every stated bound, plus the two that always hold: everything published, and a metadata
    document for each video within the drain. An unmeasured figure fails a stated bound on it."""
    v = summary["videos"]
    out = [
        {"name": "published", "ok": v["send_failed"] == 0, "detail": f"{v['send_failed']} ingest requests not sent"},
        {
            "name": "metadata for every video",
            "ok": not v["missing"],
            "detail": f"{len(v['missing'])} of {v['sent']} without a metadata document",
        },
    ]

    def bound(name: str, value: float | None, limit: float | None, unit: str) -> None:
        if limit is None:
            return
        shown = "unmeasured" if value is None else f"{value if isinstance(value, int) else round(value, 1)}{unit}"
        out.append({"name": name, "ok": value is not None and value <= limit, "detail": f"{shown} <= {limit:g}{unit}"})

    rss = summary["rss_mb"]
    bound("RSS max", rss["max"], bounds.max_rss_mb, " MB")
    bound("RSS growth over the second half", rss["second_half_growth"]["delta"], bounds.max_rss_growth_mb, " MB")
    lags = [s["max"] for s in summary["lag"].values() if s["max"] is not None]
    bound("lag max (any stage)", max(lags) if lags else None, bounds.max_lag, "")
    bound("blob store max", summary["blob_mb"]["max"], bounds.max_blob_mb, " MB")
    return out


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def format_report(summary: dict[str, Any]) -> str:
    v, tp = summary["videos"], summary["throughput"]
    lines = [
        f"videos: {v['sent']} sent ({_f(tp['offered_vps'], '.2f')}/s offered), {v['documents']} documents "
        f"({v['ok']} ok, {v['failed']} failed{' ' + str(v['failed_codes']) if v['failed_codes'] else ''}), "
        f"{len(v['missing'])} missing, {v['send_failed']} not sent, {v['alerted']} with an alert"
        + (f", {v['duplicate_documents']} duplicate documents" if v["duplicate_documents"] else ""),
        f"throughput: {_f(tp['completed_vps'])} videos/s completed (first send to last document "
        f"{_f(tp['first_send_to_last_document_s'], '.1f')} s); second half of the load {_f(tp['second_half_vps'])}/s",
        "",
        f"{'latency (s)':<22} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}",
    ]
    rows = [
        ("ingest -> metadata", summary["latency_s"]["metadata_ok"]),
        ("ingest -> failed doc", summary["latency_s"]["metadata_failed"]),
        ("ingest -> first alert", summary["latency_s"]["alert"]),
        ("search", summary["search"]["latency_s"]),
        ("send schedule slip", summary["schedule_slip_s"]),
    ]
    for name, p in rows:
        if p["n"]:
            lines.append(
                f"{name:<22} {p['n']:>5} " + " ".join(f"{_f(p[k], '.3f'):>8}" for k in ("p50", "p90", "p99", "max"))
            )
    if summary["search"]["sent"]:
        s = summary["search"]
        lines.append(f"searches: {s['sent']} sent, {s['ok']} ok, {s['errors']} errors")
    lines += ["", f"{'lag (messages)':<10} {'group':<28} {'topic':<30} {'max':>6} {'final':>6}"]
    for stage, lag in summary["lag"].items():
        lines.append(
            f"{stage:<10} {lag['group'] or '-':<28} {lag['topic'] or '-':<30} {_f(lag['max'], 'd'):>6} "
            f"{_f(lag['final'], 'd'):>6}" + ("" if lag["known_samples"] else "  (group unknown)")
        )
    rss = summary["rss_mb"]
    g, gm = rss["second_half_growth"], rss["main_second_half_growth"]
    lines += [
        "",
        f"RSS (framebus up and its descendants, MB): min {_f(rss['min'], '.0f')}, max {_f(rss['max'], '.0f')}, "
        f"final {_f(rss['final'], '.0f')}; second half {_f(g['delta'], '+.1f')} MB "
        f"({_f(g['slope_per_min'], '+.2f')} MB/min); main process max {_f(rss['main_max'], '.0f')}, "
        f"second half {_f(gm['delta'], '+.1f')} MB",
        f"blob store (MB): max {_f(summary['blob_mb']['max'], '.1f')}, final {_f(summary['blob_mb']['final'], '.1f')}",
    ]
    if rss["processes"]:
        lines.append(
            "  largest: " + ", ".join(f"{k} {p['max_mb']:.0f}/{p['final_mb']:.0f}" for k, p in rss["processes"].items())
        )
    lines += [f"note: {n}" for n in summary["notes"]]
    lines.append("")
    lines += [f"[{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}" for c in summary["checks"]]
    if summary["videos"]["missing"]:
        lines.append("no metadata for: " + ", ".join(summary["videos"]["missing"][:20]))
    return "\n".join(lines)


def plot(run: Run, path: Path) -> bool:
    """``loadtest.png``: latency over time, lag per stage, RSS, blob store. False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    ax = axes[0]
    for label, pick, marker in (
        ("ingest -> metadata (ok)", lambda v: v.metadata_latency if v.status == "ok" else None, "o"),
        ("ingest -> metadata (failed)", lambda v: v.metadata_latency if v.status not in (None, "ok") else None, "x"),
        ("ingest -> first alert", lambda v: v.alert_latency, "^"),
    ):
        pts = [(v.sent_at, pick(v)) for v in run.videos if v.sent_at is not None and pick(v) is not None]
        if pts:
            ax.plot(*zip(*pts), marker, ms=3, label=label, alpha=0.7)
    ok = [(s.scheduled_at, s.latency_s) for s in run.searches if s.status == 200]
    if ok:
        ax.plot(*zip(*ok), ".", ms=2, label="search", alpha=0.5)
    ax.set_ylabel("latency (s)")
    ax.set_title("latency by send time")
    ts = [s["t"] for s in run.samples]
    ax = axes[1]
    for stage in STAGES:
        ys = [np.nan if s["lag"].get(stage) is None else s["lag"][stage] for s in run.samples]
        if not all(np.isnan(ys)):
            ax.plot(ts, ys, label=stage)
    ax.set_ylabel("lag (messages)")
    ax.set_title("consumer lag per stage")
    ax = axes[2]
    for key, label in (("total_kb", "framebus up + descendants"), ("main_kb", "framebus up process")):
        ys = [np.nan if not s.get("rss") or s["rss"][key] is None else s["rss"][key] / 1024 for s in run.samples]
        ax.plot(ts, ys, label=label)
    ax.set_ylabel("RSS (MB)")
    ax.set_title("resident set size")
    ax = axes[3]
    ax.plot(ts, [np.nan if s.get("blob_bytes") is None else s["blob_bytes"] / MB for s in run.samples])
    ax.set_ylabel("blob store (MB)")
    ax.set_xlabel("seconds since the first send")
    for ax in axes:
        ax.axvline(run.duration_s, color="grey", ls="--", lw=0.8)  # end of the load, start of the drain
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------------
# the clips
# --------------------------------------------------------------------------------------------------


def clip_plan(k: int, video_s: float, shot_s: float = 2.0, seed: int = 0) -> list:
    """The shots of distinct clip ``k``: ``round(video_s / shot_s)`` (at least one) shots of equal length,
    balanced over shapes, colours and motions (about one in four is the unsafe star)."""
    from framebus.models.world import sample_shots

    n = max(1, round(video_s / shot_s))
    return sample_shots(seed * 1_000_003 + k, n, duration_s=video_s / n)


def make_clips(directory: Path, distinct: int, video_s: float, width: int, height: int, fps: float) -> list[Path]:
    """Render the ``distinct`` clips into ``directory`` once; a later run with the same parameters reuses them."""
    from framebus.models.world import make_world_video

    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / "clips.json"
    spec = {"version": 1, "distinct": distinct, "video_s": video_s, "width": width, "height": height, "fps": fps}
    paths = [directory / f"clip{k:04d}.mp4" for k in range(distinct)]
    try:
        if json.loads(manifest.read_text()).get("spec") == spec and all(p.is_file() for p in paths):
            return paths
    except (OSError, ValueError):
        pass
    unsafe = []
    for k, p in enumerate(paths):
        shots = clip_plan(k, video_s)
        make_world_video(p, shots, fps=fps, width=width, height=height)
        unsafe.append(any(s.unsafe for s in shots))
    manifest.write_text(json.dumps({"spec": spec, "unsafe": unsafe}))
    return paths


# --------------------------------------------------------------------------------------------------
# the run itself
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    settings: Any  # framebus.streams.config.Settings
    http: str
    pid: int | None
    blob_dir: Path | None
    alive: Callable[[], bool] = lambda: True


class LagProbe:
    """Samples every stage group's lag: committed offsets from the admin client, end and beginning offsets
    from a group-less consumer."""

    def __init__(self, settings, groups: dict[str, tuple[str, str]]):
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        sec = settings.kafka_security()
        self.groups = groups
        self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, **sec)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap, enable_auto_commit=False, group_id=None, **sec
        )
        self.errors: dict[str, str] = {}

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def stop(self) -> None:
        try:
            await self.consumer.stop()
        finally:
            await self.admin.close()

    async def _partitions(self, topics: set[str]) -> list:
        from aiokafka import TopicPartition

        await self.consumer.topics()  # refreshes metadata: topics appear as the stack creates them
        return [
            TopicPartition(t, p) for t in sorted(topics) for p in sorted(self.consumer.partitions_for_topic(t) or ())
        ]

    async def sample(self) -> dict[str, int | None]:
        tps = await self._partitions({topic for _, topic in self.groups.values()})
        if not tps:
            return dict.fromkeys(self.groups)
        end = await self.consumer.end_offsets(tps)
        begin = await self.consumer.beginning_offsets(tps)
        try:
            existing = {g[0] for g in await self.admin.list_consumer_groups()}
        except Exception as err:  # then only groups with commits are known
            self.errors["list_consumer_groups"] = repr(err)
            existing = set()
        out: dict[str, int | None] = {}
        for stage, (group, topic) in self.groups.items():
            parts = [tp for tp in tps if tp.topic == topic]
            if not parts:
                out[stage] = None
                continue
            try:
                # the partitions named: the embedded broker (Tansu) cannot answer a fetch of "all offsets"
                fetched = await self.admin.list_consumer_group_offsets(group, partitions=parts)
            except Exception as err:  # an unreachable coordinator: unknown lag, not everything
                self.errors[group] = repr(err)
                out[stage] = None
                continue
            out[stage] = group_lag(
                {tp.partition: end[tp] for tp in parts},
                {tp.partition: om.offset for tp, om in fetched.items() if tp.topic == topic},
                {tp.partition: begin[tp] for tp in parts},
                group_exists=group in existing,
            )
        return out


async def drive(
    target: Target,
    clips: list[Path],
    *,
    rate: float,
    duration_s: float,
    drain_s: float,
    search_rate: float = 0.0,
    api_key: str | None = None,
    tenant: str = "loadtest",
    sample_every_s: float = 5.0,
    group_template: str = GROUP_TEMPLATE,
    progress: Callable[[Run, float, str], None] = lambda run, now, phase: None,
) -> Run:
    """Publish, search and sample until the load phase and the drain are over; returns the records."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from framebus.loadtest._kafka import assign_partitions
    from framebus.topics import codec, registry
    from framebus.topics.events import IngestRequest

    settings = target.settings
    sec = settings.kafka_security()
    run = Run(duration_s=duration_s, groups=stage_groups(settings.app_id, settings.topic, group_template))
    tag = uuid.uuid4().hex[:8]
    run.videos = [
        VideoRecord(video_id=f"lt-{tag}-{i:06d}", clip=i % len(clips), scheduled_at=t)
        for i, t in enumerate(send_offsets(rate, duration_s))
    ]
    by_id = {v.video_id: v for v in run.videos}
    metadata_topic, moderation_topic = (settings.topic(s.name) for s in (registry.METADATA, registry.MODERATION))

    reader = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False, group_id=None, **sec)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, **sec)
    probe = LagProbe(settings, run.groups)
    await reader.start()
    await producer.start()
    try:
        await probe.start()
    except Exception as err:  # the load still runs; lag is unknown
        run.notes.append(f"lag unknown: the admin client did not start ({err!r})")
        probe = None
    tasks: list[asyncio.Task] = []
    try:
        await assign_partitions(reader, [metadata_topic, moderation_topic], at_end=True)
        t0 = time.monotonic()
        now = lambda: time.monotonic() - t0  # noqa: E731

        async def send_all() -> None:
            ingest_topic = settings.topic(registry.INGEST.name)
            pending = []
            for v in run.videos:
                delay = v.scheduled_at - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                req = IngestRequest(video_id=v.video_id, uri=clips[v.clip].as_uri(), tenant=tenant)
                v.sent_at = now()
                try:
                    fut = await producer.send(ingest_topic, key=v.video_id.encode(), value=codec.encode(req))
                except Exception as err:  # recorded, the load goes on
                    v.send_error = repr(err)
                    continue
                pending.append((v, fut))
            for v, fut in pending:
                try:
                    await fut
                except Exception as err:
                    v.send_error = repr(err)

        async def search_all() -> None:
            import httpx

            from framebus.models.world import queries

            texts = [q.text for q in queries()]
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            in_flight: set[asyncio.Task] = set()
            gate = asyncio.Semaphore(32)
            async with httpx.AsyncClient(base_url=f"http://{target.http}", headers=headers, timeout=30) as client:

                async def one(i: int, at: float) -> None:
                    async with gate:
                        params = {"q": texts[i % len(texts)], "tenant": tenant, "limit": 5}
                        try:
                            resp = await client.get("/search", params=params)
                            # from the scheduled time: a query queued behind slow ones counts its wait
                            run.searches.append(SearchRecord(at, now() - at, resp.status_code))
                        except Exception as err:
                            run.searches.append(SearchRecord(at, None, None, repr(err)))

                for i, at in enumerate(send_offsets(search_rate, duration_s)):
                    delay = at - now()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    task = asyncio.create_task(one(i, at))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if in_flight:
                    await asyncio.wait(in_flight, timeout=30)

        async def take_sample() -> None:
            t = now()
            lag = dict.fromkeys(STAGES)
            if probe is not None:
                try:
                    lag = await probe.sample()
                except Exception as err:  # one missed sample is not a failed run
                    probe.errors["sample"] = repr(err)
            rss = await asyncio.to_thread(tree_rss, target.pid) if target.pid else None
            blob = await asyncio.to_thread(dir_bytes, target.blob_dir) if target.blob_dir else None
            run.samples.append({"t": round(t, 3), "lag": lag, "rss": rss, "blob_bytes": blob})

        async def sample_all() -> None:
            while True:
                try:
                    await take_sample()
                except Exception as err:  # a missed sample, said once; sampling goes on
                    if not any(n.startswith("sampling failed") for n in run.notes):
                        run.notes.append(f"sampling failed at {now():.0f}s: {err!r}")
                await asyncio.sleep(sample_every_s)

        sender = asyncio.create_task(send_all())
        tasks = [sender, asyncio.create_task(sample_all())]
        if search_rate > 0:
            tasks.append(asyncio.create_task(search_all()))
        drain_until = None
        while True:
            batch = await reader.getmany(timeout_ms=200)
            t = now()
            for tp, records in batch.items():
                for rec in records:
                    try:
                        doc = json.loads(rec.value)
                        v = by_id.get(doc.get("video_id"))
                    except (ValueError, AttributeError, TypeError):
                        continue
                    if v is None:
                        continue
                    if tp.topic == moderation_topic:
                        v.alert_at = v.alert_at if v.alert_at is not None else t
                        continue
                    v.documents += 1
                    if v.metadata_at is None:
                        v.metadata_at, v.status = t, doc.get("status")
                        v.error_code = (doc.get("error") or {}).get("code")
            progress(run, t, "load" if drain_until is None else "drain")
            if sender.done():
                if sender.exception() is not None:
                    raise sender.exception()
                if drain_until is None:
                    drain_until = max(t, duration_s) + drain_s
                if all(v.metadata_at is not None or v.send_error for v in run.videos) or t > drain_until:
                    break
            if not target.alive():
                run.notes.append(f"the stack exited at {t:.0f}s")
                break
            if t > duration_s + drain_s + 120:  # sends that hang past every client timeout: stop anyway
                run.notes.append(f"stopped at {t:.0f}s with ingest requests still being sent")
                break
        run.ended_at = now()
        for task in tasks[2:]:  # searches stop with the load phase (or now)
            if not task.done():
                await asyncio.wait([task], timeout=max(0.0, duration_s - now()) + 35)
        for task in tasks[1:]:
            task.cancel()
        for task, result in zip(tasks[1:], await asyncio.gather(*tasks[1:], return_exceptions=True)):
            if isinstance(result, Exception):
                run.notes.append(f"{task.get_coro().__name__} failed: {result!r}")
        if target.alive():
            await take_sample()  # the state at the end of the drain
        run.ended_at = now()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if probe is not None:
            if probe.errors:
                run.notes.append(f"lag probe errors: {probe.errors}")
            await probe.stop()
        await producer.stop()
        await reader.stop()
    return run


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None, prog: str = "framebus loadtest") -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--rate", type=float, default=1.0, help="ingest requests per second")
    a("--duration", type=float, default=60.0, help="seconds of load")
    a("--drain", type=float, default=180.0, help="seconds to wait after the load for the last metadata documents")
    a("--video-seconds", type=float, default=4.0, help="length of every generated clip")
    a("--width", type=int, default=320)
    a("--height", type=int, default=240)
    a("--fps", type=float, default=24.0)
    a("--distinct", type=int, default=8, help="distinct clips to generate once and cycle through")
    a("--media-dir", type=Path, default=None, help="where the clips go (inside an ingest root of the stack)")
    a("--search-rate", type=float, default=0.0, help="GET /search queries per second during the load (0: none)")
    a(
        "--api-key",
        default=os.environ.get("FRAMEBUS_API_KEY"),
        help="sent as 'Authorization: Bearer KEY' with every search (default: env FRAMEBUS_API_KEY, kept out of ps)",
    )
    a("--tenant", default="loadtest")
    a("--out", type=Path, default=Path("loadtest-out"), help="directory for loadtest.json and loadtest.png")
    a("--start-stack", action="store_true", help="start framebus up (embedded broker, temp data dir) and stop it")
    a("--models", default=os.environ.get("FRAMEBUS_MODELS", "tiny"), help="model profile of --start-stack")
    a("--keep", action="store_true", help="--start-stack: keep its work directory (data, clips, log)")
    a("--broker", default=None, help="attach: Kafka bootstrap HOST:PORT (default FRAMEBUS_BROKER or the embedded)")
    a("--http", default=None, help="attach: the stack's HTTP API HOST:PORT (default FRAMEBUS_HTTP)")
    a("--pid", type=int, default=None, help="attach: pid of framebus up for RSS (default: found in /proc if one)")
    a("--data-dir", type=Path, default=None, help="attach: the stack's data dir, for the blob store's size")
    a("--sample-interval", type=float, default=5.0, help="seconds between lag / RSS / blob samples")
    a("--group-template", default=GROUP_TEMPLATE, help="consumer group of each stage ({app_id}, {stage})")
    a("--max-rss-mb", type=float, default=None, help="bound: RSS of the stack's processes")
    a("--max-rss-growth-mb", type=float, default=None, help="bound: RSS growth over the second half of the load")
    a("--max-lag", type=int, default=None, help="bound: lag of any stage, in messages")
    a("--max-blob-mb", type=float, default=None, help="bound: size of the blob store")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.drain < 0 or args.search_rate < 0:
        p.error("--rate and --duration must be > 0, --drain and --search-rate >= 0")
    if args.video_seconds <= 0 or args.distinct < 1 or args.width < 16 or args.height < 16 or args.fps <= 0:
        p.error("--video-seconds and --fps must be > 0, --distinct >= 1, --width and --height >= 16")
    if args.sample_interval <= 0:
        p.error("--sample-interval must be > 0")
    if args.start_stack and (args.broker or args.http or args.pid):
        p.error("--start-stack starts its own broker and API: leave out --broker, --http and --pid")
    try:
        args.group_template.format(app_id="a", stage="s")
    except (KeyError, IndexError, ValueError):
        p.error("--group-template may only use {app_id} and {stage}")
    return args


def redact(argv: list[str]) -> list[str]:
    """``argv`` with the value of ``--api-key`` hidden (the report is shared; the key is not)."""
    out, hide = [], False
    for a in argv:
        if hide:
            out.append("***")
        elif a.startswith("--api-key="):
            out.append("--api-key=***")
        else:
            out.append(a)
        hide = a == "--api-key"
    return out


def _progress_bar(duration_s: float, drain_s: float):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}")
    )
    task = bar.add_task("load", total=duration_s, info="")

    def update(run: Run, now: float, phase: str) -> None:
        done = sum(1 for v in run.videos if v.metadata_at is not None)
        sent = sum(1 for v in run.videos if v.sent_at is not None)
        failed = sum(1 for v in run.videos if v.status not in (None, "ok"))
        last = run.samples[-1] if run.samples else {}
        lags = [x for x in (last.get("lag") or {}).values() if x is not None]
        rss = (last.get("rss") or {}).get("total_kb")
        info = (
            f"sent {sent}/{len(run.videos)} done {done} failed {failed}"
            f" lag {max(lags) if lags else '-'} rss {'-' if rss is None else f'{rss / 1024:.0f}MB'}"
        )
        if phase == "drain":
            bar.update(task, description="drain", total=duration_s + drain_s, completed=now, info=info)
        else:
            bar.update(task, completed=min(now, duration_s), info=info)

    return bar, update


def main(argv: list[str] | None = None, prog: str = "framebus loadtest") -> int:
    args = parse_args(argv, prog)
    from framebus.streams.config import load_settings
    from framebus.streams.demo import free_port, start_stack, stop_stack, train_tiny_models

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = None
    proc = None
    started = time.monotonic()
    if args.start_stack:
        work = Path(tempfile.mkdtemp(prefix="framebus-loadtest-")).resolve()
        media = (args.media_dir or work / "media").resolve()
    else:
        base = load_settings(broker=args.broker, http=args.http)
        media = (
            args.media_dir
            or base.allowed_roots[0]
            / "framebus-loadtest"
            / f"{args.width}x{args.height}-{args.video_seconds:g}s-{args.fps:g}fps-{args.distinct}"
        ).resolve()
    t = time.monotonic()
    clips = make_clips(media, args.distinct, args.video_seconds, args.width, args.height, args.fps)
    print(
        f"{len(clips)} clips of {args.video_seconds:g}s at {args.width}x{args.height} in {media} "
        f"({time.monotonic() - t:.1f}s)",
        flush=True,
    )
    stack: dict[str, Any] = {}
    try:
        if args.start_stack:
            settings = load_settings(models=args.models)
            if args.models == "tiny" and settings.train_tiny:
                train_tiny_models(settings)
            broker, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            data_dir = work / "data"
            env = {
                **os.environ,
                "FRAMEBUS_MODELS": args.models,
                "FRAMEBUS_DATA_DIR": str(data_dir),
                "FRAMEBUS_INGEST_ROOTS": str(media),
                "FRAMEBUS_SESSION_TIMEOUT_S": os.environ.get("FRAMEBUS_SESSION_TIMEOUT_S", "6"),
                "PYTHONUNBUFFERED": "1",
            }
            env.pop("FRAMEBUS_BROKER", None)
            log = out / "framebus-up.log"
            t = time.monotonic()
            proc = start_stack(env, broker, http, log)
            print(
                f"framebus up ready in {time.monotonic() - t:.1f}s: broker {broker}, API {http}, pid {proc.pid}, "
                f"log {log}",
                flush=True,
            )
            settings = load_settings(embedded_broker=broker, http=http)
            stack = {"started": True, "broker": broker, "http": http, "pid": proc.pid, "data_dir": str(data_dir)}
            target = Target(settings, http, proc.pid, data_dir / "blobs", alive=lambda: proc.poll() is None)
        else:
            settings = load_settings(broker=args.broker, http=args.http)
            pid = args.pid
            if pid is None:
                found = find_up_pids()
                pid = found[0] if len(found) == 1 else None
                if len(found) > 1:
                    print(f"several framebus up processes ({found}): pass --pid for RSS", flush=True)
            data_dir = args.data_dir or (
                Path(os.environ["FRAMEBUS_DATA_DIR"]) if os.environ.get("FRAMEBUS_DATA_DIR") else None
            )
            stack = {"started": False, "broker": settings.bootstrap, "http": settings.http, "pid": pid}
            stack["data_dir"] = str(data_dir) if data_dir else None
            target = Target(settings, settings.http, pid, data_dir / "blobs" if data_dir else None)
        bar, update = _progress_bar(args.duration, args.drain)
        with bar:
            run = asyncio.run(
                drive(
                    target,
                    clips,
                    rate=args.rate,
                    duration_s=args.duration,
                    drain_s=args.drain,
                    search_rate=args.search_rate,
                    api_key=args.api_key,
                    tenant=args.tenant,
                    sample_every_s=args.sample_interval,
                    group_template=args.group_template,
                    progress=update,
                )
            )
        if target.pid is None:
            run.notes.append("RSS not measured: no framebus up pid (--pid)")
        if target.blob_dir is None:
            run.notes.append("blob store not measured: data dir unknown (--data-dir)")
    finally:
        if proc is not None:
            stop_stack(proc)
        if work is not None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif work is not None:
            print(f"work directory kept: {work}")
    bounds = Bounds(args.max_rss_mb, args.max_rss_growth_mb, args.max_lag, args.max_blob_mb)
    summary = summarize(run, bounds)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"}
    doc = {
        "argv": redact(sys.argv),
        "config": config,
        "stack": stack,
        "cores": os.cpu_count(),
        "clips": [str(c) for c in clips],
        "wall_s": round(time.monotonic() - started, 1),
        "summary": summary,
        "videos": [{**dataclasses.asdict(v), "metadata_latency": v.metadata_latency} for v in run.videos],
        "searches": [dataclasses.asdict(s) for s in run.searches],
        "samples": run.samples,
    }
    (out / "loadtest.json").write_text(json.dumps(doc, indent=1, default=str))
    drew = plot(run, out / "loadtest.png")
    print()
    print(
        f"framebus loadtest: {args.duration:g}s at {args.rate:g} videos/s, {args.distinct} clips of "
        f"{args.video_seconds:g}s {args.width}x{args.height}"
        + (f", {args.search_rate:g} searches/s" if args.search_rate else "")
        + f"; {os.cpu_count()} cores; wall {time.monotonic() - started:.0f}s"
    )
    print(format_report(summary))
    print(f"\nwrote {out / 'loadtest.json'}" + (f" and {out / 'loadtest.png'}" if drew else " (no PNG: no matplotlib)"))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m framebus.loadtest.soak"))
