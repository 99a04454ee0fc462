"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import pytest

from framebus.models.training import CHECKOUT_MODEL_DIR

#: the checkout's trained tiny models, shared with ``make demo`` and the benchmarks (``make test`` trains
#: them first when they are missing or stale, so no test waits minutes for them)
MODEL_DIR = CHECKOUT_MODEL_DIR


@pytest.fixture(scope="session")
def tiny_models():
    """``(settings, ensure_tiny_models result)`` of the tiny models trained on the synthetic world in
    ``MODEL_DIR``: cached files, or trained now when missing or stale."""
    from framebus.models.training import ensure_tiny_models
    from framebus.streams.config import Settings

    settings = Settings(models="tiny", device="cpu", model_dir=MODEL_DIR)
    return settings, ensure_tiny_models(settings)
