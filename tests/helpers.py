"""Shared helpers for the end-to-end tests: run the installed command-line tools."""

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent

TINY_NERFACTO = [
    "--machine.device-type", "cpu",
    "--vis", "tensorboard",
    "--pipeline.model.implementation", "torch",
    "--pipeline.model.num-nerf-samples-per-ray", "24",
    "--pipeline.model.num-proposal-samples-per-ray", "48", "24",
    "--pipeline.model.log2-hashmap-size", "15",
    "--pipeline.model.camera-optimizer.mode", "off",
    "--pipeline.datamanager.train-num-rays-per-batch", "1024",
    "--steps-per-save", "100000",
]  # fmt: skip


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    return subprocess.run(
        [exe, *map(str, cmd[1:])], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
