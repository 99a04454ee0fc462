"""The synthetic world: deterministic shots with known content, encoded into videos with hard cuts."""

from __future__ import annotations

import av
import numpy as np
import pytest

from framebus.models.world import (
    COLOUR_RGB,
    COLOURS,
    MODERATION_CATEGORIES,
    MOTIONS,
    N_BACKGROUNDS,
    SHAPES,
    UNSAFE_SHAPE,
    ShotSpec,
    WorldVideo,
    all_combinations,
    make_world_video,
    object_centre,
    queries,
    query_text,
    render_frame,
    sample_shots,
    split,
    training_pairs,
)


def spec(**kw) -> ShotSpec:
    base = dict(shape="circle", colour="red", motion="left", background=0, seed=7)
    return ShotSpec(**{**base, **kw})


def test_attribute_space_and_moderation_policy():
    assert SHAPES == ("circle", "square", "triangle", "star")
    assert COLOURS == ("red", "green", "blue", "yellow", "white")
    assert MOTIONS == ("left", "right", "up", "down")
    assert UNSAFE_SHAPE == "star" and set(MODERATION_CATEGORIES) == {"hazard"}
    assert all(isinstance(p, str) and p for p in MODERATION_CATEGORIES["hazard"])
    assert len(all_combinations()) == 80


def test_caption_and_unsafe():
    s = spec(shape="circle", colour="red", motion="left")
    assert s.caption == "a red circle moving left"
    assert not s.unsafe
    assert spec(shape="star").unsafe
    assert spec(shape="triangle", colour="white", motion="up").caption == "a white triangle moving up"
    assert s.attributes == ("circle", "red", "left")


def test_bad_specs_are_rejected():
    for kw in (
        {"shape": "hexagon"},
        {"colour": "purple"},
        {"motion": "sideways"},
        {"background": N_BACKGROUNDS},
        {"duration_s": 0},
    ):
        with pytest.raises(ValueError):
            spec(**kw)


def test_render_is_deterministic_and_well_formed():
    s = spec()
    a = render_frame(s, 0.5, 320, 240)
    b = render_frame(ShotSpec(**s.__dict__), 0.5, 320, 240)
    assert a.shape == (240, 320, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_frame(s, 1.0, 320, 240))  # it moves
    assert not np.array_equal(a, render_frame(spec(seed=8), 0.5, 320, 240))  # seed changes the look
    assert render_frame(s, 0.0, 299, 224).shape == (224, 299, 3)


@pytest.mark.parametrize("motion,axis,sign", [("left", 0, -1), ("right", 0, 1), ("up", 1, -1), ("down", 1, 1)])
def test_object_moves_linearly_in_its_direction(motion, axis, sign):
    s = spec(motion=motion, seed=3)
    p = [np.asarray(object_centre(s, t, 320, 240)) for t in (0.0, 0.5, 1.0, 1.5, 2.0)]
    d = np.diff(np.stack(p), axis=0)
    assert np.all(sign * d[:, axis] > 0)
    np.testing.assert_allclose(d, np.broadcast_to(d[0], d.shape), atol=1e-6)  # linear in t
    # the object is drawn where object_centre says, in its colour
    img = render_frame(s, 1.0, 320, 240)
    x, y = (int(round(v)) for v in p[2])
    np.testing.assert_allclose(img[y, x].astype(int), COLOUR_RGB["red"], atol=20)


@pytest.mark.parametrize("colour", COLOURS)
def test_colour_is_the_objects_and_background_is_dark(colour):
    for bg in range(N_BACKGROUNDS):
        s = spec(colour=colour, background=bg, seed=11 + bg)
        img = render_frame(s, 1.0, 320, 240)
        x, y = (int(round(v)) for v in object_centre(s, 1.0, 320, 240))
        np.testing.assert_allclose(img[y, x].astype(int), COLOUR_RGB[colour], atol=20)
        assert img[2:10, 2:10].mean() < 80  # corner: background only


