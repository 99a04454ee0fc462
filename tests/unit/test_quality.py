"""Per-shot quality scores: sharpness, motion, temporal consistency (SSIM), optional flow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from framebus.agents.media import quality as Q
from framebus.loadtest.videos import render


def blur(img: np.ndarray, radius: float = 3.0) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


@pytest.fixture(scope="module")
def sharp() -> np.ndarray:
    return render("squares", 0, 320, 180)


def test_blurred_image_is_less_sharp(sharp):
    s = Q.quality_scores([sharp], flow=False)
    b = Q.quality_scores([blur(sharp)], flow=False)
    bb = Q.quality_scores([blur(sharp, 6.0)], flow=False)
    assert s["sharpness"] > 2 * b["sharpness"] > 0
    assert b["sharpness"] > bb["sharpness"]
    assert 0 <= bb["sharpness_norm"] < b["sharpness_norm"] < s["sharpness_norm"] <= 1
    flat = Q.quality_scores([np.full((90, 160, 3), 128, np.uint8)], flow=False)
    assert flat["sharpness"] == 0.0 and flat["sharpness_norm"] == 0.0


def test_laplacian_variance_definition():
    y = (np.indices((10, 10)).sum(axis=0) % 2 * 255).astype(np.float32)  # checkerboard
    assert Q.laplacian_variance(y) == pytest.approx(1020.0**2)  # interior values are +-4*255
    ramp = np.tile(np.arange(10, dtype=np.float32) * 7, (10, 1))  # linear: Laplacian 0
    assert Q.laplacian_variance(ramp) == pytest.approx(0.0, abs=1e-6)
    assert Q.laplacian_variance(np.zeros((2, 9), np.float32)) == 0.0


def test_sharpness_is_about_the_picture_not_its_resolution(sharp):
    big = np.asarray(Image.fromarray(sharp).resize((640, 360), Image.NEAREST))
    a = Q.quality_scores([sharp], flow=False)["sharpness"]
    b = Q.quality_scores([big], flow=False)["sharpness"]
    assert b == pytest.approx(a, rel=0.35)


def test_static_clip():
    frames = [render("squares", 0, 160, 90)] * 6
    q = Q.quality_scores(frames, flow=False)
    assert q["motion"] == 0.0
    assert q["temporal_consistency"] == pytest.approx(1.0, abs=1e-4)


def test_noise_clip_is_inconsistent_and_moving():
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(6)]
    moving = [render("ball", i, 160, 90) for i in range(6)]
    qn = Q.quality_scores(noise, flow=False)
    qm = Q.quality_scores(moving, flow=False)
    assert qn["temporal_consistency"] < 0.3
    assert qm["temporal_consistency"] > 0.9
    assert qn["motion"] > qm["motion"] > 0.0


def test_single_frame_and_errors(sharp):
    q = Q.quality_scores([sharp], flow=False)
    assert set(q) == {"sharpness", "sharpness_norm", "motion", "temporal_consistency"}
    assert q["motion"] == 0.0 and q["temporal_consistency"] == 1.0
    assert all(isinstance(v, float) for v in q.values())
    assert q["sharpness_norm"] == round(q["sharpness_norm"], 4)
    with pytest.raises(ValueError):
        Q.quality_scores([])
    with pytest.raises(ValueError):
        Q.quality_scores([np.zeros((4, 4, 2), np.uint8)])
    # gray, odd and tiny frames are accepted
    tiny = Q.quality_scores([np.zeros((5, 7), np.uint8), np.full((5, 7), 200, np.uint8)], flow=False)
    assert tiny["motion"] == pytest.approx(200 / 255, abs=1e-3)


def _ssim_reference(a: np.ndarray, b: np.ndarray, n: int = 11, sigma: float = 1.5) -> float:
    """Direct per-window SSIM (Wang et al. 2004), slow, for checking ``Q.ssim``."""
    x = np.arange(n) - (n - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(a.shape[0] - n + 1):
        for j in range(a.shape[1] - n + 1):
            pa, pb = a[i : i + n, j : j + n].astype(np.float64), b[i : i + n, j : j + n].astype(np.float64)
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            num = (2 * ma * mb + c1) * (2 * cov + c2)
            vals.append(num / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_the_definition():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (20, 24)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.float32)
    assert Q.ssim(a, b) == pytest.approx(_ssim_reference(a, b), abs=1e-4)
    assert Q.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert Q.ssim(a, b) == pytest.approx(Q.ssim(b, a), abs=1e-6)
    # more noise, lower SSIM
    c = np.clip(a + rng.normal(0, 60, a.shape), 0, 255).astype(np.float32)
    assert Q.ssim(a, c) < Q.ssim(a, b) < 1.0
    with pytest.raises(ValueError):
        Q.ssim(a, a[:10])


def test_flow_when_opencv_is_there():
    pytest.importorskip("cv2")
    still = [render("squares", 0, 160, 90)] * 3
    moving = [render("ball", 4 * i, 160, 90) for i in range(4)]
    qs = Q.quality_scores(still)
    qm = Q.quality_scores(moving)
    assert "flow" in qs and "flow" in qm
    assert qs["flow"] < 0.002 < qm["flow"]
    assert "flow" not in Q.quality_scores(moving, flow=False)
