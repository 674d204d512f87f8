"""Shared helpers for the end-to-end tests: run the installed command-line tools."""

import json
import os
import subprocess
import sys
from pathlib import Path

from sa3d_ns.tools.train_nerfacto import CPU_NERFACTO_FLAGS

BIN = Path(sys.executable).parent

TINY_NERFACTO = [
    "--machine.device-type", "cpu",
    "--vis", "tensorboard",
    *CPU_NERFACTO_FLAGS,
    "--steps-per-save", "100000",
]  # fmt: skip


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    return subprocess.run(
        [exe, *map(str, cmd[1:])], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def point_prompt(scene: Path, out: Path, obj: int = 1, image: str = "frame_00000.png") -> Path:
    """A one-point prompt file on object ``obj`` (its mask's median pixel) in a generated scene's view."""
    import numpy as np
    from PIL import Image

    ys, xs = np.nonzero(np.asarray(Image.open(scene / "instances" / image)) == obj)
    out.write_text(json.dumps({"view": image, "points": [[float(np.median(xs)), float(np.median(ys))]], "labels": [1]}))
    return out
