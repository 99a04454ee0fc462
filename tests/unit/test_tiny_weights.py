"""Where the tiny models' weights come from: shipped with the repository (seed 0 of the current recipes),
the user cache by recipe id, or an explicit model directory; and the installed namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framebus.models.common import file_digest
from framebus.models.training import (
    SHIPPED_DIR,
    TRAINERS,
    TrainSpec,
    ensure_tiny_models,
    missing_models,
    recipe_id,
    stats_path,
    tiny_path,
)
from framebus.streams.config import Settings
from framebus.streams.doctor import diagnose

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_weights_belong_to_the_current_recipes():
    """Fails when a recipe (a RECIPE value, a revision, the world's rendering) changes without
    `make ship-models`: the shipped files would silently stop being used."""
    settings = Settings(models="tiny", device="cpu", train_seed=0, model_dir=None)
    for spec in TRAINERS:
        shipped = SHIPPED_DIR / spec.filename
        assert shipped.is_file(), f"{shipped} is not shipped"
        stats = json.loads(stats_path(shipped).read_text())
        assert stats["recipe_id"] == recipe_id(spec, settings), f"{spec.name}: shipped for another recipe"
        assert stats["seed"] == 0
        assert tiny_path(settings, spec.name) == shipped
        assert os.path.getsize(shipped) < 5 * 1024 * 1024  # small enough to live in git
        if shipped.suffix == ".pt":  # a checkpoint's version, as the sidecar gives it, is its bytes' digest
            assert stats["version"] == file_digest(shipped)[:12], f"{spec.name}: sidecar version is stale"
    assert missing_models(settings) == []


def test_other_seeds_and_recipes_resolve_to_the_user_cache(tmp_path):
    seed1 = Settings(models="tiny", train_seed=1, model_dir=None, cache_dir=tmp_path)
    ids = {spec.name: recipe_id(spec, seed1) for spec in TRAINERS}
    assert ids != {spec.name: recipe_id(spec, Settings(train_seed=0)) for spec in TRAINERS}
    for spec in TRAINERS:
        assert tiny_path(seed1, spec.name) == tmp_path / "tiny" / f"{spec.name}-{ids[spec.name]}" / spec.filename
    # a model trained on top of another has that one's recipe in its own
    head = next(s for s in TRAINERS if s.depends)
    assert recipe_id(head, seed1) != recipe_id(head, seed1.model_copy(update={"train_seed": 2}))


def _fake(monkeypatch, calls):
    def train(path, settings):
        calls.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"weights of seed {settings.train_seed}".encode())
        return {"final_loss": 0.1}

    monkeypatch.setattr("framebus.models.training.TRAINERS", [TrainSpec("fake", "fake.pt", train)])


def test_a_second_checkout_reuses_the_user_cache(tmp_path, monkeypatch):
    """Two checkouts (two data dirs) on one machine train a recipe once: the cache is per user, by recipe."""
    calls: list = []
    _fake(monkeypatch, calls)
    first = Settings(models="tiny", train_seed=3, model_dir=None, data_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    second = first.model_copy(update={"data_dir": tmp_path / "b"})
    assert ensure_tiny_models(first)["fake"]["status"] == "trained"
    result = ensure_tiny_models(second)["fake"]
    assert result["status"] == "cached" and len(calls) == 1
    assert Path(result["path"]).is_relative_to(tmp_path / "c" / "tiny")
    assert json.loads(stats_path(Path(result["path"])).read_text())["seed"] == 3
    other = first.model_copy(update={"train_seed": 4})  # another recipe: its own entry
    assert ensure_tiny_models(other)["fake"]["status"] == "trained" and len(calls) == 2


def test_forced_training_never_overwrites_the_shipped_weights(tmp_path, monkeypatch):
    calls: list = []
    shipped = {spec.name: (SHIPPED_DIR / spec.filename).read_bytes() for spec in TRAINERS}
    settings = Settings(models="tiny", train_seed=0, model_dir=None, cache_dir=tmp_path)
    spec = TRAINERS[0]

    def train(path, settings):
        calls.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"retrained")
        return {}

    monkeypatch.setattr(
        "framebus.models.training.TRAINERS",
        [TrainSpec(spec.name, spec.filename, train, spec.module, revision=spec.revision)],
    )
    out = ensure_tiny_models(settings, force=True)[spec.name]
    assert out["status"] == "trained" and Path(out["path"]).is_relative_to(tmp_path)
    assert {s.name: (SHIPPED_DIR / s.filename).read_bytes() for s in TRAINERS} == shipped


@pytest.mark.parametrize("name", ["streams", "agents", "models", "indexing", "topics", "loadtest"])
def test_only_the_framebus_namespace_is_installed(tmp_path, name):
    """Outside the checkout, `import framebus.<name>` works and the generic `import <name>` does not."""
    code = (
        f"import importlib, importlib.util; importlib.import_module('framebus.{name}'); "
        f"print(importlib.util.find_spec('{name}') is None)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"


def test_no_source_file_imports_a_generic_top_level_name():
    names = "streams|agents|models|indexing|topics|loadtest"
    out = subprocess.run(
        ["git", "grep", "-nE", rf"^\s*(import|from) ({names})(\.|\s|$)", "--", "*.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.stdout == ""


def test_doctor_checks_pass_on_this_installation(tmp_path):
    checks = {c.name: c for c in diagnose(Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache"))}
    assert set(checks) == {"framebus", "namespace", "torch", "torchvision", "tiny models", "broker", "directories"}
    failed = {name: c.detail for name, c in checks.items() if not c.ok}
    assert not failed
    # it says which case of the torchvision compatibility step this machine is in
    assert "own extension loads" in checks["torchvision"].detail or "compat hook active" in checks["torchvision"].detail


def test_every_package_folder_is_installed():
    """pyproject lists the packages explicitly (a package-dir mapping): a new folder must be added there."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(project["packages"])
    for top in ("streams", "agents", "models", "indexing", "topics", "loadtest"):
        assert project["package-dir"][f"framebus.{top}"] == top
        for init in (REPO / top).rglob("__init__.py"):
            assert "framebus." + ".".join(init.parent.relative_to(REPO).parts) in listed, init