def test_shapes_differ():
    imgs = [render_frame(spec(shape=sh, seed=5), 1.0, 320, 240) for sh in SHAPES]
    masks = [np.abs(i.astype(int) - COLOUR_RGB["red"]).sum(-1) < 60 for i in imgs]
    areas = [m.sum() for m in masks]
    assert all(a > 500 for a in areas)
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] ^ masks[j]).sum() > 200


def test_sample_shots_balanced_deterministic_and_excluding():
    a = sample_shots(0, 160)
    assert a == sample_shots(0, 160)
    assert a != sample_shots(1, 160)
    counts = {c: 0 for c in all_combinations()}
    for s in a:
        counts[s.attributes] += 1
    assert set(counts.values()) == {2}
    excl = {("star", "red", "left"), ("circle", "blue", "up")}
    b = sample_shots(np.random.default_rng(3), 100, exclude=excl)
    assert len(b) == 100 and not any(s.attributes in excl for s in b)
    assert all(0 <= s.background < N_BACKGROUNDS for s in b)


def test_split_is_deterministic_with_disjoint_seeds():
    train, held = split(0)
    assert (train, held) == split(0)
    assert split(1)[1] != held
    assert {s.attributes for s in held} == set(all_combinations())
    assert {s.attributes for s in train} == set(all_combinations())
    assert not {s.seed for s in train} & {s.seed for s in held}


def test_queries():
    qs = queries()
    assert len(qs) == 80 + 20 + 4 + 5 + 4
    caps = [q for q in qs if q.kind == "caption"]
    assert {q.text for q in caps} == {ShotSpec(sh, c, m, 0, 0).caption for sh, c, m in all_combinations()}
    s = spec(shape="square", colour="blue", motion="up")
    matching = {q.text for q in qs if q.matches(s)}
    assert matching == {"a blue square moving up", "a blue square", "a square", "a blue shape", "a shape moving up"}
    assert query_text(colour="red", shape="star") == "a red star"


def test_training_pairs_match_decode_agent_frames():
    shots = sample_shots(0, 3)
    frames, specs = training_pairs(shots, 2)
    assert len(frames) == 6 and specs == [shots[0], shots[0], shots[1], shots[1], shots[2], shots[2]]
    assert all(f.shape == (224, 299, 3) and f.dtype == np.uint8 for f in frames)
    again, _ = training_pairs(shots, 2)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))


def test_make_world_video_cuts_and_decode(tmp_path):
    from framebus.agents.media.pipeline import DecodeJob, decode_video
    from framebus.topics.frames import decode_jpeg

    shots = [
        spec(shape="circle", colour="red", motion="left", seed=1),
        spec(shape="square", colour="blue", motion="up", background=2, seed=2),
        spec(shape="star", colour="yellow", motion="right", background=4, seed=3, duration_s=1.5),
    ]
    wv = make_world_video(tmp_path / "w.mp4", shots, fps=24, width=160, height=120)
    assert isinstance(wv, WorldVideo) and wv.path.is_file()
    assert wv.cuts == [2.0, 4.0]
    assert wv.bounds == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.5)]
    assert [wv.shot_at(t) for t in (0.0, 1.99, 2.0, 3.9, 4.0, 5.5)] == [0, 0, 1, 1, 2, 2]

    # every decoded frame shows its own shot's content: a hard cut, exactly at the cut times
    with av.open(str(wv.path)) as c:
        decoded = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    assert len(decoded) == 48 + 48 + 36
    for t, rgb in decoded:
        k = wv.shot_at(t)
        local = t - wv.bounds[k][0]
        errs = [np.abs(rgb.astype(int) - render_frame(s, local, 160, 120).astype(int)).mean() for s in shots]
        assert int(np.argmin(errs)) == k and errs[k] < 6, (t, errs)

    dec = decode_video(DecodeJob(path=str(wv.path), video_id="w"))
    assert dec.info.duration_s == pytest.approx(5.5, abs=1e-3)
    assert [(s.start_s, s.end_s) for s in dec.segments] == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.5)]
    first = decode_jpeg(dec.segments[1].frames[0][1])
    assert first.shape[0] == 224
