"""sa3d-export gaussians' .ply files: splatfacto's own layout (nerfstudio's ns-export writer, byte
for byte but the comment line), read back, and the Gaussians ns-export leaves out."""

from collections import OrderedDict

import numpy as np
import pytest
from nerfstudio.scripts.exporter import ExportGaussianSplat

from sa3d_ns.splat.ply import MIN_OPACITY_LOGIT, exportable, read_ply, splat_fields, write_splat_ply


def random_splat(n: int, sh_bases: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32),
        rng.normal(size=(n, sh_bases - 1, 3)).astype(np.float32), rng.normal(size=(n, 1)).astype(np.float32),
        rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 4)).astype(np.float32),
    )  # fmt: skip


def without_comments(data: bytes) -> bytes:
    head, body = data.split(b"end_header\n", 1)
    return b"\n".join(line for line in head.split(b"\n") if not line.startswith(b"comment")) + b"end_header\n" + body


@pytest.mark.parametrize("sh_bases", [1, 4, 16])
def test_the_same_file_as_nerfstudios_gaussian_splat_exporter(tmp_path, sh_bases):
    means, dc, rest, opacity, scales, quats = random_splat(50, sh_bases)
    ours = tmp_path / "ours.ply"
    assert write_splat_ply(ours, splat_fields(means, dc, rest, opacity, scales, quats)) == 50
    # what ns-export gaussian-splat puts in its ordered dict (exporter.py, nerfstudio 1.1.5)
    theirs: OrderedDict[str, np.ndarray] = OrderedDict()
    for i, axis in enumerate("xyz"):
        theirs[axis] = means[:, i]
    for axis in ("nx", "ny", "nz"):
        theirs[axis] = np.zeros(50, dtype=np.float32)
    for i in range(3):
        theirs[f"f_dc_{i}"] = dc[:, i, None]
    if sh_bases > 1:
        flat = np.ascontiguousarray(rest.transpose(0, 2, 1)).reshape(50, -1)
        for i in range(flat.shape[-1]):
            theirs[f"f_rest_{i}"] = flat[:, i, None]
    theirs["opacity"] = opacity
    for i in range(3):
        theirs[f"scale_{i}"] = scales[:, i, None]
    for i in range(4):
        theirs[f"rot_{i}"] = quats[:, i, None]
    ExportGaussianSplat.write_ply(str(tmp_path / "theirs.ply"), 50, theirs)
    assert without_comments(ours.read_bytes()) == without_comments((tmp_path / "theirs.ply").read_bytes())
    back = read_ply(ours)
    assert list(back) == list(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(back[k], v.reshape(-1))
    with pytest.raises(FileExistsError):  # never over an existing file
        write_splat_ply(ours, splat_fields(means, dc, rest, opacity, scales, quats))


def test_exportable_leaves_out_what_ns_export_does():
    means, dc, rest, opacity, scales, quats = random_splat(6, 1)
    opacity[:, 0] = [0.0, MIN_OPACITY_LOGIT - 0.1, 2.0, 1.0, 1.0, 1.0]
    means[3, 1] = np.nan
    scales[4, 2] = np.inf
    keep = exportable(splat_fields(means, dc, rest, opacity, scales, quats))
    assert keep.tolist() == [True, False, True, False, False, True]
