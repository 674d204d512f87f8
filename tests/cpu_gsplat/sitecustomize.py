"""With this folder on PYTHONPATH, every Python process renders gsplat on the CPU (Python imports
``sitecustomize`` at start-up): the patches of tests/splat_cpu.py, entered for the whole process.
For commands that spawn workers of their own, e.g. the benchmark's splatfacto rows on a CPU:

    PYTHONPATH=tests/cpu_gsplat python scripts/benchmark.py --splatfacto-config ... --device cpu

A test utility, never imported by the product."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from splat_cpu import patched  # noqa: E402

_patches = patched()  # (kept: a context manager collected as garbage would undo them)
_patches.__enter__()
