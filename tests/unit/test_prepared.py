"""Every model splits its work into CPU preprocessing (``prepare_images``, run in a prep thread) and the
model's own pass (``*_prepared``, in the model thread); the two halves give exactly what the one-call
API gives. Frames can be decoded straight to the model's input size (JPEG DCT scaling)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from framebus.agents.embed import embed_prepared_segments, embed_segments, prepare_segments
from framebus.models import world
from framebus.models.registry import load_captioner, load_embedder, load_moderator
from framebus.streams.batching import AdaptiveBatcher
from framebus.topics import events as ev
from framebus.topics.errors import DecodeError
from framebus.topics.frames import decode_jpeg, encode_jpeg


def frames(n: int = 5) -> list[np.ndarray]:
    specs = [
        world.ShotSpec(shape=s, colour=c, motion="left", background=k % world.N_BACKGROUNDS, seed=k)
        for k, (s, c) in enumerate(
            [("circle", "red"), ("star", "blue"), ("square", "green"), ("triangle", "white"), ("star", "yellow")]
        )
    ]
    return [np.asarray(world.render_frame(spec, 0.5, 298, 224)) for spec in specs[:n]]


@pytest.fixture(scope="module")
def models(tiny_models):
    settings, _ = tiny_models
    embedder = load_embedder(settings)
    return embedder, load_captioner(settings), load_moderator(settings, embedder)


def test_prepared_halves_equal_the_one_call_api(models):
    embedder, captioner, moderator = models
    ims = frames()
    np.testing.assert_array_equal(embedder.embed_prepared(embedder.prepare_images(ims)), embedder.embed_images(ims))
    assert captioner.caption_prepared(captioner.prepare_images(ims)) == captioner.caption(ims)
    assert moderator.score_prepared(moderator.prepare_images(ims)) == moderator.score(ims)
    # slices of a prepared batch are batches (what AdaptiveBatcher hands the model after an OOM split)
    batch = embedder.prepare_images(ims)
    np.testing.assert_allclose(
        np.concatenate([embedder.embed_prepared(batch[:2]), embedder.embed_prepared(batch[2:])]),
        embedder.embed_images(ims),
        atol=1e-5,
    )
    assert embedder.embed_prepared(embedder.prepare_images([])).shape == (0, embedder.dim)
    assert moderator.score_prepared(moderator.prepare_images([])) == []
    assert captioner.caption_prepared(captioner.prepare_images([])) == []
    assert embedder.image_size == moderator.image_size == 64 and captioner.image_size == 64


def test_agent_segments_prepared_in_two_steps_equal_one_step(models):
    embedder, _, moderator = models
    ims = frames()
    facts = ev.VideoFacts(duration_s=2.0, fps=24, width=298, height=224, codec="h264")
    items = [
        ev.SegmentFrames(
            video_id="v",
            tenant="t",
            uri="file:///v.mp4",
            trace_id="tr",
            segment_count=2,
            segment=ev.Segment(index=i, start_s=i, end_s=i + 1, keyframe_s=i + 0.5),
            tasks=["embed"],
            video=facts,
            frames=[
                ev.Frame(pts_s=i + 0.1 * k, jpeg_b64=base64.b64encode(encode_jpeg(im, 90)).decode())
                for k, im in enumerate(group)
            ],
        )
        for i, group in enumerate([ims[:2], ims[2:]])
    ]
    prepared = prepare_segments(embedder, items)
    assert len(prepared[1]) == 5 and prepared[2] == 2
    two = embed_prepared_segments(embedder, AdaptiveBatcher("e", 4), prepared)
    one = embed_segments(embedder, AdaptiveBatcher("e", 4), items)
    np.testing.assert_array_equal(two, one)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)


def test_decode_jpeg_to_the_model_input_size():
    im = frames(1)[0]  # 298x224
    data = encode_jpeg(im, 90)
    full = decode_jpeg(data)
    assert full.shape == (224, 298, 3)
    half = decode_jpeg(data, min_side=64)  # libjpeg at 1/2 scale: shorter side 112 >= 64
    assert half.shape == (112, 149, 3)
    assert decode_jpeg(data, min_side=200).shape == full.shape  # no scale keeps 200 px: full size
    # the DCT-scaled decode is the same picture: close to a resize of the full decode
    ref = np.asarray(Image.fromarray(full).resize((149, 112), Image.BOX)).astype(int)
    assert np.abs(half.astype(int) - ref).mean() < 6
    with pytest.raises(DecodeError) as err:
        decode_jpeg(b"\xff\xd8 not really a jpeg", min_side=64)
    assert err.value.code == "decode.corrupt"
    png = io.BytesIO()
    Image.fromarray(im).save(png, format="PNG")
    with pytest.raises(DecodeError):
        decode_jpeg(png.getvalue(), min_side=64)
