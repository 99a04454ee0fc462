"""The diffusers video backends (LTX-Video, Wan) on the real ``LTXPipeline`` / ``WanPipeline`` classes over tiny
random weights (``build_tiny_pipeline``): constraints, determinism, resume, cancel, batches, previews, loading.

Resumed runs are compared bitwise: the Euler sampler draws no randomness, the resumed scheduler computes the
whole schedule before dropping the steps already taken (the same float sigmas), and both runs execute the same
kernels on the same thread count in one process. Batched against single runs are compared with a tolerance:
a batch may sum in another order."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest

from framebus.models.base import GenerationSpec, SamplerCheckpoint, VideoGenerator
from framebus.topics.errors import ModelError, ModelNotAvailable

#: per family: a frame size the tiny model takes as is, and the step count of the reference run
CASES = {"ltx": {"size": 32, "steps": 6}, "wan": {"size": 16, "steps": 4}}
RESUME_AT = 2


class Stop(Exception):
    """What a cancelling ``on_step`` raises."""


def _generator(family: str):
    from framebus.models.diffusers_video import DiffusersVideoGenerator, build_tiny_pipeline, tiny_version

    pipe = build_tiny_pipeline(family)
    # LTX: a decode noise scale above 0 makes the decode draw from the seeded generator (as LTX 0.9.1+ does)
    decode = {"decode_timestep": 0.05, "decode_noise_scale": 0.025} if family == "ltx" else {}
    return DiffusersVideoGenerator(
        pipe,
        family=family,
        name=f"diffusers/{family}-tiny-random",
        version=tiny_version(family, pipe, 0),
        device="cpu",
        dtype="fp32",
        max_sequence_length=16,
        **decode,
    )


@pytest.fixture(scope="module", params=sorted(CASES))
def gen(request):
    return _generator(request.param)


def _spec(gen, **kw) -> GenerationSpec:
    case = CASES[gen.family]
    base = GenerationSpec(
        prompt="a red cat runs over the sea",
        seed=7,
        steps=case["steps"],
        guidance=3.0,
        num_frames=9,
        fps=24.0,
        width=case["size"],
        height=case["size"],
        negative_prompt="rain",
    )
    return replace(base, **kw)


@pytest.fixture(scope="module")
def reference(gen):
    """``(frames, checkpoints as bytes)`` of one uninterrupted run of ``_spec(gen)``."""
    saved: list[bytes] = []
    frames = gen.generate(_spec(gen), on_step=lambda ck: saved.append(ck.to_bytes()))
    return frames, saved


def test_is_a_video_generator_labelled_random(gen):
    assert isinstance(gen, VideoGenerator)
    assert gen.batchable is True
    assert gen.info.task == "generate"
    assert gen.info.name == f"diffusers/{gen.family}-tiny-random"
    assert len(gen.info.version) == 12


def test_output_is_uint8_rgb_of_the_requested_shape(gen, reference):
    frames, saved = reference
    spec = _spec(gen)
    assert frames.shape == (spec.num_frames, spec.height, spec.width, 3)
    assert frames.dtype == np.uint8
    assert frames.std() > 0
    assert [SamplerCheckpoint.from_bytes(b).step for b in saved] == list(range(1, spec.steps + 1))


def test_normalise_snaps_frames_size_steps_and_fps(gen):
    ltx = gen.family == "ltx"
    assert (gen.temporal_multiple, gen.spatial_multiple) == ((8, 32) if ltx else (4, 16))
    n = gen.normalise(_spec(gen, num_frames=12, width=50, height=70, steps=500, fps=23.7))
    assert n.num_frames == (9 if ltx else 13)  # nearest 8N+1 / 4N+1
    assert (n.width, n.height) == ((64, 64) if ltx else (48, 64))
    assert n.steps == 200
    assert n.fps == (24.0 if ltx else 16.0)  # LTX takes the rate as conditioning; Wan makes 16 fps
    assert gen.normalise(n) == n
    capped = gen.normalise(_spec(gen, num_frames=1000, width=4000, height=1000))
    assert capped.num_frames == (257 if ltx else 81)
    assert (capped.width, capped.height) == ((1280, 320) if ltx else (1280, 320))
    assert gen.normalise(_spec(gen, num_frames=1, width=1, height=1)).num_frames == 1
    # LTX's schedule is stretched to a terminal sigma, which needs two steps
    assert gen.normalise(_spec(gen, steps=1)).steps == (2 if ltx else 1)


@pytest.mark.parametrize("change", [{"mode": "i2v"}, {"mode": "v2v"}, {"width": 0}, {"steps": 0}, {"fps": 0.0}])
def test_normalise_refuses_what_the_model_cannot_do(gen, change):
    with pytest.raises(ModelError) as e:
        gen.normalise(_spec(gen, **change))
    assert e.value.code == "generate.unsupported"


def test_an_unsnapped_request_generates_at_its_normalised_shape(gen):
    spec = _spec(gen, num_frames=7, width=30, height=20, steps=1)
    n = gen.normalise(spec)
    frames = gen.generate(spec)
    assert frames.shape == (n.num_frames, n.height, n.width, 3)
    assert frames.std() > 0


def test_same_seed_same_frames(gen, reference):
    assert np.array_equal(gen.generate(_spec(gen)), reference[0])


def test_resume_runs_only_the_remaining_steps_and_ends_bitwise_equal(gen, reference):
    frames, saved = reference
    total = _spec(gen).steps
    ckpt = SamplerCheckpoint.from_bytes(saved[RESUME_AT - 1])
    assert (ckpt.step, ckpt.total_steps) == (RESUME_AT, total)
    seen: list[SamplerCheckpoint] = []
    resumed = gen.generate(_spec(gen), resume=ckpt, on_step=seen.append)
    assert [c.step for c in seen] == list(range(RESUME_AT + 1, total + 1))
    for c in seen:  # every later state matches the uninterrupted run's
        assert c.latents.equal(SamplerCheckpoint.from_bytes(saved[c.step - 1]).latents)
    assert np.array_equal(resumed, frames)


def test_resume_after_the_last_step_only_decodes(gen, reference):
    frames, saved = reference
    seen: list[int] = []
    last = SamplerCheckpoint.from_bytes(saved[-1])
    out = gen.generate(_spec(gen), resume=last, on_step=lambda c: seen.append(c.step))
    assert seen == []
    assert np.array_equal(out, frames)


def test_a_checkpoint_of_another_job_is_refused(gen, reference):
    ckpt = SamplerCheckpoint.from_bytes(reference[1][0])
    for spec in (_spec(gen, steps=_spec(gen).steps + 1), _spec(gen, num_frames=17)):
        with pytest.raises(ModelError) as e:
            gen.generate(spec, resume=ckpt)
        assert e.value.code == "generate.bad_checkpoint"


def test_on_step_raising_stops_the_run_and_propagates(gen, reference):
    seen: list[int] = []

    def cancel(ckpt: SamplerCheckpoint) -> None:
        seen.append(ckpt.step)
        if ckpt.step == RESUME_AT + 1:
            raise Stop

    with pytest.raises(Stop):
        gen.generate(_spec(gen), resume=SamplerCheckpoint.from_bytes(reference[1][RESUME_AT - 1]), on_step=cancel)
    assert seen == [RESUME_AT + 1]
    assert gen.pipe.scheduler.skip_steps == 0  # the next job starts from step 0 again
    with pytest.raises(Stop):
        gen.generate(_spec(gen), on_step=lambda c: (_ for _ in ()).throw(Stop()))


def test_a_batch_of_two_prompts_is_one_call_with_a_generator_each(gen, reference):
    other = _spec(gen, prompt="a blue dog walks in the city", seed=8, negative_prompt=None)
    calls: list[tuple[int, int]] = []
    outs = gen.generate_batch([_spec(gen), other], on_step=lambda i, c: calls.append((i, c.step)))
    steps = _spec(gen).steps
    assert len(outs) == 2 and all(o.shape == reference[0].shape and o.dtype == np.uint8 for o in outs)
    # one pipeline call: both jobs report each step, in step order
    assert calls == [(i, s) for s in range(1, steps + 1) for i in (0, 1)]
    assert np.abs(outs[0].astype(int) - reference[0].astype(int)).max() <= 2
    assert not np.array_equal(outs[0], outs[1])


def test_a_batch_of_mixed_shapes_runs_one_call_per_shape(gen):
    size = CASES[gen.family]["size"]
    specs = [_spec(gen, steps=2), _spec(gen, steps=2, width=2 * size), _spec(gen, steps=2, seed=9)]
    calls: list[tuple[int, int]] = []
    outs = gen.generate_batch(specs, on_step=lambda i, c: calls.append((i, c.step)))
    assert [o.shape for o in outs] == [(9, size, size, 3), (9, size, 2 * size, 3), (9, size, size, 3)]
    assert calls == [(0, 1), (2, 1), (0, 2), (2, 2), (1, 1), (1, 2)]


def test_preview_decodes_a_small_middle_frame(gen, reference):
    ckpt = SamplerCheckpoint.from_bytes(reference[1][0])
    assert "denoised" in ckpt.extra
    frame = gen.preview(ckpt, _spec(gen))
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert max(frame.shape[:2]) <= gen.preview_side
    ckpt.extra = None  # no clean estimate: the noisy latents themselves
    assert gen.preview(ckpt, _spec(gen)).shape == frame.shape


# --- image to video (LTX) -----------------------------------------------------------------------------------


def _image(seed: int, size: int) -> np.ndarray:
    """A source clip of two frames: a bright square on a dark ground at a seeded place, then noise (only the
    first frame conditions an i2v job)."""
    rng = np.random.default_rng(seed)
    img = np.full((2, size, size, 3), 20, np.uint8)
    y, x = rng.integers(0, size // 2, 2)
    img[0, y : y + size // 2, x : x + size // 2] = rng.integers(128, 256, 3)
    img[1] = rng.integers(0, 256, (size, size, 3))
    return img


def test_wan_refuses_i2v_and_ltx_needs_a_source(gen):
    if gen.family == "wan":
        with pytest.raises(ModelError) as e:
            gen.normalise(_spec(gen, mode="i2v", source=_image(0, 16)))
        assert e.value.code == "generate.unsupported"
    else:
        assert gen.normalise(_spec(gen, mode="i2v", source=_image(0, 32))).mode == "i2v"


@pytest.fixture(scope="module")
def ltx():
    """LTX alone (Wan 2.1 T2V has no image-to-video pipeline: ``test_wan_refuses_i2v_and_ltx_needs_a_source``)."""
    gen = _generator("ltx")
    return gen, gen.generate(_spec(gen))


def test_ltx_decode_noise_comes_from_the_checkpointed_generator_state(ltx):
    """Only LTX's VAE draws noise at decode time (Wan's does not)."""
    gen, t2v = ltx
    saved: list[SamplerCheckpoint] = []
    gen.generate(_spec(gen), on_step=saved.append)
    ckpt = saved[RESUME_AT - 1]
    assert np.array_equal(gen.generate(_spec(gen), resume=ckpt), t2v)
    ckpt.rng_state = None  # the generator restarts from the seed: the decode noise is another draw
    assert not np.array_equal(gen.generate(_spec(gen), resume=ckpt), t2v)


def test_ltx_i2v_is_conditioned_on_the_first_frame_and_resumes_bitwise(ltx):
    gen, t2v = ltx
    reference = (t2v, [])
    gen.generate(_spec(gen), on_step=lambda ck: reference[1].append(ck.to_bytes()))
    size = CASES["ltx"]["size"]
    spec = _spec(gen, mode="i2v", source=_image(1, size))
    saved: list[SamplerCheckpoint] = []
    frames = gen.generate(spec, on_step=saved.append)
    assert frames.shape == reference[0].shape and frames.dtype == np.uint8
    assert all(c.extra["mode"] == "i2v" for c in saved)
    # the image conditions the run: not the text-to-video output, and another image gives another video
    assert not np.array_equal(frames, reference[0])
    assert not np.array_equal(frames, gen.generate(_spec(gen, mode="i2v", source=_image(2, size))))
    # only the first frame counts
    other_tail = _image(1, size)
    other_tail[1] = 0
    assert np.array_equal(frames, gen.generate(_spec(gen, mode="i2v", source=other_tail)))
    # a killed i2v job resumes from its checkpoint to the same bits; a t2v checkpoint does not fit it
    ckpt = SamplerCheckpoint.from_bytes(saved[RESUME_AT - 1].to_bytes())
    steps: list[int] = []
    resumed = gen.generate(spec, resume=ckpt, on_step=lambda c: steps.append(c.step))
    assert steps == list(range(RESUME_AT + 1, spec.steps + 1))
    assert np.array_equal(resumed, frames)
    with pytest.raises(ModelError) as e:
        gen.generate(spec, resume=SamplerCheckpoint.from_bytes(reference[1][RESUME_AT - 1]))
    assert e.value.code == "generate.bad_checkpoint"
    # its preview decodes the clean estimate with the conditioning frame put back
    assert gen.preview(saved[0], spec).ndim == 3


# --- loading -----------------------------------------------------------------------------------------------


def _settings(tmp_path):
    from framebus.streams.config import Settings

    return Settings(models="default", device="cpu", data_dir=tmp_path / "data")


def test_default_profile_generates_with_ltx():
    from framebus.models.profiles import DEFAULT_GENERATOR_MODEL, ModelSpec, get_profile

    assert get_profile("default").generator == ModelSpec("diffusers-ltx", {"model_id": DEFAULT_GENERATOR_MODEL})
    assert DEFAULT_GENERATOR_MODEL == "Lightricks/LTX-Video"


@pytest.mark.parametrize("loader", ["load_ltx", "load_wan"])
def test_missing_weights_raise_model_not_available(tmp_path, loader):
    from framebus.models import diffusers_video
    from framebus.models.registry import hf_cache_dir

    settings = _settings(tmp_path)
    with pytest.raises(ModelNotAvailable) as e:
        getattr(diffusers_video, loader)(settings, cache_dir=hf_cache_dir(settings), local_files_only=True)
    assert e.value.code == "models.weights_missing"
    model_id = diffusers_video.DEFAULT_MODEL[loader.removeprefix("load_")]
    msg = e.value.message
    assert f"hf download {model_id} --cache-dir {hf_cache_dir(settings)} --include model_index.json" in msg
    assert "'transformer/*'" in msg  # the pipeline's folders, not the repository's single-file checkpoints
    assert "FRAMEBUS_MODELS=tiny" in msg


@pytest.mark.parametrize("backend", ["diffusers-ltx", "diffusers-wan"])
def test_registry_backend_with_random_tiny_weights(tmp_path, backend):
    from framebus.models.registry import create

    g = create("generator", backend, _settings(tmp_path), random_tiny=True)
    family = backend.removeprefix("diffusers-")
    assert g.info.name == f"diffusers/{family}-tiny-random"
    assert g.info.version == _generator(family).info.version  # seeded: the same weights every time


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_local_diffusers_directory_loads_through_from_pretrained(tmp_path, family):
    from framebus.models import diffusers_video as dv

    pipe = dv.build_tiny_pipeline(family)
    if family == "wan":  # as Wan checkpoints ship: a multistep UniPC solver, sampled as Euler at its flow_shift
        from diffusers import UniPCMultistepScheduler

        unipc = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}
        pipe.scheduler = UniPCMultistepScheduler(**unipc)
    settings = _settings(tmp_path)
    pipe.save_pretrained(settings.model_cache_dir / "someone" / f"tiny-{family}")

    def load():
        return dv.load_diffusers_video(
            settings, family, model_id=f"someone/tiny-{family}", local_files_only=True, max_sequence_length=16
        )

    if family == "wan" and importlib.util.find_spec("accelerate") is None:
        with pytest.raises(ModelError) as e:  # diffusers loads Wan transformers only through accelerate
            load()
        assert e.value.code == "models.unsupported" and "pip install accelerate" in e.value.message
        return
    g = load()
    assert g.info.name == f"diffusers/someone/tiny-{family}"
    assert g.info.version == f"someone/tiny-{family}@local"
    assert isinstance(g.pipe.scheduler, dv.resumable_scheduler_class())
    if family == "wan":
        assert g.pipe.scheduler.config.shift == 3.0
    spec = _spec(g, steps=2)
    assert g.generate(spec).shape == (spec.num_frames, spec.height, spec.width, 3)


@pytest.mark.parametrize("family", sorted(CASES))
def test_memory_options_reach_the_pipeline(family):
    import torch

    from framebus.models.diffusers_video import DiffusersVideoGenerator, build_tiny_pipeline

    g = DiffusersVideoGenerator(
        build_tiny_pipeline(family),
        family=family,
        name="tiny",
        version="v",
        device="cpu",
        dtype="bf16",
        vae_tiling=True,
        vae_slicing=True,
        cpu_offload=True,  # a CUDA-only option: ignored on the CPU
        max_sequence_length=16,
    )
    assert g.pipe.transformer.dtype == g.pipe.text_encoder.dtype == torch.bfloat16
    assert g.pipe.vae.dtype == (torch.float32 if family == "wan" else torch.bfloat16)  # Wan's VAE stays fp32
    assert g.pipe.vae.use_tiling and g.pipe.vae.use_slicing
    spec = _spec(g, steps=2)
    frames = g.generate(spec)
    assert frames.shape == (spec.num_frames, spec.height, spec.width, 3) and frames.dtype == np.uint8
    with pytest.raises(ModelError) as e:
        DiffusersVideoGenerator(build_tiny_pipeline(family), family=family, name="t", version="v", dtype="fp8")
    assert e.value.code == "models.bad_input"
