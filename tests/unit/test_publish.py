"""The publish agent's fold: when a video is finished and what its document says (no broker)."""

from __future__ import annotations

from framebus.agents.publish import apply_progress, build_metadata
from framebus.topics import events as ev

FACTS = ev.VideoFacts(duration_s=5.0, fps=25.0, width=320, height=240, codec="h264")
MODEL = ev.ModelRef(task="embed", name="m", version="1")


def done(index: int, count: int = 3, **kw) -> ev.SegmentDone:
    seg = ev.Segment(index=index, start_s=2.0 * index, end_s=min(5.0, 2.0 * index + 2), keyframe_s=2.0 * index + 1)
    return ev.SegmentDone(
        video_id="v", tenant="t", segment=seg, segment_count=count, video=FACTS, models=[MODEL], trace_id="tr", **kw
    )


def test_a_video_is_finished_only_when_every_segment_arrived_in_any_order():
    state, finished = apply_progress(None, done(2))
    assert not finished
    state, finished = apply_progress(state, done(0))
    assert not finished
    state, finished = apply_progress(state, done(0))  # a replay counts once
    assert not finished
    state, finished = apply_progress(state, done(1))
    assert finished
    doc = build_metadata(state)
    assert doc.status == "ok" and doc.error is None
    assert [s.index for s in doc.shots] == [0, 1, 2]
    assert [(s.start_s, s.end_s) for s in doc.shots] == [(0, 2), (2, 4), (4, 5)]
    assert (doc.duration_s, doc.fps, doc.width, doc.height, doc.codec) == (5.0, 25.0, 320, 240, "h264")
    assert [m.name for m in doc.models] == ["m"] and doc.trace_id == "tr"


def test_a_failure_finishes_the_video_at_once_as_failed():
    state, _ = apply_progress(None, done(0))
    failure = ev.SegmentDone(video_id="v", tenant="t", error=ev.ErrorInfo(code="decode.corrupt", message="bad"))
    state, finished = apply_progress(state, failure)
    assert finished
    doc = build_metadata(state)
    assert doc.status == "failed" and doc.error.code == "decode.corrupt" and doc.shots == []


def test_a_failed_ingest_with_no_progress_yet_makes_a_failed_document():
    failure = ev.SegmentDone(
        video_id="v",
        tenant="t",
        uri="/etc/passwd",
        trace_id="tr",
        error=ev.ErrorInfo(code="ingest.outside_allowed_roots", message="no"),
    )
    state, finished = apply_progress(None, failure)
    doc = build_metadata(state)
    assert finished and doc.status == "failed" and doc.uri == "/etc/passwd" and doc.duration_s is None


def test_streamed_segments_wait_for_the_decode_plan_and_its_final_facts():
    """Decode sends shots before it knows how many there are (segment_count 0); its plan, on the
    progress topic, says how many and carries the facts refined after the whole decode."""
    state, finished = apply_progress(None, done(0, count=0))
    state, finished = apply_progress(state, done(1, count=0))
    assert not finished  # however many are done, the video is not finished before the plan
    final = FACTS.model_copy(update={"duration_s": 5.5})
    plan = ev.SegmentDone(video_id="v", tenant="t", segment_count=3, video=final, trace_id="tr")
    state, finished = apply_progress(state, plan)
    assert not finished
    state, finished = apply_progress(state, done(2, count=0))
    assert finished
    assert build_metadata(state).duration_s == 5.5  # the plan's facts, not the segments' probe facts
    # the plan may also come last
    state, _ = apply_progress(None, done(0, count=0))
    state, finished = apply_progress(state, plan.model_copy(update={"segment_count": 1}))
    assert finished and build_metadata(state).duration_s == 5.5
