"""The whole workflow on a splatfacto run (issue 16), as a user runs it, on the CPU through
tests/splat_cpu.py (gsplat's rasterization replaced by its CPU twin): ``ns-train sa3d
--pipeline.source-config <splatfacto>/config.yml`` with a click on the ball, ``ns-render`` of the
held-out views, ``sa3d-export gaussians`` / ``masks`` / ``pointcloud``, and the errors a splat run
answers (a mesh, a conflicting --pipeline.nerfacto-config)."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import point_prompt, relocated_copy, run, tree_digest
from PIL import Image

from sa3d_ns.core.metrics import iou, outside_box
from sa3d_ns.scene.generate import OBJECTS
from sa3d_ns.splat.ply import read_ply

pytestmark = pytest.mark.slow
SPLAT_CPU = Path(__file__).parent / "splat_cpu.py"


def on_cpu(*cmd) -> list:
    """An installed command run with gsplat's rasterization on the CPU."""
    return [sys.executable, SPLAT_CPU, "run", *cmd]


def export_ball(kind: str, config: Path, output: Path):
    """``sa3d-export KIND`` of the ball of the run ``config`` to ``output`` (run in its folder)."""
    return run(on_cpu("sa3d-export", kind, "--load-config", config, "--object", "ball", "--output", output),
               cwd=output.parent)  # fmt: skip


