"""Reading nerfstudio checkpoints, from any environment, with torch's safe loader.

nerfstudio 1.1.5 loads checkpoints with plain ``torch.load``; since torch 2.6 that means
``weights_only=True``, which refuses the numpy scalars that nerfacto's learning-rate schedulers
leave in its checkpoints (nerfstudio issue #3683). A checkpoint names them by the module path of
the numpy that pickled it: ``numpy.core.multiarray.scalar`` under numpy 1.x,
``numpy._core.multiarray.scalar`` under numpy 2.x. :func:`allow_numpy_scalars` allow-lists both
names (torch's ``(object, "qualified.name")`` form) for this numpy's scalar constructor, and the
numpy dtype classes a scalar's dtype is rebuilt with, so ``ns-viewer`` / ``ns-render`` /
``ns-export`` / ``--load-dir`` work on nerfacto runs trained anywhere, with the safe loader kept on.
It runs whenever nerfstudio discovers this plugin (at import of :mod:`sa3d_ns.config`).

Anything else the safe loader refuses is an :class:`SA3DError` naming the file and the refused
name (:func:`load_checkpoint`); a user who trusts the file can allow-list exactly that name with
``SA3D_SAFE_GLOBALS`` (never a silent ``weights_only=False``).
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from sa3d_ns.core.errors import SA3DError

# where numpy's scalar constructor lives, by the numpy major version that pickled it
NUMPY_SCALAR_NAMES = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
# numpy dtype classes (numpy.dtypes.*) torch must let a pickled dtype be rebuilt as
NUMPY_DTYPES = ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType")
SAFE_GLOBALS_ENV = "SA3D_SAFE_GLOBALS"


def numpy_scalar():
    """This numpy's scalar constructor (``numpy._core`` since numpy 2, ``numpy.core`` before)."""
    core = getattr(np, "_core", None)
    scalar = getattr(getattr(core, "multiarray", None), "scalar", None)
    return scalar if scalar is not None else np.core.multiarray.scalar  # pyright: ignore[reportAttributeAccessIssue]  (numpy < 2; not in its stubs)


def import_global(name: str):
    """The object a pickle's GLOBAL ``module.qualified.name`` refers to (imports its module)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise SA3DError(f"{SAFE_GLOBALS_ENV}: cannot import {name!r}; give module.path.Name of an installed package.")


def user_safe_globals() -> list:
    """The names the user allow-listed in ``SA3D_SAFE_GLOBALS`` (comma-separated), as
    ``(object, name)`` pairs."""
    names = [n.strip() for n in os.environ.get(SAFE_GLOBALS_ENV, "").split(",") if n.strip()]
    return [(import_global(n), n) for n in names]


def allow_numpy_scalars() -> None:
    """Allow-list numpy scalars under both numpy majors' names (and the names in
    ``SA3D_SAFE_GLOBALS``) for torch's safe loader."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4: weights_only is off by default anyway
        return
    scalar = numpy_scalar()
    allowed: list = [(scalar, name) for name in NUMPY_SCALAR_NAMES]
    allowed += [np.dtype]
    dtypes = getattr(np, "dtypes", None)
    allowed += [getattr(dtypes, name) for name in NUMPY_DTYPES if hasattr(dtypes, name)]
    try:
        allowed += user_safe_globals()
    except SA3DError as err:  # (at plugin import: a bad variable must not break every ns-* command)
        print(f"sa3d: {err}")
    add(allowed)


def latest_checkpoint(model_dir: Path) -> Path:
    ckpts = sorted(model_dir.glob("step-*.ckpt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not ckpts:
        raise SA3DError(
            f"No checkpoint (step-*.ckpt) in {model_dir}. Has the nerfacto run finished or saved at least once? "
            "Train it longer or point --pipeline.nerfacto-config at another run."
        )
    return ckpts[-1]


REFUSED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported class ([\w.]+)|unsupported GLOBAL ([\w.]+)")


def unreadable(path: Path, err: Exception, what: str = "checkpoint") -> SA3DError:
    """A clear error for a checkpoint ``torch.load`` could not read: the name the safe loader
    refused and what to do about it, or what else went wrong."""
    text = str(err)
    found = REFUSED.search(text)
    if found and "is blocked" in text:  # (torch never loads these: os.system and the like)
        return SA3DError(
            f"Refused to read the {what} {path}: it calls {found.group(3)}, which could run code on this machine. "
            "A nerfstudio checkpoint never does; do not use this file."
        )
    if found:
        name = next(g for g in found.groups() if g)
        return SA3DError(
            f"Could not read the {what} {path}: it holds {name}, which torch's safe loader (weights_only=True) does not "
            "load. This happens with checkpoints written by another nerfstudio version or a newer torch (optimizer or "
            "scheduler state). If you trust the file, allow exactly that name and run again: "
            f"{SAFE_GLOBALS_ENV}={name} (comma-separate several); or load it in the environment that trained it and "
            "save only its 'step' and 'pipeline' entries."
        )
    return SA3DError(f"Could not read the {what} {path}: {type(err).__name__}: {text[:300]}")


def safe_load(path: Path, what: str = "checkpoint", **kwargs):
    """``torch.load`` on the CPU with the safe loader (numpy scalars of either numpy allowed);
    any failure is an SA3DError naming the file."""
    allow_numpy_scalars()
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise unreadable(path, err, what) from None


def load_checkpoint(path: Path, what: str = "checkpoint", **kwargs) -> dict:
    """Load a nerfstudio checkpoint on the CPU with the safe loader (numpy scalars allowed)."""
    state = safe_load(path, what, **kwargs)
    if not isinstance(state, dict) or "pipeline" not in state:
        raise SA3DError(f"{path} is not a nerfstudio checkpoint (no 'pipeline' entry).")
    return state


def write_checkpoint(state: dict, path: Path) -> None:
    """``state`` saved as the checkpoint ``path`` (``<run>/nerfstudio_models/step-N.ckpt``), whole
    or not at all: written first to a hidden file in the run folder (``<run>/.step-N.ckpt.partial``,
    outside the models folder, whose every name nerfstudio parses as a step and loads) and then
    moved into place; the models folder is made only then. A process killed while writing leaves
    at most that hidden file (never read; replaced by the next write); a write that fails (a full
    disk, a file-size limit) is an SA3DError naming the file and the size needed, and nothing of
    it is left."""
    from sa3d_ns.core.cache import tensor_bytes
    from sa3d_ns.core.errors import write_failure

    tmp = path.parent.parent / f".{path.name}.partial"
    try:
        torch.save(state, tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(path)
    except BaseException as err:  # (Ctrl-C included: nothing of this write is left)
        tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):  # (torch.save on a full disk: RuntimeError "unexpected pos")
            raise SA3DError(write_failure(path, err, tensor_bytes(state))) from None
        raise
