"""Moderators: the trained logistic head (tiny profile) and zero-shot policy prompts (default
profile), on the tiny CLIP embedder. Everything runs offline."""

from __future__ import annotations

import numpy as np
import pytest

from framebus.models.base import Moderator
from framebus.models.registry import backends, load_embedder, load_moderator
from framebus.streams.config import Settings
from framebus.topics.errors import ModelError, ModelNotAvailable


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("moderator-data")


def head_settings(data_dir) -> Settings:
    """The tiny profile with the head trained by this module, in ``<data_dir>/models``."""
    return Settings(models="tiny", device="cpu", data_dir=data_dir, model_dir=data_dir / "models")


@pytest.fixture(scope="module")
def embedder(tiny_models):
    """The trained tiny CLIP (shipped, or of ``FRAMEBUS_TRAIN_SEED``): what the head is trained on."""
    settings, _ = tiny_models
    return load_embedder(settings)


@pytest.fixture(scope="module")
def trained(data_dir, embedder):
    """The head's whole recipe, run here (about half a minute): it must still learn."""
    from framebus.models.moderator import TINY_HEAD_FILE
    from framebus.models.training.moderator import train_tiny_moderator

    return train_tiny_moderator(data_dir / "models" / TINY_HEAD_FILE, embedder)


@pytest.fixture(scope="module")
def heldout():
    from framebus.models.world import split, training_pairs

    held = split(0)[1]
    frames, specs = training_pairs(held, 2)
    return frames, specs, [i for i in range(len(held)) for _ in range(2)]


def test_tiny_profile_needs_the_trained_head(tmp_path, embedder):
    with pytest.raises(ModelNotAvailable) as err:
        load_moderator(Settings(models="tiny", device="cpu", data_dir=tmp_path, model_dir=tmp_path), embedder)
    assert err.value.code == "models.weights_missing"
    assert "framebus models train" in err.value.message and "tiny-moderator.pt" in err.value.message


def test_head_separates_unsafe_from_safe(data_dir, embedder, trained, heldout):
    """The recipe on the trained tiny CLIP, scored per shot (each category's maximum over the shot's frames,
    as the moderate agent decides) on the held-out shots: measured precision and recall 1.00 under training
    seeds 0 and 1, 1.00 / 0.95 under seed 2; a random model, or "flag everything" (precision 0.25), fails."""
    mod = load_moderator(head_settings(data_dir), embedder)
    assert isinstance(mod, Moderator)
    assert mod.categories == ["hazard"] and mod.info.task == "moderate" and len(mod.info.version) == 12
    assert mod.info.version == trained["version"]
    assert mod.thresholds == pytest.approx(trained["thresholds"])
    assert 0.0 < mod.thresholds["hazard"] < 1.0

    frames, specs, shot_ids = heldout
    scores = mod.score(frames)
    assert len(scores) == len(frames)
    assert all(set(s) == {"hazard"} and 0.0 <= s["hazard"] <= 1.0 for s in scores)
    unsafe = np.array([s["hazard"] for s, sp in zip(scores, specs) if sp.unsafe])
    safe = np.array([s["hazard"] for s, sp in zip(scores, specs) if not sp.unsafe])
    assert unsafe.mean() > safe.mean() + 0.6

    from framebus.models.training.moderator import moderation_metrics

    m = moderation_metrics(mod, frames, specs, shot_ids)
    print("held-out moderation:", m, "calibration:", trained["validation_shot"])
    assert m["hazard"]["shot"]["precision"] >= 0.9 and m["hazard"]["shot"]["recall"] >= 0.9
    assert trained["validation_shot"]["hazard"]["f1"] >= 0.95


