"""Per-shot quality scores from a shot's sampled frames (numpy; OpenCV optional).

Frames are RGB uint8 arrays (HxWx3, or HxW luma) of any size; each is reduced to luma
(BT.601) and downscaled (area-averaged) so that its longer side is ``ANALYSIS_SIZE`` (128) px
before anything is measured - the scores are about the picture, not its resolution, and cost
about a millisecond per frame.

Measures (``quality_scores`` keys):

* ``sharpness``: variance of the 4-neighbour Laplacian of luma, mean over frames (0 = flat).
* ``sharpness_norm``: ``sharpness / (sharpness + SHARPNESS_HALF)``, in 0..1 (0.5 at 200).
* ``motion``: mean absolute luma difference between consecutive frames / 255, in 0..1 (0 for a
  single frame).
* ``temporal_consistency``: mean SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5) between
  consecutive frames' luma, about 0..1 (1.0 for one frame).
* ``flow`` (only when OpenCV is importable, or ``flow=True``): mean Farneback optical-flow
  magnitude between consecutive frames, as a fraction of the frame's longer side per frame pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ANALYSIS_SIZE",
    "SHARPNESS_HALF",
    "flow_magnitude",
    "laplacian_variance",
    "mean_abs_diff",
    "prepare",
    "quality_scores",
    "ssim",
]

ANALYSIS_SIZE = 128
SHARPNESS_HALF = 200.0

_SSIM_SIGMA = 1.5
_SSIM_WIN = 11
_K1, _K2, _L = 0.01, 0.03, 255.0


def _luma(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        return a.astype(np.float32)
    if a.ndim == 3 and a.shape[2] >= 3:
        f = a[..., :3].astype(np.float32)
        return f @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.ndim == 3 and a.shape[2] == 1:
        return a[..., 0].astype(np.float32)
    raise ValueError(f"expected an HxWx3 RGB or HxW luma array, got shape {a.shape}")


def _resize(y: np.ndarray, w: int, h: int) -> np.ndarray:
    """Area-averaging resize of a float32 plane (integer block means, then PIL's antialiased
    bilinear for the remainder)."""
    H, W = y.shape
    if (W, H) == (w, h):
        return y
    fy, fx = max(1, H // h), max(1, W // w)
    if fy > 1 or fx > 1:
        hh, ww = H // fy, W // fx
        y = y[: hh * fy, : ww * fx].reshape(hh, fy, ww, fx).mean(axis=(1, 3))
        H, W = y.shape
    if (W, H) != (w, h):
        from PIL import Image

        y = np.asarray(Image.fromarray(np.ascontiguousarray(y, np.float32)).resize((w, h), Image.BILINEAR), np.float32)
    return y


def prepare(frames: Sequence[np.ndarray], size: int = ANALYSIS_SIZE) -> list[np.ndarray]:
    """Luma planes (float32, 0..255) downscaled so that the longer side is at most ``size``,
    all at the size of the first frame's."""
    if len(frames) == 0:
        raise ValueError("no frames")
    out = []
    target = None
    for f in frames:
        y = _luma(f)
        if target is None:
            H, W = y.shape
            s = min(1.0, size / max(H, W))
            target = (max(1, int(round(W * s))), max(1, int(round(H * s))))
        out.append(_resize(y, *target))
    return out


def laplacian_variance(y: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a luma plane (0 for planes under 3x3)."""
    if y.shape[0] < 3 or y.shape[1] < 3:
        return 0.0
    c = y[1:-1, 1:-1]
    lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4.0 * c
    return float(lap.var())


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two luma planes, / 255."""
    return float(np.abs(a - b).mean() / 255.0)


def _gauss(n: int, sigma: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D array with the 1-D kernel ``g``."""
    n = len(g)
    h, w = x.shape
    rows = g[0] * x[0 : h - n + 1]
    for k in range(1, n):
        rows = rows + g[k] * x[k : h - n + 1 + k]
    out = g[0] * rows[:, 0 : w - n + 1]
    for k in range(1, n):
        out = out + g[k] * rows[:, k : w - n + 1 + k]
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two luma planes (0..255) after Wang et al. 2004: Gaussian window 11x11,
    sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, 'valid' window positions only (a smaller window for
    planes under 11 px)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    n = min(_SSIM_WIN, a.shape[0], a.shape[1])
    if n % 2 == 0:
        n -= 1
    if n < 1:
        return 1.0
    g = _gauss(n, _SSIM_SIGMA * n / _SSIM_WIN)
    c1, c2 = (_K1 * _L) ** 2, (_K2 * _L) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    aa = _filter_valid(a * a, g) - mu_a * mu_a
    bb = _filter_valid(b * b, g) - mu_b * mu_b
    ab = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * ab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (aa + bb + c2)
    return float((num / den).mean())


def _cv2():
    try:
        import cv2  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - optional dependency, any import failure means "absent"
        return None
    return cv2


def flow_magnitude(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Farneback optical-flow magnitude from ``a`` to ``b`` (luma planes), as a fraction of
    the longer side. Needs OpenCV (``RuntimeError`` without it)."""
    cv2 = _cv2()
    if cv2 is None:
        raise RuntimeError("OpenCV (cv2) is not available")
    a8 = np.clip(a, 0, 255).astype(np.uint8)
    b8 = np.clip(b, 0, 255).astype(np.uint8)
    flow = cv2.calcOpticalFlowFarneback(a8, b8, None, 0.5, 3, 9, 3, 5, 1.1, 0)
    mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
    return float(mag.mean() / max(a.shape))


def quality_scores(
    frames: Sequence[np.ndarray], *, flow: bool | None = None, size: int = ANALYSIS_SIZE, digits: int = 4
) -> dict[str, float]:
    """Quality of one shot from its sampled frames (in time order); see the module docstring
    for each key. ``flow``: None = include ``flow`` when OpenCV is importable, True = require
    it, False = never. Raises ``ValueError`` on an empty sequence."""
    ys = prepare(frames, size)
    sharp = float(np.mean([laplacian_variance(y) for y in ys]))
    pairs = list(zip(ys, ys[1:]))
    motion = float(np.mean([mean_abs_diff(a, b) for a, b in pairs])) if pairs else 0.0
    consistency = float(np.mean([ssim(a, b) for a, b in pairs])) if pairs else 1.0
    out = {
        "sharpness": round(sharp, 2),
        "sharpness_norm": round(sharp / (sharp + SHARPNESS_HALF), digits),
        "motion": round(motion, digits),
        "temporal_consistency": round(consistency, digits),
    }
    if flow is None:
        flow = _cv2() is not None
    if flow:
        fl = float(np.mean([flow_magnitude(a, b) for a, b in pairs])) if pairs else 0.0
        out["flow"] = round(fl, digits)
    for k, v in out.items():
        if not math.isfinite(v):
            out[k] = 0.0
    return out
