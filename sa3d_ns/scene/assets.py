"""Real textured models for the generated scenes: the objects that ship with pybullet
(``pybullet_data``: the COLLADA duck, a mug, a Lego brick, the Stanford bunny, a football, a domino,
a Jenga block, a wooden table's texture).

They are read from pybullet's wheel on PyPI (a package registry, reachable where pip is), never from
an installed pybullet: the wheel is downloaded once (``pip download``, ~100 MB), the few files the
scenes use are unpacked into the cache folder (``$SA3D_ASSETS`` or ``~/.cache/sa3d_ns/assets``),
and the wheel is deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PYBULLET = "pybullet==3.2.7"
# the files of pybullet_data/ the scenes read (meshes, their materials and textures)
FILES = (
    "duck.obj", "duck.mtl", "duckCM.png", "objects/mug.obj", "lego/lego.obj", "bunny.obj",
    "soccerball.obj", "soccerball.mtl", "colors16.png", "domino/domino.obj", "domino/domino.mtl",
    "domino/domino.jpg", "jenga/jenga.obj", "jenga/jenga.mtl", "jenga/jenga.png", "table/table.png",
)  # fmt: skip


class AssetsError(RuntimeError):
    """The models could not be found or fetched (the message says why and what to do)."""


def assets_dir() -> Path:
    return Path(os.environ.get("SA3D_ASSETS") or Path.home() / ".cache" / "sa3d_ns" / "assets")


def pybullet_data(fetch: bool = True) -> Path:
    """The folder holding :data:`FILES` (as pybullet_data/ lays them out), fetched from PyPI first
    when some are missing and ``fetch``."""
    root = assets_dir() / "pybullet_data"
    missing = [f for f in FILES if not (root / f).is_file()]
    if not missing:
        return root
    if not fetch:
        raise AssetsError(f"the scene's models are not in {root} (missing {missing[0]}, ...)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--dest", tmp, PYBULLET,
        ]  # fmt: skip
        print(f"Fetching the scene's models from PyPI ({PYBULLET}'s wheel, ~100 MB, once) into {root}", file=sys.stderr)
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("pybullet-*.whl"))
        if done.returncode != 0 or not wheels:
            raise AssetsError(
                f"could not download {PYBULLET} from PyPI for the scene's models ({done.stderr.strip()[-300:]}). "
                f"Check the connection to PyPI, or unpack pybullet_data/ from that wheel into {root.parent}."
            )
        staging = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in FILES:
                wheel.extract(f"pybullet_data/{name}", staging)
        for name in FILES:  # (moved into place only once all are unpacked)
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / "pybullet_data" / name, target)
    return root