def test_fit_and_threshold_on_separable_data():
    """The head's fitting and threshold choice, on features that do separate the classes."""
    from framebus.models.training.moderator import fit_logistic, pick_threshold, precision_recall

    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.25).astype(np.float32)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    x[:, 3] += 8 * y  # one informative direction, classes well apart
    w, b = fit_logistic(x[:300], y[:300, None])
    assert w.shape == (1, 16) and b.shape == (1,)
    p = 1 / (1 + np.exp(-(x @ w.T + b)[:, 0]))
    thr = pick_threshold(p[300:350], y[300:350])
    res = precision_recall(p[350:], y[350:], thr)
    assert res["precision"] >= 0.9 and res["recall"] >= 0.9, res
    # ties go to the middle of the widest gap: scores 0.1, 0.2 | 0.8, 0.9 -> about 0.5
    assert pick_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(0.5, abs=1e-6)


def test_head_trained_on_another_embedder_is_refused(data_dir, trained, embedder):
    from framebus.models.moderator import TINY_HEAD_FILE, ClipHeadModerator

    class Other:
        info = type(embedder.info)(name=embedder.info.name, version="0123456789ab", task="embed")
        dim = embedder.dim

    with pytest.raises(ModelNotAvailable) as err:
        ClipHeadModerator.load(data_dir / "models" / TINY_HEAD_FILE, Other())
    assert "framebus models train" in err.value.message and "0123456789ab" in err.value.message


def test_bad_head_file_is_a_model_error(tmp_path, embedder):
    from framebus.models.moderator import ClipHeadModerator

    p = tmp_path / "head.pt"
    p.write_bytes(b"not a torch file")
    with pytest.raises(ModelError) as err:
        ClipHeadModerator.load(p, embedder)
    assert err.value.code == "models.failed"


def test_zero_shot_scores_are_per_category_probabilities(tmp_path, embedder):
    from framebus.models.profiles import DEFAULT_MODERATION_POLICY

    mod = load_moderator(Settings(models="default", device="cpu", data_dir=tmp_path), embedder)
    assert isinstance(mod, Moderator) and mod.info.task == "moderate"
    assert mod.categories == list(DEFAULT_MODERATION_POLICY)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (64 + 9 * i, 80, 3), dtype=np.uint8) for i in range(5)]
    scores = mod.score(images)
    assert len(scores) == 5 and mod.score([]) == []
    for s in scores:
        assert list(s) == mod.categories
        assert all(0.0 <= v <= 1.0 and np.isfinite(v) for v in s.values())
    assert set(mod.thresholds) == set(mod.categories)


def test_zero_shot_math_and_config(embedder):
    from framebus.models.moderator import ClipZeroShotModerator

    policy = {"hazard": ("a spiky star", "a star"), "dots": "a dot"}
    mod = ClipZeroShotModerator(
        embedder, policy, {"temperature": 0.05, "threshold": 0.7}, safe_prompts=["a circle", "a square"]
    )
    assert mod.categories == ["hazard", "dots"] and mod.thresholds == {"hazard": 0.7, "dots": 0.7}
    # an image embedding equal to a prompt's text embedding scores high for that prompt's category
    star = embedder.embed_texts(["a star"])
    circle = embedder.embed_texts(["a circle"])
    s_star, s_circle = mod.score_embeddings(np.concatenate([star, circle]))
    assert s_star["hazard"] > 0.5 > s_circle["hazard"]
    # a different policy or calibration is a different model version
    other = ClipZeroShotModerator(embedder, policy, {"temperature": 0.02}, safe_prompts=["a circle", "a square"])
    assert other.info.version != mod.info.version
    with pytest.raises(ModelError):
        ClipZeroShotModerator(embedder, {"empty": []})
    with pytest.raises(ModelError):
        ClipZeroShotModerator(embedder, policy, {"temperature": 0})


def test_registry_has_moderator_backends():
    from framebus.models.profiles import get_profile

    assert ("moderator", "clip-zero-shot") in backends("moderator")
    assert ("moderator", "clip-head") in backends("moderator")
    assert get_profile("default").moderator.backend == "clip-zero-shot"
    assert get_profile("tiny").moderator.backend == "clip-head"
