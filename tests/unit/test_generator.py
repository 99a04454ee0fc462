"""The tiny latent video diffusion model (``framebus.models.generator``): shapes, the sampler's contract
(determinism, resume from a checkpoint, on_step, guidance, v2v) and the shipped weights' quality."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from framebus.models.base import GenerationSpec, SamplerCheckpoint, VideoGenerator
from framebus.models.generator import (
    GeneratorConfig,
    TinyVideoGenerator,
    TinyVideoModel,
    build_modules,
    frames_to_tensor,
    start_step,
    timesteps,
    tokenize,
)
from framebus.topics.errors import ModelError

SMALL = GeneratorConfig(ae_channels=(8, 16), latent_channels=4, dim=32, depth=2, heads=2, text_layers=1)


def _spec(prompt: str = "a red circle moving left", **kw) -> GenerationSpec:
    base = dict(prompt=prompt, seed=3, steps=6, guidance=3.0, num_frames=16, fps=8.0, width=64, height=48)
    base.update(kw)
    return GenerationSpec(**base)


@pytest.fixture(scope="module")
def random_generator() -> TinyVideoGenerator:
    """An untrained small model whose zero-initialised (AdaLN-Zero, output) layers are randomised too, so
    every part of it shapes the output."""
    model = TinyVideoModel.fresh(SMALL, seed=1)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in (model.text_encoder, model.transformer):
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return TinyVideoGenerator(model, version="random")


def test_autoencoder_and_transformer_shapes():
    torch.manual_seed(0)
    ae, te, dit = build_modules(SMALL)
    video = torch.rand(2, 3, SMALL.frames, SMALL.height, SMALL.width) * 2 - 1
    z = ae.encode(video)
    assert z.shape == (2, *SMALL.latent_shape) == (2, 4, 8, 12, 16)  # 2x temporal, 4x spatial
    assert ae.decode(z).shape == video.shape
    tokens, pooled, mask = te(tokenize(["a blue star moving up", ""], SMALL.text_len))
    assert tokens.shape == (2, SMALL.text_len, SMALL.dim) and pooled.shape == (2, SMALL.dim)
    assert mask[1, 1:].all() and not mask[1, 0]  # the empty prompt is <bos> alone
    v = dit(z, torch.tensor([0.3, 0.9]), tokens, pooled, mask)
    assert v.shape == z.shape and v.dtype == torch.float32
    assert dit.grid == (4, 6, 8)  # 2x2x2 spacetime patches
    assert [b.axis for b in dit.blocks] == ["spatial", "temporal"]


def test_the_architecture_options_build_and_run():
    """The options the recipe can switch (tried for shape; README): 8x spatial autoencoder with 1x1 spatial
    patches, every text token into AdaLN, a depthwise conv in the MLPs, frozen orthonormal word embeddings."""
    cfg = replace(SMALL, spatial_down=8, patch=(2, 1, 1), text_cond="tokens", mlp_conv=True, text_frozen=True)
    torch.manual_seed(0)
    ae, te, dit = build_modules(cfg)
    video = torch.rand(1, 3, cfg.frames, cfg.height, cfg.width) * 2 - 1
    z = ae.encode(video)
    assert z.shape == (1, *cfg.latent_shape) == (1, 4, 8, 6, 8)
    assert ae.decode(z).shape == video.shape
    assert not te.embed.weight.requires_grad
    w = te.embed.weight
    assert torch.allclose(w @ w.T, torch.eye(len(w)), atol=1e-5)  # orthonormal words
    tokens, pooled, mask = te(tokenize(["a blue star moving up", "a red circle moving left"], cfg.text_len))
    v = dit(z.expand(2, -1, -1, -1, -1), torch.tensor([0.3, 0.9]), tokens, pooled, mask)
    assert v.shape == (2, *cfg.latent_shape) and dit.blocks[0].dw is not None


def test_timesteps_and_start_step():
    ts = timesteps(10, 2.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and bool((ts[1:] < ts[:-1]).all())
    assert start_step(20, 1.0) == 0 and start_step(20, 0.0) == 20 and start_step(20, 0.5) == 10


def test_normalise_snaps_to_the_model(random_generator):
    gen = random_generator
    assert isinstance(gen, VideoGenerator)
    spec = gen.normalise(_spec(num_frames=33, fps=24.0, width=321, height=181, steps=10_000, strength=3.0))
    assert (spec.num_frames, spec.fps) == (16, 8.0)
    assert (spec.width, spec.height) == (322, 182) and spec.steps == 200 and spec.strength == 1.0
    for mode in ("i2v", "v2v"):  # no source
        with pytest.raises(ModelError) as err:
            gen.normalise(_spec(mode=mode))
        assert err.value.code == "generate.unsupported"
    with pytest.raises(ModelError):
        gen.normalise(_spec(mode="upscale"))  # the agent's job, not the model's


def test_same_seed_same_frames_and_size(random_generator):
    a = random_generator.generate(_spec())
    b = random_generator.generate(_spec())
    c = random_generator.generate(_spec(seed=4))
    assert a.shape == (16, 48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    big = random_generator.generate(_spec(width=128, height=96))
    assert big.shape == (16, 96, 128, 3)


def test_resume_after_step_k_equals_the_uninterrupted_run(random_generator):
    gen = random_generator
    seen: list[SamplerCheckpoint] = []
    full = gen.generate(_spec(), on_step=lambda ck: seen.append(SamplerCheckpoint.from_bytes(ck.to_bytes())))
    assert [c.step for c in seen] == [1, 2, 3, 4, 5, 6]
    k = 2
    calls: list[int] = []
    resumed = gen.generate(_spec(), resume=seen[k - 1], on_step=lambda ck: calls.append(ck.step))
    assert calls == [3, 4, 5, 6]  # total - k calls
    assert np.array_equal(resumed, full)
    assert gen.preview(seen[k - 1], _spec()).shape == (48, 64, 3)


def test_on_step_raising_propagates(random_generator):
    class Cancelled(Exception):
        pass

    def cancel(ck: SamplerCheckpoint) -> None:
        if ck.step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        random_generator.generate(_spec(), on_step=cancel)


def test_guidance_changes_the_output(random_generator):
    a = random_generator.generate(_spec(guidance=1.0))
    b = random_generator.generate(_spec(guidance=6.0))
    assert not np.array_equal(a, b)


def test_v2v_with_strength_zero_is_the_source_reconstruction(random_generator):
    gen = random_generator
    source = gen.generate(_spec(seed=9))
    out = gen.generate(_spec(mode="v2v", source=source, strength=0.0))
    ae = gen.model.autoencoder
    with torch.inference_mode():
        recon = ae.decode(ae.encode(frames_to_tensor(source)))[0]
    expected = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    partial = gen.generate(_spec(mode="v2v", source=source, strength=0.5), on_step=None)
    assert partial.shape == source.shape
    steps: list[int] = []
    gen.generate(_spec(mode="v2v", source=source, strength=0.5), on_step=lambda ck: steps.append(ck.step))
    assert steps == [4, 5, 6]  # round(0.5 * 6) steps, from step 3


def test_i2v_ends_on_the_image_and_resumes_to_the_same_bits(random_generator):
    gen = random_generator
    image = gen.generate(_spec(seed=11))[:1]
    spec = _spec(mode="i2v", source=image, strength=0.8)
    saved: list[SamplerCheckpoint] = []
    out = gen.generate(spec, on_step=saved.append)
    # the first latent frame ends exactly on the image's own latent
    ae = gen.model.autoencoder
    with torch.inference_mode():
        still = frames_to_tensor(np.repeat(image, 16, axis=0))
        z = ae.normalise_latents(ae.encode(still))[0, :, :1]
    assert torch.allclose(saved[-1].latents[:, :1], z, atol=1e-5)
    assert [c.step for c in saved] == [2, 3, 4, 5, 6]  # round(0.8 * 6) steps
    resumed = gen.generate(spec, resume=saved[2])
    assert np.array_equal(resumed, out)
    assert not np.array_equal(out, gen.generate(_spec(mode="i2v", source=image[:, ::-1].copy(), strength=0.8)))


def test_generate_batch(random_generator):
    specs = [_spec(), _spec(prompt="a green star moving up", seed=8)]
    calls: list[tuple[int, int]] = []
    outs = random_generator.generate_batch(specs, on_step=lambda i, ck: calls.append((i, ck.step)))
    assert len(outs) == 2 and outs[0].shape == (16, 48, 64, 3) and not np.array_equal(outs[0], outs[1])
    assert len(calls) == 12
    with pytest.raises(ModelError):
        random_generator.generate_batch([_spec(), replace(_spec(), steps=3)])


# --- the shipped weights ---------------------------------------------------------------------------

#: the quality test: 8 prompts (seeds no training used), each attribute named by the tiny captioner
QUALITY_PROMPTS = 8
#: (seed 0 names colour 1.00, motion 1.00, shape 0.39 on the 44-prompt suite: shape is not yet above
#: chance reliably, so colour, motion and the text-video similarity gap are pinned)
QUALITY_BAR = {"colour": 0.75, "motion": 0.75}


@pytest.fixture(scope="module")
def judges():
    from framebus.models.registry import load_captioner, load_embedder
    from framebus.streams.config import Settings

    settings = Settings(models="tiny", device="cpu")
    return load_captioner(settings), load_embedder(settings)


def _quality(generator, judges) -> dict:
    from framebus.models import generation_eval as ge

    prompts = ge.suite(QUALITY_PROMPTS)
    seeds = [ge.EVAL_SEED_BASE + 500 + i for i in range(len(prompts))]
    return ge.evaluate_generation(generator, *judges, prompts, seeds, steps=12)


def _passes(result: dict) -> bool:
    ok = all(result["accuracy"][a] >= bar for a, bar in QUALITY_BAR.items())
    return ok and result["similarity"]["matched"] > result["similarity"]["shuffled"] + 0.1


def test_the_shipped_generator_makes_what_the_prompt_says(judges):
    from framebus.models.registry import load_generator
    from framebus.streams.config import Settings

    generator = load_generator(Settings(models="tiny", device="cpu", train_seed=0))
    result = _quality(generator, judges)
    print(result["accuracy"], result["similarity"])
    assert _passes(result), (result["accuracy"], result["similarity"])


def test_the_shipped_generator_animates_an_image(judges):
    """i2v on the shipped weights: a world frame of "a blue square" and its prompt give a clip whose first
    frame is the image (to the autoencoder's precision) and whose later frames stay closer to the real
    clip than a text-only clip of the same prompt and seed."""
    from framebus.models.registry import load_generator
    from framebus.models.training.generator import render_clips
    from framebus.models.world import ShotSpec
    from framebus.streams.config import Settings

    generator = load_generator(Settings(models="tiny", device="cpu", train_seed=0))
    far: dict[str, list[float]] = {"i2v": [], "t2v": []}
    for seed, shape in enumerate(("square", "triangle", "circle")):
        clip = render_clips([ShotSpec(shape, "blue", "right", 1, 4242 + seed)], 16, 8.0, 64, 48, 2)[0]
        spec = _spec(f"a blue {shape} moving right", seed=seed, steps=12)
        for mode, out in (
            ("i2v", generator.generate(replace(spec, mode="i2v", source=clip[:1], strength=0.8))),
            ("t2v", generator.generate(spec)),
        ):
            far[mode].append(float(np.abs(out.astype(int) - clip.astype(int)).mean()))
    assert max(far["i2v"]) < min(far["t2v"]), far


def test_an_untrained_generator_fails_the_quality_bar(judges):
    untrained = TinyVideoGenerator(TinyVideoModel.fresh(GeneratorConfig(), seed=0), version="untrained")
    assert not _passes(_quality(untrained, judges))


def test_preview_from_inside_on_step(random_generator):
    """The generate agent writes previews from its on_step callback (same thread, sampler running)."""
    previews = []
    random_generator.generate(_spec(steps=2), on_step=lambda ck: previews.append(random_generator.preview(ck, _spec())))
    assert len(previews) == 2 and previews[0].shape == (48, 64, 3) and previews[0].dtype == np.uint8


def test_contact_sheet_draws_world_against_generated(tmp_path):
    from PIL import Image

    from framebus.models import generation_eval as ge

    prompts = ge.suite(2)
    reference = ge.reference_clips(prompts, [1, 2])
    generated = [np.zeros_like(c) for c in reference]
    ge.contact_sheet(generated, reference, prompts, tmp_path / "sheet.png", title="t")
    img = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    h, w, _ = img.shape
    assert w > h > 100
    # the all-black generated clips fill the right half, the world's clips (never pure black) the left
    black = (img.max(axis=2) < 8).mean(axis=0)
    assert black[w // 2 :].mean() > 0.3 > 0.02 > black[: w // 2].mean()


def test_the_trainer_runs_end_to_end_on_a_reduced_recipe(tmp_path):
    """The recipe's code paths (edge loss, uniform noise share, object weighting, EMA, save) on a few steps:
    the shipped weights mean CI never trains the generator otherwise."""
    import copy
    import math

    from framebus.models.training import generator as tg

    recipe = copy.deepcopy(tg.RECIPE)
    recipe["clips_per_combo"] = 1
    recipe["ae"]["steps"], recipe["dit"]["steps"], recipe["dit"]["warmup"] = 3, 3, 1
    assert recipe["ae"]["edge_weight"] and recipe["dit"]["t_uniform"]
    stats = tg.train_tiny_generator(tmp_path / "g.pt", seed=0, recipe=recipe)
    assert stats["clips"] == len(tg.training_shots(recipe)) and stats["steps"] == 6
    assert all(math.isfinite(stats[k]) for k in ("ae_final_loss", "initial_loss", "final_loss"))
    generator = TinyVideoGenerator.load(tmp_path / "g.pt")
    assert generator.config == GeneratorConfig.from_dict(recipe["model"])
    clip = generator.generate(_spec(steps=2))
    assert clip.shape == (16, 48, 64, 3) and clip.dtype == np.uint8
    # the file's bytes name the version: no timings in it, and the same bytes wherever it is saved
    from framebus.models.common import file_digest
    from framebus.models.generator import TinyVideoModel

    model = TinyVideoModel.load(tmp_path / "g.pt")
    assert not any(k.endswith("seconds") for k in model.meta)
    model.save(tmp_path / "again" / "other-name.pt")
    assert file_digest(tmp_path / "again" / "other-name.pt") == file_digest(tmp_path / "g.pt")
    assert generator.info.version == stats["version"] == file_digest(tmp_path / "g.pt")[:12]


def test_word_reliance_tells_a_used_word_from_an_ignored_one():
    """The shipped transformer relies on the colour word (swapping it raises the flow loss on the object a
    lot); an untrained one, whose output layer starts at zero, relies on no word at all."""
    from framebus.models import generation_eval as ge
    from framebus.models.registry import load_generator
    from framebus.streams.config import Settings

    prompts = ge.suite(8)
    seeds = [ge.EVAL_SEED_BASE + 700 + i for i in range(len(prompts))]
    assert ge._swap_word("a white star moving up", ("red", "green", "blue", "yellow", "white")).split()[1] == "red"
    shipped = load_generator(Settings(models="tiny", device="cpu", train_seed=0)).model
    r = ge.word_reliance(shipped, prompts, seeds, ts=(0.6, 0.9))
    print(r["reliance"])
    assert r["reliance"]["colour"] > 0.3, r
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in r["loss"].values()), r
    fresh = ge.word_reliance(TinyVideoModel.fresh(GeneratorConfig(), seed=0), prompts, seeds, ts=(0.6,))
    assert fresh["reliance"] == {"colour": 0.0, "shape": 0.0, "motion": 0.0}, fresh


def test_contrast_guidance_acts_only_through_the_shape_word(random_generator):
    """The contrast term guides against the prompt less its shape word: it changes a clip whose prompt
    names a shape, and leaves one whose prompt names none bit-identical (its contrast prompt is itself)."""
    g = random_generator
    assert g.contrast_prompt("a red circle moving left") == "a red moving left"
    assert g.contrast_prompt("a red moving left") == "a red moving left"
    saved = g.contrast_guidance
    try:
        out = {}
        for cg in (0.0, 5.0):
            g.contrast_guidance = cg
            out[cg] = (g.generate(_spec()), g.generate(_spec("a blue moving up")))
    finally:
        g.contrast_guidance = saved
    assert not np.array_equal(out[0.0][0], out[5.0][0])
    assert np.array_equal(out[0.0][1], out[5.0][1])


def test_the_contrast_guidance_setting_reaches_the_loaded_generator():
    from framebus.models.registry import load_generator
    from framebus.streams.config import Settings

    assert load_generator(Settings(models="tiny", device="cpu")).contrast_guidance == 5.0
    assert load_generator(Settings(models="tiny", device="cpu", generate_contrast_guidance=0)).contrast_guidance == 0.0
