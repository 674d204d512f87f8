"""nerfstudio checkpoints from any environment: pickled under numpy 1.x or 2.x, read under either,
with torch's safe loader kept on. The checkpoints are real bytes: nerfstudio's own scheduler and
torch's Adam state, saved by torch in a process running the chosen numpy (numpy 2 comes from a
throwaway folder put first on PYTHONPATH)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.nerf.checkpoints import SAFE_GLOBALS_ENV, load_checkpoint

WRITE = """
import sys, numpy as np, torch
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
p = torch.nn.Parameter(torch.zeros(4))
opt = torch.optim.Adam([p], lr=1e-2, eps=1e-15)
sched = ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=100).setup().get_scheduler(opt, 1e-2)
for _ in range(3):
    p.grad = torch.ones(4); opt.step(); sched.step()
state = {"step": 3, "pipeline": {"_model.field.x": p.detach().clone()}, "optimizers": {"fields": opt.state_dict()},
         "schedulers": {"fields": sched.state_dict()}, "scalers": {}}
assert isinstance(state["optimizers"]["fields"]["param_groups"][0]["lr"], np.float64)
torch.save(state, sys.argv[1])
print(np.__version__)
"""

READ_OURS = """
import sys, numpy as np
from sa3d_ns.nerf.checkpoints import load_checkpoint
s = load_checkpoint(sys.argv[1])
print(np.__version__, float(s["optimizers"]["fields"]["param_groups"][0]["lr"]))
"""

# what ns-viewer / ns-render / ns-export do once nerfstudio has discovered the plugin
READ_NERFSTUDIO = """
import sys, numpy as np, torch
import nerfstudio.configs.method_configs
s = torch.load(sys.argv[1], map_location="cpu")
print(np.__version__, float(s["schedulers"]["fields"]["_last_lr"][0]))
"""


def python(code: str, *args, numpy2: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    if numpy2 is not None:
        full["PYTHONPATH"] = os.pathsep.join([str(numpy2), full.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=full)


def pickled_numpy_names(ckpt: Path) -> set[str]:
    with zipfile.ZipFile(ckpt) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {name for name in ("numpy.core.multiarray", "numpy._core.multiarray") if b"c" + name.encode() in data}


@pytest.mark.parametrize("writer", ["numpy1", "numpy2"])
@pytest.mark.parametrize("reader", ["numpy1", "numpy2"])
def test_checkpoints_of_either_numpy_load_under_either(tmp_path, numpy2, writer, reader):
    ckpt = tmp_path / f"step-000000003-{writer}.ckpt"
    r = python(WRITE, ckpt, numpy2=numpy2 if writer == "numpy2" else None)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0].startswith("2." if writer == "numpy2" else "1.")
    # numpy 1 names its scalars numpy.core.multiarray.scalar, numpy 2 numpy._core.multiarray.scalar
    assert pickled_numpy_names(ckpt) == {"numpy._core.multiarray" if writer == "numpy2" else "numpy.core.multiarray"}
    # torch's default (safe) loader refuses them on its own
    plain = python(
        "import sys, torch; torch.load(sys.argv[1], map_location='cpu')",
        ckpt,
        numpy2=numpy2 if reader == "numpy2" else None,
    )
    assert plain.returncode != 0 and "Unsupported global" in plain.stderr
    for code in (READ_OURS, READ_NERFSTUDIO):
        r = python(code, ckpt, numpy2=numpy2 if reader == "numpy2" else None)
        assert r.returncode == 0, r.stderr[-2000:]
        version, lr = r.stdout.split()[-2:]
        assert version.startswith("2." if reader == "numpy2" else "1.")
        assert 0 < float(lr) < 1e-2  # the scheduler's decayed learning rate, read back


class Refused:
    """Stands for state of another nerfstudio or torch version that the safe loader refuses."""

    def __init__(self, value=0):
        self.value = value


def test_other_refused_content_is_a_clear_error_and_can_be_allowed_by_name(tmp_path, monkeypatch):
    ckpt = tmp_path / "step-000000001.ckpt"
    torch.save({"step": 1, "pipeline": {"_model.x": torch.zeros(2)}, "schedulers": {"fields": Refused(3)}}, ckpt)
    name = f"{Refused.__module__}.Refused"
    with pytest.raises(SA3DError) as err:
        load_checkpoint(ckpt, "nerfacto checkpoint")
    text = str(err.value)
    assert str(ckpt) in text and name in text and f"{SAFE_GLOBALS_ENV}={name}" in text
    monkeypatch.setenv(SAFE_GLOBALS_ENV, name)
    state = load_checkpoint(ckpt, "nerfacto checkpoint")
    assert state["schedulers"]["fields"].value == 3 and torch.equal(state["pipeline"]["_model.x"], torch.zeros(2))


class Payload:
    """Unpickled (if it ever were), creates the file ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_the_safe_loader_stays_on(tmp_path):
    """The allow-list never turns into weights_only=False: a pickle that would run code (create a
    file) is refused, and the file is never created; also when its name is allowed by hand."""
    marker = tmp_path / "the_pickle_ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"pipeline": {}, "x": Payload(marker), "lr": np.float64(0.1)}, ckpt)
    with pytest.raises(SA3DError, match="could run code"):
        load_checkpoint(ckpt)
    os.environ[SAFE_GLOBALS_ENV] = "posix.system"
    try:
        with pytest.raises(SA3DError):
            load_checkpoint(ckpt)
    finally:
        del os.environ[SAFE_GLOBALS_ENV]
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # (the payload is real: unpickled unsafely, it runs)
    assert marker.exists()


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "a.ckpt").write_bytes(b"not a zip")
    with pytest.raises(SA3DError, match="Could not read the nerfacto checkpoint"):
        load_checkpoint(tmp_path / "a.ckpt", "nerfacto checkpoint")
    torch.save({"step": 1}, tmp_path / "b.ckpt")
    with pytest.raises(SA3DError, match="no 'pipeline' entry"):
        load_checkpoint(tmp_path / "b.ckpt")
