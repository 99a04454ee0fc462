"""open_clip image/text embedder: pretrained weights (default profile) or the offline ``tiny`` model.

Nothing here imports torch or open_clip at module import time; loading happens in the
``OpenClipEmbedder.pretrained`` / ``OpenClipEmbedder.tiny`` constructors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np

from framebus.models.base import ModelInfo
from framebus.models.common import check_image, file_digest, looks_like_missing_weights
from framebus.topics.errors import ModelError, ModelNotAvailable

# --- the tiny profile ----------------------------------------------------------------------------
# A small CLIP that needs no download: random init under a fixed seed (deterministic across
# processes and machines with the same torch build), or trained weights from
# ``<data_dir>/models/tiny-clip.pt`` when that file exists. Its vectors carry no semantics until
# trained; it exists so the whole pipeline runs offline (``FRAMEBUS_MODELS=tiny``).
TINY_NAME = "framebus-tiny-clip"
TINY_SEED = 1234
TINY_CHECKPOINT = "tiny-clip.pt"
#: the ``format`` of a packed tiny checkpoint (``pack_tiny_state``)
TINY_FORMAT = "framebus-tiny-clip/1"
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}

DEFAULT_BATCH_SIZE = 64


def _open_clip():
    """Import open_clip, first patching torchvision where its compiled ops do not load."""
    try:
        from framebus.models._torchvision_compat import apply as _tv_compat
    except ImportError:  # no shim in this checkout: torchvision imports fine on its own, or not at all
        _tv_compat = None
    if _tv_compat is not None:
        _tv_compat()
    import open_clip

    return open_clip


def _register_tiny_config(open_clip) -> None:
    # get_model_config() deep-copies from this dict, so open_clip.create_model(TINY_NAME) and
    # open_clip.get_tokenizer(TINY_NAME) (-> SimpleTokenizer, ships with open_clip) both work.
    open_clip.factory._MODEL_CONFIGS[TINY_NAME] = deepcopy(TINY_CONFIG)


def resolve_device(device: str | None) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` pass through."""
    import torch

    dev = (device or "auto").strip().lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return "cpu"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {device!r} requested but CUDA is not available (torch {torch.__version__}); "
                "use device='cpu' or 'auto'",
                code="models.device_unavailable",
            )
        idx = dev.partition(":")[2]
        if idx and (not idx.isdigit() or int(idx) >= torch.cuda.device_count()):
            raise ModelError(
                f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)",
                code="models.device_unavailable",
            )
        return dev
    raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N", code="models.device_unavailable")


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns on the root logger that a model without weights is random: true and
    intended for the untrained tiny model, so keep it out of framebus's logs."""
    root = logging.getLogger()
    flt = _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _state_dict_digest(model) -> str:
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_missing_message(
    arch: str, tag: str, *, cache_dir: Path | None, checkpoint: Path | None, cause: str = ""
) -> str:
    """The ``models.weights_missing`` text: what is missing, how to provide it, how to run offline."""
    repo = filename = ""
    try:
        cfg = _open_clip().get_pretrained_cfg(arch, tag) or {}
        repo, filename = cfg.get("hf_hub", "").rsplit("/", 1) if cfg.get("hf_hub") else ("", "")
        filename = filename or "open_clip_model.safetensors"  # what open_clip looks for first
    except Exception:  # the message must not fail
        pass
    lines = [
        f"pretrained weights for open_clip model {arch} / {tag} are not available locally and could not "
        f"be downloaded (offline, or the Hugging Face hub is unreachable)."
    ]
    if cause:
        lines.append(f"cause: {cause}")
    lines.append("provide them in one of these ways:")
    if cache_dir is not None:
        if repo:
            lines.append(
                f"  - fill the Hugging Face cache framebus uses, {cache_dir}: run framebus once with hub "
                f"access, or `hf download {repo} {filename} --cache-dir {cache_dir}`"
            )
        else:
            lines.append(f"  - fill the Hugging Face cache framebus uses, {cache_dir}, by running once with hub access")
    if checkpoint is not None:
        lines.append(
            f"  - put a local open_clip checkpoint (.safetensors, .pt or .bin) at {checkpoint} "
            f"(it lives under the data_dir setting, FRAMEBUS_DATA_DIR)"
        )
    lines.append('or run fully offline with the tiny model profile: FRAMEBUS_MODELS=tiny (models = "tiny").')
    return "\n".join(lines)


