"""NVOS scribbles -> sa3d prompt (no nerfstudio needed)."""

import json

import numpy as np
import pytest
from helpers import run
from PIL import Image

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.prompts import resolve_view
from sa3d_ns.nvos import farthest_points, nvos_prompt


def make_nvos(root, size=(80, 60)):
    w, h = size
    for sub in ("reference_image/toy", "scribbles/toy", "masks/toy"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "reference_image" / "toy" / "IMG_0001.png")
    pos = np.zeros((h, w, 3), np.uint8)
    pos[30:33, 10:50] = 255  # a horizontal stroke, 3 px thick, x in [10, 50)
    neg = np.zeros((h, w), np.uint8)
    neg[5:50, 70:72] = 255  # a vertical stroke at x = 70..71
    Image.fromarray(pos).save(root / "scribbles" / "toy" / "pos_IMG_0001.png")
    Image.fromarray(neg).save(root / "scribbles" / "toy" / "neg_IMG_0001.png")
    return root


def test_farthest_points_spread_and_deterministic():
    pts = np.array([[0, 0], [1, 0], [2, 0], [10, 0]], np.float32)
    assert farthest_points(pts, 2).tolist() == [[0, 0], [10, 0]]
    assert len(farthest_points(pts, 10)) == 4 and len(farthest_points(pts[:0], 3)) == 0


def test_nvos_prompt_points_lie_on_the_scribbles(tmp_path):
    p = nvos_prompt(make_nvos(tmp_path), "toy", max_points=4)
    pts, labels = np.array(p["points"]), np.array(p["labels"])
    assert p["view"] == "IMG_0001" and labels.tolist() == [1] * 4 + [0] * 4
    assert np.all((pts[labels == 1, 1] >= 30) & (pts[labels == 1, 1] <= 32))  # on the thinned stroke
    assert pts[labels == 1, 0].max() - pts[labels == 1, 0].min() > 30  # spread along it
    assert np.all((pts[labels == 0, 0] >= 70) & (pts[labels == 0, 0] <= 71))
    scaled = nvos_prompt(tmp_path, "toy", max_points=4, image_size=(160, 120))
    assert np.allclose(np.array(scaled["points"]), (pts + 0.5) * 2 - 0.5)
    assert nvos_prompt(tmp_path, "toy", max_points=4) == p  # reproducible


def test_nvos_prompt_errors(tmp_path):
    with pytest.raises(SA3DError, match="does not exist"):
        nvos_prompt(tmp_path, "toy")
    make_nvos(tmp_path)
    (tmp_path / "scribbles" / "toy" / "pos_IMG_0001.png").unlink()
    with pytest.raises(SA3DError, match="No positive scribble"):
        nvos_prompt(tmp_path, "toy")


def test_nvos_prompt_cli_never_overwrites(tmp_path):
    make_nvos(tmp_path / "nvos")
    out = tmp_path / "prompt.json"
    r = run(["sa3d-nvos-prompt", "--gt-path", tmp_path / "nvos", "--nvos-task", "toy", "--output", out], tmp_path)
    assert r.returncode == 0, r.stderr
    before = out.read_text()
    assert json.loads(before)["view"] == "IMG_0001"
    r = run(["sa3d-nvos-prompt", "--gt-path", tmp_path / "nvos", "--nvos-task", "toy", "--output", out], tmp_path)
    assert r.returncode == 2 and "exists" in r.stderr and out.read_text() == before


def test_view_by_stem_matches_any_extension():
    names = ["data/images/IMG_0001.JPG", "data/images/IMG_0002.JPG"]
    assert resolve_view("IMG_0002", names) == 1
    assert resolve_view("IMG_0002.JPG", names) == 1
    with pytest.raises(SA3DError, match="not a training image"):
        resolve_view("IMG_0002.png", names)
