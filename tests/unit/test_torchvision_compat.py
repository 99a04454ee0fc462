"""framebus.models._torchvision_compat: torchvision import shim for CPU torch + CUDA torchvision.

Everything that imports torchvision runs in a fresh interpreter (subprocess):
the shim must act before torchvision's first import, and a failed torchvision
import leaves a process in a state no later test should inherit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from framebus.models import _torchvision_compat as compat

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_py(
    code: str, *, env: dict[str, str] | None = None, flags: tuple[str, ...] = (), timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, with any installed .pth hook disabled."""
    full_env = dict(os.environ)
    full_env[compat.ENV_DISABLE] = "0"
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=full_env,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"subprocess failed\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def last_json(proc: subprocess.CompletedProcess):
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_shim = pytest.mark.skipif(
    compat.extension_loads(), reason="torchvision's extension loads here; the shim is inert"
)
needs_extension = pytest.mark.skipif(
    not compat.extension_loads(), reason="torchvision's compiled extension does not load here"
)


# --------------------------------------------------------------------------
# Reference NMS: brute force, scalar arithmetic in the boxes' own precision
# --------------------------------------------------------------------------


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Greedy NMS written out with scalars. float32 math is done in numpy
    float32 (float64 otherwise), the IoU is compared to the threshold
    in double, and the visiting order is the one torchvision's kernel uses."""
    n = boxes.shape[0]
    if n == 0:
        return []
    cast = np.float32 if boxes.dtype == torch.float32 else np.float64
    b = [[cast(v) for v in row] for row in boxes.tolist()]
    area = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in b]
    order = scores.sort(0, descending=True)[1].tolist()
    zero = cast(0)
    suppressed = [False] * n
    keep = []
    with np.errstate(all="ignore"):
        for a, i in enumerate(order):
            if suppressed[i]:
                continue
            keep.append(i)
            for j in order[a + 1 :]:
                if suppressed[j]:
                    continue
                w = max(zero, min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))
                h = max(zero, min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))
                inter = w * h
                iou = inter / (area[i] + area[j] - inter)
                if float(iou) > thr:
                    suppressed[j] = True
    return keep


def random_boxes(seed: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40
    wh[torch.rand(n, generator=g) < 0.05] = 0.0  # some degenerate (zero-area) boxes
    boxes = torch.cat([xy, xy + wh], dim=1).to(dtype)
    scores = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    return boxes, scores


# --------------------------------------------------------------------------
# nms fallback kernel (pure function, runs everywhere)
# --------------------------------------------------------------------------


# A handful of representative points, not a full seed x threshold x dtype grid: with 150 random boxes
# thresholds >= 0.95 all keep everything and neighbouring thresholds exercise the same code paths, so
# the grid's extra points pinned nothing new. These span both dtypes, heavy suppression (0.0: any
# overlap suppresses), typical thresholds, light suppression and none at all (1.0). Ties, exact-threshold
# IoUs, precision, empty and single inputs have their own targeted tests below.
@pytest.mark.parametrize(
    "seed, thr, dtype",
    [
        pytest.param(0, 0.0, torch.float32, id="f32-thr0.0-any-overlap-suppresses"),
        pytest.param(1, 0.3, torch.float64, id="f64-thr0.3"),
        pytest.param(2, 0.5, torch.float32, id="f32-thr0.5"),
        pytest.param(1, 0.7, torch.float64, id="f64-thr0.7-light-suppression"),
        pytest.param(3, 1.0, torch.float32, id="f32-thr1.0-nothing-suppressed"),
    ],
)
def test_nms_matches_bruteforce_reference(seed, thr, dtype):
    boxes, scores = random_boxes(seed, 150, dtype)
    # the sample includes degenerate (zero-area) boxes, so their 0/0 IoUs are compared too
    assert ((boxes[:, 2] == boxes[:, 0]) & (boxes[:, 3] == boxes[:, 1])).any()
    keep = compat.nms_cpu(boxes, scores, thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == reference_nms(boxes, scores, thr)
    # sorted by decreasing score
    kept_scores = scores[keep]
    assert torch.all(kept_scores[:-1] >= kept_scores[1:])


def test_nms_empty_input():
    for boxes in (torch.zeros(0, 4), torch.zeros((0, 4), dtype=torch.float64)):
        keep = compat.nms_cpu(boxes, torch.zeros(0, dtype=boxes.dtype), 0.5)
        assert keep.dtype == torch.int64 and keep.shape == (0,)


def test_nms_single_box():
    assert compat.nms_cpu(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_nms_basic_suppression_and_order():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], dtype=torch.float32)
    scores = torch.tensor([0.8, 0.9, 0.7, 0.95])
    # 3 (0.95) suppresses 0 (IoU 0.95) and 1 (IoU ~0.7); 2 is disjoint
    assert compat.nms_cpu(boxes, scores, 0.5).tolist() == [3, 2]
    # threshold above every IoU: nothing suppressed, indices by decreasing score
    assert compat.nms_cpu(boxes, scores, 0.99).tolist() == [3, 1, 0, 2]


def test_nms_identical_boxes_with_tied_scores_keep_one():
    boxes = torch.tensor([[5.0, 5.0, 15.0, 15.0]] * 6)
    scores = torch.full((6,), 0.5)
    keep = compat.nms_cpu(boxes, scores, 0.5)
    assert keep.tolist() == reference_nms(boxes, scores, 0.5)
    assert keep.numel() == 1
    assert keep.item() == scores.sort(0, descending=True)[1][0].item()


def test_nms_tied_scores_disjoint_boxes_all_kept():
    boxes = torch.tensor([[10.0 * i, 0.0, 10.0 * i + 5, 5.0] for i in range(8)])
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.9, 0.1, 0.5, 0.5])
    keep = compat.nms_cpu(boxes, scores, 0.3)
    assert sorted(keep.tolist()) == list(range(8))
    assert keep.tolist() == reference_nms(boxes, scores, 0.3)


