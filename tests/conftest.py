"""Fixtures shared by unit and integration tests, and the suite's order.

Order: every ``tests/unit`` test runs first, then any other test under ``tests/``, then every
``tests/integration`` test; within each group pytest's collection order is kept
(``pytest_collection_modifyitems`` below, a stable sort). The session-scoped ``stack`` fixture
(``tests/integration/conftest.py``: the embedded broker and a ``framebus up`` child process) is created
lazily by the first test that requests it, so with this order it starts only after the last unit test has
finished and never competes with unit tests for the CPU. It is visible only under ``tests/integration``,
and the hook refuses a run in which a unit test requests it.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models():
    """``(settings, ensure_tiny_models result)`` of the tiny models trained on the synthetic world: the
    shipped weights, or, under another training seed (``FRAMEBUS_TRAIN_SEED``, the stand-in for another
    machine's float differences) or recipe, the user cache's (trained now when missing)."""
    from framebus.models.training import ensure_tiny_models
    from framebus.streams.config import Settings

    settings = Settings(models="tiny", device="cpu")
    return settings, ensure_tiny_models(settings)


def _suite_group(item: pytest.Item) -> int:
    """0 for ``tests/unit``, 2 for ``tests/integration``, 1 for anything else."""
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    path = Path(item.path).resolve()
    if path.is_relative_to(tests / "unit"):
        return 0
    if path.is_relative_to(tests / "integration"):
        return 2
    return 1


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests first, integration tests last, collection order kept within each group (see the module
    doc): the session-wide integration stack then starts only once every unit test has run."""
    early = [item.nodeid for item in items if _suite_group(item) == 0 and "stack" in getattr(item, "fixturenames", ())]
    if early:
        raise pytest.UsageError(f"unit tests must not use the integration stack (it would start early): {early}")
    items.sort(key=_suite_group)  # list.sort is stable
