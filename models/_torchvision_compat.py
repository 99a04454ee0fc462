"""Keep ``import torchvision`` working when its compiled extension cannot load.

torchvision 0.28.0 is only published as a CUDA build, so on a CPU-only torch
2.13.0 install ``torchvision/_C.so`` fails to load (it links against
``libc10_cuda.so``). torchvision swallows that error, but
``torchvision/_meta_registrations.py`` then registers fake kernels for
``torchvision::nms``/``qnms`` unconditionally and ``import torchvision`` dies
with ``RuntimeError: operator torchvision::nms does not exist`` -- which takes
``open_clip`` and ``timm`` down with it. This module declares the
``torchvision::*`` operator schemas before torchvision is imported, backs
``nms`` with a pure-PyTorch CPU kernel, and makes every other op raise a clear
``NotImplementedError``. It is inert (changes nothing) whenever ``_C.so``
loads, i.e. on any install whose torch and torchvision builds match.

Enable it for an interpreter with ``python -m framebus.models._torchvision_compat
install`` (writes a one-line ``.pth`` hook, only when needed); inspect it with
``status``; remove it with ``uninstall``. The hook imports nothing heavy at
start-up: torch is imported only once torchvision itself is being imported.
Set ``FRAMEBUS_TORCHVISION_COMPAT=0`` to disable the ``.pth`` hook.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "apply",
    "extension_error",
    "extension_loads",
    "hook_installed",
    "install_import_hook",
    "nms_cpu",
]

PTH_NAME = "framebus_torchvision_compat.pth"
ENV_DISABLE = "FRAMEBUS_TORCHVISION_COMPAT"
# Attribute carried by our meta-path finder. Checked by value rather than by
# class so that a copy of this module loaded by the ``.pth`` line and a copy
# imported as ``framebus.models._torchvision_compat`` never install two hooks.
_HOOK_MARKER = "_framebus_torchvision_compat_hook"

# Operator schemas exactly as torchvision 0.28's C++ extension defines them
# (torchvision/csrc/ops/*.cpp, TORCH_LIBRARY_FRAGMENT(torchvision, m)).
SCHEMAS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated": "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "roi_align": (
        "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
    "_roi_align_backward": (
        "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
        "int sampling_ratio, bool aligned) -> Tensor"
    ),
    "qroi_align": (
        "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, "
        "float rois_scale, int rois_zero_point, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
    "ps_roi_align": (
        "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)"
    ),
    "_ps_roi_align_backward": (
        "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
        "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
        "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor"
    ),
    "roi_pool": (
        "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_roi_pool_backward": (
        "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
        "SymInt height, SymInt width) -> Tensor"
    ),
    "ps_roi_pool": (
        "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_ps_roi_pool_backward": (
        "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
        "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
        "SymInt channels, SymInt height, SymInt width) -> Tensor"
    ),
    "deform_conv2d": (
        "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
        "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
        "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor"
    ),
    "_deform_conv2d_backward": (
        "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
        "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, "
        "SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, "
        "bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    "_cuda_version": "_cuda_version() -> int",
}

_UNSET = object()
_extension_result: object = _UNSET  # cached (loads: bool, error: str | None)
_applied = False
_lib = None  # torch.library.Library; must stay referenced or the ops are dropped


# --------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------


def _find_extension() -> tuple[str | None, str | None]:
    """Return ``(path_to__C, None)``, ``(None, None)`` when torchvision is not
    installed, or ``(None, reason)`` when it is installed without ``_C``."""
    import importlib.machinery
    import importlib.util

    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, None
    # Same lookup torchvision itself performs (_internally_replaced_utils).
    loader_details = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    for lib_dir in spec.submodule_search_locations:
        ext = importlib.machinery.FileFinder(lib_dir, loader_details).find_spec("_C")
        if ext is not None and ext.origin:
            return ext.origin, None
    return None, f"no torchvision/_C extension found in {list(spec.submodule_search_locations)}"


def _probe_extension() -> tuple[bool, str | None]:
    path, missing = _find_extension()
    if path is None and missing is None:
        return True, None  # torchvision not installed: nothing to fix
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "extension"):
        # Already imported (for real or through this shim): report what it saw.
        try:
            if sys.modules["torchvision"].extension._has_ops():
                return True, None
        except Exception:  # pragma: no cover - defensive
            pass
    if path is None:
        return False, missing
    try:
        import torch
    except Exception as exc:  # torch missing/broken: torchvision is beyond help anyway
        return True, f"torch is not importable ({type(exc).__name__}: {exc})"
    try:
        torch.ops.load_library(path)
    except (ImportError, OSError) as exc:
        detail = str(exc)
        try:  # torch's message hides the dynamic loader's reason; recover it
            import ctypes

            ctypes.CDLL(path)
        except OSError as inner:
            detail = f"{detail} ({inner})"
        return False, detail
    return True, None


def _extension_probe() -> tuple[bool, str | None]:
    global _extension_result
    if _extension_result is _UNSET:
        _extension_result = _probe_extension()
    return _extension_result  # type: ignore[return-value]


def extension_loads() -> bool:
    """True when torchvision's compiled ``_C`` extension loads against the
    installed torch (or torchvision is not installed: nothing to fix).

    Does not import torchvision. The result is cached for the process.
    """
    return _extension_probe()[0]


def extension_error() -> str | None:
    """Why the extension did not load (None when it did)."""
    return _extension_probe()[1]


# --------------------------------------------------------------------------
# Pure-PyTorch kernels
# --------------------------------------------------------------------------

_DTYPE_NAMES = {
    "torch.float16": "Half",
    "torch.bfloat16": "BFloat16",
    "torch.uint8": "Byte",
    "torch.int8": "Char",
    "torch.int16": "Short",
    "torch.int32": "Int",
    "torch.int64": "Long",
    "torch.bool": "Bool",
}


def nms_cpu(dets, scores, iou_threshold: float):
    """Greedy non-maximum suppression, a line-by-line port of torchvision's
    CPU kernel (``csrc/ops/cpu/nms_kernel.cpp``).

    Boxes are visited in order of decreasing score (``scores.sort(0,
    descending=True)``, the same call the C++ kernel makes); a box is dropped
    when its IoU with an already kept box is ``> iou_threshold``. Returns the
    int64 indices of the kept boxes, sorted by decreasing score.
    """
    import torch

    if dets.dim() != 2:
        raise RuntimeError(f"boxes should be a 2d tensor, got {dets.dim()}D")
    if dets.size(1) != 4:
        raise RuntimeError(f"boxes should have 4 elements in dimension 1, got {dets.size(1)}")
    if scores.dim() != 1:
        raise RuntimeError(f"scores should be a 1d tensor, got {scores.dim()}D")
    if dets.size(0) != scores.size(0):
        raise RuntimeError(
            "boxes and scores should have same number of elements in dimension 0, "
            f"got {dets.size(0)} and {scores.size(0)}"
        )
    if dets.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"\"nms_kernel\" not implemented for '{_DTYPE_NAMES.get(str(dets.dtype), dets.dtype)}'")
    if dets.dtype != scores.dtype:
        raise RuntimeError("dets should have the same type as scores")
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)

    with torch.no_grad():
        dets = dets.detach()
        x1, y1, x2, y2 = (dets[:, k].contiguous() for k in range(4))
        areas = (x2 - x1) * (y2 - y1)
        order = scores.detach().sort(0, descending=True)[1]
        # Work in score order: position p <-> original index order[p].
        x1, y1, x2, y2, areas = x1[order], y1[order], x2[order], y2[order], areas[order]
        zero = torch.zeros((), dtype=dets.dtype, device=dets.device)

        keep: list[int] = []
        remaining = torch.arange(order.numel(), device=dets.device)
        while remaining.numel():
            i = int(remaining[0])
            keep.append(i)
            rest = remaining[1:]
            if not rest.numel():
                break
            # std::max(a, b) == (a < b) ? b : a ; std::min(a, b) == (b < a) ? b : a
            # (spelled out so NaN coordinates behave exactly as in C++).
            jx1, jy1, jx2, jy2 = x1[rest], y1[rest], x2[rest], y2[rest]
            xx1 = torch.where(x1[i] < jx1, jx1, x1[i])
            yy1 = torch.where(y1[i] < jy1, jy1, y1[i])
            xx2 = torch.where(jx2 < x2[i], jx2, x2[i])
            yy2 = torch.where(jy2 < y2[i], jy2, y2[i])
            dw, dh = xx2 - xx1, yy2 - yy1
            w = torch.where(zero < dw, dw, zero)
            h = torch.where(zero < dh, dh, zero)
            inter = w * h
            ovr = inter / (areas[i] + areas[rest] - inter)
            # C++ compares the scalar_t IoU against a double threshold.
            remaining = rest[~(ovr.to(torch.float64) > iou_threshold)]
        return order[torch.tensor(keep, dtype=torch.long, device=dets.device)]


def _unsupported(op: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(
            f"torchvision::{op} is unavailable: torchvision's compiled extension (torchvision/_C) "
            f"could not be loaded by this torch build ({extension_error() or 'unknown reason'}). "
            "This typically means a CPU-only torch paired with a CUDA torchvision wheel; framebus's "
            "compatibility shim (models/_torchvision_compat.py) only provides a pure-PyTorch "
            "torchvision::nms. "
            "Install a torchvision build that matches torch to use this op."
        )

    kernel.__name__ = f"unsupported_{op}"
    return kernel


# --------------------------------------------------------------------------
# Applying the shim
# --------------------------------------------------------------------------


def _op_exists(torch, name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def apply() -> bool:
    """Declare the ``torchvision::*`` ops so that torchvision can be imported.

    Returns True when the shim is in effect (also on repeated calls), False
    when nothing was done: the extension loads, or torchvision is already
    imported. Call it before importing torchvision; it also installs the
    import hook that lets ``torchvision.ops.nms`` use the fallback kernel.
    """
    global _applied, _lib
    if _applied:
        return True
    if extension_loads():
        return False
    tv = sys.modules.get("torchvision")
    if tv is not None and not getattr(getattr(tv, "__spec__", None), "_initializing", False):
        return False  # imported already (successfully); leave it alone
    import torch
    import torch.library

    missing = [name for name in SCHEMAS if not _op_exists(torch, name)]
    if missing:  # none missing: another copy of this module declared them
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            lib.define(SCHEMAS[name])
            if name == "nms":
                lib.impl(name, nms_cpu, "CPU")
            elif name == "_cuda_version":
                lib.impl(name, lambda: -1, "CompositeExplicitAutograd")
            else:
                lib.impl(name, _unsupported(name), "CPU")
        _lib = lib
    _applied = True
    install_import_hook()  # so that torchvision.ops.nms is unblocked after the import
    return True


def _after_torchvision_import() -> None:
    """torchvision correctly reports that its C++ ops did not load
    (``extension._has_ops() is False``) and ``torchvision.ops.nms`` refuses to
    run. Let ``torchvision.ops.boxes`` (nms, batched_nms) through to the
    ``torchvision::nms`` op declared by :func:`apply`; everything else keeps
    torchvision's own no-extension behaviour (e.g. roi_align's Python path)."""
    boxes = sys.modules.get("torchvision.ops.boxes")
    if boxes is None or getattr(boxes, _HOOK_MARKER, False):
        return

    def _assert_has_ops() -> None:  # ops are provided by models._torchvision_compat
        return None

    boxes._assert_has_ops = _assert_has_ops
    setattr(boxes, _HOOK_MARKER, True)


class _Loader:
    """Wraps torchvision's own loader: runs :func:`apply` right before the
    package executes, and the post-import fix-up right after."""

    def __init__(self, finder, loader):
        self._finder = finder
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._finder.remove()
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        applied = False
        try:
            applied = apply()
        except Exception as exc:  # never make a broken import worse
            import warnings

            warnings.warn(f"framebus torchvision compat shim failed: {type(exc).__name__}: {exc}", stacklevel=2)
        self._loader.exec_module(module)
        if applied:
            _after_torchvision_import()


class _Finder:
    """``sys.meta_path`` entry that waits for ``import torchvision``."""

    def __init__(self):
        setattr(self, _HOOK_MARKER, True)
        self._busy = False

    def remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision" or self._busy:
            return None
        self._busy = True
        try:
            spec = None
            for finder in list(sys.meta_path):
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            # Cannot wrap: fix what we can now, let the normal import proceed.
            self.remove()
            try:
                apply()
            except Exception:
                pass
            return None
        spec.loader = _Loader(self, spec.loader)
        return spec

    def invalidate_caches(self):
        pass


def hook_installed() -> bool:
    """Whether a torchvision import hook (from any copy of this module) is
    waiting in ``sys.meta_path`` of this process."""
    return any(getattr(f, _HOOK_MARKER, False) for f in sys.meta_path)


def install_import_hook() -> bool:
    """Install the ``sys.meta_path`` hook (idempotent, imports nothing).

    The first time ``torchvision`` is imported the hook removes itself, calls
    :func:`apply` (which is inert when the extension loads) and lets the normal
    import proceed. Returns False when no hook was added."""
    if "torchvision" in sys.modules or hook_installed():
        return False
    sys.meta_path.insert(0, _Finder())
    return True


def _find_spec_from_pth(stub, fullname, path=None, target=None):
    """Called by the ``.pth`` stub finder when ``torchvision`` is looked up:
    put a real :class:`_Finder` in the stub's place and let it answer."""
    finder = _Finder()
    try:
        sys.meta_path[sys.meta_path.index(stub)] = finder  # same slot: safe mid-iteration
    except ValueError:
        pass
    return finder.find_spec(fullname, path, target)


