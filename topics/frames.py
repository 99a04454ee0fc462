"""The frame payload of the internal frames topic: JPEG (Pillow) at a model's input size.

Frames travel between agents as JPEG bytes whose shorter side is the configured frame size
(``output_size``); no raw frames go on Kafka."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from framebus.topics.errors import DecodeError


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """HxWx3 uint8 RGB -> baseline JPEG bytes (4:2:0 chroma, like every camera and browser)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb.shape} {rgb.dtype}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_jpeg(data: bytes, min_side: int | None = None) -> np.ndarray:
    """JPEG bytes -> HxWx3 uint8 RGB. Raises ``DecodeError(code='decode.corrupt')`` on bad data.

    With ``min_side``, libjpeg may decode at 1/2, 1/4 or 1/8 scale (DCT scaling, Pillow's ``draft``)
    as long as the shorter side stays >= ``min_side``: a model that resizes to ``min_side`` anyway
    gets its input for a fraction of the decode and resize cost."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise DecodeError(f"not a JPEG image ({im.format})", code="decode.corrupt")
            if min_side and min(im.size) >= 2 * min_side:
                scale = min(im.size) / min_side
                im.draft("RGB", (math.ceil(im.size[0] / scale), math.ceil(im.size[1] / scale)))
            return np.asarray(im.convert("RGB"))
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types
        raise DecodeError(f"cannot decode JPEG: {e}", code="decode.corrupt") from None


def output_size(
    coded_w: int, coded_h: int, short_side: int, rotation: int = 0, pixel_aspect: float = 1.0
) -> tuple[int, int]:
    """(width, height) to scale the *coded* picture to, so that once rotated by ``rotation``
    (clockwise) its shorter side is ``short_side`` and its aspect is the display aspect."""
    if short_side < 1:
        raise ValueError("short_side must be >= 1")
    dw, dh = coded_w * pixel_aspect, float(coded_h)
    if rotation in (90, 270):
        dw, dh = dh, dw
    if dw <= dh:
        tw, th = short_side, max(1, int(round(dh * short_side / dw)))
    else:
        tw, th = max(1, int(round(dw * short_side / dh))), short_side
    return (th, tw) if rotation in (90, 270) else (tw, th)