@pytest.fixture(scope="module")
def segmented(cpu_splat, tmp_path_factory):
    """An sa3d run of the CPU splatfacto: the ball and the crate, one click each in view 0, the oracle
    segmenter."""
    root, splat_config = cpu_splat
    digest = tree_digest(splat_config.parent)
    work = tmp_path_factory.mktemp("splat_e2e")
    prompts = []
    for obj, name in ((1, "ball"), (2, "crate")):
        prompts.append(
            {**json.loads(point_prompt(root / "scene", work / f"{name}.json", obj).read_text()), "name": name}
        )
    prompt = work / "two.json"
    prompt.write_text(json.dumps({"objects": prompts}))
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
    assert [o["name"] for o in summary["objects"]] == ["ball", "crate"]
    for obj in summary["objects"]:
        views = obj["views"]
        assert views[0]["status"] == "prompt" and len(views) == 22
        assert sum(v["status"] == "accepted" for v in views) >= 18, [v["status"] for v in views]
    saved = yaml.load(config.read_text(), Loader=yaml.Loader)
    assert type(saved.pipeline).__name__ == "SA3DSplatPipelineConfig"
    assert tree_digest(splat_config.parent) == digest  # the splatfacto run is only read

    # held-out views, rendered by ns-render: each object's mask against its true instance mask
    r = run(on_cpu("ns-render", "dataset", "--load-config", config, "--split", "test", "--rendered-output-names",
                   "mask_ball", "mask_crate", "rgb_object_ball", "rgb_removed", "--output-path", work / "renders",
                   "--image-format", "png", "--colormap-options.colormap", "gray"), cwd=work)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for name, obj, bar in (("ball", 1, 0.8), ("crate", 2, 0.6)):
        scores = []
        for path in sorted((work / "renders" / "test" / f"mask_{name}").iterdir()):
            mask = np.asarray(Image.open(path))[..., 0] > 127
            truth = np.asarray(Image.open(root / "scene" / "instances" / f"{path.stem}.png")) == obj
            scores.append(iou(mask, truth))
        print(f"{name}: held-out IoU {[round(x, 3) for x in scores]}")
        assert len(scores) >= 2 and np.mean(scores) > bar, (name, scores)
    for name in ("rgb_object_ball", "rgb_removed"):
        assert len(list((work / "renders" / "test" / name).iterdir())) == len(scores)

    # sa3d-eval finds each object's instance and scores it as ns-render's masks did
    r = run(on_cpu("sa3d-eval", "--load-config", config, "--split", "test"), cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((config.parent / "sa3d" / "eval_test" / "eval.json").read_text())
    found = {o["object"]: (o["object_id"], o["miou"]) for o in result["objects"]}
    assert found["ball"][0] == 1 and found["ball"][1] > 0.8 and found["crate"][0] == 2, found


@pytest.mark.extended  # (CI runs it after the README's suite)
def test_add_an_object_to_a_splat_run(segmented):
    """--pipeline.add-to on a splat run: the kept objects' masks come back unchanged, the new one
    is segmented, reading the views' Gaussian lists the first run cached on disk."""
    root, work, config, _, splat_config = segmented
    prompt = point_prompt(root / "scene", work / "can.json", 3)
    # the first run's lists of each view's Gaussians are on disk; one entry is damaged (truncated)
    (cache,) = (work / "out" / "scene" / "sa3d_cache").iterdir()
    entries = sorted(cache.glob("view*.pt"))
    assert len(entries) == 22
    entries[3].write_bytes(entries[3].read_bytes()[:100])
    r = run(on_cpu("ns-train", "sa3d", "--pipeline.source-config", splat_config, "--pipeline.prompt", prompt,
                   "--pipeline.add-to", config, "--pipeline.segmenter", "oracle", "--machine.device-type", "cpu",
                   "--vis", "tensorboard", "--output-dir", work / "added", "--pipeline.cache-dir",
                   work / "out" / "scene" / "sa3d_cache"), cwd=work)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    added = next((work / "added").glob("scene/sa3d/*/config.yml"))
    summary = json.loads((added.parent / "sa3d" / "summary.json").read_text())
    # every view's lists read back from the disk but the damaged one, which was listed again
    assert summary["cache"]["views_from_disk"] == 21 and summary["cache"]["views_built"] == 1, summary["cache"]
    assert [o["name"] for o in summary["objects"]] == ["ball", "crate", "object"]
    assert summary["objects"][0]["from_run"] == str(config.parent)
    import torch

    def masks(cfg: Path) -> dict:
        state = torch.load(next((cfg.parent / "nerfstudio_models").glob("*.ckpt")), weights_only=False)["pipeline"]
        return {k: v for k, v in state.items() if k.startswith("_model.mask_fields.")}

    old, new = masks(config), masks(added)
    assert set(new) == {f"_model.mask_fields.{k}" for k in range(3)}
    for key, values in old.items():
        assert torch.equal(values, new[key]), key
    assert (new["_model.mask_fields.2"] > 0).sum() > 10


def test_export_gaussians_writes_the_ball_in_splatfactos_layout(segmented):
    root, work, config, _, _ = segmented
    r = export_ball("gaussians", config, work / "gaussians")
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
    assert 20 < len(means) < len(rest["x"])  # (the scene without the ball keeps the crate's Gaussians)
    assert (np.linalg.norm(means - centre, axis=1) < radius * 1.5).mean() > 0.9
    rest_means = np.stack([rest["x"], rest["y"], rest["z"]], 1)
    assert (np.linalg.norm(rest_means - centre, axis=1) < radius * 0.6).sum() < 0.1 * len(means)
    # never over an existing export
    r = export_ball("gaussians", config, work / "gaussians")
    assert r.returncode == 2 and "exists" in r.stderr


def test_masks_and_pointcloud_export_and_what_a_splat_run_refuses(segmented):
    root, work, config, _, splat_config = segmented
    r = export_ball("masks", config, work / "masks")
    assert r.returncode == 0, r.stderr[-3000:]
    written = sorted((work / "masks").iterdir())
    assert len(written) == 22
    truth = np.asarray(Image.open(root / "scene" / "instances" / written[0].name)) == 1
    assert iou(np.asarray(Image.open(written[0])) > 127, truth) > 0.8
    r = export_ball("pointcloud", config, work / "ball.ply")
    assert r.returncode == 0, r.stderr[-3000:]
    # the ball's surface points (the dataset's frame): inside its true box grown by 5 %
    cloud = read_ply(work / "ball.ply")
    points = np.stack([cloud["x"], cloud["y"], cloud["z"]], 1)
    box = json.loads((root / "scene" / "objects.json").read_text())["objects"][0]
    assert len(points) > 100 and outside_box(points, box["bounds_min"], box["bounds_max"]) < 0.05
    r = run(on_cpu("sa3d-export", "mesh", "--load-config", config), cwd=work)
    assert r.returncode == 2 and "sa3d-export gaussians" in r.stderr
    # two different source runs named at once
    r = run(["ns-train", "sa3d", "--pipeline.source-config", splat_config, "--pipeline.nerfacto-config",
             work / "other" / "config.yml", "--vis", "tensorboard"], cwd=work)  # fmt: skip
    assert r.returncode == 2 and "name different runs" in r.stdout + r.stderr


@pytest.mark.extended  # (CI runs it after the README's suite)
def test_the_reference_path_on_a_splat(cpu_splat, tmp_path):
    """--pipeline.cache False: every view rendered whole by gsplat and lifted by autograd through
    its rasterizer (the benchmark's reference); the ball comes out as on the default path."""
    root, splat_config = cpu_splat
    prompt = point_prompt(root / "scene", tmp_path / "ball.json")
    r = run(on_cpu("ns-train", "sa3d", "--pipeline.source-config", splat_config, "--pipeline.prompt", prompt,
                   "--pipeline.segmenter", "oracle", "--pipeline.cache", "False", "--pipeline.lifting", "sgd",
                   "--machine.device-type", "cpu", "--vis", "tensorboard", "--output-dir", tmp_path / "out"),
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    config = next((tmp_path / "out").glob("scene/sa3d/*/config.yml"))
    summary = json.loads((config.parent / "sa3d" / "summary.json").read_text())
    assert summary["cache"]["kind"] == "none" and summary["cache"]["views_built"] == 22
    r = run(on_cpu("sa3d-eval", "--load-config", config, "--split", "test"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((config.parent / "sa3d" / "eval_test" / "eval.json").read_text())["miou"] > 0.8


@pytest.mark.extended  # (CI runs it after the README's suite)
def test_viewer_panel_on_a_splat_run(segmented, tmp_path):
    """The viewer panel's logic on the finished splat run, loaded as ns-viewer loads it: the ball
    prompted again with a click in a held-out camera (weight-free segmenter), Segment finds it in
    3D (one value per Gaussian), Save writes a checkpoint that reopens with it."""
    import torch
    from splat_cpu import patched

    from sa3d_ns.evaluate import evaluate_views, instance_ground_truth
    from sa3d_ns.nerf.viewer_panel import PanelLogic

    root, work, config, _, _ = segmented
    run_dir = relocated_copy(config.parent, tmp_path)
    with patched():
        from nerfstudio.utils.eval_utils import eval_setup

        _, pipeline, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
        pipeline.config.segmenter = "weightfree"  # (the oracle cannot answer a click in a free camera)
        messages = []
        logic = PanelLogic(pipeline, notify=messages.append)
        logic.delete("ball")
        assert pipeline.model.object_names == ["crate"]
        ds = pipeline.datamanager.eval_dataset
        camera = ds.cameras[0:1]
        w, h = int(camera.width[0, 0]), int(camera.height[0, 0])
        inst = np.asarray(Image.open(root / "scene" / "instances" / Path(ds.image_filenames[0]).name))
        ys, xs = np.nonzero(inst == 1)
        logic.add_point(camera, ((np.median(xs) + 0.5) / w, (np.median(ys) + 0.5) / h), 1)
        assert logic.current is not None and logic.current.masks is not None
        assert logic.segment("ball", wait=True), messages
        assert pipeline.model.object_names == ["crate", "ball"] and logic.progress["done"] == 22
        data = Path(pipeline.datamanager.dataparser.config.data)
        rows = evaluate_views(pipeline, instance_ground_truth(pipeline.datamanager, data, "train", 1), k=1)
        miou = float(np.mean([r["iou"] for r in rows]))
        print(f"viewer-prompted ball on the splat: mIoU over the training views {miou:.4f}")
        # (a bar that says the weight-free segmenter found the ball from one free-camera click, not
        # how well: on the suite's CPU splat, trained anew each run, it measured 0.53 on CI's
        # training and above 0.6 on earlier ones; the oracle's lifting bars are in the other tests)
        assert miou > 0.4, messages
        logic.save(run_dir)
        _, reopened, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
        assert reopened.model.object_names == ["crate", "ball"]
        saved, now = reopened.model.state_dict(), pipeline.model.state_dict()
        assert all(torch.equal(saved[k], now[k]) for k in now if k.startswith(("mask_fields.", "object_bounds")))


@pytest.mark.extended  # (CI runs it after the README's suite)
def test_viewer_in_headless_chromium_on_a_splat_run(segmented, tmp_path):
    """ns-viewer's own viewer on the finished splat run (nerfstudio's splatfacto branches of its
    render loop: background colour, crop box), driven from headless Chromium as on a nerfacto run:
    delete both objects with the panel, click on the ball through training camera 0, Segment;
    the canvas shows the new object tinted, alone and removed, and its mask is the ball's."""
    from splat_cpu import patched
    from viewer_browser import click_segment_and_look, open_viewer

    root, _, config, _, _ = segmented
    run_dir = relocated_copy(config.parent, tmp_path)
    with patched():
        viewer, pipeline, port, chromium = open_viewer(run_dir)
        pipeline.config.segmenter = "weightfree"  # (the oracle cannot answer a click in the viewer)
        ds = pipeline.datamanager.train_dataset
        inst = np.asarray(Image.open(root / "scene" / "instances" / Path(ds.image_filenames[0]).name))
        name, mask = click_segment_and_look(viewer, pipeline, port, chromium, inst, "viewer_splat")
        assert pipeline.model.object_names == [name]
    print(f"viewer-prompted ball on the splat, training view 0: IoU {iou(mask, inst == 1):.4f}")
    assert iou(mask, inst == 1) > 0.5


@pytest.mark.extended  # (CI runs it after the README's suite; over a minute)
def test_a_write_that_fails_is_a_clear_error_and_leaves_nothing_half_written(segmented, tmp_path):
    """A full disk, as a file-size limit (ulimit -f: Python then gets EFBIG): a view's cache entry
    and the checkpoint of `ns-train sa3d`, and `sa3d-export gaussians`' files do not fit. Each
    command says which file, exits 2, and leaves no truncated file and no run folder a later
    command would take."""
    root, work, config, _, splat_config = segmented
    limited = [
        "bash",
        "-c",
        'ulimit -f 200 && exec "$@"',
        "limited",
    ]  # (200 KB: an entry is 0.3 MB, the checkpoint 1 MB)
    prompt = point_prompt(root / "scene", tmp_path / "ball.json")
    sa3d = on_cpu("ns-train", "sa3d", "--pipeline.source-config", splat_config, "--pipeline.prompt", prompt,
                  "--pipeline.segmenter", "oracle", "--machine.device-type", "cpu", "--vis", "tensorboard",
                  "--output-dir", tmp_path / "out")  # fmt: skip
    # (rich wraps long paths anywhere: the messages are compared without any whitespace)
    for extra, what in (([], r"sa3derror:Couldnotwritethecacheentry\S*/view00000\.pt\("),
                        (["--pipeline.cache", "False"], r"sa3derror:Couldnotwrite\S*/step-\d+\.ckpt\(")):  # fmt: skip
        r = run([*limited, *sa3d, *extra], cwd=tmp_path)
        output = r.stdout + r.stderr
        assert r.returncode == 2 and re.search(what, "".join(output.split())), output[-2000:]
        assert "Traceback" not in output
        assert not list((tmp_path / "out").glob("scene/sa3d/*")), "a half-written run folder was left"
        assert not list((tmp_path / "out").rglob("*.tmp")) and not list((tmp_path / "out").rglob("*.partial"))

    r = run([*limited, *on_cpu("sa3d-export", "gaussians", "--load-config", config, "--object", "ball",
                               "--output", tmp_path / "g")], cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "scene_without_object.ply(Filetoolarge)" in "".join(r.stderr.split()), r.stderr
    assert not [p for p in (tmp_path / "g").rglob("*") if p.is_file()], "a half-written export was left"
