from __future__ import annotations

import pytest

from framebus.streams.batching import AdaptiveBatcher, is_out_of_memory


def model_with_memory(capacity: int, calls: list[int]):
    """A model that fails like CUDA does when a batch is larger than ``capacity``."""

    def fn(items):
        calls.append(len(items))
        if len(items) > capacity:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 2 for x in items]

    return fn


def test_out_of_memory_halves_the_batch_and_loses_no_item():
    calls: list[int] = []
    batcher = AdaptiveBatcher("m", 16, recover_after=100)
    out = batcher.run(model_with_memory(5, calls), list(range(40)))
    assert out == [x * 2 for x in range(40)]
    assert calls[:3] == [16, 8, 4]  # 16 and 8 fail, 4 fits
    assert batcher.limit == 4 and batcher.stats.oom_splits == 2
    assert batcher.stats.items == 40


def test_the_limit_grows_back_after_clean_calls():
    calls: list[int] = []
    batcher = AdaptiveBatcher("m", 8, recover_after=2)
    batcher.run(model_with_memory(4, calls), list(range(8)))
    assert batcher.limit == 8  # 4 + 4 clean calls, then doubled
    calls.clear()
    batcher.run(model_with_memory(100, calls), list(range(8)))
    assert calls == [8]


def test_other_errors_and_single_items_that_do_not_fit_propagate():
    batcher = AdaptiveBatcher("m", 4)
    with pytest.raises(ValueError):
        batcher.run(lambda items: (_ for _ in ()).throw(ValueError("bad input")), [1, 2])
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.run(model_with_memory(0, []), [1, 2, 3])


def test_out_of_memory_detection():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))

    class OutOfMemoryError(RuntimeError):
        pass

    assert is_out_of_memory(OutOfMemoryError("x"))


def test_deadline_thread_runs_earliest_deadline_first_and_reports_errors():
    import threading

    from framebus.streams.batching import DeadlineThread

    runner = DeadlineThread("test-model")
    gate, order = threading.Event(), []
    try:
        first = runner.submit(gate.wait, 10)  # occupies the thread while the others queue
        caption = runner.submit(order.append, "caption", slack_s=0.5)
        embed = runner.submit(order.append, "embed", slack_s=0.25)
        moderate = runner.submit(order.append, "moderate", slack_s=0.0)
        failing = runner.submit(lambda: 1 / 0, slack_s=0.0)
        gate.set()
        for fut in (first, caption, embed, moderate):
            fut.result(timeout=10)
        assert order == ["moderate", "embed", "caption"]
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=10)
        # a batch queued long ago goes before a new one with less slack: nothing starves
        gate.clear()
        order.clear()
        blocker = runner.submit(gate.wait, 10)
        old = runner.submit(order.append, "old caption", slack_s=-1.0)  # as if queued a second earlier
        new = runner.submit(order.append, "new moderation", slack_s=0.0)
        gate.set()
        for fut in (blocker, old, new):
            fut.result(timeout=10)
        assert order == ["old caption", "new moderation"]
    finally:
        runner.shutdown()
    with pytest.raises(RuntimeError):
        runner.submit(print)
