"""Shot detection: framebus (``small_frames`` + ``ShotDetector``) vs PySceneDetect's
``ContentDetector`` (default settings), on generated videos with known cuts.

    python -m framebus.loadtest.bench_shots [--videos 10] [--codecs h264,hevc,vp9,mpeg4]
                                   [--seed 0] [--holdout-seed 7] [--repeat 3] [--dir DIR]

Two sets of ``--videos`` clips each (``framebus.loadtest.cuts.make_cut_set``: 320x180 .. 640x360, 24-30 fps,
10-18 s, the codecs in turn, fast pans, fast objects, fades and single-frame flashes inside
shots) are generated: ``dev`` (``--seed``; the one the detector was tuned on) and ``holdout``
(``--holdout-seed``; never looked at while tuning). Every method runs end to end from the file
(open, decode, detect) on the same files in the same run, ``--repeat`` times in turn; the best
time of each is kept. Methods:

* ``framebus``: ``framebus.agents.media.shots.detect_file`` (PyAV threads AUTO, swscale to 64x36 with
  area averaging, decoding prefetched in a thread as PySceneDetect does, ``ShotDetector``
  defaults);
* ``psd-opencv``: ``scenedetect.detect(path, ContentDetector())`` (its default backend);
* ``psd-pyav``: the same with ``backend="pyav"``.

Accuracy: a detected cut matches a true one (the pts of the first frame of the new shot) when
they are at most ``k`` frames apart (one-to-one, greedy by distance); precision, recall and F1
summed over each set for k = 0, 1 (the headline) and 2. Speed: source frames per second of wall
time and of process CPU time (all threads), over the whole set. "PySceneDetect" in the verdict is
its faster backend.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from framebus.loadtest.cuts import DEFAULT_CODECS, CutVideo, make_cut_set

TOLERANCES = (0, 1, 2)


@dataclass
class Run:
    cuts: list[float]
    wall_s: float
    cpu_s: float


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Score) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def explain(v: CutVideo, detected: list[float], tol_frames: int = 1) -> list[str]:
    """What each error is about: ``FP:<what>`` (the shot kind or modifier a false cut fell in:
    ``flash``, ``fade``, ``fast_pan``, ...) and ``FN:<kind>><kind>`` for a missed cut."""
    tol = (tol_frames + 0.25) / v.fps
    out = []
    for d in detected:
        if any(abs(d - t) <= tol for t in v.cuts_s):
            continue
        f = int(round(d * v.fps))
        shot = next((s for s in v.shots if s.start <= f < s.end), v.shots[-1])
        if shot.flash_at is not None and abs(f - (shot.start + shot.flash_at)) <= 1 + tol_frames:
            what = "flash"
        elif shot.fade:
            what = f"fade({shot.kind})"
        else:
            what = shot.kind
        out.append(f"FP:{what}")
    for k, t in enumerate(v.cuts_s):
        if not any(abs(d - t) <= tol for d in detected):
            out.append(f"FN:{v.shots[k].kind}>{v.shots[k + 1].kind}")
    return out


def match(detected: list[float], truth: list[float], fps: float, tol_frames: int) -> Score:
    """One-to-one matching of detected to true cut times within ``tol_frames`` frames (plus a
    quarter frame for timestamp rounding, e.g. Matroska's milliseconds); closest pairs first."""
    tol = (tol_frames + 0.25) / fps
    pairs = sorted((abs(d - t), i, j) for i, d in enumerate(detected) for j, t in enumerate(truth) if abs(d - t) <= tol)
    used_d, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
    tp = len(used_d)
    return Score(tp=tp, fp=len(detected) - tp, fn=len(truth) - tp)


# ------------------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------------------


def run_framebus(path: Path) -> list[float]:
    from framebus.agents.media.shots import detect_file

    return detect_file(path).cuts


def _psd(backend: str) -> Callable[[Path], list[float]]:
    def run(path: Path) -> list[float]:
        from scenedetect import ContentDetector, detect

        scenes = detect(str(path), ContentDetector(), backend=backend)
        return [float(start.seconds) for start, _ in scenes[1:]]

    return run


METHODS: dict[str, Callable[[Path], list[float]]] = {
    "framebus": run_framebus,
    "psd-opencv": _psd("opencv"),
    "psd-pyav": _psd("pyav"),
}


def timed(fn: Callable[[Path], list[float]], path: Path) -> Run:
    c0, t0 = time.process_time(), time.perf_counter()
    cuts = fn(path)
    return Run(cuts=cuts, wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------


@dataclass
class SetResult:
    name: str
    videos: list[CutVideo]
    frames: int = 0
    cuts: int = 0
    #: method -> tolerance -> score
    scores: dict[str, dict[int, Score]] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    per_video: list[dict] = field(default_factory=list)
    #: method -> error label -> count (at 1 frame)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)

    def fps(self, method: str) -> float:
        return self.frames / self.wall[method] if self.wall.get(method) else 0.0

    def cpu_fps(self, method: str) -> float:
        return self.frames / self.cpu[method] if self.cpu.get(method) else 0.0


def bench_set(name: str, videos: list[CutVideo], methods: list[str], repeat: int, verbose: bool = False) -> SetResult:
    res = SetResult(name=name, videos=videos)
    for m in methods:
        res.scores[m] = {k: Score() for k in TOLERANCES}
        res.wall[m] = 0.0
        res.cpu[m] = 0.0
    for v in videos:
        res.frames += v.n_frames
        res.cuts += len(v.cuts_s)
        best: dict[str, Run] = {}
        for r in range(max(1, repeat)):
            order = methods if r % 2 == 0 else list(reversed(methods))
            for m in order:
                run = timed(METHODS[m], v.path)
                b = best.get(m)
                if b is None:
                    best[m] = run
                else:
                    b.wall_s = min(b.wall_s, run.wall_s)
                    b.cpu_s = min(b.cpu_s, run.cpu_s)
        row = {"video": v.path.name, "frames": v.n_frames, "cuts": len(v.cuts_s)}
        for m in methods:
            run = best[m]
            res.wall[m] += run.wall_s
            res.cpu[m] += run.cpu_s
            for k in TOLERANCES:
                res.scores[m][k].add(match(run.cuts, v.cuts_s, v.fps, k))
            s1 = match(run.cuts, v.cuts_s, v.fps, 1)
            row[m] = {"tp": s1.tp, "fp": s1.fp, "fn": s1.fn, "fps": v.n_frames / run.wall_s}
            errs = res.errors.setdefault(m, {})
            for e in explain(v, run.cuts, 1):
                errs[e] = errs.get(e, 0) + 1
        res.per_video.append(row)
        if verbose:
            cells = "  ".join(
                f"{m}: tp={row[m]['tp']} fp={row[m]['fp']} fn={row[m]['fn']} {row[m]['fps']:6.0f} fps" for m in methods
            )
            print(f"  {v.path.name:42s} cuts={len(v.cuts_s):2d}  {cells}", flush=True)
    return res


def print_table(res: SetResult, methods: list[str]) -> None:
    print(f"\n== {res.name}: {len(res.videos)} videos, {res.frames} frames, {res.cuts} cuts ==")
    head = (
        f"{'method':12s} {'P@1':>6s} {'R@1':>6s} {'F1@1':>6s} {'F1@0':>6s} {'F1@2':>6s} "
        f"{'TP':>4s} {'FP':>4s} {'FN':>4s} {'fps(wall)':>10s} {'fps(cpu)':>9s}"
    )
    print(head)
    print("-" * len(head))
    for m in methods:
        s = res.scores[m]
        print(
            f"{m:12s} {s[1].precision:6.3f} {s[1].recall:6.3f} {s[1].f1:6.3f} {s[0].f1:6.3f} "
            f"{s[2].f1:6.3f} {s[1].tp:4d} {s[1].fp:4d} {s[1].fn:4d} {res.fps(m):10.0f} "
            f"{res.cpu_fps(m):9.0f}"
        )
    for m in methods:
        errs = res.errors.get(m) or {}
        if errs:
            print(f"  {m} errors: " + ", ".join(f"{k} x{n}" for k, n in sorted(errs.items())))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=10, help="videos per set (default 10)")
    ap.add_argument(
        "--codecs", default=",".join(DEFAULT_CODECS), help="comma-separated codec keys of loadtest.videos.CODECS"
    )
    ap.add_argument("--seed", type=int, default=0, help="dev set seed (default 0)")
    ap.add_argument(
        "--holdout-seed", type=int, default=7, help="hold-out set seed (default 7; negative: no hold-out set)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per method and video")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the videos (temp)")
    ap.add_argument(
        "--same-scene",
        type=float,
        default=0.25,
        help="share of shots that keep the previous shot's palette (default 0.25)",
    )
    ap.add_argument("--grain", default="0,8", help="per-shot grain amplitude range in levels, 'lo,hi' (default 0,8)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("-v", "--verbose", action="store_true", help="per-video lines")
    args = ap.parse_args(argv)

    logging.getLogger("pyscenedetect").setLevel(logging.ERROR)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    lo, _, hi = args.grain.partition(",")
    grain = (float(lo), float(hi or lo))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {sorted(METHODS)}")

    tmp = None
    root = args.dir
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_shots_")
        root = Path(tmp.name)
    sets = [("dev", args.seed)]
    if args.holdout_seed >= 0:
        sets.append(("holdout", args.holdout_seed))
    results: list[SetResult] = []
    try:
        for name, seed in sets:
            t = time.perf_counter()
            vids = make_cut_set(
                root / f"{name}_seed{seed}",
                n=args.videos,
                seed=seed,
                codecs=codecs,
                same_scene_p=args.same_scene,
                grain=grain,
            )
            print(
                f"{name} (seed {seed}): generated {len(vids)} videos "
                f"({', '.join(sorted({v.codec for v in vids}))}) "
                f"in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
            results.append(bench_set(f"{name} (seed {seed})", vids, methods, args.repeat, args.verbose))
    finally:
        if tmp is not None:
            tmp.cleanup()

    for res in results:
        print_table(res, methods)

    ok = True
    print()
    psd = [m for m in methods if m.startswith("psd-")]
    if "framebus" in methods and psd:
        for res in results:
            best = max(psd, key=res.fps)
            ratio = res.fps("framebus") / res.fps(best) if res.fps(best) else float("inf")
            cpu_best = max(psd, key=res.cpu_fps)
            cpu_ratio = res.cpu_fps("framebus") / res.cpu_fps(cpu_best) if res.cpu_fps(cpu_best) else float("inf")
            f_fb, f_psd = res.scores["framebus"][1].f1, res.scores[best][1].f1
            good = f_fb >= f_psd and ratio > 1.0
            ok &= good
            print(
                f"{res.name}: framebus F1@1 {f_fb:.3f} vs PySceneDetect ({best}) {f_psd:.3f}; "
                f"speed framebus/PySceneDetect = {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU "
                f"-> {'OK' if good else 'NOT MET'}"
            )
    if args.json:
        out = []
        for res in results:
            out.append(
                {
                    "set": res.name,
                    "videos": len(res.videos),
                    "frames": res.frames,
                    "cuts": res.cuts,
                    "methods": {
                        m: {
                            "fps_wall": res.fps(m),
                            "fps_cpu": res.cpu_fps(m),
                            **{
                                f"tol{k}": {
                                    "precision": s.precision,
                                    "recall": s.recall,
                                    "f1": s.f1,
                                    "tp": s.tp,
                                    "fp": s.fp,
                                    "fn": s.fn,
                                }
                                for k, s in res.scores[m].items()
                            },
                        }
                        for m in methods
                    },
                    "per_video": res.per_video,
                    "errors": res.errors,
                }
            )
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
