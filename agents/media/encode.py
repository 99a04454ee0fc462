"""Write generated frames as a delivery-ready H.264 MP4 (PyAV), and a JPEG thumbnail.

The MP4 is what players and browsers expect of a web video: H.264 in yuv420p, limited (tv) range,
BT.709 primaries/transfer/matrix both signalled on the stream and used for the RGB -> YUV conversion
(a player then shows the colours the model produced), a keyframe every ``keyframe_interval_s`` (seeking),
the index (``moov``) before the media data (``+faststart``: playback starts before the download ends).
Files appear atomically: written beside the target under a temporary name, then renamed.

Errors: ``GenerationError`` with ``generate.bad_frames`` (not a ``(T, H, W, 3)`` uint8 array, no
frames, bad fps or encoder settings) or ``generate.encode_failed`` (the encoder or the file system failed).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image

from framebus.topics.errors import GenerationError

# AVColorPrimaries / AVColorTransferCharacteristic / AVColorSpace / AVColorRange values for BT.709, tv range
BT709 = 1
TV_RANGE = 1
#: a rate is kept as an exact fraction with at most this denominator (30000/1001 stays 30000/1001)
MAX_RATE_DENOMINATOR = 1001


@dataclass(frozen=True)
class EncodeInfo:
    """What ``encode_mp4`` wrote. ``width``/``height`` are the encoded size (odd sizes are padded to even)."""

    path: Path
    frames: int
    fps: float
    width: int
    height: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "frames": self.frames,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


def check_frames(frames: np.ndarray) -> np.ndarray:
    """``frames`` as a ``(T, H, W, 3)`` uint8 array, or ``GenerationError(generate.bad_frames)``."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise GenerationError(
            f"expected (T, H, W, 3) uint8 RGB frames, got {shape} {dtype}", code="generate.bad_frames"
        )
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise GenerationError(f"no pixels to encode: frames of shape {frames.shape}", code="generate.bad_frames")
    return frames


def frame_rate(fps: float | Fraction) -> Fraction:
    """``fps`` as an exact rational rate (``GenerationError(generate.bad_frames)`` unless finite and > 0)."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise GenerationError(f"fps must be a positive number, got {fps!r}", code="generate.bad_frames")
    return Fraction(fps).limit_denominator(MAX_RATE_DENOMINATOR)


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """4:2:0 chroma needs even sizes: an odd width or height gains one column/row, a copy of the last."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def encode_mp4(
    frames: np.ndarray,
    path: str | os.PathLike,
    fps: float | Fraction,
    *,
    crf: int = 20,
    preset: str = "medium",
    keyframe_interval_s: float = 2.0,
) -> EncodeInfo:
    """Encode ``frames`` (``(T, H, W, 3)`` uint8 RGB) at ``fps`` to an H.264 MP4 at ``path``.

    ``crf``: x264's constant rate factor (0-51; lower is better and bigger). ``preset``: x264's speed
    preset. A keyframe starts every ``round(keyframe_interval_s * fps)`` frames exactly (no scene-cut
    keyframes in between). Replaces ``path`` atomically; on failure nothing is left behind.
    """
    frames = check_frames(frames)
    rate = frame_rate(fps)
    if not 0 <= int(crf) <= 51:
        raise GenerationError(f"crf must be in 0..51, got {crf}", code="generate.bad_frames")
    if not (math.isfinite(keyframe_interval_s) and keyframe_interval_s > 0):
        raise GenerationError(
            f"keyframe_interval_s must be positive, got {keyframe_interval_s}", code="generate.bad_frames"
        )
    gop = max(1, round(keyframe_interval_s * float(rate)))
    frames = pad_to_even(frames)
    count, height, width = frames.shape[:3]
    path = Path(path)

    with atomic_path(path) as tmp:
        try:
            _write_h264(frames, tmp, rate, crf=int(crf), preset=preset, gop=gop)
        except av.FFmpegError as e:
            raise GenerationError(f"H.264 encode failed: {e}", code="generate.encode_failed") from None
        digest, size = file_sha256(tmp)
    return EncodeInfo(path=path, frames=count, fps=float(rate), width=width, height=height, bytes=size, sha256=digest)


def _write_h264(frames: np.ndarray, path: Path, rate: Fraction, *, crf: int, preset: str, gop: int) -> None:
    count, height, width = frames.shape[:3]
    with av.open(os.fspath(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream(
            "libx264",
            rate=rate,
            options={
                "crf": str(crf),
                "preset": preset,
                # a fixed GOP: keyint=min-keyint and no scene-cut keyframes
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
            },
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        cc = stream.codec_context
        cc.time_base = 1 / rate
        cc.gop_size = gop
        cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = BT709, BT709, BT709, TV_RANGE
        for i in range(count):
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            yuv = rgb.reformat(
                format="yuv420p",
                src_colorspace=Colorspace.ITU709,
                dst_colorspace=Colorspace.ITU709,
                src_color_range=ColorRange.JPEG,
                dst_color_range=ColorRange.MPEG,
            )
            yuv.color_primaries, yuv.color_trc = BT709, BT709
            yuv.pts = i
            yuv.time_base = cc.time_base
            container.mux(stream.encode(yuv))
        container.mux(stream.encode(None))


def write_thumbnail(frames: np.ndarray, path: str | os.PathLike, max_side: int = 320, *, quality: int = 85) -> Path:
    """A JPEG of the middle frame of ``frames`` (``(T, H, W, 3)``), or of one ``(H, W, 3)`` frame, scaled
    down (Lanczos, aspect kept) so that its longer side is at most ``max_side``. Written atomically."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = frames[None]
    frames = check_frames(frames)
    if max_side < 1:
        raise GenerationError(f"max_side must be positive, got {max_side}", code="generate.bad_frames")
    image = Image.fromarray(np.ascontiguousarray(frames[len(frames) // 2]), "RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=quality)
    return path


@contextlib.contextmanager
def atomic_path(path: Path, *, error_code: str = "generate.encode_failed"):
    """``with atomic_path(path) as tmp:`` yields a temporary path beside ``path`` (same file system);
    it is renamed to ``path`` when the block succeeds and deleted when it fails, so readers see the old
    file or the complete new one. OS errors become ``GenerationError(error_code)``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise GenerationError(f"cannot write {path}: {e}", code=error_code) from None
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise GenerationError(f"cannot write {path}: {e}", code=error_code) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def file_sha256(path: str | os.PathLike) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of a file, read in 1 MiB chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
