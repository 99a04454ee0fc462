"""Image captioning with Hugging Face transformers: a pretrained model (default profile) or the
offline ``tiny`` captioner.

* Default profile: ``Salesforce/blip-image-captioning-base`` (``BlipForConditionalGeneration`` +
  ``BlipProcessor``), loaded by name exactly as transformers loads it
  (``from_pretrained(name, cache_dir=<data_dir>/models/hf)``). Any ``VisionEncoderDecoderModel``
  checkpoint (for example ``nlpconnect/vit-gpt2-image-captioning``) works too: the architecture is
  read from the checkpoint's config. Missing weights offline raise ``ModelNotAvailable``
  (``models.weights_missing``).
* Tiny profile: a small ``VisionEncoderDecoderModel`` (ViT encoder, GPT-2 decoder with
  cross-attention) built from configs, with a word-level tokenizer (``tokenizers``) wrapped as a
  ``PreTrainedTokenizerFast``. Everything is offline: the trained model is read from
  ``<data_dir>/models/tiny-captioner/`` (a ``save_pretrained`` directory holding model, tokenizer
  and image processor, written by ``framebus.models.training.captioner.train_tiny_captioner``); without it,
  a seeded random init (captions are words of the vocabulary, not descriptions).

Decoding is greedy (deterministic). Nothing here imports torch or transformers at module import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from framebus.models.base import ModelInfo
from framebus.models.common import HF_MISSING_MARKERS, check_image, feed_file, looks_like_missing_weights
from framebus.topics.errors import ModelError, ModelNotAvailable

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_MAX_NEW_TOKENS = 30
DEFAULT_BATCH_SIZE = 16

# --- the tiny profile ----------------------------------------------------------------------------
TINY_NAME = "framebus-tiny-captioner"
TINY_DIR = "tiny-captioner"  # under <data_dir>/models
TINY_MARKER = "model.safetensors"  # the file whose presence means "trained" (written with the rest, atomically)
TINY_SEED = 4321
TINY_MAX_NEW_TOKENS = 8
PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order
# Vocabulary of the untrained tiny model (the synthetic world's words). A trained model carries its
# own tokenizer, built from its training captions.
TINY_WORDS = (
    "a",
    "moving",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "circle",
    "square",
    "triangle",
    "star",
    "left",
    "right",
    "up",
    "down",
)
TINY_ENCODER: dict[str, Any] = {
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 256,
}
TINY_DECODER: dict[str, Any] = {"n_positions": 16, "n_embd": 128, "n_layer": 2, "n_head": 4}


def _transformers():
    import transformers

    # no progress bars for shard writing / weight loading in framebus's logs
    with contextlib.suppress(Exception):
        transformers.utils.logging.disable_progress_bar()
    return transformers


def build_word_tokenizer(words: list[str] | tuple[str, ...]):
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` (whitespace split, lower-cased
    input), with ``[PAD] [BOS] [EOS] [UNK]`` as ids 0..3. Decoding joins words with spaces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    transformers = _transformers()
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        w = w.strip().lower()
        if w and w not in vocab:
            vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=TINY_DECODER["n_positions"],
    )


def build_tiny_image_processor(image_size: int | None = None, *, crop: bool = True):
    """The tiny captioner's image processor: resize to ``image_size`` (default ``TINY_ENCODER``'s) square,
    normalise to [-1, 1]. ``crop``: resize the short side to ``image_size`` and take the centre square
    (``CLIPImageProcessor``; shapes keep their aspect, as the tiny CLIP sees them) instead of squashing the
    whole frame into the square (``ViTImageProcessor``)."""
    transformers = _transformers()
    size = int(image_size or TINY_ENCODER["image_size"])
    if crop:
        return transformers.CLIPImageProcessor(
            do_resize=True,
            size={"shortest_edge": size},
            resample=2,
            do_center_crop=True,
            crop_size={"height": size, "width": size},
            do_rescale=True,
            do_normalize=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            do_convert_rgb=True,
        )
    return transformers.ViTImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        resample=2,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def _load_tiny_image_processor(path: Path):
    """The image processor a trained tiny captioner directory saved: ``CLIPImageProcessor`` (centre crop)
    or ``ViTImageProcessor`` (squash), whichever ``preprocessor_config.json`` names."""
    transformers = _transformers()
    try:
        kind = json.loads((Path(path) / "preprocessor_config.json").read_text()).get("image_processor_type", "")
    except (OSError, ValueError):
        kind = ""
    crop = str(kind).startswith("CLIPImageProcessor")
    cls = transformers.CLIPImageProcessor if crop else transformers.ViTImageProcessor
    return cls.from_pretrained(str(path))


def tiny_generation_config(tokenizer, max_new_tokens: int = TINY_MAX_NEW_TOKENS):
    transformers = _transformers()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return transformers.GenerationConfig(
        decoder_start_token_id=ids[BOS],
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        # never emit pad/bos/unk, and at least one word before [EOS]
        suppress_tokens=[ids[PAD], ids[BOS], ids[UNK]],
        begin_suppress_tokens=[ids[EOS]],
    )


def build_tiny_model(
    tokenizer, *, seed: int = TINY_SEED, encoder: dict[str, Any] | None = None, decoder: dict[str, Any] | None = None
):
    """The tiny ``VisionEncoderDecoderModel`` for ``tokenizer``'s vocabulary, seeded random init on CPU
    (the caller's global RNG state is left alone). ``encoder`` / ``decoder``: ``ViTConfig`` /
    ``GPT2Config`` fields (default ``TINY_ENCODER`` / ``TINY_DECODER``)."""
    import torch

    transformers = _transformers()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    enc = transformers.ViTConfig(**(TINY_ENCODER if encoder is None else encoder))
    dec = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        **(TINY_DECODER if decoder is None else decoder),
    )
    cfg = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = ids[BOS], ids[PAD], ids[EOS]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.VisionEncoderDecoderModel(config=cfg)
    model.generation_config = tiny_generation_config(tokenizer)
    return model


# --- errors --------------------------------------------------------------------------------------


def weights_missing_message(name: str, *, cache_dir: Path | None, cause: str = "") -> str:
    """The ``models.weights_missing`` text for a transformers captioning model."""
    lines = [
        f"pretrained weights for the transformers captioning model {name} are not available locally and "
        f"could not be downloaded (offline, or the Hugging Face hub is unreachable)."
    ]
    if cause:
        lines.append(f"cause: {cause}")
    lines.append("provide them in one of these ways:")
    if cache_dir is not None:
        lines.append(
            f"  - fill the Hugging Face cache framebus uses, {cache_dir}: run framebus once with hub access, "
            f"or `hf download {name} --cache-dir {cache_dir}` (it lives under the data_dir setting, "
            f"FRAMEBUS_DATA_DIR)"
        )
    else:
        lines.append(f"  - run once with hub access, or `hf download {name}`")
    lines.append('or run fully offline with the tiny model profile: FRAMEBUS_MODELS=tiny (models = "tiny").')
    return "\n".join(lines)


def _is_missing_weights(exc: BaseException) -> bool:
    return looks_like_missing_weights(exc, (OSError, ConnectionError, TimeoutError), HF_MISSING_MARKERS)


#: the files of a ``save_pretrained`` directory that define the tiny captioner (and its version);
#: anything else there (training stats, sidecars) is ignored
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _dir_digest(path: Path) -> str:
    h = hashlib.sha256()
    for name in MODEL_FILES:
        f = path / name
        if not f.is_file():
            continue
        h.update(name.encode())
        feed_file(h, f)
    return h.hexdigest()


# --- the captioner -------------------------------------------------------------------------------


class TransformersCaptioner:
    """``Captioner`` over a transformers image-to-text model. Build with ``pretrained()`` or ``tiny()``."""

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        tokenizer: Any,
        info: ModelInfo,
        *,
        device: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.info = info
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self._lock = threading.Lock()

    @property
    def image_size(self) -> int | None:
        """The smallest shorter side an input needs to lose nothing in the image processor's resize."""
        size = getattr(self.image_processor, "size", None)
        get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        sides = [get("shortest_edge"), get("height"), get("width")]
        return max((int(v) for v in sides if v), default=None)

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def pretrained(
        cls,
        name: str = DEFAULT_CAPTIONER,
        *,
        cache_dir: Path | str | None = None,
        device: str = "auto",
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> TransformersCaptioner:
        """Load the captioning model ``name`` the way transformers does (hub / ``cache_dir``).

        BLIP checkpoints load as ``BlipForConditionalGeneration`` + ``BlipProcessor``; anything else
        as ``VisionEncoderDecoderModel`` + ``AutoImageProcessor`` + ``AutoTokenizer``. Missing weights
        raise ``ModelNotAvailable`` (``models.weights_missing``).
        """
        from framebus.models.openclip import resolve_device

        transformers = _transformers()
        dev = resolve_device(device)
        cache = Path(cache_dir) if cache_dir is not None else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        kw = {"cache_dir": str(cache)} if cache is not None else {}
        try:
            config = transformers.AutoConfig.from_pretrained(name, **kw)
            if config.model_type == "blip":
                model = transformers.BlipForConditionalGeneration.from_pretrained(name, **kw)
                processor = transformers.BlipProcessor.from_pretrained(name, **kw)
                image_processor, tokenizer = processor.image_processor, processor.tokenizer
            elif config.model_type == "vision-encoder-decoder":
                model = transformers.VisionEncoderDecoderModel.from_pretrained(name, **kw)
                image_processor = transformers.AutoImageProcessor.from_pretrained(name, **kw)
                tokenizer = transformers.AutoTokenizer.from_pretrained(name, **kw)
            else:
                raise ModelError(
                    f"captioning model {name} has model_type {config.model_type!r}; supported: blip, "
                    "vision-encoder-decoder",
                    code="models.unsupported",
                )
        except ModelError:
            raise
        except Exception as e:
            if _is_missing_weights(e):
                raise ModelNotAvailable(
                    weights_missing_message(name, cache_dir=cache, cause=str(e).splitlines()[0][:300])
                ) from e
            raise ModelError(f"cannot load captioning model {name}: {type(e).__name__}: {e}") from e
        revision = getattr(config, "_commit_hash", None) or "local"
        info = ModelInfo(name=f"transformers/{name}", version=f"{name}@{str(revision)[:12]}", task="caption")
        return cls(
            model, image_processor, tokenizer, info, device=dev, max_new_tokens=max_new_tokens, batch_size=batch_size
        )

    @classmethod
    def tiny(
        cls,
        directory: Path | str | None = None,
        *,
        device: str = "auto",
        max_new_tokens: int = TINY_MAX_NEW_TOKENS,
        batch_size: int = 64,
    ) -> TransformersCaptioner:
        """The offline tiny captioner: the trained ``save_pretrained`` directory when it holds a model,
        else a seeded random init over ``TINY_WORDS``. ``version`` hashes what was loaded (12 hex)."""
        from framebus.models.openclip import resolve_device

        transformers = _transformers()
        dev = resolve_device(device)
        path = Path(directory) if directory is not None else None
        if path is not None and (path / TINY_MARKER).is_file():
            try:
                model = transformers.VisionEncoderDecoderModel.from_pretrained(str(path))
                tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(str(path))
                image_processor = _load_tiny_image_processor(path)
            except Exception as e:
                raise ModelError(
                    f"cannot load the tiny captioner from {path} (retrain it with `framebus models "
                    f"train`): {type(e).__name__}: {e}"
                ) from e
            digest = _dir_digest(path)
        else:
            tokenizer = build_word_tokenizer(TINY_WORDS)
            image_processor = build_tiny_image_processor()
            model = build_tiny_model(tokenizer)
            h = hashlib.sha256(
                json.dumps(
                    {"enc": TINY_ENCODER, "dec": TINY_DECODER, "words": TINY_WORDS, "seed": TINY_SEED}, sort_keys=True
                ).encode()
            )
            from framebus.models.openclip import _state_dict_digest

            h.update(_state_dict_digest(model).encode())
            digest = h.hexdigest()
        info = ModelInfo(name=TINY_NAME, version=digest[:12], task="caption")
        return cls(
            model, image_processor, tokenizer, info, device=dev, max_new_tokens=max_new_tokens, batch_size=batch_size
        )

    # --- inference ---------------------------------------------------------------------------------
    def _autocast(self):
        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_images(self, images: list[np.ndarray]):
        """The image processor (resize + normalise) on the CPU: ``(n, 3, H, W)`` pixel values."""
        import torch

        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise TypeError("prepare_images takes a list of images")
        if not len(images):
            return torch.zeros((0, 3, 1, 1))
        pixels = self.image_processor(images=[check_image(im) for im in images], return_tensors="pt")["pixel_values"]
        return pixels.pin_memory() if self.device.type == "cuda" else pixels

    def caption_prepared(self, pixels) -> list[str]:
        import torch

        out: list[str] = []
        for lo in range(0, len(pixels), self.batch_size):
            with self._lock, torch.inference_mode(), self._autocast():
                ids = self.model.generate(
                    pixel_values=pixels[lo : lo + self.batch_size].to(self.device, non_blocking=True),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                )
            out.extend(" ".join(t.split()) for t in self.tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True))
        return out

    def caption(self, images: list[np.ndarray]) -> list[str]:
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise TypeError("caption takes a list of images")
        # preprocessing runs outside the lock, one model batch at a time
        return [
            c
            for lo in range(0, len(images), self.batch_size)
            for c in self.caption_prepared(self.prepare_images(images[lo : lo + self.batch_size]))
        ]

    def __repr__(self) -> str:
        return f"TransformersCaptioner({self.info.name}, version={self.info.version}, device={self.device})"