def test_nms_iou_equal_to_threshold_is_kept():
    # IoU of these two boxes is exactly 0.5: only IoU > threshold suppresses.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert compat.nms_cpu(boxes, scores, 0.5).tolist() == [0, 1]
    assert compat.nms_cpu(boxes, scores, 0.49).tolist() == [0]


def test_nms_threshold_compared_in_double():
    # IoU 0.3 in float32 is 0.30000001192..., which is > the double 0.3.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert compat.nms_cpu(boxes, scores, 0.3).tolist() == reference_nms(boxes, scores, 0.3) == [0]


def test_nms_input_validation():
    with pytest.raises(RuntimeError, match="2d tensor"):
        compat.nms_cpu(torch.zeros(4), torch.zeros(1), 0.5)
    with pytest.raises(RuntimeError, match="4 elements"):
        compat.nms_cpu(torch.zeros(2, 5), torch.zeros(2), 0.5)
    with pytest.raises(RuntimeError, match="same number of elements"):
        compat.nms_cpu(torch.zeros(2, 4), torch.zeros(3), 0.5)
    with pytest.raises(RuntimeError, match="same type"):
        compat.nms_cpu(torch.zeros(2, 4), torch.zeros(2, dtype=torch.float64), 0.5)
    with pytest.raises(RuntimeError, match="not implemented for 'Half'"):
        compat.nms_cpu(torch.zeros(2, 4, dtype=torch.half), torch.zeros(2, dtype=torch.half), 0.5)


@needs_extension
def test_nms_fallback_matches_real_torchvision():
    """On an install whose extension loads, compare with the real kernel."""
    proc = run_py(
        """
        import json, torch, torchvision
        from framebus.models._torchvision_compat import nms_cpu
        ok = True
        for seed in range(4):
            g = torch.Generator().manual_seed(seed)
            xy = torch.rand(300, 2, generator=g) * 100
            boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 40], 1)
            scores = torch.rand(300, generator=g)
            for thr in (0.0, 0.3, 0.5, 0.7, 1.0):
                ok &= torch.equal(nms_cpu(boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
        print(json.dumps(bool(ok)))
        """
    )
    assert last_json(proc) is True


# --------------------------------------------------------------------------
# Import hook and apply()
# --------------------------------------------------------------------------


