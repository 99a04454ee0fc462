"""Embedders, profiles and the registry. Everything here runs offline (no weights are downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from framebus.models.base import Embedder, ModelInfo
from framebus.models.profiles import PROFILES, TASKS, get_profile
from framebus.models.registry import backends, load_embedder
from framebus.streams.config import Settings
from framebus.topics.errors import ModelError, ModelNotAvailable
from tests.offline import clean_env, load_default_offline

REPO = Path(__file__).resolve().parents[2]


def images(n: int = 6) -> list[np.ndarray]:
    """Distinct RGB uint8 frames of assorted sizes (smaller and larger than the model input)."""
    rng = np.random.default_rng(42)
    out = [np.zeros((48, 80, 3), np.uint8), np.full((300, 200, 3), 255, np.uint8)]
    grad = np.linspace(0, 255, 128, dtype=np.uint8)
    out.append(np.stack([np.tile(grad, (96, 1)), np.tile(grad[::-1], (96, 1)), np.full((96, 128), 60, np.uint8)], -1))
    while len(out) < n:
        h, w = rng.integers(17, 260, size=2)
        out.append(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    return out[:n]


TEXTS = ["a dog running on the beach", "a red car at night", "", "two people talking in a kitchen"]


def untrained(data_dir) -> Settings:
    """The tiny profile with an empty model dir: the tiny CLIP's seeded init, whatever ships or is cached."""
    return Settings(models="tiny", device="cpu", data_dir=data_dir, model_dir=Path(data_dir) / "models")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_embedder(untrained(tmp_path_factory.mktemp("data")))


def test_tiny_embedder_shapes_dtype_and_norm(tiny):
    assert isinstance(tiny, Embedder)
    assert tiny.dim == 128 and tiny.image_size == 64
    assert isinstance(tiny.info, ModelInfo) and tiny.info.task == "embed"
    assert tiny.info.name == "framebus-tiny-clip" and len(tiny.info.version) == 12
    for arr in (tiny.embed_images(images()), tiny.embed_texts(TEXTS)):
        assert arr.dtype == np.float32 and arr.ndim == 2 and arr.shape[1] == 128
        assert np.all(np.isfinite(arr))
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)
    assert tiny.embed_images(images()).shape == (6, 128)
    assert tiny.embed_texts(TEXTS).shape == (4, 128)
    assert tiny.embed_images([]).shape == (0, 128)
    assert tiny.embed_texts([]).shape == (0, 128)


def test_different_inputs_give_different_vectors(tiny):
    for vecs in (tiny.embed_images(images()), tiny.embed_texts(TEXTS)):
        sims = vecs @ vecs.T
        off_diag = sims[~np.eye(len(vecs), dtype=bool)]
        assert off_diag.max() < 0.999, sims
    # and the same input twice gives the same vector
    a, b = tiny.embed_images(images(3)[:1] * 2)
    np.testing.assert_array_equal(a, b)


def test_batching_does_not_change_results(tmp_path):
    from framebus.models.openclip import OpenClipEmbedder

    small = OpenClipEmbedder.tiny(device="cpu", batch_size=2)
    big = OpenClipEmbedder.tiny(device="cpu", batch_size=64)
    assert small.info == big.info
    np.testing.assert_allclose(small.embed_images(images(5)), big.embed_images(images(5)), atol=1e-5)
    np.testing.assert_allclose(small.embed_texts(TEXTS), big.embed_texts(TEXTS), atol=1e-5)


