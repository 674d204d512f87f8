import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SA3D_OFFLINE", "1")  # tests never download anything

NUMPY2 = "numpy==2.3.5"


@pytest.fixture(scope="session")
def numpy2() -> Path:
    """A folder holding numpy 2 (installed once from the package registry, like scripts/test.sh does)."""
    target = Path(sys.prefix) / "numpy2"
    if not (target / "numpy").is_dir():
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), NUMPY2],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, f"could not install {NUMPY2} into {target}: {r.stderr[-2000:]}"
    return target


@pytest.fixture(scope="session")
def cpu_splat(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, config.yml) of a 200-step splatfacto of a 48 x 48, 24-view generated scene (the
    scene in <folder>/scene), trained on the CPU through tests/splat_cpu.py (about a minute)."""
    from helpers import train_cpu_splat

    root = tmp_path_factory.mktemp("cpu_splat")
    return root, train_cpu_splat(root)