def test_install_import_hook_does_not_import_torch():
    proc = run_py(
        """
        import json, sys
        import framebus.models._torchvision_compat as m
        before = len(sys.meta_path)
        first, second = m.install_import_hook(), m.install_import_hook()
        import importlib.util
        probed = importlib.util.find_spec("torchvision") is not None  # a probe is not an import
        print(json.dumps([first, second, len(sys.meta_path) - before, m.hook_installed(), probed,
                          'torch' in sys.modules, 'torchvision' in sys.modules]))
        """
    )
    assert last_json(proc) == [True, False, 1, True, True, False, False]


def test_torchvision_and_open_clip_import_with_hook():
    proc = run_py(
        """
        import json, sys
        import framebus.models._torchvision_compat as m
        m.install_import_hook()
        import torch, torchvision, open_clip, timm
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.]])
        scores = torch.tensor([.9, .8, .7])
        keep = torchvision.ops.nms(boxes, scores, 0.5).tolist()
        batched = torchvision.ops.batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist()
        print(json.dumps({
            "keep": keep,
            "batched": batched,
            "models": len(open_clip.list_models()),
            "hook_left": m.hook_installed(),
            "loader_restored": type(torchvision.__spec__.loader).__name__,
        }))
        """
    )
    out = last_json(proc)
    assert out["keep"] == [0, 2]
    assert out["batched"] == [0, 1, 2]
    assert out["models"] > 0
    assert out["hook_left"] is False  # one-shot: removed itself
    assert out["loader_restored"] == "SourceFileLoader"


@needs_shim
def test_apply_declares_ops_and_nms_dispatches_to_fallback():
    proc = run_py(
        """
        import json, torch
        import framebus.models._torchvision_compat as m
        applied = m.apply()
        again = m.apply()
        import torchvision  # imports fine after apply()
        g = torch.Generator().manual_seed(7)
        xy = torch.rand(200, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 40], 1)
        scores = torch.rand(200, generator=g)
        same = all(torch.equal(torch.ops.torchvision.nms(boxes, scores, t), m.nms_cpu(boxes, scores, t))
                   and torch.equal(torchvision.ops.nms(boxes, scores, t), m.nms_cpu(boxes, scores, t))
                   for t in (0.2, 0.5, 0.8))
        declared = all(m._op_exists(torch, name) for name in m.SCHEMAS)
        try:
            torch.ops.torchvision.roi_pool(torch.rand(1, 1, 4, 4), torch.tensor([[0, 0, 0, 2, 2.]]), 1.0, 2, 2)
            message = ""
        except NotImplementedError as exc:
            message = str(exc)
        # torchvision keeps its own pure-Python roi_align path
        ra = torchvision.ops.roi_align(torch.rand(1, 3, 8, 8), [torch.tensor([[0, 0, 4, 4.]])], 2)
        # FakeTensor / meta path registered by torchvision still works
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode(shape_env=__import__("torch.fx.experimental.symbolic_shapes",
                                                 fromlist=["ShapeEnv"]).ShapeEnv()):
            fake = torch.ops.torchvision.nms(torch.rand(5, 4), torch.rand(5), 0.5)
        print(json.dumps([applied, again, same, declared, message, list(ra.shape), fake.dtype == torch.long]))
        """
    )
    applied, again, same, declared, message, ra_shape, fake_long = last_json(proc)
    assert applied is True and again is True
    assert same is True
    assert declared is True
    assert "torchvision::roi_pool" in message and "CPU-only torch" in message
    assert ra_shape == [1, 3, 2, 2]
    assert fake_long is True


def test_apply_is_inert_when_extension_loads():
    proc = run_py(
        """
        import json, sys, torch
        import framebus.models._torchvision_compat as m
        m.extension_loads = lambda: True
        meta_path = list(sys.meta_path)
        result = m.apply()
        print(json.dumps([result, [n for n in m.SCHEMAS if m._op_exists(torch, n)],
                          sys.meta_path == meta_path, m._lib is None]))
        """
    )
    assert last_json(proc) == [False, [], True, True]