def test_threads_can_share_an_embedder(tiny):
    want_img, want_txt = tiny.embed_images(images()), tiny.embed_texts(TEXTS)
    results: list[tuple[np.ndarray, np.ndarray]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append((tiny.embed_images(images()), tiny.embed_texts(TEXTS)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for img, txt in results:
        np.testing.assert_allclose(img, want_img, atol=1e-5)
        np.testing.assert_allclose(txt, want_txt, atol=1e-5)


def test_bad_image_is_a_typed_error(tiny):
    with pytest.raises(ModelError) as err:
        tiny.embed_images([np.zeros((10, 10, 3), np.float32)])
    assert err.value.code == "models.bad_input"
    with pytest.raises(ModelError) as err:
        tiny.embed_images([np.zeros((10, 10, 2), np.uint8)])
    assert err.value.code == "models.bad_input"


_DUMP = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from tests.unit.test_models import TEXTS, images, untrained
from framebus.models.registry import load_embedder
e = load_embedder(untrained(sys.argv[1]))
print(json.dumps({"version": e.info.version, "images": e.embed_images(images()).tolist(),
                  "texts": e.embed_texts(TEXTS).tolist()}))
"""


def _dump_tiny(data_dir: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _DUMP, str(data_dir), str(REPO)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=clean_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tiny_is_deterministic_across_processes(tiny, tmp_path):
    first, second = _dump_tiny(tmp_path / "a"), _dump_tiny(tmp_path / "b")
    assert first["version"] == second["version"] == tiny.info.version
    assert first["images"] == second["images"]  # bit-identical
    assert first["texts"] == second["texts"]
    np.testing.assert_allclose(np.array(first["images"], np.float32), tiny.embed_images(images()), atol=1e-5)
    np.testing.assert_allclose(np.array(first["texts"], np.float32), tiny.embed_texts(TEXTS), atol=1e-5)


def test_tiny_loads_a_trained_checkpoint(tiny, tmp_path):
    import torch

    trained = {
        k: v.detach().cpu() + 0.01 * torch.randn_like(v.detach().cpu(), dtype=torch.float32).to(v.dtype)
        if v.is_floating_point()
        else v.detach().cpu()
        for k, v in tiny.model.state_dict().items()
    }
    ckpt = tmp_path / "models" / "tiny-clip.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": trained}, ckpt)
    loaded = load_embedder(Settings(models="tiny", device="cpu", data_dir=tmp_path, model_dir=tmp_path / "models"))
    import hashlib

    assert loaded.info.version == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:12]
    assert loaded.info.version != tiny.info.version
    assert not np.allclose(loaded.embed_texts(TEXTS), tiny.embed_texts(TEXTS), atol=1e-4)


def test_tiny_checkpoint_that_does_not_match_is_a_model_error(tmp_path):
    import torch

    ckpt = tmp_path / "models" / "tiny-clip.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"nope": torch.zeros(3)}}, ckpt)
    with pytest.raises(ModelError) as err:
        load_embedder(Settings(models="tiny", device="cpu", data_dir=tmp_path, model_dir=tmp_path / "models"))
    assert err.value.code == "models.failed" and "tiny-clip.pt" in err.value.message


def test_default_profile_offline_raises_model_not_available(tmp_path):
    out = load_default_offline("load_embedder", tmp_path / "data")
    assert out["type"] == ModelNotAvailable.__name__
    assert out["code"] == "models.weights_missing" == ModelNotAvailable.code
    assert out["transient"] is False
    msg = out["message"]
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg  # which model
    assert "FRAMEBUS_MODELS=tiny" in msg  # the offline way out
    assert str(tmp_path / "data" / "models") in msg  # where to put weights (cache / checkpoint)
    assert "checkpoint" in msg and "cache" in msg


def test_unknown_profile_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError) as err:
        load_embedder(Settings(models="huge", data_dir=tmp_path))
    assert err.value.code == "models.unknown_profile"
    assert "huge" in err.value.message and "tiny" in err.value.message and "default" in err.value.message
    with pytest.raises(ModelError):
        get_profile("")


def test_profiles_and_registry_shape():
    assert set(PROFILES) >= {"default", "tiny"}
    default = get_profile("default")
    assert default.embedder.backend == "open_clip"
    assert default.embedder.options == {"arch": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    assert get_profile("TINY").embedder.backend == "framebus_tiny_clip"
    assert default.captioner is not None and default.moderator is not None
    assert default.spec("generator").backend == "diffusers-ltx"
    assert get_profile("tiny").spec("generator").backend == "tiny"
    assert set(TASKS) == {"embedder", "captioner", "moderator", "generator"}
    for _, backend in (("embedder", p.embedder.backend) for p in PROFILES.values()):
        assert ("embedder", backend) in backends("embedder")


def test_device_resolution(tmp_path):
    import torch

    from framebus.models.openclip import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ModelError) as err:
        resolve_device("tpu")
    assert err.value.code == "models.device_unavailable"
    if not torch.cuda.is_available():
        with pytest.raises(ModelError) as err:
            load_embedder(Settings(models="tiny", device="cuda", data_dir=tmp_path))
        assert err.value.code == "models.device_unavailable"


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA device")
def test_tiny_on_cuda_matches_cpu_closely(tiny, tmp_path):
    gpu = load_embedder(Settings(models="tiny", device="cuda", data_dir=tmp_path))
    assert gpu.info == tiny.info
    img, txt = gpu.embed_images(images()), gpu.embed_texts(TEXTS)
    assert img.dtype == np.float32 and img.shape == (6, 128)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    # bf16 autocast: close to, not equal to, the fp32 CPU result
    assert np.min(np.sum(img * tiny.embed_images(images()), axis=1)) > 0.98
    assert np.min(np.sum(txt * tiny.embed_texts(TEXTS), axis=1)) > 0.98
