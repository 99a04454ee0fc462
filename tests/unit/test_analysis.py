"""Pure parts of the model agents: the moderation verdict and policy, and the index join."""

from __future__ import annotations

from types import SimpleNamespace

from framebus.agents.index import complete, merge
from framebus.agents.moderate import verdict
from framebus.streams.config import Settings
from framebus.topics import events as ev

MODERATOR = SimpleNamespace(categories=["hazard", "gore"], thresholds={"hazard": 0.6, "gore": 0.5})


def test_verdict_takes_the_maximum_per_category_and_applies_the_policy():
    s = Settings(moderation_policy={"gore": {"threshold": 0.9, "action": "block"}}, moderation_action="review")
    v = verdict(s, MODERATOR, [{"hazard": 0.2, "gore": 0.7}, {"hazard": 0.65, "gore": 0.1}])
    assert v.scores == {"hazard": 0.65, "gore": 0.7}
    assert v.flagged == ["hazard"]  # gore 0.7 is under its configured 0.9
    assert v.action == "review"
    v = verdict(s, MODERATOR, [{"hazard": 0.1, "gore": 0.95}])
    assert v.flagged == ["gore"] and v.action == "block"
    assert verdict(s, MODERATOR, [{"hazard": 0.1, "gore": 0.2}]).action == "allow"


def part(task: str, **result) -> ev.SegmentAnalysis:
    return ev.SegmentAnalysis(
        video_id="v",
        tenant="t",
        uri="/v.mp4",
        trace_id="tr",
        segment_count=2,
        segment=ev.Segment(index=1, start_s=2.0, end_s=4.0, keyframe_s=3.0, quality={"sharpness": 1.0}),
        tasks=["embed", "caption", "moderate"],
        task=task,
        model=ev.ModelRef(task=task, name=f"{task}-model", version="1"),
        video=ev.VideoFacts(duration_s=4.0, fps=24, width=8, height=8, codec="h264"),
        **result,
    )


def test_a_segment_is_joined_once_every_task_reported_in_any_order():
    parts = merge({}, part("caption", caption="a red circle"))
    assert complete(parts) is None
    parts = merge(
        parts,
        part("moderate", moderation=ev.ModerationVerdict(scores={"hazard": 0.9}, flagged=["hazard"], action="flag")),
    )
    parts = merge(parts, part("caption", caption="a red circle"))  # a replay overwrites itself
    assert complete(parts) is None
    joined = complete(merge(parts, part("embed", vector=[0.6, 0.8])))
    seg = joined.analysis.segment
    assert (seg.caption, seg.moderation.flagged, seg.quality) == ("a red circle", ["hazard"], {"sharpness": 1.0})
    assert joined.analysis.vector == [0.6, 0.8]
    assert joined.embed_model.name == "embed-model"
    assert sorted(m.task for m in joined.models) == ["caption", "embed", "moderate"]


def test_parts_that_never_complete_expire():
    from framebus.agents.index import stale

    parts = merge({}, part("caption", caption="a red circle"), now=1000.0)
    parts = merge(parts, part("embed", vector=[1.0, 0.0]), now=1500.0)  # the first part's time is kept
    assert not stale(parts, ttl_s=600, now=1599.0) and stale(parts, ttl_s=600, now=1601.0)
