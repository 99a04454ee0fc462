"""Shot (hard-cut) detection: synthetic frame sequences with known cuts and hard negatives
(fast motion, slow fades, flashes), incremental vs batch use, and one encoded clip end to end."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from framebus.agents.media.shots import (
    ShotDetector,
    detect_cuts,
    detect_file,
    frame_signature,
    prefetched,
    shots_from_cuts,
    signature_distance,
    small_frames,
    small_size,
)
from framebus.loadtest import cuts as C
from framebus.loadtest.videos import make_text_file, render
from framebus.topics.errors import FramebusError

FPS = 25.0
W, H = 64, 36


def shot(kind: str, length: int, palette=None, seed: int = 1, **kw) -> C.ShotSpec:
    rng = np.random.default_rng(seed)
    return C.ShotSpec(
        kind=kind, start=0, length=length, palette=palette or C._palette(rng, 3), params=C._kind_params(kind, rng), **kw
    )


def sequence(*shots: C.ShotSpec, seed: int = 0, fps: float = FPS) -> tuple[list, list[float]]:
    """(pts, frame) pairs for ``shots`` played one after the other, and the true cut times."""
    start = 0
    plan = []
    for s in shots:
        s.start = start
        start += s.length
        plan.append(s)
    frames = list(C.render_frames(plan, W, H, fps, seed=seed))
    return [(i / fps, f) for i, f in enumerate(frames)], C.cut_times(plan, fps)


def assert_same_cuts(found, truth, fps=FPS, tol_frames=0):
    assert len(found) == len(truth), (found, truth)
    for f, t in zip(sorted(found), sorted(truth)):
        assert abs(f - t) <= (tol_frames + 0.25) / fps, (found, truth)


# --- hard cuts ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_cuts_found_to_the_exact_frame(seed):
    rng = np.random.default_rng(seed)
    kinds = ["gradient", "bounce", "stripes", "field", "pan"]
    shots = []
    prev = None
    for k in rng.permutation(kinds):
        pal = C._palette(rng, 3, prev)
        prev = C._base_hue(pal)
        shots.append(shot(str(k), int(rng.integers(15, 40)), palette=pal, seed=int(rng.integers(1e6))))
    frames, truth = sequence(*shots, seed=seed)
    assert len(truth) == 4
    assert_same_cuts(detect_cuts(frames, FPS), truth, tol_frames=0)


def test_cut_between_two_fast_motion_shots():
    frames, truth = sequence(shot("fast_pan", 40, seed=3), shot("fast_shape", 40, seed=4), shot("fast_pan", 40, seed=5))
    assert_same_cuts(detect_cuts(frames, FPS), truth)


def test_cut_between_shots_of_the_same_palette():
    # "same scene, another angle": same colours, another picture - the histograms barely move
    pal = [(90, 60, 50), (150, 120, 80), (40, 40, 60)]
    frames, truth = sequence(
        shot("gradient", 30, palette=pal, seed=6),
        shot("stripes", 30, palette=pal, seed=7),
        shot("pan", 30, palette=pal, seed=8),
    )
    assert_same_cuts(detect_cuts(frames, FPS), truth)


def test_a_dim_cut_below_the_floor_is_ignored_unless_the_floor_is_lowered():
    dark = [(30, 30, 40), (50, 40, 60), (20, 20, 20)]
    other = [(40, 30, 30), (60, 60, 40), (20, 20, 20)]
    frames, truth = sequence(shot("gradient", 30, palette=dark, seed=6), shot("stripes", 30, palette=other, seed=7))
    assert detect_cuts(frames, FPS) == []
    assert_same_cuts(detect_cuts(frames, FPS, min_score=0.06), truth)


# --- hard negatives ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fast_pan", "fast_shape"])
@pytest.mark.parametrize("seed", [10, 11])
def test_no_cut_in_fast_motion(kind, seed):
    frames, _ = sequence(shot(kind, 100, seed=seed), seed=seed)
    # the content does change a lot from frame to frame
    sigs = [frame_signature(f) for _, f in frames]
    d = [signature_distance(a, b) for a, b in zip(sigs, sigs[1:])]
    assert np.median(d) > 0.05
    assert detect_cuts(frames, FPS) == []


def test_no_cut_in_legacy_noise_and_motion_patterns():
    for pattern in ("noise", "mixed", "ball", "squares", "waves"):
        frames = [(i / FPS, render(pattern, i, W, H, FPS)) for i in range(75)]
        assert detect_cuts(frames, FPS) == [], pattern


@pytest.mark.parametrize("kind", ["field", "gradient", "bounce", "pan"])
@pytest.mark.parametrize("fade", ["down", "up"])
def test_no_cut_in_slow_fade(kind, fade):
    frames, _ = sequence(shot(kind, 75, fade=fade, seed=20))
    assert detect_cuts(frames, FPS) == []


def test_no_cut_when_a_flat_colour_fades_across_histogram_bins():
    # a flat field crossing bin boundaries: the hard-binned histogram this replaced jumped here
    frames = []
    for i in range(100):
        v = 230 - 2 * i
        frames.append((i / FPS, np.full((H, W, 3), (v, max(0, v - 40), 30), np.uint8)))
    assert detect_cuts(frames, FPS) == []


@pytest.mark.parametrize("flash_len", [1, 2, 3])
def test_no_cut_on_a_flash(flash_len):
    frames, _ = sequence(shot("bounce", 60, seed=30))
    for k in range(30, 30 + flash_len):
        f = frames[k][1].astype(np.float32)
        frames[k] = (frames[k][0], np.clip(f * 0.3 + 255 * 0.7, 0, 255).astype(np.uint8))
    assert detect_cuts(frames, FPS) == []


def test_flash_right_after_a_cut_keeps_the_cut():
    frames, truth = sequence(shot("gradient", 30, seed=31), shot("stripes", 40, seed=32))
    k = 30 + 15  # a flash inside the second shot
    frames[k] = (frames[k][0], np.full_like(frames[k][1], 250))
    assert_same_cuts(detect_cuts(frames, FPS), truth)


# --- minimum shot length ------------------------------------------------------------------------


def _short_shots(n_shots=8, length=5):
    rng = np.random.default_rng(40)
    shots, prev = [], None
    kinds = ["gradient", "stripes", "field", "bounce"]
    for j in range(n_shots):
        pal = C._palette(rng, 3, prev)
        prev = C._base_hue(pal)
        shots.append(shot(kinds[j % 4], length, palette=pal, seed=41 + j))
    return sequence(*shots)


def test_min_shot_length():
    frames, truth = _short_shots()  # a cut every 5 frames = 0.2 s
    assert_same_cuts(detect_cuts(frames, FPS, min_shot_s=0.1), truth)
    found = detect_cuts(frames, FPS, min_shot_s=0.4)
    assert found and len(found) < len(truth)
    gaps = np.diff([0.0] + found)
    assert (gaps >= 0.4 - 1e-6).all(), found
    assert set(np.round(found, 6)) <= set(np.round(truth, 6))


def test_no_cut_before_min_shot_from_the_start():
    frames, truth = sequence(shot("gradient", 5, seed=50), shot("stripes", 40, seed=51))
    assert detect_cuts(frames, FPS, min_shot_s=0.4) == []
    assert_same_cuts(detect_cuts(frames, FPS, min_shot_s=0.1), truth)


# --- incremental use ------------------------------------------------------------------------


def test_incremental_equals_batch_and_confirms_early():
    rng = np.random.default_rng(60)
    shots, prev = [], None
    for j, k in enumerate(["fast_pan", "field", "bounce", "stripes", "fast_shape", "gradient"]):
        pal = C._palette(rng, 3, prev)
        prev = C._base_hue(pal)
        shots.append(
            shot(
                k,
                int(rng.integers(20, 45)),
                palette=pal,
                seed=61 + j,
                fade="down" if k == "field" else None,
                flash_at=10 if k == "bounce" else None,
            )
        )
    frames, truth = sequence(*shots)
    det = ShotDetector(FPS)
    got = []
    for pts, f in frames:
        c = det.push(pts, f)
        if c is not None:
            assert c <= pts
            # confirmed within the look-ahead (0.2 s = 5 frames at 25 fps)
            assert pts - c <= det.lookahead / FPS + 1e-9
            got.append(c)
    got += det.finish()
    assert det.finish() == []
    assert got == det.cuts == detect_cuts(frames, FPS)
    assert_same_cuts(got, truth)
    with pytest.raises(RuntimeError):
        det.push(99.0, frames[0][1])


def test_scores_and_input_forms():
    frames, truth = sequence(shot("gradient", 20, seed=70), shot("stripes", 20, seed=71))
    det = ShotDetector(FPS, keep_scores=True)
    for pts, f in frames:
        det.push(pts, f)
    det.finish()
    assert len(det.scores) == len(frames) and det.scores[0] == 0.0
    assert int(np.argmax(det.scores)) == 20
    # luma-only input, an odd size and an extra alpha channel are accepted
    gray = [(p, f.mean(axis=2).astype(np.uint8)) for p, f in frames]
    assert_same_cuts(detect_cuts(gray, FPS), truth)
    rgba = [(p, np.concatenate([f, np.full(f.shape[:2] + (1,), 255, np.uint8)], 2)[:35, :63]) for p, f in frames]
    assert_same_cuts(detect_cuts(rgba, FPS), truth)
    with pytest.raises(ValueError):
        frame_signature(np.zeros((4, 4, 2), np.uint8))
    assert detect_cuts([], FPS) == []
    assert detect_cuts(frames[:1], FPS) == []


def test_shots_from_cuts():
    assert shots_from_cuts([], 5.0) == [(0.0, 5.0)]
    assert shots_from_cuts([2.0, 1.0], 5.0) == [(0.0, 1.0), (1.0, 2.0), (2.0, 5.0)]
    # out-of-range and duplicate cuts are ignored
    assert shots_from_cuts([0.0, 1.0, 1.0, 6.0], 5.0) == [(0.0, 1.0), (1.0, 5.0)]
    assert shots_from_cuts([], 0.0) == [(0.0, 0.0)]


def test_small_size():
    assert small_size(1920, 1080) == (64, 36)
    assert small_size(1080, 1920) == (36, 64)
    assert small_size(640, 480, 48) == (64, 48)
    assert small_size(320, 180, (40, 20)) == (40, 20)


# --- encoded clip end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> C.CutVideo:
    p = tmp_path_factory.mktemp("shots") / "cuts.mp4"
    return C.make_cut_video(p, "h264", 128, 72, 25.0, 4.4, seed=3, min_shot_s=0.8, max_shot_s=1.6)


def test_encoded_clip_cuts_match_ground_truth(clip):
    assert 2 <= len(clip.cuts_s) <= 4
    frames = list(small_frames(clip.path))
    assert len(frames) == clip.n_frames
    pts = [p for p, _ in frames]
    assert pts[0] == pytest.approx(0.0, abs=1e-6) and all(b > a for a, b in zip(pts, pts[1:]))
    assert frames[0][1].shape == (36, 64, 3) and frames[0][1].dtype == np.uint8
    assert_same_cuts(detect_cuts(frames, clip.fps), clip.cuts_s, fps=clip.fps, tol_frames=1)
    res = detect_file(clip.path)
    assert res.fps == pytest.approx(25.0) and res.frames == clip.n_frames
    assert_same_cuts(res.cuts, clip.cuts_s, fps=clip.fps, tol_frames=1)
    assert len(res.shots) == len(res.cuts) + 1
    assert res.shots[-1][1] == pytest.approx(clip.duration_s, abs=1e-3)


def test_detect_file_without_prefetch_is_the_same(clip):
    a, b = detect_file(clip.path), detect_file(clip.path, prefetch=0, keep_scores=True)
    assert a.cuts == b.cuts and a.frames == b.frames and len(b.scores) == b.frames


def test_small_frames_errors(tmp_path: Path):
    with pytest.raises(FramebusError) as ei:
        list(small_frames(make_text_file(tmp_path / "x.mp4")))
    assert ei.value.code == "ingest.not_a_video"
    with pytest.raises(FramebusError) as ei:  # raised in the prefetch thread, re-raised here
        detect_file(tmp_path / "x.mp4")
    assert ei.value.code == "ingest.not_a_video"
    with pytest.raises(FramebusError) as ei:
        list(small_frames(tmp_path / "missing.mp4"))
    assert ei.value.code == "ingest.not_found"


def test_generator_is_deterministic_and_has_hard_negatives():
    a = C.plan_shots(400, 25.0, seed=5)
    b = C.plan_shots(400, 25.0, seed=5)
    assert [(s.kind, s.start, s.length, s.fade, s.flash_at) for s in a] == [
        (s.kind, s.start, s.length, s.fade, s.flash_at) for s in b
    ]
    kinds = {s.kind for s in a}
    assert {"fast_pan", "fast_shape"} <= kinds
    assert any(s.fade for s in a) and any(s.flash_at is not None for s in a)
    assert sum(s.length for s in a) == 400 and min(s.length for s in a) >= 20
    f1 = next(C.render_frames(a, 32, 18, 25.0, seed=5))
    f2 = next(C.render_frames(b, 32, 18, 25.0, seed=5))
    assert np.array_equal(f1, f2)


def test_prefetched():
    assert list(prefetched(iter(range(100)), depth=4, batch=3)) == list(range(100))
    assert list(prefetched(iter([]))) == []

    def boom():
        yield from range(5)
        raise ValueError("broken")

    got = []
    with pytest.raises(ValueError, match="broken"):
        for x in prefetched(boom(), depth=2, batch=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]

    def endless():
        i = 0
        while True:
            yield i
            i += 1

    it = prefetched(endless(), depth=4, batch=2)
    assert [next(it) for _ in range(10)] == list(range(10))
    it.close()  # leaving early stops the thread
    # wait for it to end (the join timeout only bounds a hang; how soon it ends is not the point)
    for t in threading.enumerate():
        if t.name == "framebus-prefetch":
            t.join(timeout=60)
    assert not any(t.name == "framebus-prefetch" for t in threading.enumerate())
