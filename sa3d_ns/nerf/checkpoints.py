"""Reading nerfstudio checkpoints and run folders under torch >= 2.6.

nerfstudio 1.1.5 loads checkpoints with plain ``torch.load``; since torch 2.6 that means
``weights_only=True``, which refuses the numpy scalars that nerfacto's learning-rate schedulers
leave in its checkpoints (nerfstudio issue #3683). :func:`allow_numpy_scalars` allow-lists exactly
those numpy types, so ``ns-viewer`` / ``ns-render`` / ``ns-export`` / ``--load-dir`` work on
nerfacto runs again without turning the safe loader off. It runs whenever nerfstudio discovers
this plugin (at import of :mod:`sa3d_ns.config`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from sa3d_ns.core.errors import SA3DError


def allow_numpy_scalars() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4: weights_only is off by default anyway
        return
    try:
        scalar = np._core.multiarray.scalar  # numpy >= 2
    except AttributeError:
        scalar = np.core.multiarray.scalar
    types = [scalar, np.dtype]
    types += [
        getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType") if hasattr(np, "dtypes")
    ]
    add(types)


def latest_checkpoint(model_dir: Path) -> Path:
    ckpts = sorted(model_dir.glob("step-*.ckpt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not ckpts:
        raise SA3DError(
            f"No checkpoint (step-*.ckpt) in {model_dir}. Has the nerfacto run finished or saved at least once? "
            "Train it longer or point --pipeline.nerfacto-config at another run."
        )
    return ckpts[-1]


def load_checkpoint(path: Path) -> dict:
    """Load a nerfstudio checkpoint on the CPU with the safe loader (numpy scalars allowed)."""
    allow_numpy_scalars()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise SA3DError(f"Could not read checkpoint {path}: {type(err).__name__}: {str(err)[:300]}") from None
    if not isinstance(state, dict) or "pipeline" not in state:
        raise SA3DError(f"{path} is not a nerfstudio checkpoint (no 'pipeline' entry).")
    return state
