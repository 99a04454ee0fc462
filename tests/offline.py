"""Loading the default profile in a child process with no weights anywhere and the hub offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_LOAD = r"""
import json, sys
from framebus.models import registry
from framebus.streams.config import Settings
from framebus.topics.errors import FramebusError

try:
    getattr(registry, sys.argv[2])(Settings(models="default", device="cpu", data_dir=sys.argv[1]))
except FramebusError as e:
    print(json.dumps({"type": type(e).__name__, "code": e.code, "message": e.message, "transient": e.transient}))
else:
    print(json.dumps({"type": None}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without FRAMEBUS_*, HF_* and HUGGINGFACE_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAMEBUS_", "HF_", "HUGGINGFACE_"))}
    env.update(extra)
    return env


def load_default_offline(loader: str, data_dir: Path) -> dict:
    """Call ``framebus.models.registry.<loader>`` (``load_embedder``, ``load_captioner``) for the default profile
    with ``data_dir`` in a child process, offline with an empty Hugging Face home; the framebus error it
    raised as ``{"type", "code", "message", "transient"}`` (``{"type": None}`` when it loaded)."""
    hf_home = data_dir.parent / "empty-hf-home"
    hf_home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, str(data_dir), loader],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=clean_env(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home)),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
