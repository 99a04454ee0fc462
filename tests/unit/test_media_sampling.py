"""Pure timing math of agents.media.sampling."""

from __future__ import annotations

import math
import random

import pytest

from framebus.agents.media.sampling import (
    SLIVER_S,
    FrameSelector,
    assign_frames_to_segments,
    effective_fps,
    iter_grid,
    keyframe_index,
    merge_targets,
    nearest_index,
    plan_segments,
    sample_times,
    segment_midpoints_without_targets,
    segment_of,
    select_frames,
)


def displayed_at(pts: list[float], t: float, end: float = math.inf) -> int | None:
    """Reference definition: the frame whose [pts_i, pts_i+1) contains t (first frame also
    covers t < pts_0; the last one lasts until ``end``)."""
    if t >= end:
        return None
    best = 0
    for i, p in enumerate(pts):
        if p <= t:
            best = i
    return best


# --- sample_times ---------------------------------------------------------------------------------


def test_sample_times_basic_grid():
    assert sample_times(3.0, 1.0, 100) == [0.0, 1.0, 2.0]
    assert sample_times(3.5, 2.0, 100) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def test_sample_times_end_is_exclusive_even_with_float_noise():
    # 1.0 s at 24 fps: k/24 for k = 0..23, never 24/24 = 1.0
    ts = sample_times(1.0, 24.0, 1000)
    assert len(ts) == 24 and ts[-1] == pytest.approx(23 / 24)
    # 0.3 * 10 is 3.0000000000000004 in floats: still 3 targets (0, .1, .2)
    assert len(sample_times(0.3, 10.0, 100)) == 3
    # a hair over a boundary (< EPS) does not add a target that no frame could show
    assert len(sample_times(2.0 + 1e-9, 1.0, 100)) == 2
    assert len(sample_times(2.01, 1.0, 100)) == 3


def test_sample_times_all_inside_and_exact():
    for duration, fps in [(10.0, 1.0), (7.3, 3.0), (0.9, 29.97), (123.456, 0.5)]:
        ts = sample_times(duration, fps, 10**6)
        assert ts[0] == 0.0
        assert all(0 <= t < duration for t in ts)
        assert all(t == k / fps for k, t in enumerate(ts))
        assert len(ts) == math.ceil(duration * fps - 1e-9)


def test_sample_times_cap_spreads_over_the_whole_video():
    ts = sample_times(100.0, 30.0, 10)
    assert len(ts) == 10
    assert ts == pytest.approx([k * 10.0 for k in range(10)])
    assert effective_fps(100.0, 30.0, 10) == pytest.approx(0.1)
    # under the cap: unchanged
    assert effective_fps(10.0, 1.0, 10) == 1.0


def test_sample_times_degenerate():
    assert sample_times(0.0, 1.0, 10) == []
    assert sample_times(-1.0, 1.0, 10) == []
    assert sample_times(0.2, 1.0, 10) == [0.0]
    with pytest.raises(ValueError):
        sample_times(1.0, 0.0, 10)
    with pytest.raises(ValueError):
        sample_times(1.0, 1.0, 0)


def test_iter_grid_and_merge():
    assert list(iter_grid(4.0, 5)) == [0.0, 0.25, 0.5, 0.75, 1.0]
    g = iter_grid(1.0)
    assert [next(g) for _ in range(3)] == [0.0, 1.0, 2.0]
    assert list(merge_targets([0.0, 1.0, 2.0], [0.5, 1.5])) == [0.0, 0.5, 1.0, 1.5, 2.0]


# --- plan_segments ------------------------------------------------------------------------------


def _check_cover(segs, duration):
    assert segs[0][0] == 0.0
    assert segs[-1][1] == duration
    for (_a, b), (c, _) in zip(segs, segs[1:]):
        assert b == c
    assert all(b > a for a, b in segs)


