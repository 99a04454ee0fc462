"""moderate: per-category scores per segment, alerts on ``framebus.moderation`` as soon as one is scored.

Reads SegmentFrames (segments whose tasks include ``moderate``), scores every sampled frame of each
segment in one micro-batch, takes each category's maximum over the segment's frames, applies the
policy (threshold and action per category, from configuration, else the model's threshold and
``moderation_action``), sends one ModerationAlert per flagged category at once, and writes the verdict
as a SegmentAnalysis for the metadata document and the vector payload.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from framebus.agents.base import Runtime
from framebus.agents.embed import analysis, model_batch, prepare_segments
from framebus.topics import events as ev
from framebus.topics import registry
from framebus.topics.ids import alert_event_id

log = logging.getLogger("framebus.agents.moderate")
TASK = "moderate"
ACTION_RANK = {"allow": 0, "flag": 1, "review": 2, "blur": 3, "block": 4}


def policy(settings: Any, moderator, category: str) -> tuple[float, str]:
    rule = settings.moderation_policy.get(category) or {}
    threshold = float(rule.get("threshold", moderator.thresholds.get(category, settings.moderation_threshold)))
    return threshold, str(rule.get("action", settings.moderation_action))


def verdict(settings: Any, moderator, frame_scores: list[dict[str, float]]) -> ev.ModerationVerdict:
    """A segment's verdict from its frames' scores: the maximum per category, against the policy."""
    scores = {c: round(float(max(s[c] for s in frame_scores)), 4) for c in moderator.categories}
    flagged, action = [], "allow"
    for category, score in scores.items():
        threshold, act = policy(settings, moderator, category)
        if score >= threshold:
            flagged.append(category)
            if ACTION_RANK.get(act, 1) > ACTION_RANK.get(action, 0):
                action = act
    return ev.ModerationVerdict(scores=scores, flagged=flagged, action=action)


def score_prepared_segments(
    moderator, batcher, prepared: tuple[object, np.ndarray, int]
) -> list[list[dict[str, float]]]:
    """Each segment's frames' scores, from ``prepare_segments(moderator, items)``."""
    batch, owner, n = prepared
    scores = batcher.run(moderator.score_prepared, batch)
    return [[scores[j] for j in np.flatnonzero(owner == i)] for i in range(n)]


async def handle_batch(rt: Runtime, records: list[Any]) -> None:
    moderator, batcher, s = rt.moderator, rt.batchers[TASK], rt.settings
    done = await model_batch(
        rt,
        TASK,
        records,
        lambda prepared: score_prepared_segments(moderator, batcher, prepared),
        prepare=lambda items: prepare_segments(moderator, items),
    )
    if done is None:
        return
    alerts, verdicts = [], []
    for item, frame_scores in zip(*done):
        v = verdict(s, moderator, frame_scores)
        for category in v.flagged:
            threshold, action = policy(s, moderator, category)
            alert = ev.ModerationAlert(
                video_id=item.video_id,
                tenant=item.tenant,
                start_s=item.segment.start_s,
                end_s=item.segment.end_s,
                category=category,
                score=v.scores[category],
                threshold=threshold,
                action=action,
                trace_id=item.trace_id,
                segment_index=item.segment.index,
                model=f"{moderator.info.name}/{moderator.info.version}",
                run_id=item.run_id,
                event_id=alert_event_id(item.video_id, item.run_id, item.segment.index, category),
            )
            alerts.append((item.video_id, alert, item.trace_id))
        verdicts.append((item.video_id, analysis(item, TASK, moderator, moderation=v), item.trace_id))
    if alerts:  # the feed first: alerts do not wait for the metadata path
        await rt.send_all(registry.MODERATION, alerts)
        rt.count("moderate.alerts", len(alerts))
    await rt.send_all(registry.ANALYSIS, verdicts)


def register(rt: Runtime) -> None:
    s = rt.settings
    rt.batched_agent(
        TASK, registry.FRAMES, handle_batch, batch_size=s.moderate_batch_size, wait_s=s.moderate_batch_wait_s
    )
