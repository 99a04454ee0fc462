"""Training the tiny CLIP on the synthetic world, and evaluating it through the real decode path.

The ``trained`` fixture is the real tiny CLIP of ``tiny_models``: the shipped weights, or, under another
training seed (``FRAMEBUS_TRAIN_SEED``), the user cache's, trained by the fixture when missing.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from framebus.models.openclip import TINY_CHECKPOINT, OpenClipEmbedder
from framebus.models.registry import load_embedder
from framebus.models.training import (
    TRAINERS,
    TrainSpec,
    ensure_tiny_models,
    missing_models,
    model_version,
    recipe_id,
    stats_path,
    tiny_path,
)
from framebus.models.training.clip import train_tiny_clip
from framebus.streams.config import Settings


def settings_for(data_dir: Path) -> Settings:
    return Settings(models="tiny", device="cpu", data_dir=data_dir, model_dir=data_dir / "models")


def short_training(path, seed=0):
    return train_tiny_clip(path, seed=seed, steps=12, batch_size=16, max_shots=24)


def test_short_training_is_deterministic_and_loads_in_the_serving_path(tmp_path):
    a = short_training(tmp_path / "a" / TINY_CHECKPOINT)
    b = short_training(tmp_path / "b" / TINY_CHECKPOINT)
    assert a["state_digest"] == b["state_digest"]
    # same weights -> same bytes -> same model version, wherever the file is written
    assert a["sha256"] == b["sha256"]
    data = (tmp_path / "a" / TINY_CHECKPOINT).read_bytes()
    assert hashlib.sha256(data).hexdigest() == a["sha256"]
    assert (tmp_path / "b" / TINY_CHECKPOINT).read_bytes() == data
    assert a["steps"] == 12 and np.isfinite(a["final_loss"]) and a["final_loss"] < a["initial_loss"]
    assert not list((tmp_path / "a").glob("*.tmp"))  # atomic write leaves nothing behind
    assert len(data) < 5 * 2**20  # packed: only the token-embedding rows training moved

    c = short_training(None, seed=1)
    assert c["state_digest"] != a["state_digest"] and c["sha256"] is None

    untrained = OpenClipEmbedder.tiny(device="cpu")
    trained = OpenClipEmbedder.tiny(checkpoint=tmp_path / "a" / TINY_CHECKPOINT, device="cpu")
    assert trained.info.version == a["version"] == a["sha256"][:12]
    assert trained.info.version != untrained.info.version  # a new vector collection
    # the serving path: FRAMEBUS_MODELS=tiny + data_dir finds <data_dir>/models/tiny-clip.pt
    served = load_embedder(settings_for(tmp_path / "data"))
    assert served.info.version == untrained.info.version
    (tmp_path / "data" / "models").mkdir(parents=True)
    (tmp_path / "data" / "models" / TINY_CHECKPOINT).write_bytes(data)
    served = load_embedder(settings_for(tmp_path / "data"))
    assert served.info.version == a["version"]
    img = np.zeros((224, 299, 3), np.uint8)
    np.testing.assert_allclose(served.embed_images([img]), trained.embed_images([img]), atol=1e-6)
    assert not np.allclose(served.embed_images([img]), untrained.embed_images([img]), atol=1e-4)


def test_training_leaves_global_torch_state_alone(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_tiny_clip(None, steps=2, batch_size=8, max_shots=8)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def _fake_trainers(monkeypatch, calls, delay=0.0):
    def train(path, settings):
        calls.append(path)
        time.sleep(delay)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        return {"final_loss": 0.5}

    monkeypatch.setattr("framebus.models.training.TRAINERS", [TrainSpec("fake", "fake.pt", train)])


def test_ensure_trains_missing_then_caches(tmp_path, monkeypatch):
    calls: list = []
    _fake_trainers(monkeypatch, calls)
    s = settings_for(tmp_path)
    assert missing_models(s) == ["fake"]
    r = ensure_tiny_models(s)
    assert r["fake"]["status"] == "trained" and r["fake"]["stats"]["final_loss"] == 0.5
    assert Path(r["fake"]["path"]) == tmp_path / "models" / "fake.pt"
    assert json.loads(stats_path(tmp_path / "models" / "fake.pt").read_text())["final_loss"] == 0.5
    r = ensure_tiny_models(s)
    assert r["fake"]["status"] == "cached" and r["fake"]["stats"]["final_loss"] == 0.5
    assert len(calls) == 1 and missing_models(s) == []
    assert ensure_tiny_models(s, force=True)["fake"]["status"] == "trained"
    assert len(calls) == 2
    (tmp_path / "models" / "fake.pt").unlink()  # deleted cache: rebuilt
    assert ensure_tiny_models(s)["fake"]["status"] == "trained"


def test_stale_models_are_retrained(tmp_path, monkeypatch):
    """A model trained on top of another is retrained when that one changes, or when its recipe does."""
    calls: list = []
    weights = {"base": b"base-1"}

    def train(path, settings):
        calls.append(path.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(weights.get(path.stem, b"head"))
        return {}

    specs = [TrainSpec("base", "base.pt", train), TrainSpec("head", "head.pt", train, depends=("base",))]
    monkeypatch.setattr("framebus.models.training.TRAINERS", specs)
    s = settings_for(tmp_path)
    assert missing_models(s) == ["base", "head"]
    ensure_tiny_models(s)
    assert calls == ["base.pt", "head.pt"] and missing_models(s) == []
    head_stats = json.loads(stats_path(tmp_path / "models" / "head.pt").read_text())
    assert head_stats["inputs"] == {"base": model_version(tmp_path / "models" / "base.pt")}

    weights["base"] = b"base-2"  # the base is retrained into other weights: the head goes stale with it
    (tmp_path / "models" / "base.pt").unlink()
    assert missing_models(s) == ["base", "head"]
    r = ensure_tiny_models(s)
    assert calls[2:] == ["base.pt", "head.pt"] and r["head"]["why"].startswith("trained on base")
    assert ensure_tiny_models(s)["head"]["status"] == "cached"

    before = recipe_id(specs[1], s)
    specs[1] = TrainSpec("head", "head.pt", train, depends=("base",), revision=2)  # the recipe changed
    assert missing_models(s) == ["head"]
    assert ensure_tiny_models(s)["head"]["why"] == f"recipe {before} != {recipe_id(specs[1], s)}"
    assert calls[4:] == ["head.pt"]


def test_ensure_trains_once_under_concurrency(tmp_path, monkeypatch):
    calls: list = []
    _fake_trainers(monkeypatch, calls, delay=0.3)
    s = settings_for(tmp_path)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_tiny_models(s))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(r["fake"]["status"] for r in results) == ["cached", "cached", "trained"]


def test_trainers_see_the_tiny_profile(tmp_path, monkeypatch):
    seen = []

    def train(path, settings):
        seen.append(settings.models)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"w")
        return {}

    monkeypatch.setattr("framebus.models.training.TRAINERS", [TrainSpec("fake", "fake.pt", train)])
    s = Settings(models="default", device="cpu", data_dir=tmp_path, model_dir=tmp_path / "models")
    ensure_tiny_models(s)
    assert seen == ["tiny"] and s.models == "default"


def test_tiny_clip_is_registered():
    assert [t.name for t in TRAINERS][0] == "tiny-clip"
    assert TRAINERS[0].filename == TINY_CHECKPOINT


# ------------------------------------------------------------------------------------------------
# the real training (the checkout's cached models)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_models):
    settings, result = tiny_models
    return settings, result["tiny-clip"]


@pytest.fixture(scope="module")
def evaluation(trained):
    from framebus.streams.evaluate import evaluate

    settings, _ = trained
    return evaluate(settings)


def test_real_training_stats(trained):
    settings, entry = trained
    st = entry["stats"]
    assert entry["status"] in ("trained", "cached", "shipped") and st["steps"] > 0
    assert Path(entry["path"]) == tiny_path(settings, "tiny-clip")
    assert st["final_loss"] < st["initial_loss"] * 0.6
    assert load_embedder(settings).info.version == st["version"]


def test_heldout_search_is_well_above_chance(evaluation):
    """Measured under training seeds 0, 1, 2: recall@1 0.975-1.00, @5 1.00; every attribute of the top hit
    0.975-1.00; the bounds leave a margin of a few queries (chance is 1/80 for the exact shot)."""
    search = evaluation["search"]
    assert evaluation["heldout"]["shots"] == 80
    # segments are what the decode stage makes of the videos (detected shots, or fixed windows)
    assert 60 <= search["segments"] <= 100
    cap = search["caption"]
    assert cap["queries"] == 80
    assert cap["chance@1"] < 0.03
    assert cap["recall@1"] >= 0.9 and cap["recall@5"] >= 0.95
    attrs = search["caption_attributes"]
    assert attrs["colour"]["accuracy@1"] >= 0.95
    assert attrs["shape+colour"]["accuracy@1"] >= 0.9  # chance 1/20
    assert attrs["motion"]["accuracy@1"] >= 0.9  # chance 1/4
    q = search["queries"]
    assert q["shape+colour"]["precision@1"] >= 0.9  # "a red circle": chance 1/20
    assert q["colour"]["precision@1"] >= 0.9
    assert q["shape"]["precision@1"] >= 0.9


def test_heldout_captions_and_moderation_through_the_production_decode(evaluation):
    """``framebus models eval``'s figures, asserted: measured under training seeds 0, 1, 2, captions colour
    and motion 1.00, shape 0.95-1.00; the head per shot precision 1.00, recall 0.95-1.00 (19 unsafe shots).
    The end-to-end test (tests/integration/test_understanding.py) asserts moderation over 20 unsafe shots."""
    cap = evaluation["captioning"]
    assert cap["keyframes"] >= 70
    assert cap["colour"] >= 0.95 and cap["motion"] >= 0.9 and cap["shape"] >= 0.85, cap
    head = evaluation["moderation"]["profile"]["hazard"]["shot"]
    assert head["positives"] >= 18
    assert head["precision"] >= 0.9 and head["recall"] >= 0.9, head