# --------------------------------------------------------------------------
# Command line: python -m framebus.models._torchvision_compat [status|install|uninstall]
# --------------------------------------------------------------------------


def site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


# Executed by the .pth line at every interpreter start-up, so it is kept tiny
# (this module is not even compiled until torchvision is imported): a stub
# finder that, when ``torchvision`` is first looked up, loads this file by
# absolute path under a private name (the generic top-level package name
# ``framebus.models`` is never imported, or shadowed, at start-up) and hands over to
# _find_spec_from_pth, which swaps in the real _Finder. Every error is swallowed: a moved or deleted checkout
# must never break start-up, it just leaves torchvision as it was.
_PTH_CODE = """\
import os, sys
class FramebusTorchvisionCompatStub:
    {marker} = True
    def find_spec(self, name, path=None, target=None):
        if name != 'torchvision':
            return None
        try:
            import importlib.util as u
            m = sys.modules.get('_framebus_torchvision_compat')
            if m is None:
                s = u.spec_from_file_location('_framebus_torchvision_compat', {file!r})
                m = u.module_from_spec(s)
                sys.modules[s.name] = m
                s.loader.exec_module(m)
            return m._find_spec_from_pth(self, name, path, target)
        except Exception:
            sys.modules.pop('_framebus_torchvision_compat', None)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            return None
if (os.environ.get({env!r}, '1').strip().lower() not in ('0', 'false', 'no', 'off')
        and 'torchvision' not in sys.modules
        and not any(getattr(f, {marker!r}, False) for f in sys.meta_path)):
    sys.meta_path.insert(0, FramebusTorchvisionCompatStub())
"""


