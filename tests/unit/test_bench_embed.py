"""The embedding benchmark's helpers (loadtest/bench_embed.py): CPU, tiny model, seconds."""

from __future__ import annotations

import numpy as np
import pytest

from framebus.loadtest import bench_embed as be


@pytest.fixture(scope="module")
def tiny():
    return be.build_embedder("tiny", "cpu", batch_size=4)


def test_parse_args():
    a = be.parse_args(["--device", "cpu", "--arch", "tiny,ViT-B-32", "--batch-sizes", "1,8", "--precision", "fp32"])
    assert a.archs == ["tiny", "ViT-B-32"] and a.batch_sizes == [1, 8] and a.precision == "fp32"
    with pytest.raises(SystemExit):
        be.parse_args(["--batch-sizes", "0"])


def test_frames_look_like_decoded_video():
    frames = be.make_frames(3)
    assert len(frames) == 3 and all(f.shape == (be.FRAME_H, be.FRAME_W, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[1])


@pytest.mark.parametrize("shape", [(be.FRAME_H, be.FRAME_W, 3), (300, 200, 3)])
def test_tensor_preprocess_matches_pil(tiny, shape):
    import torch

    frames = be.make_frames(3, h=shape[0], w=shape[1])
    tpre = be.TensorPreprocess(tiny)
    pil = torch.stack([tiny.preprocess(tiny._to_pil(im)) for im in frames])
    out = tpre(frames)
    assert out.shape == pil.shape
    assert float((out - pil).abs().mean()) < 0.01  # bicubic antialias: PIL vs torch differ by rounding only
    fp32 = be.autocast_for(tiny, "fp32")
    cos = be.cosine_rows(tiny.embed_images(frames), be.embed_tensor_pre(tiny, tpre, frames, fp32))
    assert cos.min() > 0.999


def test_bench_arch_smoke(tiny):
    res = be.bench_arch("tiny", "cpu", [2], 4, ["fp32", "bf16"], repeat=1, warmup=0, threads=2, log=lambda *_: None)
    (row,) = res["rows"]  # bf16 is skipped on cpu
    assert row["batch"] == 2 and row["images"] == 4 and row["fwd_ips"] > 0 and row["framebus_ips"] > 0
    assert "| fp32 |" in be.format_table(res, 2)
