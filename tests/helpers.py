"""Shared helpers for the end-to-end tests: run the installed command-line tools."""

import hashlib
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


def tree_digest(root: Path) -> str:
    """A digest of every file under ``root`` (names and bytes): unchanged means untouched."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def train_cpu_splat(root: Path, steps: int = 200) -> Path:
    """A 48 x 48, 24-view generated scene under ``root``/scene and a ``steps``-step splatfacto of it
    trained on the CPU (tests/splat_cpu.py, seeded from the scene's sparse points); returns the
    run's config.yml."""
    from sa3d_ns.scene.generate import make_scene

    make_scene(root / "scene", num_views=24, width=48, height=48, progress=False, removal_truth=False)
    cmd = [sys.executable, Path(__file__).parent / "splat_cpu.py", "splatfacto", "--data", root / "scene",
           "--output-dir", root / "out", "--max-num-iterations", str(steps), "--steps-per-save", "100000",
           "nerfstudio-data"]  # fmt: skip
    r = run(cmd, cwd=root, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return next((root / "out").glob("scene/splatfacto/*/config.yml"))


def relocated_copy(src: Path, root: Path) -> Path:
    """A copy of an sa3d run under ``root/outputs``, its config.yml's output-dir pointing there (as
    a user moves a run): nerfstudio finds a run's checkpoints through that setting."""
    import shutil

    import yaml

    run_dir = root / "outputs" / src.relative_to(src.parent.parent.parent)
    shutil.copytree(src, run_dir)
    config = yaml.load((run_dir / "config.yml").read_text(), Loader=yaml.Loader)
    config.output_dir = root / "outputs"
    (run_dir / "config.yml").write_text(yaml.dump(config))
    return run_dir