def pth_line(module_file: str | None = None) -> str:
    """The single ``import`` line written to the ``.pth`` file."""
    path = os.path.abspath(module_file or __file__)
    if path.endswith((".pyc", ".pyo")):  # pragma: no cover - run from bytecode
        path = path[:-1]
    code = _PTH_CODE.format(marker=_HOOK_MARKER, file=path, env=ENV_DISABLE)
    return f"import sys; exec({code!r}, {{'__name__': '_framebus_torchvision_compat_pth'}})\n"


def install(site_dir: str | None = None) -> tuple[bool, str]:
    site_dir = site_dir or site_packages()
    target = os.path.join(site_dir, PTH_NAME)
    if extension_loads():
        removed = _remove(target)
        return False, "torchvision's extension loads; the compat hook is not needed" + (
            f" (removed stale {target})" if removed else ""
        )
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(pth_line())
    os.replace(tmp, target)
    return True, f"installed {target}"


def _remove(target: str) -> bool:
    try:
        os.remove(target)
    except FileNotFoundError:
        return False
    return True


def uninstall(site_dir: str | None = None) -> tuple[bool, str]:
    target = os.path.join(site_dir or site_packages(), PTH_NAME)
    if _remove(target):
        return True, f"removed {target}"
    return False, f"not installed ({target} absent)"


def status(site_dir: str | None = None) -> str:
    target = os.path.join(site_dir or site_packages(), PTH_NAME)
    path, _ = _find_extension()
    loads = extension_loads()
    lines = [
        f"torchvision extension : {path or 'n/a'}",
        f"extension loads       : {'yes' if loads else 'no'}"
        + ("" if loads or not extension_error() else f" ({extension_error()})"),
        f".pth hook file        : {target if os.path.exists(target) else 'not installed'}",
        f"hook active here      : {'yes' if hook_installed() else 'no'}",
        f"hook needed           : {'no' if loads else 'yes'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m framebus.models._torchvision_compat",
        description="Keep torchvision importable when its compiled extension does not load.",
    )
    parser.add_argument("command", nargs="?", default="status", choices=("status", "install", "uninstall"))
    parser.add_argument("--site-dir", default=None, help="directory for the .pth file (default: sysconfig purelib)")
    args = parser.parse_args(argv)
    if args.command == "status":
        print(status(args.site_dir))
    elif args.command == "install":
        print(install(args.site_dir)[1])
    else:
        print(uninstall(args.site_dir)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