def test_plan_segments_exact_cover():
    segs = plan_segments(5.0, 2.0)
    assert segs == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
    assert plan_segments(4.0, 2.0) == [(0.0, 2.0), (2.0, 4.0)]
    for duration, seg in [(10.0, 3.0), (0.999, 0.1), (3600.0, 2.0), (7.77, 0.37)]:
        segs = plan_segments(duration, seg)
        _check_cover(segs, duration)
        assert all(b - a <= seg + 1e-9 for a, b in segs)


def test_plan_segments_short_video_one_segment():
    assert plan_segments(0.5, 2.0) == [(0.0, 0.5)]
    assert plan_segments(2.0, 2.0) == [(0.0, 2.0)]
    assert plan_segments(0.0, 2.0) == [(0.0, 0.0)]


def test_plan_segments_trailing_sliver_merged():
    segs = plan_segments(4.0005, 2.0)
    assert segs == [(0.0, 2.0), (2.0, 4.0005)]
    # just above the sliver threshold: kept
    segs = plan_segments(4.0 + 2 * SLIVER_S, 2.0)
    assert len(segs) == 3 and segs[-1] == (4.0, 4.0 + 2 * SLIVER_S)


def test_plan_segments_rejects_bad_length():
    with pytest.raises(ValueError):
        plan_segments(10.0, 0.0)


def test_segment_of_boundaries():
    segs = plan_segments(5.0, 2.0)
    assert segment_of(0.0, segs) == 0
    assert segment_of(1.999, segs) == 0
    assert segment_of(2.0, segs) == 1
    assert segment_of(5.0, segs) == 2  # the last segment is closed
    assert segment_of(-1.0, segs) == 0
    assert segment_of(99.0, segs) == 2


# --- frame selection ------------------------------------------------------------------------


def test_select_cfr_picks_frame_displayed_at_each_target():
    pts = [k / 24 for k in range(48)]  # 2 s at 24 fps
    assert select_frames(pts, sample_times(2.0, 1.0, 100), end_s=2.0) == [0, 24]
    assert select_frames(pts, sample_times(2.0, 4.0, 100), end_s=2.0) == [0, 6, 12, 18, 24, 30, 36, 42]
    # sampling at the native rate selects every frame exactly once
    assert select_frames(pts, sample_times(2.0, 24.0, 100), end_s=2.0) == list(range(48))
    # over-sampling never duplicates a frame
    assert select_frames(pts, sample_times(2.0, 100.0, 1000), end_s=2.0) == list(range(48))


def test_select_vfr_uses_display_intervals_not_nearest():
    pts = [0.0, 0.04, 0.1, 0.5, 0.55, 1.2, 1.25]
    targets = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]
    got = select_frames(pts, targets, end_s=1.45)
    # 0.0->f0, 0.1->f2 (f1 [0.04,0.1) holds no target), 0.2..0.4->f2, 0.5->f3, 0.6..1.1->f4
    # (0.55 is displayed until 1.2 even though 1.1 is nearer to 1.2), 1.2->f5, 1.3->f6
    assert got == [0, 2, 3, 4, 5, 6]
    ref = sorted({displayed_at(pts, t, 1.45) for t in targets} - {None})
    assert got == ref


def test_select_matches_reference_on_random_vfr():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 40)
        gaps = [rng.choice([0.001, 0.01, 0.033, 0.0417, 0.2, 0.9]) for _ in range(n)]
        pts = [sum(gaps[:i]) for i in range(n)]
        end = pts[-1] + rng.choice([0.001, 0.04, 0.5])
        fps = rng.choice([0.5, 1.0, 3.0, 24.0, 60.0])
        targets = sample_times(end, fps, 10_000)
        ref = sorted({displayed_at(pts, t, end) for t in targets} - {None})
        assert select_frames(pts, targets, end_s=end) == ref


def test_select_targets_before_first_frame_go_to_first_frame():
    assert select_frames([0.3, 0.7], [0.0, 0.1], end_s=1.0) == [0]


