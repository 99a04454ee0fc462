"""Decode throughput: raw FFmpeg (PyAV) decode vs the framebus samplers.

    python -m framebus.loadtest.bench_decode [--dir DIR] [--seconds 10] [--repeat 3] [--short-side 224]

Generates a few 640x360 clips (H.264, HEVC, VP9) unless they already exist in ``--dir``, then for
each measures, in source frames per second of wall time (how fast the video is *covered*):

* ``raw``: PyAV demux + decode of every frame, no conversion (threads AUTO) - the FFmpeg ceiling;
* ``pyav@1``, ``pyav@full``: ``PyAVDecoder`` sampling 1 frame/s and every frame, RGB at
  ``--short-side``;
* ``decord@1``, ``decord@full``: ``DecordDecoder``, same;
* ``pipeline@1``: ``decode_video`` (probe + sample + JPEG + segments) at 1 frame/s.

Ratios are throughput relative to ``raw`` for the same clip, by wall time and by process CPU
time (best of ``--repeat`` each; CPU time is steadier on a busy machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av

from framebus.agents.media.decoders import DecordDecoder, PyAVDecoder
from framebus.agents.media.pipeline import DecodeJob, decode_video
from framebus.agents.media.probe import probe
from framebus.loadtest.videos import default_suffix, make_clip

CLIPS = [("h264", 640, 360, 30.0), ("hevc", 640, 360, 30.0), ("vp9", 640, 360, 30.0)]


def make_bench_clips(directory: Path, seconds: float) -> list[tuple[str, Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for codec, w, h, fps in CLIPS:
        p = directory / f"bench_{codec}_{w}x{h}_{int(seconds)}s_mixed{default_suffix(codec)}"
        if not p.exists():
            t = time.perf_counter()
            opts = {"preset": "veryfast", "crf": "23"} if codec == "h264" else None
            make_clip(p, codec, w, h, fps, seconds, "mixed", options=opts)
            print(f"  generated {p.name} in {time.perf_counter() - t:.1f} s")
        out.append((codec, p))
    return out


def raw_decode(path: Path) -> int:
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_type = "AUTO"
        for _ in c.decode(s):
            n += 1
    return n


def run_sampler(decoder, fps: float, short_side: int) -> Callable[[Path], int]:
    def go(path: Path) -> int:
        run = decoder.sample(path, fps, 1_000_000, short_side)
        for _ in run:
            pass
        return run.stats.frames_decoded

    return go


def run_pipeline(short_side: int) -> Callable[[Path], int]:
    def go(path: Path) -> int:
        return decode_video(
            DecodeJob(
                str(path),
                "bench",
                sample_fps=1.0,
                segment_s=2.0,
                max_frames=20_000,
                short_side=short_side,
                jpeg_quality=85,
                decoder="pyav",
                thumb_dir=None,
            )
        ).frames_decoded

    return go


def best_time(fn: Callable[[Path], int], path: Path, repeat: int) -> tuple[float, float, int]:
    """Best wall time and best CPU time (all threads of this process) over ``repeat`` runs."""
    best, best_cpu, n = float("inf"), float("inf"), 0
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        n = fn(path)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=None, help="where clips are kept (default: a temp dir)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--short-side", type=int, default=224)
    args = ap.parse_args(argv)

    tmp = None
    directory = args.dir
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="framebus-bench-")
        directory = Path(tmp.name)
    print(f"CPU cores: {os.cpu_count()}  PyAV {av.__version__}  short side {args.short_side}")
    clips = make_bench_clips(directory, args.seconds)

    rows = []
    for codec, path in clips:
        info = probe(path)
        full = info.fps
        methods = [
            ("raw", raw_decode),
            ("pyav@1", run_sampler(PyAVDecoder(), 1.0, args.short_side)),
            ("pyav@full", run_sampler(PyAVDecoder(), full, args.short_side)),
            ("decord@1", run_sampler(DecordDecoder(), 1.0, args.short_side)),
            ("decord@full", run_sampler(DecordDecoder(), full, args.short_side)),
            ("pipeline@1", run_pipeline(args.short_side)),
        ]
        base = base_cpu = None
        for name, fn in methods:
            try:
                t, c, n = best_time(fn, path, args.repeat)
            except Exception as e:  # noqa: BLE001 - a backend that cannot do this clip
                rows.append((codec, name, None, None, None, None, f"{type(e).__name__}: {getattr(e, 'code', e)}"))
                continue
            n = n or int(round(info.duration_s * info.fps))
            fps, cpu_fps = n / t, n / c
            if name == "raw":
                base, base_cpu = fps, cpu_fps
            note = f"{fps / base:5.2f}x   {cpu_fps / base_cpu:5.2f}x" if base else ""
            rows.append((codec, name, n, t, fps, c, note))

    print()
    print("frames/s = source frames covered per second; 'cpu' uses process CPU time (all threads),")
    print("which is what bounds a process pool that keeps every core busy.")
    print(
        f"{'clip':<6} {'method':<12} {'frames':>6} {'wall s':>7} {'frames/s':>9} {'cpu s':>7}"
        f"  {'wall':>6}   {'cpu':>6}  (vs raw)"
    )
    print("-" * 72)
    for codec, name, n, t, fps, c, note in rows:
        if t is None:
            print(f"{codec:<6} {name:<12} {'-':>6} {'-':>7} {'-':>9} {'-':>7}  {note}")
        else:
            print(f"{codec:<6} {name:<12} {n:>6} {t:>7.3f} {fps:>9.0f} {c:>7.3f}  {note}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
