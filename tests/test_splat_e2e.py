"""The whole workflow on a splatfacto run (issue 16), as a user runs it, on the CPU through
tests/splat_cpu.py (gsplat's rasterization replaced by its CPU twin): ``ns-train sa3d
--pipeline.source-config <splatfacto>/config.yml`` with a click on the ball, ``ns-render`` of the
held-out views, ``sa3d-export gaussians`` / ``masks`` / ``pointcloud``, and the errors a splat run
answers (a mesh, a conflicting --pipeline.nerfacto-config)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import point_prompt, run, tree_digest
from PIL import Image

from sa3d_ns.core.metrics import iou
from sa3d_ns.scene.generate import OBJECTS
from sa3d_ns.splat.ply import read_ply

pytestmark = pytest.mark.slow
SPLAT_CPU = Path(__file__).parent / "splat_cpu.py"


def on_cpu(*cmd) -> list:
    """An installed command run with gsplat's rasterization on the CPU."""
    return [sys.executable, SPLAT_CPU, "run", *cmd]


@pytest.fixture(scope="module")
def segmented(cpu_splat, tmp_path_factory):
    """An sa3d run of the CPU splatfacto: the ball, one click in view 0, the oracle segmenter."""
    root, splat_config = cpu_splat
    digest = tree_digest(splat_config.parent)
    work = tmp_path_factory.mktemp("splat_e2e")
    prompt = point_prompt(root / "scene", work / "ball.json")
    r = run(on_cpu("ns-train", "sa3d", "--pipeline.source-config", splat_config, "--pipeline.prompt", prompt,
                   "--pipeline.segmenter", "oracle", "--machine.device-type", "cpu", "--vis", "tensorboard",
                   "--output-dir", work / "out"), cwd=work)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    config = next((work / "out").glob("scene/sa3d/*/config.yml"))
    return root, work, config, digest, splat_config


def test_ns_train_sa3d_segments_a_splatfacto_run(segmented):
    root, work, config, digest, splat_config = segmented
    summary = json.loads((config.parent / "sa3d" / "summary.json").read_text())
    assert summary["complete"] and summary["source_config"] == str(splat_config.resolve())
    views = summary["objects"][0]["views"]
    assert views[0]["status"] == "prompt" and len(views) == 22
    assert sum(v["status"] == "accepted" for v in views) >= 20, [v["status"] for v in views]
    saved = yaml.load(config.read_text(), Loader=yaml.Loader)
    assert type(saved.pipeline).__name__ == "SA3DSplatPipelineConfig"
    assert tree_digest(splat_config.parent) == digest  # the splatfacto run is only read

    # held-out views, rendered by ns-render: the mask against the true instance mask
    r = run(on_cpu("ns-render", "dataset", "--load-config", config, "--split", "test", "--rendered-output-names",
                   "mask", "rgb_object", "rgb_removed", "--output-path", work / "renders", "--image-format", "png",
                   "--colormap-options.colormap", "gray"), cwd=work)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    scores = []
    for path in sorted((work / "renders" / "test" / "mask").iterdir()):
        mask = np.asarray(Image.open(path))[..., 0] > 127
        truth = np.asarray(Image.open(root / "scene" / "instances" / f"{path.stem}.png")) == 1
        scores.append(iou(mask, truth))
    assert len(scores) >= 2 and np.mean(scores) > 0.8, scores
    for name in ("rgb_object", "rgb_removed"):
        assert len(list((work / "renders" / "test" / name).iterdir())) == len(scores)


def test_export_gaussians_writes_the_ball_in_splatfactos_layout(segmented):
    root, work, config, _, _ = segmented
    r = run(on_cpu("sa3d-export", "gaussians", "--load-config", config, "--output", work / "gaussians"), cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    obj, rest = read_ply(work / "gaussians" / "object.ply"), read_ply(work / "gaussians" / "scene_without_object.ply")
    # ns-export gaussian-splat's columns, in its order (SH degree 1: 3 x 3 higher coefficients)
    layout = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *(f"f_rest_{i}" for i in range(9)),
              "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
    assert list(obj) == layout and list(rest) == layout
    # only the ball's Gaussians: their centres (nerfstudio's frame) near the ball's true centre
    transforms = json.loads((config.parent / "dataparser_transforms.json").read_text())
    t, scale = np.array(transforms["transform"]), transforms["scale"]
    centre = (t[:, :3] @ np.array(OBJECTS[0].centre) + t[:, 3]) * scale
    means = np.stack([obj["x"], obj["y"], obj["z"]], 1)
    radius = OBJECTS[0].size[0] * scale
    assert 20 < len(means) < len(rest["x"])
    assert (np.linalg.norm(means - centre, axis=1) < radius * 1.5).mean() > 0.9
    rest_means = np.stack([rest["x"], rest["y"], rest["z"]], 1)
    assert (np.linalg.norm(rest_means - centre, axis=1) < radius * 0.6).sum() < 0.1 * len(means)
    # never over an existing export
    r = run(on_cpu("sa3d-export", "gaussians", "--load-config", config, "--output", work / "gaussians"), cwd=work)
    assert r.returncode == 2 and "exists" in r.stderr


def test_masks_and_pointcloud_export_and_what_a_splat_run_refuses(segmented):
    root, work, config, _, splat_config = segmented
    r = run(on_cpu("sa3d-export", "masks", "--load-config", config, "--output", work / "masks"), cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    written = sorted((work / "masks").iterdir())
    assert len(written) == 22
    truth = np.asarray(Image.open(root / "scene" / "instances" / written[0].name)) == 1
    assert iou(np.asarray(Image.open(written[0])) > 127, truth) > 0.8
    r = run(on_cpu("sa3d-export", "pointcloud", "--load-config", config, "--output", work / "ball.ply"), cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(on_cpu("sa3d-export", "mesh", "--load-config", config), cwd=work)
    assert r.returncode == 2 and "sa3d-export gaussians" in r.stderr
    # two different source runs named at once
    r = run(["ns-train", "sa3d", "--pipeline.source-config", splat_config, "--pipeline.nerfacto-config",
             work / "other" / "config.yml", "--vis", "tensorboard"], cwd=work)  # fmt: skip
    assert r.returncode == 2 and "name different runs" in r.stdout + r.stderr