def test_select_targets_after_the_end_are_dropped():
    assert select_frames([0.0, 0.5], [0.0, 2.0], end_s=1.0) == [0]
    assert select_frames([0.0, 0.5], [0.9], end_s=1.0) == [1]


def test_select_float_noise_at_exact_boundaries():
    # target 0.3 computed as 3 * 0.1 = 0.30000000000000004; frame pts 0.3: still that frame
    pts = [0.0, 0.1, 0.2, 0.30000000000000004, 0.4]
    assert select_frames(pts, [0.3], end_s=0.5) == [3]
    pts = [0.0, 0.1, 0.2, 0.3, 0.4]
    assert select_frames(pts, [3 * 0.1], end_s=0.5) == [3]


def test_selector_streaming_ignores_non_increasing_pts():
    sel = FrameSelector([0.0, 0.5, 1.0])
    assert sel.offer(0.0, "a") is None
    assert sel.offer(0.4, "b") == (0.0, "a")
    assert sel.offer(0.4, "dup") is None  # same pts: ignored
    assert sel.offer(0.2, "back") is None  # going back: ignored
    assert sel.skipped == 2
    assert sel.offer(0.9, "c") == (0.4, "b")  # 0.5 is in [0.4, 0.9)
    assert sel.finish(1.5) == (0.9, "c")
    assert sel.exhausted and sel.selected == 3


def test_selector_with_unbounded_targets_stops_at_stream_end():
    sel = FrameSelector(iter_grid(2.0))  # infinite grid
    out = [sel.offer(p, i) for i, p in enumerate([0.0, 0.25, 0.5, 0.75])]
    assert [o[1] for o in out if o] == [0, 2]
    # the last frame is shown during [0.75, 1.0): target 1.0 is past the end, so not selected
    assert sel.finish(1.0) is None


def test_selector_last_frame_taken_when_a_target_falls_in_its_interval():
    sel = FrameSelector(iter_grid(2.0))
    for i, p in enumerate([0.0, 0.25, 0.5, 0.75]):
        sel.offer(p, i)
    assert sel.finish(1.01) == (0.75, 3)


# --- assignment ----------------------------------------------------------------------------------


def test_assign_frames_by_pts():
    segs = plan_segments(5.0, 2.0)
    pts = [0.0, 1.0, 2.0, 3.0, 4.0, 4.9]
    assert assign_frames_to_segments(pts, segs) == [[0, 1], [2, 3], [4, 5]]


def test_assign_empty_segment_gets_nearest_frame():
    segs = [(0.0, 1.0), (1.0, 1.05), (1.05, 3.0)]
    pts = [0.0, 0.96, 2.0]
    got = assign_frames_to_segments(pts, segs)
    assert got == [[0, 1], [1], [2]]  # 0.96 is nearest to 1.025


def test_assign_every_segment_nonempty_and_clamped():
    segs = plan_segments(10.0, 1.0)
    got = assign_frames_to_segments([-0.5, 4.2, 12.0], segs)
    assert all(got)
    assert 0 in got[0] and 2 in got[-1]
    assert assign_frames_to_segments([], segs) == [[] for _ in segs]


def test_midpoints_only_for_segments_without_targets():
    segs = plan_segments(5.0, 2.0)
    assert segment_midpoints_without_targets(segs, [0.0, 1.0, 2.0, 3.0, 4.0]) == []
    assert segment_midpoints_without_targets(segs, [0.0]) == [3.0, 4.5]


def test_keyframe_and_nearest():
    assert nearest_index([0.0, 1.0, 2.0], 1.4) == 1
    assert nearest_index([0.0, 1.0], 0.5) == 0  # tie -> earlier
    assert nearest_index([], 1.0) == -1
    pts = [0.0, 0.5, 1.0, 1.5]
    assert keyframe_index(pts, [0, 1, 2, 3], (0.0, 2.0)) == 2
    assert keyframe_index(pts, [2, 3], (1.0, 2.0)) == 3
