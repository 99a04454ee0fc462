"""Helpers every model backend shares: input checks, file digests (model versions), telling a
missing-weights failure from another one. Cheap to import (no torch)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from framebus.topics.errors import ModelError


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` as a contiguous, writable ``HxWx3`` uint8 array (torch will not wrap read-only memory
    such as decoded JPEG buffers without a warning), or ``ModelError`` ``models.bad_input``."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ModelError(f"expected an RGB image HxWx3, got shape {arr.shape}", code="models.bad_input")
    if arr.dtype != np.uint8:
        raise ModelError(f"expected uint8 pixels, got {arr.dtype}", code="models.bad_input")
    arr = arr[..., :3]
    return arr if arr.flags.c_contiguous and arr.flags.writeable else np.array(arr, order="C")


def feed_file(h: Any, path: Path) -> Any:
    """Feed ``path``'s bytes into hash ``h`` (1 MiB at a time); returns ``h``."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h


def save_torch_atomic(obj: Any, out_path: Path) -> str:
    """``torch.save`` ``obj`` to ``out_path`` atomically (a temporary file in the same folder renamed over
    it, mode 0644); returns the file's sha256.

    Serialised to memory first: torch names the archive inside the file after the file it is written to,
    so saving straight to a temporary name (with a pid in it) would give other bytes, and another model
    version, for the same weights.
    """
    import contextlib
    import io
    import os
    import tempfile

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file (a checkpoint's version is its first 12 characters)."""
    return feed_file(hashlib.sha256(), Path(path)).hexdigest()


#: what the Hugging Face loaders (transformers, diffusers) say when weights are not there and cannot be
#: fetched
HF_MISSING_MARKERS: tuple[str, ...] = (
    "LocalEntryNotFound",
    "OfflineModeIsEnabled",
    "offline",
    "couldn't connect",
    "Connection",
    "Timeout",
    "cannot find the requested files",
    "not a valid model identifier",
    "No such file",
    "does not appear to have a file",
    "Failed to download",
    "Can't load",
)


def looks_like_missing_weights(
    exc: BaseException, kinds: tuple[type[BaseException], ...], markers: tuple[str, ...]
) -> bool:
    """Whether loading failed because weights are not there and could not be fetched: ``exc`` is one of
    ``kinds``, or its text (or its cause's) contains one of ``markers``."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text += f" {type(cause).__name__}: {cause}"
    return isinstance(exc, kinds) or any(m in text for m in markers)
