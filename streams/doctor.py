"""``framebus doctor``: what this installation is and whether each part works, one line per check.

Every check is a pure function of the installation and the settings; ``diagnose`` runs them all and never
raises. A failed check says what to do.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from framebus.streams.config import Settings

#: the repository's folders; installed only as ``framebus.<name>``
PACKAGES = ("streams", "agents", "models", "indexing", "topics", "loadtest")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_namespace(cwd: Path | None = None) -> Check:
    """Every folder imports as ``framebus.<name>``, and no generic top-level name (``models``, ...) comes
    from anywhere but the working directory (a checkout's own folder, importable only from inside it)."""
    here = (cwd or Path.cwd()).resolve()
    stray = []
    for name in PACKAGES:
        if importlib.util.find_spec(f"framebus.{name}") is None:
            return Check("namespace", False, f"framebus.{name} does not import: reinstall (make setup)")
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and not Path(spec.origin).resolve().is_relative_to(here):
            stray.append(f"{name} ({spec.origin})")
    if stray:
        return Check("namespace", False, f"generic top-level packages installed: {', '.join(stray)}")
    return Check("namespace", True, "framebus.{" + ",".join(PACKAGES) + "}; no generic top-level packages")


def check_torch() -> Check:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        return Check("torch", False, f"import torch failed: {exc}")
    cuda = torch.cuda.is_available()
    where = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if cuda else "CPU only"
    return Check("torch", True, f"{torch.__version__} ({where})")


def check_torchvision() -> Check:
    """torchvision imports; says whether its own extension loads or the compatibility hook is what makes
    it import (see README, "PyTorch and torchvision")."""
    from framebus.models import _torchvision_compat as compat

    pth = Path(compat.site_packages()) / compat.PTH_NAME
    loads = compat.extension_loads()
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001
        hint = "" if loads or pth.exists() else "; run: python -m framebus.models._torchvision_compat install"
        return Check("torchvision", False, f"import torchvision failed: {exc}{hint}")
    if loads:
        hook = f"; compat hook installed but inert ({pth})" if pth.exists() else ""
        return Check("torchvision", True, f"{torchvision.__version__}, own extension loads{hook}")
    active = "active" if compat.hook_installed() or pth.exists() else "NOT installed"
    return Check(
        "torchvision",
        True,
        f"{torchvision.__version__}, extension does not load; compat hook {active} ({pth}): nms in pure PyTorch",
    )


def check_tiny_models(settings: Settings) -> Check:
    from framebus.models.training import SHIPPED_DIR, TRAINERS, missing_models

    places = []
    for spec in TRAINERS:
        path = spec.path(settings)
        kind = "shipped" if path.is_relative_to(SHIPPED_DIR) else "model dir" if settings.model_dir else "cache"
        places.append(f"{spec.name}: {kind}{'' if path.exists() else ' (missing)'}")
    todo = missing_models(settings)
    detail = f"seed {settings.train_seed}; " + ", ".join(places)
    if todo:
        detail += f"; `framebus models train` trains {', '.join(todo)} into {settings.cache_dir}"
    return Check("tiny models", True, detail)


def check_broker(settings: Settings) -> Check:
    if settings.broker:
        return Check("broker", True, f"external Kafka at {settings.broker}")
    from framebus.streams.broker import tansu_binary
    from framebus.topics.errors import FramebusError

    try:
        return Check("broker", True, f"embedded Tansu {tansu_binary()} on {settings.embedded_broker}")
    except FramebusError as err:
        return Check("broker", False, err.message)


def check_dirs(settings: Settings) -> Check:
    bad = [
        f"{label} {path}"
        for label, path in (("data", settings.data_dir), ("cache", settings.cache_dir))
        if not os.access(_existing_parent(path), os.W_OK)
    ]
    if bad:
        return Check("directories", False, f"not writable: {', '.join(bad)}")
    return Check("directories", True, f"data {settings.data_dir.resolve()}, cache {settings.cache_dir}")


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def diagnose(settings: Settings) -> list[Check]:
    try:
        version = importlib.metadata.version("framebus")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    checks = [Check("framebus", version != "not installed", f"{version}, Python {sys.version.split()[0]}")]
    for name, fn in (
        ("namespace", check_namespace),
        ("torch", check_torch),
        ("torchvision", check_torchvision),
        ("tiny models", lambda: check_tiny_models(settings)),
        ("broker", lambda: check_broker(settings)),
        ("directories", lambda: check_dirs(settings)),
    ):
        try:
            checks.append(fn())
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, not a crashed doctor
            checks.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
    return checks
