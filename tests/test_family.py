"""nerfacto runs as nerfstudio users train them: `ns-train nerfacto` with its own defaults (hash
tables of 2^19, its sample counts, appearance embeddings, the SO3xR3 camera optimizer) and the
rest of the family (nerfacto-big, nerfacto-huge, depth-nerfacto), each with only its iterations
and rays per batch cut down for a CPU, segmented by ns-train sa3d, rendered by ns-render and
evaluated by sa3d-eval."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_NERFACTO, point_prompt, run

pytestmark = [pytest.mark.slow, pytest.mark.extended]

# (method, iterations, rays per batch): as few as give a NeRF the oracle can be lifted into on a CPU
METHODS = {
    "nerfacto": (30, 512),
    "nerfacto-big": (8, 256),
    "nerfacto-huge": (4, 128),
    "depth-nerfacto": (8, 256),
}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    r = run(
        ["sa3d-make-scene", "--output", root / "scene", "--num-views", "24", "--width", "64", "--height", "64"], root
    )
    assert r.returncode == 0, r.stderr[-3000:]
    yield {"root": root, "prompt": point_prompt(root / "scene", root / "prompt.json"), "runs": {}}
    shutil.rmtree(root, ignore_errors=True)  # (about 3 GB of checkpoints; the disk is shared)


def trained(family, method: str):
    if method not in family["runs"]:
        steps, rays = METHODS[method]
        root = family["root"]
        # (relative paths, from the project folder, as users type them)
        r = run(["sa3d-train-nerfacto", method, "--data", "scene", "--output-dir", method, "--machine.device-type", "cpu",
                 "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True", "--max-num-iterations", str(steps),
                 "--steps-per-save", "100000", "--pipeline.datamanager.train-num-rays-per-batch", str(rays)], root)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        family["runs"][method] = next((root / method).rglob("*/config.yml"))
    return family["runs"][method]


def segment(family, method: str, segmenter: str, render: bool = True, *extra) -> dict:
    root = family["root"]
    out = root / f"sa3d_{method}_{segmenter}"
    r = run(["ns-train", "sa3d", "--pipeline.nerfacto-config", trained(family, method), "--machine.device-type", "cpu",
             "--vis", "tensorboard", "--output-dir", out, "--pipeline.prompt", family["prompt"],
             "--pipeline.segmenter", segmenter, *extra], root)  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (run_dir,) = sorted(out.glob("*/sa3d/*"))
    if render:
        render_held_out(run_dir, root)
    r = run(["sa3d-eval", "--load-config", run_dir / "config.yml", "--split", "test"], root)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((run_dir / "sa3d" / "eval_test" / "eval.json").read_text())
    print(f"{method}, {segmenter}: held-out mIoU {result['miou']:.4f}")
    return {**result, "run": run_dir}


def render_held_out(run_dir, root, held_out=2):
    r = run(["ns-render", "dataset", "--load-config", run_dir / "config.yml", "--output-path", run_dir / "renders",
             "--rendered-output-names", "mask", "rgb_object", "--split", "test", "--image-format", "png"], root)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((run_dir / "renders" / "test" / "mask").glob("*.png"))) == held_out


def test_nerfacto_as_ns_train_sets_it(family):
    config = trained(family, "nerfacto")
    state = torch.load(
        next((config.parent / "nerfstudio_models").glob("*.ckpt")), map_location="cpu", weights_only=False
    )
    pipeline = state["pipeline"]
    (table,) = [v for k, v in pipeline.items() if k.startswith("_model.field.mlp_base") and k.endswith("hash_table")]
    assert table.shape[0] == 16 * 2**19  # nerfacto's own table size
    assert pipeline["_model.camera_optimizer.pose_adjustment"].abs().max() > 0  # poses were refined
    assert pipeline["_model.field.embedding_appearance.embedding.weight"].shape[0] == 22
    result = segment(family, "nerfacto", "oracle")
    # The path runs end to end; its quality does not show here: 30 CPU steps of nerfacto's
    # defaults (proposal annealing over 1000 steps, 4096-ray batches cut to 512) leave a dark,
    # untrained NeRF (held-out mIoU 0.0 measured, every later view rejected). The e2e scene's
    # nerfacto has the same pose refinement and appearance embeddings, and its bar is 0.75.
    assert result["object_id"] == 1 and 0 <= result["miou"] <= 1


@pytest.mark.parametrize("method", ["nerfacto-big", "nerfacto-huge", "depth-nerfacto"])
def test_the_nerfacto_family_segments(family, method):
    """The same model with other settings (big, huge) and with depth supervision (depth-nerfacto,
    from the scene's depth maps): their checkpoints load into sa3d with their own settings, and a
    run segments, renders and evaluates (a few CPU steps make a poor NeRF: no mIoU bar)."""
    # (big and huge sample up to 1024 points a ray: their segmentation renders take a quarter)
    scale = ["--pipeline.sample-scale", "0.25"] if method != "depth-nerfacto" else []
    result = segment(family, method, "oracle", False, *scale)
    assert result["object_id"] == 1 and 0 <= result["miou"] <= 1
    saved = (result["run"] / "config.yml").read_text()
    if method != "depth-nerfacto":
        assert "log2_hashmap_size: 21" in saved  # big and huge settings were carried over


def test_a_project_folder_moved_whole_and_run_from_elsewhere(family, tmp_path):
    """A nerfacto run names its data relative to the folder it was trained in. The project folder
    copied elsewhere (another machine) and sa3d run from another working directory: the data is
    found from the run's own location; a run whose data is nowhere names --data."""
    import shutil

    moved = tmp_path / "moved_project"
    config = trained(family, "nerfacto")
    shutil.copytree(family["root"] / "scene", moved / "scene")
    shutil.copytree(family["root"] / "nerfacto", moved / "nerfacto")
    moved_config = moved / config.relative_to(family["root"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = ["ns-train", "sa3d", "--pipeline.nerfacto-config", moved_config, "--machine.device-type", "cpu",
            "--vis", "tensorboard", "--pipeline.prompt", family["prompt"], "--pipeline.segmenter", "oracle"]  # fmt: skip
    r = run([*base, "--output-dir", elsewhere / "outputs"], elsewhere)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (run_dir,) = sorted((elsewhere / "outputs").glob("*/sa3d/*"))
    saved = yaml.load((run_dir / "config.yml").read_text(), Loader=yaml.Loader)
    assert Path(saved.pipeline.datamanager.data) == (moved / "scene").resolve()  # the moved copy's, not the original
    shutil.rmtree(moved / "scene")
    r = run([*base, "--output-dir", elsewhere / "outputs2"], elsewhere)
    output = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "Pass --data PATH" in output and "Traceback" not in output, output[-3000:]
    assert not (elsewhere / "outputs2").exists()


def test_a_blender_data_scene_segments(tmp_path):
    """nerfstudio's blender-data dataparser (transforms_{train,val}.json, images in train/ and
    val/, its fixed scene box and no transform of its own): nerfacto trained on it, segmented,
    rendered and evaluated, with the instance masks found by file name (instances/<stem>.png)."""
    r = run(["sa3d-make-scene", "--output", tmp_path / "scene", "--num-views", "24", "--width", "64", "--height", "64",
             "--layout", "blender"], tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "scene" / "transforms.json").exists() and (tmp_path / "scene" / "val").is_dir()
    r = run(["sa3d-train-nerfacto", "nerfacto", "--output-dir", tmp_path / "nerfacto", "--max-num-iterations", "200",
             "--viewer.quit-on-train-completion", "True", *TINY_NERFACTO, "--data", tmp_path / "scene", "blender-data"],
            tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    config = next((tmp_path / "nerfacto").rglob("nerfacto/*/config.yml"))
    family = {"root": tmp_path, "prompt": point_prompt(tmp_path / "scene", tmp_path / "prompt.json"), "runs": {}}
    family["runs"]["nerfacto"] = config
    result = segment(family, "nerfacto", "oracle", False)
    render_held_out(result["run"], tmp_path, 3)  # the blender layout's held-out views (val: every 8th of 24)
    # (0.40 measured at these 200 steps, 0.51 at 300: blender-data keeps the scene at its own scale,
    # the cameras 3.4 from its centre, where nerfacto's proposal sampler spaces samples by
    # disparity: a short CPU training makes a blurrier NeRF than of the same images recentred and
    # rescaled by the nerfstudio dataparser; a wrong pose convention would give about 0)
    assert result["object_id"] == 1 and len(result["views"]) == 3 and result["miou"] > 0.25
