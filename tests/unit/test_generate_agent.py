"""The generate agent's pure parts: the prompt check (policy terms; embedding similarity to the moderation
categories, on the real tiny CLIP and moderator) and the scheduler (priority order, batching of compatible
jobs, a cancel inside a batch). The whole agent runs on the real broker in
``tests/integration/test_generate.py``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from framebus.agents.generate import Cancelled, Job, Scheduler, blocked_term, prompt_scores
from framebus.topics import events as ev


def test_blocked_terms_match_whole_words_case_insensitively():
    terms = ["gore", "blood bath"]
    assert blocked_term("A GORE scene", terms) == "gore"
    assert blocked_term("a blood bath at dawn", terms) == "blood bath"
    assert blocked_term("gorgeous mountains", terms) is None
    assert blocked_term("anything", []) is None


@pytest.fixture(scope="module")
def tiny_models_loaded():
    from framebus.models.registry import load_embedder, load_moderator
    from framebus.streams.config import Settings

    s = Settings(models="tiny", device="cpu")
    embedder = load_embedder(s)
    return embedder, load_moderator(s, embedder)


@pytest.mark.parametrize(
    ("prompt", "unsafe"),
    [
        ("a red star moving left", True),
        ("a yellow star moving down", True),
        ("stars", True),
        ("a blue square moving right", False),
        ("a red circle moving left", False),
        ("a white triangle moving up", False),
    ],
)
def test_prompt_check_reads_prompts_as_the_moderation_categories(tiny_models_loaded, prompt, unsafe):
    embedder, moderator = tiny_models_loaded
    scores = prompt_scores(embedder, moderator, prompt)
    assert set(scores) == set(moderator.categories)
    assert (scores["hazard"] >= 0.5) == unsafe, scores


# --- the scheduler ---------------------------------------------------------------------------------


@dataclass
class FakeSpec:
    mode: str = "t2v"
    num_frames: int = 8
    width: int = 64
    height: int = 64
    steps: int = 4
    fps: float = 8.0


class Recorder:
    """Stands in for ``Generation`` where the scheduler calls it: records each sampling call's jobs."""

    def __init__(self, batchable: bool, cancel_in_batch: bool = False):
        self.rt = SimpleNamespace(settings=SimpleNamespace(generate_batch_size=3))
        self.batchable = batchable
        self.calls: list[list[str]] = []
        self.cancel_in_batch = cancel_in_batch

    async def sample(self, batch):
        self.calls.append([j.req.job_id for j in batch])
        await asyncio.sleep(0.01)
        if self.cancel_in_batch and any(j.cancel.is_set() for j in batch):
            raise Cancelled("x")
        return [j.req.job_id for j in batch]


def job(jid: str, priority: int, seq: int, **spec) -> Job:
    req = ev.GenerationRequest(job_id=jid, prompt="p", tenant="t", priority=priority)
    return Job(req=req, record=None, spec=FakeSpec(**spec), run_id="r", trace_id="t", seq=seq, ckpt_dir=None)


async def run_jobs(rec: Recorder, jobs: list[Job]) -> list:
    sched = Scheduler(rec)
    futs = [sched.submit(jobs[0])]
    await asyncio.sleep(0.001)  # the first job is taken at once, alone; the rest queue behind it
    futs += [sched.submit(j) for j in jobs[1:]]
    out = await asyncio.gather(*futs, return_exceptions=True)
    sched.task.cancel()
    return out


def test_higher_priority_runs_first_then_arrival_order():
    rec = Recorder(batchable=False)
    # the first job starts at once; the rest wait and are then taken by priority
    jobs = [job("a", 0, 0), job("b", 0, 1), job("c", 9, 2), job("d", 5, 3)]
    out = asyncio.run(run_jobs(rec, jobs))
    assert out == ["a", "b", "c", "d"]
    assert rec.calls == [["a"], ["c"], ["d"], ["b"]]


def test_compatible_jobs_share_one_sampling_call():
    rec = Recorder(batchable=True)
    jobs = [job("a", 0, 0), job("b", 0, 1), job("c", 0, 2, steps=8), job("d", 0, 3), job("e", 0, 4)]
    asyncio.run(run_jobs(rec, jobs))
    # a starts alone; then b, d, e (same shape and steps; at most 3) together, c (other steps) alone
    assert rec.calls == [["a"], ["b", "d", "e"], ["c"]]


def test_a_cancel_inside_a_batch_ends_only_that_job():
    rec = Recorder(batchable=True, cancel_in_batch=True)
    jobs = [job("a", 0, 0), job("b", 0, 1), job("c", 0, 2)]
    jobs[1].cancel.set()
    out = asyncio.run(run_jobs(rec, jobs))
    assert out[0] == "a" and isinstance(out[1], Cancelled) and out[2] == "c"
    assert rec.calls == [["a"], ["b", "c"], ["c"]]