_MISSING_MARKERS = (
    "Failed to download",
    "LocalEntryNotFound",
    "OfflineModeIsEnabled",
    "Connection",
    "Timeout",
    "offline",
    "hub is unreachable",
    "cannot find the requested files",
    "No such file",
)


def _is_missing_weights(exc: BaseException) -> bool:
    return looks_like_missing_weights(exc, (FileNotFoundError, ConnectionError, TimeoutError), _MISSING_MARKERS)


class OpenClipEmbedder:
    """``Embedder`` over an open_clip CLIP model. Use ``pretrained()`` or ``tiny()`` to build one."""

    def __init__(
        self,
        model: Any,
        preprocess: Any,
        tokenizer: Any,
        info: ModelInfo,
        *,
        device: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        import torch

        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.info = info
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.dim = (
            int(model.text_projection.shape[1])
            if getattr(model, "text_projection", None) is not None
            else int(model.visual.output_dim)
        )
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._lock = threading.Lock()

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def pretrained(
        cls,
        arch: str,
        tag: str,
        *,
        cache_dir: Path | str | None = None,
        checkpoint: Path | str | None = None,
        device: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> OpenClipEmbedder:
        """Load ``arch`` with weights ``tag`` the way open_clip does (HF hub / ``cache_dir``).

        If ``checkpoint`` names an existing file it is loaded instead of the tag. Missing weights
        raise ``ModelNotAvailable`` (``models.weights_missing``).
        """
        open_clip = _open_clip()
        dev = resolve_device(device)
        ckpt = Path(checkpoint) if checkpoint is not None else None
        source = str(ckpt) if ckpt is not None and ckpt.is_file() else tag
        cache = Path(cache_dir) if cache_dir is not None else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=source, cache_dir=str(cache) if cache is not None else None, device=dev
            )
            tokenizer = open_clip.get_tokenizer(arch, cache_dir=str(cache) if cache is not None else None)
        except Exception as e:
            if source == tag and _is_missing_weights(e):
                raise ModelNotAvailable(
                    weights_missing_message(
                        arch, tag, cache_dir=cache, checkpoint=ckpt, cause=str(e).splitlines()[0][:300]
                    )
                ) from e
            raise ModelError(f"cannot load open_clip model {arch} / {source}: {type(e).__name__}: {e}") from e
        version = f"{arch}/{tag}" if source == tag else f"{arch}/{file_digest(Path(source))[:12]}"
        info = ModelInfo(name=f"open_clip/{arch}", version=version, task="embed")
        return cls(model, preprocess, tokenizer, info, device=dev, batch_size=batch_size)

    @classmethod
    def tiny(
        cls,
        *,
        checkpoint: Path | str | None = None,
        device: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        init_seed: int = TINY_SEED,
    ) -> OpenClipEmbedder:
        """The offline tiny CLIP: trained weights from ``checkpoint`` if that file exists (the format
        ``pack_tiny_state`` writes, or a plain ``state_dict``), else the random init seeded with
        ``init_seed``. ``version`` hashes the weights actually loaded (12 hex chars)."""
        import torch

        open_clip = _open_clip()
        dev = resolve_device(device)
        ckpt = Path(checkpoint) if checkpoint is not None else None
        use_ckpt = ckpt is not None and ckpt.is_file()
        try:
            saved = torch.load(ckpt, map_location="cpu", weights_only=True) if use_ckpt else None
            if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):  # a training checkpoint
                saved = saved["state_dict"]
            packed = isinstance(saved, dict) and saved.get("format") == TINY_FORMAT
            model, preprocess = _seeded_tiny_model(int(saved["init_seed"]) if packed else init_seed)
            if saved is not None:
                model.load_state_dict(unpack_tiny_state(saved, model) if packed else saved)
            tokenizer = open_clip.get_tokenizer(TINY_NAME)
        except Exception as e:
            where = f" from {ckpt}" if use_ckpt else ""
            raise ModelError(
                f"cannot build the tiny model{where} (checkpoint must match models.openclip."
                f"TINY_CONFIG): {type(e).__name__}: {e}"
            ) from e
        digest = file_digest(ckpt) if use_ckpt else _tiny_init_digest(model, init_seed)
        model = model.to(dev)
        info = ModelInfo(name=TINY_NAME, version=digest[:12], task="embed")
        return cls(model, preprocess, tokenizer, info, device=dev, batch_size=batch_size)

    # --- inference ---------------------------------------------------------------------------------
    def _autocast(self):
        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_pil(self, image: np.ndarray):
        from PIL import Image

        return Image.fromarray(check_image(image), mode="RGB")

    def prepare_images(self, images: list[np.ndarray]):
        """PIL resize + centre crop + normalise, on the CPU: a ``(n, 3, S, S)`` float tensor (pinned
        when the model is on CUDA, so the copy to the device overlaps)."""
        import torch

        if not len(images):
            return torch.zeros((0, 3, self.image_size, self.image_size))
        batch = torch.stack([self.preprocess(self._to_pil(im)) for im in images])
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def embed_prepared(self, batch) -> np.ndarray:
        import torch

        out = []
        for lo in range(0, len(batch), self.batch_size):
            with self._lock, torch.inference_mode(), self._autocast():
                feats = self.model.encode_image(batch[lo : lo + self.batch_size].to(self.device, non_blocking=True))
                out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return self._stack(out)

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        # preprocessing runs outside the lock, one model batch at a time
        return self._stack(
            [
                self.embed_prepared(self.prepare_images(images[lo : lo + self.batch_size]))
                for lo in range(0, len(images), self.batch_size)
            ]
        )

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings")
        out = []
        for lo in range(0, len(texts), self.batch_size):
            with self._lock:
                tokens = self.tokenizer([str(t) for t in texts[lo : lo + self.batch_size]])
                with torch.inference_mode(), self._autocast():
                    feats = self.model.encode_text(tokens.to(self.device, non_blocking=True))
                    out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return self._stack(out)

    def _stack(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def __repr__(self) -> str:
        return f"OpenClipEmbedder({self.info.name}, version={self.info.version}, dim={self.dim}, device={self.device})"


def _seeded_tiny_model(init_seed: int):
    """The tiny CLIP's random init under ``init_seed`` and its preprocessing, built on the CPU in fp32 under a
    private RNG (the caller's global RNG state is left alone)."""
    import torch

    open_clip = _open_clip()
    _register_tiny_config(open_clip)
    with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
        torch.manual_seed(int(init_seed))
        model, _, preprocess = open_clip.create_model_and_transforms(TINY_NAME, pretrained=None, device="cpu")
    return model, preprocess


_TOKENS = "token_embedding.weight"


def pack_tiny_state(state: dict, init_seed: int) -> dict:
    """The tiny CLIP's checkpoint: every tensor of ``state``, except the token-embedding rows that training
    left at their init value. The world's captions use a few dozen of the 49,408 tokens of CLIP's vocabulary,
    and a row without gradient never moves, so those rows are exactly ``init_seed``'s init, which
    ``OpenClipEmbedder.tiny`` rebuilds: about 5 MB instead of 30, small enough to ship."""
    import torch

    init = _seeded_tiny_model(init_seed)[0].state_dict()[_TOKENS]
    emb = state[_TOKENS].detach().cpu()
    rows = torch.nonzero((emb != init).any(dim=1)).flatten()
    return {
        "format": TINY_FORMAT,
        "init_seed": int(init_seed),
        "state": {k: v.detach().cpu().contiguous() for k, v in state.items() if k != _TOKENS},
        "token_rows": rows,
        "token_values": emb[rows].clone(),
    }


def unpack_tiny_state(packed: dict, model) -> dict:
    """``pack_tiny_state``'s inverse, onto ``model`` built from the packed ``init_seed``: a full state dict."""
    tokens = model.state_dict()[_TOKENS].clone()
    tokens[packed["token_rows"]] = packed["token_values"].to(tokens.dtype)
    return {**packed["state"], _TOKENS: tokens}


def _tiny_init_digest(model, init_seed: int = TINY_SEED) -> str:
    """Version of the seeded tiny model: config + seed + the weights they produced.

    Hashing the weights too means a torch build that initialises differently gets a different
    version (and so a different collection) instead of silently mixing incompatible vectors.
    """
    h = hashlib.sha256(json.dumps({"config": TINY_CONFIG, "seed": init_seed}, sort_keys=True).encode())
    h.update(_state_dict_digest(model).encode())
    return h.hexdigest()