def test_apply_does_nothing_once_torchvision_is_imported(monkeypatch):
    monkeypatch.setattr(compat, "extension_loads", lambda: False)
    monkeypatch.setattr(compat, "_applied", False)
    monkeypatch.setitem(sys.modules, "torchvision", type(sys)("torchvision"))
    assert compat.apply() is False
    assert compat.install_import_hook() is False


def test_extension_loads_true_when_torchvision_missing(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(compat, "_extension_result", compat._UNSET)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real_find_spec(name, *a)
    )
    assert compat.extension_loads() is True
    assert compat.extension_error() is None


# --------------------------------------------------------------------------
# .pth file and command line
# --------------------------------------------------------------------------


def _site_packages() -> list[str]:
    import site

    return [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]


def _site_check(site_dir: Path, env: dict[str, str] | None = None, then: str = ""):
    return last_json(
        run_py(
            f"""
            import json, site, sys
            # started with -S: reach the installed packages without running their
            # .pth files (an installed hook would mask the one under test)
            sys.path.extend(p for p in {_site_packages()!r} if p not in sys.path)
            site.addsitedir({str(site_dir)!r})
            hooked = any(getattr(f, "_framebus_torchvision_compat_hook", False) for f in sys.meta_path)
            out = [hooked, "torch" in sys.modules, "models" in sys.modules,
                   "_framebus_torchvision_compat" in sys.modules]
            {then}
            print(json.dumps(out))
            """,
            env={compat.ENV_DISABLE: "1", **(env or {})},
            flags=("-S",),
        )
    )


def test_pth_line_installs_hook_cheaply(tmp_path):
    (tmp_path / compat.PTH_NAME).write_text(compat.pth_line())
    # stub hook installed; torch, the generic `models` package and even this module not loaded
    assert _site_check(tmp_path) == [True, False, False, False]
    assert _site_check(tmp_path, env={compat.ENV_DISABLE: "0"}) == [False, False, False, False]


def test_pth_hook_makes_torchvision_importable_even_after_a_probe(tmp_path):
    (tmp_path / compat.PTH_NAME).write_text(compat.pth_line())
    then = """
            import importlib.util
            probed = importlib.util.find_spec("torchvision") is not None  # e.g. transformers' availability check
            out.append(probed and "torch" not in sys.modules)
            import torch, torchvision, open_clip
            boxes, scores = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2.1]]), torch.tensor([.5, .6])
            out.append(torchvision.ops.nms(boxes, scores, .5).tolist())
            out.append(any(getattr(f, "_framebus_torchvision_compat_hook", False) for f in sys.meta_path))
    """
    assert _site_check(tmp_path, then=then) == [True, False, False, False, True, [1], False]


def test_pth_line_survives_missing_module(tmp_path):
    (tmp_path / compat.PTH_NAME).write_text(compat.pth_line(str(tmp_path / "gone" / "_torchvision_compat.py")))
    then = """
            import importlib.util
            out.append(importlib.util.find_spec("torchvision") is not None)
            out.append(any(getattr(f, "_framebus_torchvision_compat_hook", False) for f in sys.meta_path))
    """
    # start-up is unaffected; on the first torchvision lookup the stub gives up and removes itself
    assert _site_check(tmp_path, then=then) == [True, False, False, False, True, False]


def test_cli_install_and_uninstall(tmp_path, monkeypatch, capsys):
    pth = tmp_path / compat.PTH_NAME
    monkeypatch.setattr(compat, "extension_loads", lambda: False)
    compat.main(["install", "--site-dir", str(tmp_path)])
    assert pth.read_text() == compat.pth_line()
    assert pth.read_text().startswith("import ") and pth.read_text().count("\n") == 1
    compat.main(["status", "--site-dir", str(tmp_path)])
    assert str(pth) in capsys.readouterr().out
    compat.main(["uninstall", "--site-dir", str(tmp_path)])
    assert not pth.exists()

    # not needed: install refuses and removes a stale file
    pth.write_text("import sys\n")
    monkeypatch.setattr(compat, "extension_loads", lambda: True)
    compat.main(["install", "--site-dir", str(tmp_path)])
    assert "not needed" in capsys.readouterr().out
    assert not pth.exists()
