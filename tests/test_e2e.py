"""End to end through the real commands on a tiny generated scene (CPU, no downloads):
sa3d-make-scene -> sa3d-train-nerfacto (ns-train nerfacto) -> ns-train sa3d (oracle, weightfree)
-> ns-render dataset of `mask` -> sa3d-eval; and every bad input of `ns-train sa3d`."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import BIN, TINY_NERFACTO, point_prompt, relocated_copy, run, tree_digest
from PIL import Image
from viewer_browser import BROWSER_ARGS, click_segment_and_look, look_through, open_viewer, wait_for

from sa3d_ns.nerf.resolve import PATH_FLAGS

pytestmark = pytest.mark.slow
FAULT_HOOKS = Path(__file__).parent / "fault_hooks"  # (see its sitecustomize.py)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 24-view 64x64 scene, a 300-step nerfacto on it, and a prompt on the red ball (object 1)."""
    root = tmp_path_factory.mktemp("e2e")
    r = run(
        ["sa3d-make-scene", "--output", root / "scene", "--num-views", "24", "--width", "64", "--height", "64"], root
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(["sa3d-train-nerfacto", "nerfacto", "--data", root / "scene", "--output-dir", root / "outputs",
             "--max-num-iterations", "300", "--viewer.quit-on-train-completion", "True", *TINY_NERFACTO], root)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    nerfacto_config = next((root / "outputs").rglob("nerfacto/*/config.yml"))
    prompt = point_prompt(root / "scene", root / "prompt.json")
    yield {"root": root, "nerfacto": nerfacto_config, "prompt": prompt, "digest": tree_digest(nerfacto_config.parent)}
    shutil.rmtree(root, ignore_errors=True)  # (over 1 GB of runs; the disk is shared)


def sa3d(scene, *extra, out="outputs", env=None):
    cmd = ["ns-train", "sa3d", "--pipeline.nerfacto-config", scene["nerfacto"], "--machine.device-type", "cpu", "--vis", "tensorboard",
           "--output-dir", scene["root"] / out, *extra]  # fmt: skip
    return run(cmd, scene["root"], env=env)


def sa3d_runs(scene, out="outputs"):
    return sorted((scene["root"] / out).glob("*/sa3d/*"))


def finished_run(scene, segmenter="oracle") -> Path:
    """A finished sa3d run of the scene's prompt (made once per module)."""
    runs = scene.setdefault("runs", {})
    if segmenter not in runs:
        before = set(sa3d_runs(scene))
        r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", segmenter)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        (runs[segmenter],) = set(sa3d_runs(scene)) - before
    return runs[segmenter]


# On this 64-px, 300-step NeRF (nerfacto's CPU training is not deterministic run to run, and 2
# held-out views make a noisy mean) the ball's held-out mIoU measured: oracle 0.72 (a fresh clone's
# training, with every one of its 21 masks accepted: the NeRF's own ceiling) to 0.93; weightfree
# 0.58 to above 0.9. The demo's 128-px scene gives 0.95.
ORACLE_BAR = 0.65


@pytest.mark.parametrize("segmenter, min_miou", [("oracle", ORACLE_BAR), ("weightfree", 0.5)])
def test_segment_render_and_evaluate(scene, segmenter, min_miou):
    run_dir = finished_run(scene, segmenter)
    assert list((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    summary = json.loads((run_dir / "sa3d" / "summary.json").read_text())
    (obj,) = summary["objects"]
    views = [(v["image"], v["status"], v.get("iou")) for v in obj["views"]]
    assert summary["complete"] and summary["views_done"] == summary["views_total"] == 22
    assert obj["name"] == "object" and obj["counts"]["prompt"] == 1 and obj["counts"]["accepted"] >= 10, views
    assert len([p for p in (run_dir / "sa3d" / "views").glob("*.png") if "_candidate" not in p.name]) == 22
    assert list((run_dir / "sa3d" / "masks").glob("*.png"))

    # the mask field was trained and saved in the checkpoint
    state = torch.load(next((run_dir / "nerfstudio_models").glob("*.ckpt")), map_location="cpu", weights_only=True)
    assert state["pipeline"]["_model.mask_fields.0.encoding.hash_table"].abs().sum() > 0

    # ns-render the binary `mask` output of the held-out views
    r = run(["ns-render", "dataset", "--load-config", run_dir / "config.yml", "--output-path", run_dir / "renders",
             "--rendered-output-names", "mask", "--split", "test", "--image-format", "png", "--colormap-options.colormap", "gray"],
            scene["root"])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    masks = sorted((run_dir / "renders" / "test" / "mask").glob("*.png"))
    assert len(masks) == 2
    for m in masks:
        assert set(np.unique(np.asarray(Image.open(m)))) <= {0, 255}

    # sa3d-eval works without the source nerfacto run (moved away), and the object is found
    parked = scene["nerfacto"].parent.with_name("parked")
    scene["nerfacto"].parent.rename(parked)
    try:
        r = run(["sa3d-eval", "--load-config", run_dir / "config.yml", "--split", "test"], scene["root"])
    finally:
        parked.rename(scene["nerfacto"].parent)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((run_dir / "sa3d" / "eval_test" / "eval.json").read_text())
    print(f"{segmenter}: held-out mIoU {result['miou']:.4f}, per view {[round(v['iou'], 4) for v in result['views']]}")
    assert result["object_id"] == 1
    assert result["miou"] >= min_miou
    # the cut-outs, against the scene rendered without the ball (removed/1/), with pictures of the
    # worst views: the NeRF | the ball alone | without it | the truth | its ghost
    cut = result["objects"][0]["cutout"]
    print(f"{segmenter}: cut-outs {cut}")
    assert set(cut) == {"specks", "ghost", "removal_psnr", "nerf_psnr", "unseen", "outside_psnr", "outside_changed"}
    # (weightfree's masks on this NeRF vary run to run: one run measured specks 0.020 and 2.4 % of
    # the pixels outside the ball changed, with mIoU 0.58; the oracle's stay under 1 %)
    bar = 0.01 if segmenter == "oracle" else 0.05
    assert 0 <= cut["specks"] < bar and 0 <= cut["ghost"] <= 1 and 0 < cut["unseen"] < 1
    assert cut["outside_changed"] < bar and cut["removal_psnr"] > 10
    for kind in ("specks", "ghost"):
        (tile,) = (run_dir / "sa3d" / "eval_test").glob(f"worst_{kind}_*.png")
        assert Image.open(tile).size == (5 * 64, 64)
    assert tree_digest(scene["nerfacto"].parent) == scene["digest"]  # the nerfacto run is never modified


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_config", "file not found"),
        ("no_cuda", "Add --machine.device-type cpu to segment on the CPU"),
        ("not_nerfacto", "depth-nerfacto) and the splatfacto family (ns-train splatfacto, splatfacto-big)"),
        ("tcnn_checkpoint", "trained with tiny-cuda-nn"),
        ("malformed_json", "not valid JSON"),
        ("point_outside", "outside view"),
        ("unknown_view", "not a training image"),
        ("labels_mismatch", "one label per point"),
        ("empty_mask", "empty mask"),
        ("missing_sam_weights", "--pipeline.segmenter weightfree"),
        ("no_instance_masks", "instance_mask_path"),
        ("missing_text_model", "Grounding DINO tiny (text prompts) checkpoint not found"),
        ("text_threshold", "--pipeline.text-box-threshold must be a number between 0 and 1, got 1.5"),
        ("noise_rate", "--pipeline.noise-rate must be a number between 0 and 1, got 1.5"),
        ("nan_setting", "--pipeline.iou-threshold must be a number between 0 and 1, got nan"),
        ("huge_setting", "--pipeline.num-prompts must be a whole number between 1 and 1000, got 1000000"),
        ("cache_dir_is_a_file", "that is a file, not a folder"),
        ("cache_dir_in_the_source_run", "sa3d never writes into it"),
        ("name_too_long", "File name too long. Give a path this machine can open"),
        ("data_image_size_lies", "is 64x64 pixels, but transforms.json gives its camera 80x80"),
        ("data_image_missing", "frame_00003.png of the data folder"),
        ("data_held_out_image_missing", "frame_00011.png of the data folder"),
        ("data_image_unreadable", "cannot be read as an image"),
        ("data_mask_of_another_shape", "is 64x32 pixels, but its image frame_00003.png is 64x64"),
        (
            "data_pose_nan",
            "the transform_matrix of 1 frame(s) is not a 4 x 4 array of finite numbers (images/frame_00003.png)",
        ),
    ],
)
def test_bad_input(scene, tmp_path, case, match):
    root = scene["root"]
    good = json.loads(scene["prompt"].read_text())
    extra = ["--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle"]
    config = scene["nerfacto"]
    env = None
    if case == "missing_config":
        config = tmp_path / "nope" / "config.yml"
    elif case == "no_cuda":  # (nerfstudio's default device on a machine without a GPU)
        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA GPU")
        extra += ["--machine.device-type", "cuda"]  # (the last of the two given wins)
    elif case == "not_nerfacto":
        config = finished_run(scene) / "config.yml"
    elif case == "tcnn_checkpoint":
        copy = tmp_path / "nerfacto_tcnn"
        shutil.copytree(scene["nerfacto"].parent, copy)
        ckpt = next((copy / "nerfstudio_models").glob("*.ckpt"))
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        state["pipeline"] = {k.replace("hash_table", "params"): v for k, v in state["pipeline"].items()}
        torch.save(state, ckpt)
        config = copy / "config.yml"
    elif case == "malformed_json":
        extra[1] = write(tmp_path / "p.json", '{"view": 0, "points": [[1, 2]')
    elif case == "point_outside":
        extra[1] = write(tmp_path / "p.json", json.dumps({**good, "points": [[64, 10]]}))
    elif case == "unknown_view":
        extra[1] = write(tmp_path / "p.json", json.dumps({**good, "view": "frame_00011.png"}))  # a held-out view
    elif case == "labels_mismatch":
        extra[1] = write(tmp_path / "p.json", json.dumps({**good, "labels": [1, 0]}))
    elif case == "empty_mask":
        extra[1] = write(tmp_path / "p.json", json.dumps({**good, "points": [[1, 1]]}))  # sky: no object there
    elif case == "missing_sam_weights":
        extra[3] = "sam"
        env = {"SA3D_OFFLINE": "1", "SA3D_CACHE": str(tmp_path / "cache")}
    elif case == "missing_text_model":
        extra[1] = write(tmp_path / "p.json", json.dumps({"view": 0, "text": "the red ball"}))
        extra += ["--pipeline.text-checkpoint", tmp_path / "no-such-model"]
    elif case == "text_threshold":
        extra[1] = write(tmp_path / "p.json", json.dumps({"view": 0, "text": "the red ball"}))
        extra += ["--pipeline.text-box-threshold", "1.5"]
    elif case == "noise_rate":
        extra[3] = "oracle-noisy"
        extra += ["--pipeline.noise-rate", "1.5"]
    elif case == "nan_setting":
        extra += ["--pipeline.iou-threshold", "nan"]
    elif case == "huge_setting":
        extra += ["--pipeline.num-prompts", "1" + "0" * 400]
    elif case == "cache_dir_is_a_file":
        extra += ["--pipeline.cache-dir", scene["prompt"]]
    elif case == "cache_dir_in_the_source_run":
        extra += ["--pipeline.cache-dir", scene["nerfacto"].parent / "sa3d_cache"]
    elif case == "name_too_long":
        extra[1] = tmp_path / ("x" * 300)
    elif case.startswith("data_"):  # a copy of the data folder that lies about its frames
        data = tmp_path / "data"
        shutil.copytree(root / "scene", data)
        meta = json.loads((data / "transforms.json").read_text())
        if case == "data_image_size_lies":
            meta["w"] = meta["h"] = 80
        elif case == "data_image_missing":
            (data / "images" / "frame_00003.png").unlink()
        elif case == "data_held_out_image_missing":  # (nerfstudio loads the held-out views too)
            (data / "images" / "frame_00011.png").unlink()
        elif case == "data_image_unreadable":
            (data / "images" / "frame_00003.png").write_bytes(b"\x89PNG not really")
        elif case == "data_mask_of_another_shape":  # (a scaled copy, e.g. full-size masks beside images_2/, is fine)
            mask = Image.open(data / "instances" / "frame_00003.png")
            mask.resize((64, 32), Image.Resampling.NEAREST).save(data / "instances" / "frame_00003.png")
        elif case == "data_pose_nan":
            meta["frames"][3]["transform_matrix"][0][0] = float("nan")  # (json writes NaN, and reads it back)
        (data / "transforms.json").write_text(json.dumps(meta))
        extra += ["--data", data]
    elif case == "no_instance_masks":
        data = tmp_path / "data"
        shutil.copytree(root / "scene", data)
        meta = json.loads((data / "transforms.json").read_text())
        for f in meta["frames"]:
            f.pop("instance_mask_path")
        (data / "transforms.json").write_text(json.dumps(meta))
        shutil.rmtree(data / "instances")  # (nor the instances/<image>.png other dataparsers' datasets use)
        extra += ["--data", data]
    before = set(sa3d_runs(scene, "bad"))
    scene_cfg = {**scene, "nerfacto": config}
    r = sa3d(scene_cfg, *extra, out="bad", env=env)
    output = r.stdout + r.stderr
    assert r.returncode == 2, output[-3000:]
    assert "sa3d error" in output and match in " ".join(output.split()), output[-3000:]
    assert "Traceback" not in output
    assert set(sa3d_runs(scene, "bad")) == before  # no half-written run is left behind
    assert tree_digest(scene["nerfacto"].parent) == scene["digest"]


HOSTILE_PATHS = ["", ".", "..", "/", "/dev/null", "/dev/zero", "/proc/self/mem", "/etc/passwd", "~", "x" * 300,
                 "a/" + "b" * 256, "nul\x00byte", "../../../../../../x", "é/ß/中.json", " ", "-", "--help"]  # fmt: skip


@pytest.mark.parametrize("attr, flag", PATH_FLAGS, ids=[f for _, f in PATH_FLAGS])
def test_any_path_given_to_a_path_flag_is_used_or_refused_clearly(scene, tmp_path, attr, flag):
    """Every path flag of ns-train sa3d, given hostile paths (too long, a NUL byte, devices,
    unicode, traversal, the scene's own files and folders where another kind is expected) and
    hypothesis' text: the input checks (run in-process, as ns-train runs them before it writes
    anything) either accept it or raise the SA3DError the CLI prints ("sa3d error:", exit 2) naming
    the flag or the path; never another exception; the nerfacto run is untouched."""
    import copy

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sa3d_ns.config import sa3d_method
    from sa3d_ns.core.errors import SA3DError
    from sa3d_ns.nerf.resolve import resolve_config

    root = scene["root"]
    own = [root / "scene", root / "scene" / "transforms.json", root / "scene" / "images" / "frame_00000.png",
           scene["nerfacto"], scene["nerfacto"].parent, next(scene["nerfacto"].parent.rglob("*.ckpt")), scene["prompt"],
           finished_run(scene) / "config.yml", tmp_path / "new" / "folder"]  # fmt: skip

    def check(path):
        config = copy.deepcopy(sa3d_method.config)
        config.machine.device_type = "cpu"  # (as every test here: nerfstudio's default, cuda, is refused on a CPU)
        pipe = config.pipeline
        pipe.nerfacto_config, pipe.prompt, pipe.segmenter = scene["nerfacto"], scene["prompt"], "oracle"
        config.output_dir = tmp_path / "out"
        owner = config
        *parents, name = attr.split(".")
        for part in parents:
            owner = getattr(owner, part)
        setattr(owner, name, Path(path))
        try:
            resolve_config(config)
        except SA3DError as err:
            text = str(err)
            assert flag in text or str(path)[:100] in text or flag == "--data", (path, text)

    for path in [*HOSTILE_PATHS, *own]:
        check(path)
    settings(max_examples=12, deadline=None, database=None)(given(st.text(max_size=40))(check))()
    assert tree_digest(scene["nerfacto"].parent) == scene["digest"]
    assert not (tmp_path / "new").exists() and not (tmp_path / "out").exists()


@pytest.mark.extended
@pytest.mark.parametrize("case", ["seen_in_one_view", "fills_the_whole_image", "sky_click"])
def test_an_object_the_data_makes_hard_is_segmented_or_refused_never_a_traceback(scene, tmp_path, case):
    """Data whose object is not what the loop expects, through ns-train sa3d: an object seen in
    only the prompt view (instance masks say so; oracle), an object that fills every image (oracle),
    a click where the NeRF has no density (the sky; weightfree, which still answers with a region).
    Each either finishes (summary complete; an object that rests on few views carries a warning in
    the log and summary.json) or is refused with the sa3d error and exit 2; never a traceback."""
    root = scene["root"]
    data = tmp_path / "data"
    shutil.copytree(root / "scene", data)
    prompt, segmenter = scene["prompt"], "oracle"
    for path in sorted((data / "instances").glob("*.png")):
        ids = np.asarray(Image.open(path)).copy()
        if case == "seen_in_one_view" and path.name != "frame_00000.png":
            ids[ids == 1] = 0
        elif case == "fills_the_whole_image":
            ids[:] = 1
        Image.fromarray(ids).save(path)
    if case == "sky_click":
        ids = np.asarray(Image.open(data / "instances" / "frame_00000.png"))
        img = np.asarray(Image.open(data / "images" / "frame_00000.png").convert("RGB")).astype(int)
        ys, xs = np.nonzero((ids == 0) & (np.arange(ids.shape[0])[:, None] < 6))  # (the top rows: the sky)
        assert len(xs), "no sky in the top rows of view 0"
        prompt = write(
            tmp_path / "sky.json", json.dumps({"view": "frame_00000.png", "points": [[float(xs[0]), float(ys[0])]]})
        )
        segmenter = "weightfree"
        assert img.shape[:2] == ids.shape
    r = sa3d(scene, "--pipeline.prompt", prompt, "--pipeline.segmenter", segmenter, "--data", data, out=f"hard_{case}")
    text = r.stdout + r.stderr
    flat = " ".join(text.split())
    assert "Traceback" not in text and r.returncode in (0, 2), text[-3000:]
    print(f"{case}: exit {r.returncode}")
    if r.returncode == 2:
        assert "sa3d error" in flat and not sa3d_runs(scene, f"hard_{case}"), flat[-2000:]
        return
    (run_dir,) = sa3d_runs(scene, f"hard_{case}")
    summary = json.loads((run_dir / "sa3d" / "summary.json").read_text())
    (obj,) = summary["objects"]
    print(f"{case}: counts {obj['counts']}, warnings {obj['warnings']}, first mask {obj['first_mask_warnings']}")
    assert summary["complete"]
    if case == "seen_in_one_view":
        assert obj["counts"]["accepted"] < 2 and obj["warnings"] and "later views agreed" in obj["warnings"][0]
        assert "later views agreed with its 3D mask" in flat
    if case == "fills_the_whole_image":
        assert obj["counts"]["accepted"] >= 10 and not obj["warnings"]


def test_noisy_oracle_runs_and_records_its_mistakes(scene):
    """--pipeline.segmenter oracle-noisy: the run goes through with half of its later views given
    a wrong 2D mask (seed 1 leaves the prompt view right: 11 of 22 views wrong), each recorded in
    summary.json, and the IoU check keeps the 3D mask on the ball."""
    r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle-noisy",
             "--pipeline.noise-rate", "0.5", "--pipeline.noise-kinds", "part", "merge", "stray",
             "--pipeline.noise-seed", "1", out="noisy")  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (run_dir,) = sa3d_runs(scene, "noisy")
    views = json.loads((run_dir / "sa3d" / "summary.json").read_text())["objects"][0]["views"]
    wrong = [v for v in views if "injected_error" in v]
    assert 8 <= len(wrong) <= 11 and views[0]["status"] == "prompt" and "injected_error" not in views[0]
    assert {v["injected_error"] for v in wrong} <= {"part", "merge", "stray"}
    print("noisy oracle:", [(v["injected_error"], v["status"], v.get("iou")) for v in wrong])
    r = run(["sa3d-eval", "--load-config", run_dir / "config.yml", "--split", "test"], scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((run_dir / "sa3d" / "eval_test" / "eval.json").read_text())
    print(f"noisy oracle: held-out mIoU {result['miou']:.4f}")
    assert result["object_id"] == 1 and result["miou"] > 0.5


def test_stray_regions_are_left_out_of_every_view(scene):
    """A disconnected blob added to every 2D mask, the prompt view's included (oracle-noisy,
    stray at rate 1): the prompt view keeps the region of the click and warns, each later view
    keeps the regions the rendered 3D mask meets, and the 3D mask is the ball's as with clean
    masks (the e2e oracle bar)."""
    r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle-noisy",
             "--pipeline.noise-rate", "1", "--pipeline.noise-kinds", "stray", out="stray")  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "may not be the clicked object" in " ".join(r.stdout.split())
    (run_dir,) = sa3d_runs(scene, "stray")
    obj = json.loads((run_dir / "sa3d" / "summary.json").read_text())["objects"][0]
    first = obj["views"][0]
    assert first["injected_error"] == "stray" and "disconnected" in first["candidates"][0]["warnings"]
    assert any("not connected to a click" in w for w in obj["first_mask_warnings"])
    assert list((run_dir / "sa3d" / "views").glob("0000_object_candidate0_chosen.png"))  # to pick from
    later = [v for v in obj["views"][1:] if v["status"] != "skipped"]
    assert sum("dropped_px" in v for v in later) >= len(later) // 2 and obj["stray_px_dropped"] > 0
    r = run(["sa3d-eval", "--load-config", run_dir / "config.yml", "--split", "test"], scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((run_dir / "sa3d" / "eval_test" / "eval.json").read_text())
    print(f"stray blobs in every view: held-out mIoU {result['miou']:.4f}")
    assert result["miou"] > ORACLE_BAR


def test_nerfacto_checkpoint_loads_in_nerfstudio_under_torch_2_6(scene, tmp_path):
    """nerfstudio 1.1.5 loads checkpoints with plain torch.load (weights_only=True since torch 2.6),
    which refuses nerfacto's numpy learning rates; plugin discovery allow-lists them."""
    ckpt = next((scene["nerfacto"].parent / "nerfstudio_models").glob("*.ckpt"))
    plain = f"import torch; torch.load({str(ckpt)!r}, map_location='cpu'); print('loaded')"
    with_plugin = "import nerfstudio.configs.method_configs; " + plain
    r = run(["python", "-c", plain], tmp_path)
    if torch.__version__ >= "2.6":
        assert r.returncode != 0 and "weights_only" in r.stderr.replace("\n", " ")
    r = run(["python", "-c", with_plugin], tmp_path)
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-2000:]


def test_second_run_in_the_scene_reuses_the_caches(scene):
    """A later object or prompt in the same scene reads every view from the cache (no NeRF render)
    and, for the same prompt, gives exactly the same mask field."""
    first = finished_run(scene, "oracle")
    first_summary = json.loads((first / "sa3d" / "summary.json").read_text())
    before = set(sa3d_runs(scene))
    r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (second,) = set(sa3d_runs(scene)) - before
    cache = json.loads((second / "sa3d" / "summary.json").read_text())["cache"]
    assert cache["views_reused"] == 22 and cache["views_built"] == 0, cache
    assert cache["dir"] == first_summary["cache"]["dir"] and cache["disk_bytes"] > 0
    assert Path(cache["dir"]).parent == scene["root"] / "outputs" / "scene" / "sa3d_cache"
    tables = [
        torch.load(next((d / "nerfstudio_models").glob("*.ckpt")), map_location="cpu", weights_only=True)["pipeline"][
            "_model.mask_fields.0.encoding.hash_table"
        ]
        for d in (first, second)
    ]
    assert torch.equal(tables[0], tables[1])


def sa3d_eval(run_dir: Path, *extra, cwd: Path):
    return run(["sa3d-eval", "--load-config", run_dir / "config.yml", *extra], cwd)


@pytest.mark.extended  # (CI runs it after the README's suite; over a minute)
def test_eval_reads_spinnerf_and_nvos_layouts(scene, tmp_path):
    """The public benchmarks' mask layouts give the same per-view IoU as the dataset's own masks."""
    run_dir = finished_run(scene)
    r = sa3d_eval(run_dir, "--split", "all", "--output", tmp_path / "inst", cwd=scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    reference = {v["image"]: v["iou"] for v in json.loads((tmp_path / "inst" / "eval.json").read_text())["views"]}
    names = sorted(reference)  # the scene's images sorted by name (train and held-out)
    gt = {n: (np.asarray(Image.open(scene["root"] / "scene" / "instances" / n)) == 1) for n in names}
    png = lambda m: Image.fromarray(m.astype(np.uint8) * 255)  # noqa: E731

    # SPIn-NeRF: <stem>.png, 0_<stem>.png, imageNNN.png (index into the sorted images), plus files to ignore
    spin = tmp_path / "spin"
    spin.mkdir()
    png(gt[names[0]]).save(spin / f"{Path(names[0]).stem}.png")
    png(gt[names[3]]).save(spin / f"0_{Path(names[3]).stem}.png")
    png(gt[names[11]]).save(spin / "image011.png")
    png(~gt[names[0]]).save(spin / f"{Path(names[0]).stem}_pseudo.png")
    Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(spin / f"{Path(names[0]).stem}_cutout.png")
    (spin / "annotations.json").write_text("{}")
    r = sa3d_eval(run_dir, "--gt", "spinnerf", "--gt-path", spin, "--output", tmp_path / "spin_out", cwd=scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    got = {v["image"]: v["iou"] for v in json.loads((tmp_path / "spin_out" / "eval.json").read_text())["views"]}
    assert set(got) == {names[0], names[3], names[11]}
    for n, v in got.items():
        assert v == pytest.approx(reference[n], abs=1e-6)

    # NVOS: masks/<task>/<target>_mask.png (+ the target image), scribbles/ and reference_image/ alongside
    nvos = tmp_path / "nvos"
    for sub in ("masks/toy", "scribbles/toy", "reference_image/toy"):
        (nvos / sub).mkdir(parents=True)
    target = names[5]
    png(gt[target]).save(nvos / "masks" / "toy" / f"{Path(target).stem}_mask.png")
    shutil.copy(scene["root"] / "scene" / "images" / target, nvos / "masks" / "toy" / target)
    r = sa3d_eval(run_dir, "--gt", "nvos", "--gt-path", nvos, "--nvos-task", "toy", "--output", tmp_path / "nvos_out",
                  cwd=scene["root"])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    views = json.loads((tmp_path / "nvos_out" / "eval.json").read_text())["views"]
    assert [v["image"] for v in views] == [target] and views[0]["iou"] == pytest.approx(reference[target], abs=1e-6)

    # ground truth at twice the resolution: rendered at that resolution, close to the native figure
    big = tmp_path / "big"
    big.mkdir()
    png(gt[names[3]]).resize((128, 128), Image.NEAREST).save(big / f"{Path(names[3]).stem}.png")
    r = sa3d_eval(run_dir, "--gt", "spinnerf", "--gt-path", big, "--output", tmp_path / "big_out", cwd=scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    (view,) = json.loads((tmp_path / "big_out" / "eval.json").read_text())["views"]
    assert abs(view["iou"] - reference[names[3]]) < 0.1


def test_eval_error_paths(scene, tmp_path, monkeypatch, capsys):
    run_dir = finished_run(scene)
    bad_spin = tmp_path / "bad_spin"
    bad_spin.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(bad_spin / "not_an_image_of_this_scene.png")
    wide = tmp_path / "wide"
    wide.mkdir()
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(wide / "frame_00000.png")
    nvos = tmp_path / "nvos"
    (nvos / "masks" / "fern").mkdir(parents=True)
    no_obj = tmp_path / "no_obj"
    shutil.copytree(run_dir, no_obj)
    summary = json.loads((no_obj / "sa3d" / "summary.json").read_text())
    summary["objects"][0]["prompt"]["points"] = [[1.0, 1.0]]  # sky in the prompt view: no ground-truth object there
    (no_obj / "sa3d" / "summary.json").write_text(json.dumps(summary))
    cases = [
        ((tmp_path / "nope" / "config.yml", []), "file not found"),
        ((run_dir / "config.yml", ["--gt", "spinnerf"]), "needs --gt-path"),
        ((run_dir / "config.yml", ["--gt", "spinnerf", "--gt-path", bad_spin]), "match no image"),
        ((run_dir / "config.yml", ["--gt", "spinnerf", "--gt-path", wide]), "another aspect ratio"),
        ((run_dir / "config.yml", ["--gt", "nvos", "--gt-path", nvos, "--nvos-task", "trex"]), "not found"),
        ((run_dir / "config.yml", ["--gt", "nvos", "--gt-path", tmp_path]), "no masks/ folder"),
        ((no_obj / "config.yml", []), "does not fall on any ground-truth object"),
    ]
    # the installed command once (its exit status), the other cases in this process (faster)
    (config, extra), match = cases[0]
    r = run(["sa3d-eval", "--load-config", config, "--output", tmp_path / "out", *extra], scene["root"])
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and match in out and "Traceback" not in out, (match, out[-2000:])
    from sa3d_ns.evaluate import entrypoint

    for (config, extra), match in cases[1:]:
        argv = ["sa3d-eval", "--load-config", str(config), "--output", str(tmp_path / "out"), *map(str, extra)]
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.chdir(scene["root"])
        with pytest.raises(SystemExit) as exit_info:
            entrypoint()
        captured = capsys.readouterr()
        out = " ".join((captured.out + captured.err).split())
        assert exit_info.value.code == 2 and match in out, (match, out[-2000:])
    # a held-out view's instance mask that is not an image (restored afterwards: the scene is shared)
    mask = scene["root"] / "scene" / "instances" / "frame_00011.png"
    kept = mask.read_bytes()
    mask.write_bytes(b"\x89PNG not really")
    try:
        argv = ["sa3d-eval", "--load-config", str(run_dir / "config.yml"), "--output", str(tmp_path / "out")]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            entrypoint()
    finally:
        mask.write_bytes(kept)
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    assert exit_info.value.code == 2 and "frame_00011.png" in out and "cannot be read as an image" in out, out[-2000:]
    assert not (tmp_path / "out").exists()  # nothing written on error


def test_benchmark_tiny_run(scene, tmp_path):
    """scripts/benchmark.py on the test scene's nerfacto: both paths, two objects, a table and the ratio line."""
    r = run(["python", Path(__file__).parents[1] / "scripts" / "benchmark.py", "--workdir", tmp_path,
             "--nerfacto-config", scene["nerfacto"], "--segmenters", "oracle", "--max-views", "3", "--device", "cpu",
             # the default path's machinery (cache, explicit scatter votes) with the reference's rule and all samples
             "--set", "default.lifting=sgd", "default.cache_samples=0", "default.sample_scale=1.0",
             "default.view_memory_mb=256"],  # the second object's views from memory, as on a GPU
            scene["root"])  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert (
        last.startswith("speed-up") and "first object" in last and "second object" in last and "mIoU reference" in last
    )
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert [(x["segmenter"], x["path"]) for x in result["results"]] == [("oracle", "reference"), ("oracle", "default")]
    for x in result["results"]:
        assert x["peak_mb"] > 100 and len(x["objects"]) == 2
        for o in x["objects"]:
            assert o["views"] == 3 and o["render_s"] > 0 and o["lift_s"] > 0 and o["seconds"] > o["render_s"]
            assert 0.0 <= o["miou"] <= 1.0 and 0.5 <= o["macc"] <= 1.0
    ref, default = result["results"]
    assert not ref["cache"]["enabled"] and default["cache"]["views_built"] + default["cache"]["views_reused"] == 6
    assert default["cache"]["views_in_memory"] == 3 and ref["cache"]["views_in_memory"] == 0
    for a, b in zip(ref["objects"], default["objects"], strict=True):
        assert abs(a["miou"] - b["miou"]) < 0.01  # the fast machinery reproduces the faithful path
    assert tree_digest(scene["nerfacto"].parent) == scene["digest"]


def test_renders_and_exports_of_the_object(scene, tmp_path):
    """rgb_object / rgb_removed renders and sa3d-export masks, pointcloud and mesh, checked against
    the scene's known geometry (the red ball, object 1)."""
    from sa3d_ns.core.geometry import read_ply

    run_dir = finished_run(scene)
    cfg = run_dir / "config.yml"
    ball = next(
        o for o in json.loads((scene["root"] / "scene" / "objects.json").read_text())["objects"] if o["id"] == 1
    )
    lo, hi = np.array(ball["bounds_min"]), np.array(ball["bounds_max"])
    pad = 0.15 * (hi - lo)

    def inside(points):
        return ((points > lo - pad) & (points < hi + pad)).all(axis=1)

    # renders of the held-out views: the object alone on white, the scene without it
    r = run(["ns-render", "dataset", "--load-config", cfg, "--output-path", tmp_path / "r", "--split", "test",
             "--rendered-output-names", "rgb", "rgb_removed", "rgb_object", "mask", "--image-format", "png",
             "--colormap-options.colormap", "gray"], scene["root"])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    kernel = np.ones((5, 5), np.uint8)
    far, obj_diff, bg = [], [], []
    rgb_paths = sorted((tmp_path / "r" / "test" / "rgb").glob("*.png"))
    assert len(rgb_paths) == 2
    for rgb_path in rgb_paths:
        name = rgb_path.name
        rgb = np.asarray(Image.open(rgb_path), dtype=np.float32) / 255
        removed = np.asarray(Image.open(tmp_path / "r" / "test" / "rgb_removed" / name), dtype=np.float32) / 255
        obj = np.asarray(Image.open(tmp_path / "r" / "test" / "rgb_object" / name), dtype=np.float32) / 255
        gt = np.asarray(Image.open(scene["root"] / "scene" / "instances" / name)) == 1
        around = cv2.dilate(gt.astype(np.uint8), kernel).astype(bool)
        far.append(np.abs(removed - rgb)[~around].mean())
        assert gt.sum() > 20  # the ball shows in both held-out views
        obj_diff.append(np.abs(removed - rgb)[gt].mean())
        bg.append(obj[~around].mean())
    assert np.mean(far) < 0.03  # removing the ball leaves the rest of the scene as it was
    assert np.mean(obj_diff) > 0.1  # and changes where the ball was
    assert np.mean(bg) > 0.9  # the object alone is on a white background

    # masks for every training image, named after it, at its resolution, matching the ball there
    r = run(["sa3d-export", "masks", "--load-config", cfg, "--output", tmp_path / "masks"], scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    exported = sorted((tmp_path / "masks").glob("*.png"))
    train_names = sorted(
        Path(f["file_path"]).name
        for f in json.loads((scene["root"] / "scene" / "transforms.json").read_text())["frames"]
    )
    assert len(exported) == 22 and {p.name for p in exported} <= set(train_names)
    ious = []
    for path in exported:
        ea = np.asarray(Image.open(path))
        assert ea.shape == (64, 64) and set(np.unique(ea)) <= {0, 255}
        gt = np.asarray(Image.open(scene["root"] / "scene" / "instances" / path.name)) == 1
        ious.append(((ea > 127) & gt).sum() / max(((ea > 127) | gt).sum(), 1))
    assert np.mean(ious) > 0.7, ious  # a mask named after the wrong image would not match

    # a coloured point cloud of the ball only, in the dataset's own frame, covering the ball
    ply = tmp_path / "ball.ply"
    r = run(["sa3d-export", "pointcloud", "--load-config", cfg, "--output", ply, "--num-points", "5000"], scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    points, colors, _ = read_ply(ply)
    assert 1000 <= len(points) <= 5000 and colors is not None
    assert inside(points).mean() > 0.8
    assert ((np.percentile(points, 95, 0) - np.percentile(points, 5, 0)) > 0.5 * (hi - lo)).all()
    assert colors[:, 0].mean() > colors[:, 2].mean()  # a red and yellow ball, not blue

    # only the points in a box (the top half of the ball), in the same frame
    top = [lo[0] - 1, lo[1] - 1, (lo[2] + hi[2]) / 2]
    r = run(["sa3d-export", "pointcloud", "--load-config", cfg, "--output", tmp_path / "top.ply", "--num-points", "5000",
             "--bbox-min", *top, "--bbox-max", *(hi + 1)], scene["root"])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    top_points = read_ply(tmp_path / "top.ply")[0]
    assert (top_points[:, 2] >= top[2] - 1e-5).all() and len(top_points) > 0.2 * len(points)

    # a mesh of the ball
    mesh = tmp_path / "ball.obj"
    r = run(["sa3d-export", "mesh", "--load-config", cfg, "--output", mesh, "--resolution", "32"], scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    verts = np.array(
        [[float(v) for v in line.split()[1:]] for line in mesh.read_text().splitlines() if line.startswith("v ")]
    )
    assert len(verts) > 500 and inside(verts).mean() > 0.8
    assert ((verts.max(0) - verts.min(0)) > 0.6 * (hi - lo)).all()  # the ball, not a fragment of it

    # never overwrite
    r = run(["sa3d-export", "pointcloud", "--load-config", cfg, "--output", ply], scene["root"])
    assert r.returncode == 2 and "exists" in r.stderr
    assert tree_digest(scene["nerfacto"].parent) == scene["digest"]


@pytest.mark.extended  # (~2 to 4 min: CI runs it with the README's suite; scripts/demo.sh adds objects too)
def test_objects_added_to_a_run_are_exclusive_and_exported_each(scene, tmp_path):
    """Two more objects (a prompt file of several) added to a finished one-object run: the first
    object is kept as it was, each object is segmented, rendered, evaluated and exported on its
    own, and no point belongs to two objects."""
    base = finished_run(scene)
    base_digest = tree_digest(base)
    objects = {o["id"]: o for o in json.loads((scene["root"] / "scene" / "objects.json").read_text())["objects"]}
    inst0 = np.asarray(Image.open(scene["root"] / "scene" / "instances" / "frame_00000.png"))

    def centre(i):
        ys, xs = np.nonzero(inst0 == i)
        return [float(np.median(xs)), float(np.median(ys))]

    prompts = tmp_path / "more.json"
    prompts.write_text(json.dumps({"objects": [
        {"name": "crate", "view": 0, "points": [centre(2)]},
        {"name": "can", "view": "frame_00000.png", "points": [centre(3)]},
    ]}))  # fmt: skip

    # bad input first: a taken name, a run that is not an sa3d run
    taken = tmp_path / "taken.json"
    taken.write_text(json.dumps({"view": 0, "points": [centre(2)], "name": "object"}))
    for args, match in [
        (["--pipeline.prompt", taken, "--pipeline.add-to", base / "config.yml"], "already an object"),
        (["--pipeline.prompt", prompts, "--pipeline.add-to", scene["nerfacto"]], "not the config.yml of an sa3d run"),
        (["--pipeline.prompt", prompts, "--pipeline.add-to", tmp_path / "none.yml"], "file not found"),
    ]:
        before = set(sa3d_runs(scene))
        r = sa3d(scene, *args, "--pipeline.segmenter", "oracle")
        out = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 2 and match in out, (match, out[-2000:])
        assert set(sa3d_runs(scene)) == before

    before = set(sa3d_runs(scene))
    r = sa3d(
        scene, "--pipeline.prompt", prompts, "--pipeline.add-to", base / "config.yml", "--pipeline.segmenter", "oracle"
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run_dir,) = set(sa3d_runs(scene)) - before
    assert tree_digest(base) == base_digest  # the run added to is only read
    summary = json.loads((run_dir / "sa3d" / "summary.json").read_text())
    assert [o["name"] for o in summary["objects"]] == ["object", "crate", "can"]
    assert summary["objects"][0]["from_run"] == str(base) and summary["views_done"] == summary["views_total"] == 44
    assert summary["cache"]["views_built"] == 0  # every view came from the scene's cache

    def tables(d):
        state = torch.load(next((d / "nerfstudio_models").glob("*.ckpt")), map_location="cpu", weights_only=True)
        return [
            state["pipeline"][f"_model.mask_fields.{k}.encoding.hash_table"] for k in range(3 if d == run_dir else 1)
        ]

    new_tables = tables(run_dir)
    assert torch.equal(new_tables[0], tables(base)[0])  # the first object is not redone
    assert new_tables[1].abs().sum() > 0 and new_tables[2].abs().sum() > 0

    # every object evaluated against the instance under its own prompt
    r = run(["sa3d-eval", "--load-config", run_dir / "config.yml", "--output", tmp_path / "eval"], scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    got = {o["object"]: (o["object_id"], o["miou"]) for o in result["objects"]}
    assert [got[n][0] for n in ("object", "crate", "can")] == [1, 2, 3]
    # (the crate on this 64-px, 300-step CPU NeRF: 0.36 to 0.77 across trainings, 0.47 with every
    # oracle mask lifted on the 0.36 one; its bar only says it was found)
    assert got["object"][1] > ORACLE_BAR and got["crate"][1] > 0.2 and got["can"][1] > 0.6, got

    # per-object render outputs; the instance masks of two objects never overlap
    r = run(["ns-render", "dataset", "--load-config", run_dir / "config.yml", "--output-path", tmp_path / "r",
             "--split", "test", "--rendered-output-names", "mask_object", "mask_crate", "rgb_overlay", "rgb_object_can",
             "--image-format", "png", "--colormap-options.colormap", "gray"], scene["root"])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "r" / "test" / "mask_crate").glob("*.png"))
    assert len(names) == 2 and all((tmp_path / "r" / "test" / "rgb_object_can" / n).is_file() for n in names)
    for n in names:
        ball, crate = (np.asarray(Image.open(tmp_path / "r" / "test" / f"mask_{o}" / n).convert("L")) > 127
                       for o in ("object", "crate"))  # fmt: skip
        assert crate.sum() > 20 and (ball & crate).sum() <= 0.05 * crate.sum()

    # one point cloud per object, each inside its own object and not in the others'
    r = run(["sa3d-export", "pointcloud", "--load-config", run_dir / "config.yml", "--output", tmp_path / "pc.ply",
             "--num-points", "3000"], scene["root"])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    from sa3d_ns.core.geometry import read_ply

    def inside(points, obj):
        lo, hi = np.array(obj["bounds_min"]), np.array(obj["bounds_max"])
        pad = 0.15 * (hi - lo)
        return ((points > lo - pad) & (points < hi + pad)).all(axis=1)

    clouds = {n: read_ply(tmp_path / f"pc_{n}.ply")[0] for n in ("object", "crate", "can")}
    ins = {name: inside(clouds[name], objects[i]) for name, i in (("object", 1), ("crate", 2), ("can", 3))}
    shares = {name: round(float(i.mean()), 3) for name, i in ins.items()}
    astray = {name: np.median(clouds[name][~i], 0).round(2).tolist() for name, i in ins.items() if not i.all()}
    print(f"mIoU {got}; points inside their own box {shares} of { {n: len(c) for n, c in clouds.items()} }")
    print(f"median of the points outside: {astray}")
    # (the crate's share follows its mask, as its mIoU does: 0.99 to 1.0 in three trainings here, 0.706 in one (mIoU 0.36),
    # 0.67 once in CI on a training whose crate mIoU went unrecorded): a majority says it is the crate
    for name, bar in (("object", 0.8), ("crate", 0.5), ("can", 0.8)):
        assert len(clouds[name]) > 300 and shares[name] > bar, (name, shares)
    assert inside(clouds["object"], objects[2]).mean() < 0.05 and inside(clouds["crate"], objects[1]).mean() < 0.05

    # an unknown object name is refused
    r = run(["sa3d-export", "masks", "--load-config", run_dir / "config.yml", "--object", "lamp"], scene["root"])
    assert r.returncode == 2 and "the run's objects are ['object', 'crate', 'can']" in r.stderr

    # no point belongs to two objects: random points around the scene and inside each object's box
    code = (
        "import sys, json, torch, numpy as np\n"
        "from sa3d_ns.core.objects import crop\n"
        "from sa3d_ns.export import load_run, in_mask\n"
        "p = load_run(sys.argv[1])\n"
        "b = p.model.object_bounds\n"
        "x = torch.cat([torch.rand(100000, 3) * 2 - 1] + [lo + torch.rand(50000, 3) * (hi - lo) for lo, hi in b])\n"
        "raw = torch.stack([f(x) for f in p.model.mask_fields], -1)\n"
        "on = crop(raw, x, b, 0.0) > 0\n"
        "own = np.stack([in_mask(p, x.numpy(), k) for k in range(3)], -1)\n"
        "print(json.dumps({'on_shared': int((on.sum(-1) > 1).sum()), 'owned_shared': int((own.sum(-1) > 1).sum()),"
        " 'owned': int(own.any(-1).sum()), 'on': int(on.any(-1).sum()), 'boxes': b.isfinite().all().item()}))\n"
    )
    r = run(["python", "-c", code, run_dir / "config.yml"], scene["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    assert counts["boxes"] and counts["owned_shared"] == 0 and counts["owned"] == counts["on"] > 0, counts
    assert tree_digest(scene["nerfacto"].parent) == scene["digest"]


def test_text_prompt_segments_the_box_grounding_dino_finds(scene, tmp_path):
    """text -> Grounding DINO (transformers' architecture, tiny, random weights) -> box -> segmenter,
    through `ns-train sa3d`: the run uses the detector's best box in the prompt view and segments it."""
    from test_models import make_tiny_grounding_dino

    from sa3d_ns.segmenters.oracle import OracleSegmenter, read_instance_mask
    from sa3d_ns.segmenters.text import TextDetector, best_box

    gd = make_tiny_grounding_dino(tmp_path / "grounding-dino")
    detector = TextDetector(gd)
    meta = json.loads((scene["root"] / "scene" / "transforms.json").read_text())
    train = {
        v["image"]
        for v in json.loads((finished_run(scene) / "sa3d" / "summary.json").read_text())["objects"][0]["views"]
    }
    # the random detector's box lands anywhere: prompt in a training view where its box holds an object
    for frame in sorted(meta["frames"], key=lambda f: f["file_path"]):
        if Path(frame["file_path"]).name not in train:
            continue
        img = np.asarray(Image.open(scene["root"] / "scene" / frame["file_path"]).convert("RGB"))
        det = best_box(detector.detect(img, "the red ball", 0.25), "the red ball", 0.0, "", img.shape[1], img.shape[0])
        inst = read_instance_mask(scene["root"] / "scene" / frame["instance_mask_path"])
        oracle = OracleSegmenter(lambda view, size, inst=inst: inst)
        oracle.set_image(img, view_id=0)
        expected = oracle.predict(box=det.box).masks[0]
        if expected.sum() > 20:
            break
    else:
        pytest.skip("the random detector's box holds no object in any view")
    prompt = write(tmp_path / "text.json", json.dumps({"view": Path(frame["file_path"]).name, "text": "the red ball"}))
    before = set(sa3d_runs(scene, "text"))
    r = sa3d(scene, "--pipeline.prompt", prompt, "--pipeline.segmenter", "oracle", "--pipeline.segment-image", "train",
             "--pipeline.text-checkpoint", gd, "--pipeline.text-box-threshold", "0", out="text")  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run_dir,) = set(sa3d_runs(scene, "text")) - before
    summary = json.loads((run_dir / "sa3d" / "summary.json").read_text())
    (obj,) = summary["objects"]
    first = obj["views"][0]
    assert obj["prompt"]["text"] == "the red ball" and first["status"] == "prompt"
    assert first["image"] == Path(frame["file_path"]).name
    assert np.allclose(first["text"]["box"], det.box, atol=0.01) and abs(first["text"]["score"] - det.score) < 1e-3
    (mask_png,) = (run_dir / "sa3d" / "masks").glob("0000_*.png")
    assert np.array_equal(np.asarray(Image.open(mask_png)) > 127, expected)
    assert summary["complete"] and obj["counts"]["accepted"] >= 5


def test_viewer_panel_prompts_in_a_camera_segments_and_saves(scene, tmp_path):
    """The viewer panel's logic on a finished run loaded as ns-viewer loads it: the run's object is
    deleted and the ball prompted again in a camera that is not a training view (a held-out view's),
    with a click and a box; Segment (background thread, progress, clicks refused meanwhile) finds
    the ball in 3D; Stop, rename, and Save so that reopening the run shows the objects."""
    from nerfstudio.utils.eval_utils import eval_setup

    from sa3d_ns.evaluate import evaluate_views, instance_ground_truth
    from sa3d_ns.nerf.viewer_panel import PanelLogic

    src = finished_run(scene, "weightfree")
    before = tree_digest(src)
    run_dir = relocated_copy(src, tmp_path)  # (a copy: the module's run stays as it is)
    _, pipeline, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
    assert pipeline.model.object_names == ["object"] and pipeline.order == []
    messages = []
    logic = PanelLogic(pipeline, notify=messages.append)
    logic.delete("object")
    assert pipeline.model.object_names == [] and len(pipeline.model.mask_fields) == 0

    ds = pipeline.datamanager.eval_dataset
    camera = ds.cameras[0:1]
    w, h = int(camera.width[0, 0]), int(camera.height[0, 0])
    inst = np.asarray(Image.open(scene["root"] / "scene" / "instances" / Path(ds.image_filenames[0]).name))
    ys, xs = np.nonzero(inst == 1)  # the red ball
    assert inst.shape == (h, w) and len(xs) > 10
    click = ((np.median(xs) + 0.5) / w, (np.median(ys) + 0.5) / h)
    logic.add_point(camera, click, 1)
    logic.set_box(camera, ((xs.min() - 2) / w, (ys.min() - 2) / h), ((xs.max() + 3) / w, (ys.max() + 3) / h))
    p = logic.current
    assert p.data["rgb"].shape == (h, w, 3) and p.masks is not None and p.masks.shape[1:] == (h, w)
    assert len(p.points) == 1 and p.box is not None
    chosen = p.masks[p.choice]
    assert (chosen & (inst == 1)).sum() > 0.5 * chosen.sum()  # the chosen candidate is on the ball

    assert logic.segment("ball", wait=True)
    assert pipeline.model.object_names == ["ball"] and logic.progress["done"] == logic.progress["total"] == 22
    assert logic.progress["accepted"] >= 10, logic.progress
    data = Path(pipeline.datamanager.dataparser.config.data)
    rows = evaluate_views(pipeline, instance_ground_truth(pipeline.datamanager, data, "train", 1), k=0)
    miou = float(np.mean([r["iou"] for r in rows]))
    print(f"viewer-prompted ball: mIoU over the training views {miou:.4f}")
    assert miou > ORACLE_BAR  # measured 0.72 to 0.91 across the fixture's NeRF trainings

    # clicks during a run are refused with a message; Stop ends the run early
    logic.add_point(camera, click, 1)
    assert logic.segment("ball2")
    logic.add_point(camera, click, 1)
    assert any("Segmentation is running" in m for m in messages)
    logic.stop()
    logic.thread.join()
    assert logic.progress["done"] < logic.progress["total"] and any("stopped after" in m for m in messages)

    # objects: rename (a taken name is refused), delete, save; the saved run reopens with them
    logic.rename("ball2", "spare")
    logic.rename("spare", "ball")
    assert any("exists already" in m for m in messages)
    assert pipeline.model.object_names == ["ball", "spare"]
    logic.delete("spare")  # a stopped object can be deleted
    assert pipeline.model.object_names == ["ball"] and pipeline.active == []
    ckpt = logic.save(run_dir)
    assert len(list((run_dir / "nerfstudio_models").glob("*.ckpt"))) == 2 and ckpt.name > "step-000000021.ckpt"
    saved_prompts = json.loads((run_dir / "sa3d" / "viewer_prompts.json").read_text())
    assert set(saved_prompts) == {"ball"} and saved_prompts["ball"]["camera"]["width"] == w
    _, reopened, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
    assert reopened.model.object_names == ["ball"]
    saved, now = reopened.model.state_dict(), pipeline.model.state_dict()
    assert all(torch.equal(saved[k], now[k]) for k in now if k.startswith(("mask_fields.", "object_bounds")))
    assert tree_digest(src) == before  # the original run is untouched


def test_ns_train_without_a_prompt_waits_in_the_viewer(scene, tmp_path):
    """With no prompt file, `ns-train sa3d` opens the viewer (its SA3D panel installed in the
    Control tab) and waits there for a prompt instead of failing."""
    import socket
    import subprocess
    import time
    import urllib.request

    from helpers import BIN

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [BIN / "ns-train", "sa3d", "--pipeline.nerfacto-config", scene["nerfacto"], "--machine.device-type", "cpu",
           "--pipeline.segmenter", "weightfree", "--viewer.websocket-port", port, "--output-dir", tmp_path / "out"]  # fmt: skip
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=scene["root"], stdout=out, stderr=subprocess.STDOUT)
        try:
            page, deadline = "", time.time() + 240
            while time.time() < deadline and proc.poll() is None:
                try:
                    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                    if list((tmp_path / "out").rglob("*.ckpt")):
                        break
                except OSError:
                    pass
                time.sleep(2)
            time.sleep(3)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    text = log.read_text()
    assert alive and "<html" in page.lower(), text[-3000:]
    assert "prompt objects in the viewer" in " ".join(text.split()) and "Traceback" not in text, text[-3000:]


def test_viewer_panel_in_headless_chromium(scene, tmp_path):
    """The real nerfstudio viewer with a finished run, opened in headless Chromium (Debian's
    chromium, driven by Playwright): delete the run's object with the panel, click on the ball in
    the render, press Segment; the new object appears in the panel, the mask output changes, and
    the canvas shows it as each Display says. Screenshots are kept as test artifacts."""
    run_dir = relocated_copy(finished_run(scene, "weightfree"), tmp_path)
    viewer, pipeline, port, chromium = open_viewer(run_dir)
    ds = pipeline.datamanager.train_dataset
    cam = ds.cameras[0:1]
    before = pipeline.model.get_outputs_for_camera(cam)["mask"].sum().item()
    inst = np.asarray(Image.open(scene["root"] / "scene" / "instances" / Path(ds.image_filenames[0]).name))
    _, after = click_segment_and_look(viewer, pipeline, port, chromium, inst, "viewer")
    assert before > 0 and after.sum() > 0.5 * (inst == 1).sum()
    # the new object is the clicked ball: most of its mask is on the ball (weightfree at 64 px on a
    # 300-step CPU nerfacto, which is not bit-reproducible run to run: precision measured 0.69 to
    # above 0.8; another object would give about 0)
    assert (after & (inst == 1)).sum() > 0.5 * after.sum()


# what the storm does, and how often (weights)
STORM_ACTIONS = {"click": 6, "segment": 3, "stop": 2, "delete": 1, "rename": 2, "save": 2, "display": 2, "undo": 1,
                 "clear": 1, "find": 1, "rerun": 1, "name": 1, "choice": 1, "threshold": 1}  # fmt: skip
STORM_NAMES = ["ball", "../../x", "", "bällchen", "a" * 60, "object", "all", "x/y", " spaced "]


@pytest.mark.extended
def test_viewer_panel_under_a_storm_of_actions_from_two_tabs(scene, tmp_path, monkeypatch):
    """The real viewer on a finished run, two browser tabs (headless Chromium, Playwright), and
    a seeded storm of panel actions from either tab, as fast as the browser takes them: clicks in
    the render (positive / negative / off), Segment, Stop, Delete, Rename (names a user may type:
    empty, a path, unicode, too long), Save, Display, Undo, Clear, Find (no text model here: a
    refusal), Re-run, the object name, the mask choice, the threshold; during runs too. Then: no
    exception reached viser (its callback wrapper is watched) or any thread; every message shown
    was the panel's own (no bare exception text); a Save during a run was refused with a message;
    the panel's object list is the model's; the run folder holds only whole checkpoints, each
    loadable; the server still renders (the canvas follows a camera move). Prints the actions per
    second handled."""
    import random
    import threading
    import time

    import viser.infra._infra as infra
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("SA3D_OFFLINE", "1")  # (Find must refuse, not download Grounding DINO)
    monkeypatch.setenv("SA3D_CACHE", str(tmp_path / "weights"))
    raised: list[str] = []
    wrapper = infra.error_print_wrapper

    def watched(inner):
        def wrapped():
            try:
                inner()
            except Exception as err:  # noqa: BLE001 - what viser would print and swallow
                raised.append(f"viser callback: {type(err).__name__}: {err}")
                raise

        return wrapper(wrapped)

    monkeypatch.setattr(infra, "error_print_wrapper", watched)
    hook = threading.excepthook
    monkeypatch.setattr(
        threading,
        "excepthook",
        lambda a: raised.append(f"thread {a.thread}: {a.exc_type.__name__}: {a.exc_value}") or hook(a),
    )

    run_dir = relocated_copy(finished_run(scene, "weightfree"), tmp_path)
    viewer, pipeline, port, chromium = open_viewer(run_dir)
    panel, logic = pipeline.sa3d_panel, pipeline.sa3d_panel.logic
    messages: list[tuple[bool, str]] = []  # (busy when said, message)
    notify = panel._notify
    monkeypatch.setattr(panel, "_notify", lambda text: messages.append((logic.busy, text)) or notify(text))
    logic.notify = panel._notify
    cam = pipeline.datamanager.train_dataset.cameras[0:1]
    rng = random.Random(7)
    kinds = [k for k, n in STORM_ACTIONS.items() for _ in range(n)]
    done: list[str] = []
    saves_while_busy = 0
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            pages = [browser.new_page(viewport={"width": 640, "height": 420}) for _ in range(2)]
            for page in pages:
                page.goto(f"http://127.0.0.1:{port}/")
                page.get_by_text("SA3D: segment objects").wait_for(timeout=120_000)
            wait_for(lambda: len(viewer.viser_server.get_clients()) == 2, 60, "both tabs to connect")
            for client in viewer.viser_server.get_clients().values():
                look_through(client, cam)
            page.wait_for_timeout(3000)
            h = panel.handles

            def press(page, name):
                page.get_by_role("button", name=name, exact=True).first.click(timeout=20_000)

            started = time.time()
            for i in range(100):
                page, kind = rng.choice(pages), rng.choice(kinds)
                try:
                    if kind == "click":
                        press(page, rng.choice(["positive", "positive", "negative", "off"]))
                        canvas = page.locator('canvas[data-engine^="three.js"]').first
                        bb = canvas.bounding_box()
                        assert bb is not None
                        canvas.click(
                            position={
                                "x": rng.uniform(0.3, 0.7) * bb["width"],
                                "y": rng.uniform(0.2, 0.8) * bb["height"],
                            }
                        )
                    elif kind in ("segment", "stop", "delete", "undo", "rerun"):
                        press(
                            page,
                            {
                                "segment": "Segment",
                                "stop": "Stop",
                                "delete": "Delete",
                                "undo": "Undo",
                                "rerun": "Re-run",
                            }[kind],
                        )
                    elif kind == "clear":
                        press(page, "Clear prompt")
                    elif kind == "save":
                        saves_while_busy += logic.busy
                        press(page, "Save objects to the run")
                    elif kind == "rename":  # (typed into the panel's text box, as a browser edit sets it)
                        h["rename_to"].value = rng.choice(STORM_NAMES)
                        press(page, "Rename")
                    elif kind == "find":
                        h["text"].value = rng.choice(["the red ball", "", "ü" * 300])
                        press(page, "Find the text (Grounding DINO)")
                    elif kind == "name":
                        h["name"].value = rng.choice(STORM_NAMES)
                    elif kind == "display":
                        h["display"].value = rng.choice(h["display"].options)
                    elif kind == "choice":
                        h["choice"].value = rng.choice(h["choice"].options)
                    elif kind == "threshold":
                        h["threshold"].value = rng.choice([0.0, 0.3, 0.99])
                except PlaywrightTimeout as err:
                    raised.append(f"action {i} {kind}: the browser could not do it ({str(err).splitlines()[0]})")
                done.append(kind)
                page.wait_for_timeout(rng.choice([0, 50, 200]))
            elapsed = time.time() - started
            print(f"viewer storm: {len(done)} actions in {elapsed:.1f} s ({len(done) / elapsed:.2f} actions/s), "
                  f"{sum(k == 'segment' for k in done)} Segment, {saves_while_busy} Save during a run; messages: "
                  f"{len(messages)}; raised: {len(raised)}")  # fmt: skip
            for text in sorted({m[:110] for _, m in messages}):
                print("  panel said:", text)
            logic.stop()
            wait_for(lambda: not logic.busy, 300, "the last run to stop")

            # the server still renders: a camera move changes what both tabs show
            canvas = pages[0].locator('canvas[data-engine^="three.js"]').first
            before = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), np.float32)
            look_through(
                next(iter(viewer.viser_server.get_clients().values())), pipeline.datamanager.train_dataset.cameras[5:6]
            )
            deadline, moved = time.time() + 120, 0.0
            while moved < 0.02 and time.time() < deadline:
                time.sleep(1)
                after = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), np.float32)
                moved = float(np.abs(after - before).mean() / 255)
            browser.close()
    finally:
        viewer.viser_server.stop()
    assert not raised, raised[:10]
    bare = [m for _, m in messages if re.match(r"^[A-Z][A-Za-z]*(Error|Exception): ", m)]
    assert not bare, bare[:10]  # (what _guard shows for an exception that is not the user's)
    busy_saves = [m for busy, m in messages if busy and m.startswith("Saved the objects")]
    assert not busy_saves, busy_saves  # (a save during a run is refused)
    if saves_while_busy:
        assert any("Segmentation is running" in m for _, m in messages), messages
    names = tuple(pipeline.model.object_names) or ("(none)",)
    assert tuple(panel.handles["object"].options) == names
    assert moved >= 0.02, "the render did not follow the camera after the storm"
    for ckpt in (run_dir / "nerfstudio_models").iterdir():  # whole checkpoints only, each loadable
        assert ckpt.suffix == ".ckpt", ckpt
        torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not list(run_dir.glob(".*.partial")) and not list(run_dir.rglob("*.tmp"))


RESAVE_UNDER_NUMPY = """
import sys, numpy as np, torch
from sa3d_ns.nerf.checkpoints import load_checkpoint
state = load_checkpoint(sys.argv[1])
torch.save(state, sys.argv[1])
print(np.__version__)
"""


def test_a_nerfacto_run_saved_under_numpy_2(scene, tmp_path, numpy2):
    """A real nerfacto checkpoint as a numpy-2 environment writes it (read and saved again by a
    process running numpy 2, so its numpy scalars carry numpy 2's module name): ns-train sa3d,
    --pipeline.add-to and nerfstudio's own loading (ns-viewer / ns-render / ns-export) take it."""
    copy = tmp_path / "nerfacto_numpy2"
    shutil.copytree(scene["nerfacto"].parent, copy)
    ckpt = next((copy / "nerfstudio_models").glob("*.ckpt"))
    r = run(["python", "-c", RESAVE_UNDER_NUMPY, ckpt], tmp_path, env={"PYTHONPATH": str(numpy2)})
    assert r.returncode == 0 and r.stdout.startswith("2."), r.stderr[-2000:]
    with zipfile.ZipFile(ckpt) as z:
        pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"cnumpy._core.multiarray\nscalar" in pickled and b"cnumpy.core.multiarray" not in pickled

    # nerfstudio's own loader (eval_setup, as ns-viewer / ns-render / ns-export call it)
    code = (
        "import sys; from pathlib import Path; import nerfstudio.configs.method_configs; "
        "from nerfstudio.utils.eval_utils import eval_setup; from sa3d_ns.nerf.offline import lpips_disabled\n"
        "with lpips_disabled():  # (offline: nerfacto builds LPIPS, whose AlexNet weights cannot be fetched)\n"
        "    _, p, c, step = eval_setup(Path(sys.argv[1]), test_mode='inference')\n"
        "print('loaded', step)"
    )
    r = run(["python", "-c", code, copy / "config.yml"], scene["root"])
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-3000:]

    # ns-train sa3d, then another object added to that run
    first = sa3d({**scene, "nerfacto": copy / "config.yml"}, "--pipeline.prompt", scene["prompt"],
                 "--pipeline.segmenter", "oracle", out="numpy2")  # fmt: skip
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (run_dir,) = sa3d_runs(scene, "numpy2")
    inst = np.asarray(Image.open(scene["root"] / "scene" / "instances" / "frame_00000.png"))
    ys, xs = np.nonzero(inst == 2)
    more = write(
        tmp_path / "more.json",
        json.dumps({"name": "crate", "view": 0, "points": [[float(np.median(xs)), float(np.median(ys))]]}),
    )
    r = sa3d({**scene, "nerfacto": copy / "config.yml"}, "--pipeline.prompt", more, "--pipeline.segmenter", "oracle",
             "--pipeline.add-to", run_dir / "config.yml", out="numpy2")  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (added,) = set(sa3d_runs(scene, "numpy2")) - {run_dir}
    names = [o["name"] for o in json.loads((added / "sa3d" / "summary.json").read_text())["objects"]]
    assert names == ["object", "crate"]


def camera_path_json(scene, run_dir: Path, frames: list[int]) -> dict:
    """A nerfstudio camera path (as the viewer's Render tab writes it) through training cameras, in
    the run's world frame (the dataparser's transform and scale applied)."""
    meta = json.loads((scene["root"] / "scene" / "transforms.json").read_text())
    tf = json.loads((run_dir / "dataparser_transforms.json").read_text())
    transform, scale = np.array(tf["transform"]), tf["scale"]
    path = []
    for i in frames:
        c2w = np.array(meta["frames"][i]["transform_matrix"])
        world = transform @ c2w
        world[:3, 3] *= scale
        path.append({"camera_to_world": np.vstack([world, [0, 0, 0, 1]]).ravel().tolist(),
                     "fov": float(np.degrees(2 * np.arctan(meta["h"] / (2 * meta["fl_y"])))), "aspect": 1.0})  # fmt: skip
    return {"camera_type": "perspective", "render_height": 64, "render_width": 64, "camera_path": path,
            "seconds": len(frames) / 4, "fps": 4}  # fmt: skip


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255)
    cap.release()
    return frames


@pytest.mark.parametrize("kind", ["spiral", "interpolate", "camera-path"])
def test_segmented_videos(scene, tmp_path, kind):
    """ns-render spiral / interpolate / camera-path of an sa3d run write mp4 videos of the object
    alone, the scene without it and the overlay, side by side."""
    assert shutil.which("ffmpeg"), "ns-render's videos need ffmpeg (scripts/test.sh and demo.sh install it)"
    run_dir = finished_run(scene)
    video = tmp_path / f"{kind}.mp4"
    extra = {
        "spiral": ["--seconds", "1", "--frame-rate", "6"],
        "interpolate": ["--pose-source", "eval", "--interpolation-steps", "4", "--frame-rate", "6"],
        "camera-path": ["--camera-path-filename", write(tmp_path / "path.json", json.dumps(camera_path_json(scene, run_dir, [0, 3, 6, 9, 12])))],
    }[kind]  # fmt: skip
    r = run(["ns-render", kind, "--load-config", run_dir / "config.yml", "--output-path", video,
             "--rendered-output-names", "rgb_object", "rgb_removed", "rgb_overlay", *extra], scene["root"])  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    frames = read_video(video)
    assert len(frames) >= 4, len(frames)
    h, w, _ = frames[0].shape
    assert w == 3 * h  # rgb_object | rgb_removed | rgb_overlay
    alone = np.stack([f[:, :h] for f in frames])
    removed = np.stack([f[:, h : 2 * h] for f in frames])
    overlay = np.stack([f[:, 2 * h :] for f in frames])
    white = (alone > 0.9).all(-1)
    assert white.mean() > 0.6  # the object alone, on white
    assert (~white).mean(axis=(1, 2)).max() > 0.01  # and the object shows
    assert np.abs(overlay - removed).mean() > 0.01  # the scene without it is not the overlay
    if kind == "spiral":  # the README's kind of picture of a video
        from sa3d_ns.tools.frame_strip import frame_strip

        strip = np.asarray(Image.open(frame_strip(video, tmp_path / "strip.png", 3)))
        assert strip.shape == (3 * h + 2 * 4, w, 3)


def test_a_cache_the_disk_cannot_hold_is_refused_before_anything_is_written(scene, tmp_path):
    """The free space of the cache folder's disk (a real 2 MB tmpfs) is checked before any view is
    rendered: a clear message with the size needed and the flags that shrink it, exit 2, no run."""
    import subprocess

    small = tmp_path / "small_disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode()[-200:]}")
    try:
        before = set(sa3d_runs(scene, "full"))
        r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle",
                 "--pipeline.cache-dir", small / "cache", out="full")  # fmt: skip
        output = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 2, output[-3000:]
        assert "Not enough free disk space for the view cache" in output and "--pipeline.segment-max-size" in output
        assert "--pipeline.cache-samples" in output and "--pipeline.cache-dir" in output
        assert "Traceback" not in output
        assert set(sa3d_runs(scene, "full")) == before
        assert not list(small.rglob("*.pt"))  # nothing half-written where a later run would read it
        # what will be built was said first
        assert "sa3d: segmenting 22 views at 64x64" in output
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def start_sa3d(
    scene, out: str, cache: Path, *extra, limit_bytes: int | None = None, prompt: Path | None = None, env=None
) -> subprocess.Popen:
    """ns-train sa3d (oracle, the e2e prompt or ``prompt``) as a process whose output can be read as
    it runs (``env``: more environment variables)."""
    import resource

    cmd = [str(BIN / "ns-train"), "sa3d", "--pipeline.nerfacto-config", str(scene["nerfacto"]), "--machine.device-type", "cpu",
           "--vis", "tensorboard", "--output-dir", str(scene["root"] / out), "--pipeline.prompt", str(prompt or scene["prompt"]),
           "--pipeline.segmenter", "oracle", "--pipeline.cache-dir", str(cache), *map(str, extra)]  # fmt: skip

    def in_child():
        # Ctrl-C as at a terminal: a process started in the background by a non-interactive shell
        # (as CI runs the tests) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if limit_bytes is not None:  # (a disk that fills up: every write beyond the limit fails, EFBIG)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen(
        cmd, cwd=scene["root"], env={**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=in_child,
    )  # fmt: skip


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_run_stopped_mid_loop_leaves_no_half_run_and_a_rerun_reuses_its_cache(scene, sig, code, said):
    """Ctrl-C or SIGTERM in the middle of the loop: one message saying what was kept (no
    traceback), exit 130 / 143, the unfinished run folder removed (no command can take it for a
    finished run), the views cached so far kept whole; the same command run again finishes and
    reuses them."""
    out, cache = f"stopped_{sig.name}", scene["root"] / f"cache_{sig.name}"
    # (its output unbuffered, so that "view 5/44" is read as it is printed; two passes, 44 views: a
    # fresh-clone run once finished all 22 views of one pass before a buffered line was read)
    proc = start_sa3d(scene, out, cache, "--pipeline.num-passes", "2")
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "view 5/44" in line:
            break
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=300)
    text = "".join(lines) + rest
    assert proc.returncode == code, text[-3000:]
    assert "Traceback" not in text and f"stopped by {said}" in text, text[-3000:]
    assert "Removed the unfinished run folder" in text and "run it again" in " ".join(text.split())
    assert not list((scene["root"] / out).glob("*/sa3d/*")), "an unfinished run folder was left"
    cached = list(cache.rglob("view*.pt"))
    assert len(cached) >= 5 and not list(cache.rglob("*.tmp"))
    for path in cached:  # every entry left is whole
        torch.load(path, map_location="cpu", weights_only=True)
    r = sa3d(
        scene,
        "--pipeline.prompt",
        scene["prompt"],
        "--pipeline.segmenter",
        "oracle",
        "--pipeline.cache-dir",
        cache,
        "--pipeline.num-passes",
        "2",
        out=out,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run_dir,) = sa3d_runs(scene, out)
    summary = json.loads((run_dir / "sa3d" / "summary.json").read_text())
    assert summary["complete"] and summary["cache"]["views_reused"] >= len(cached)


def read_until(proc: subprocess.Popen, marker: str, label: str = "") -> str:
    """The process's output up to (and with) the first line holding ``marker``."""
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"{label}: {marker!r} never printed (exit {proc.wait()}):\n" + "".join(lines)[-3000:])


# where a stopped run is stopped: (the process stalled there by tests/fault_hooks, or the line it
# printed), how, the exit status; SIGKILL leaves the run folder (nothing can clean up)
KILL_POINTS = [
    ("inputs", "load:.ckpt", signal.SIGINT, 130),  # (checking the nerfacto checkpoint: no run folder yet)
    ("setup", "load:.ckpt#2", signal.SIGTERM, 143),  # (loading the nerfacto checkpoint into the model)
    ("cache entry", "save:.tmp", signal.SIGKILL, -9),  # (half of the first view's entry written)
    ("mid-loop", "sa3d: view ", signal.SIGKILL, -9),  # (the first view's line: 3/22)
    ("summary", "write:summary.json.tmp#3", signal.SIGKILL, -9),  # (half of the third view's summary.json)
    ("checkpoint", "save:.ckpt.partial", signal.SIGINT, 130),  # (half of the checkpoint written)
    ("checkpoint", "save:.ckpt.partial", signal.SIGKILL, -9),
]


@pytest.mark.extended
def test_a_run_killed_anywhere_is_never_taken_for_a_finished_one_and_a_rerun_works(scene):
    """ns-train sa3d stopped at each point of KILL_POINTS, one after another on one cache folder:
    Ctrl-C / SIGTERM remove the run folder and say so (no traceback); after SIGKILL the folder left
    is refused by every command (sa3d-eval each; ns-render the one killed mid-loop and the most
    finished-looking one, killed while its checkpoint was written, which sa3d-export and
    --pipeline.add-to refuse too), never with a traceback; no
    file in the models folder that nerfstudio would try to load; the same command run again
    finishes and reuses every whole cache entry (a half-written one is never read)."""
    root = scene["root"]
    out, cache = "killed", root / "cache_killed"
    left = {}
    for point, where, sig, code in KILL_POINTS:
        before = set(sa3d_runs(scene, out))
        stalled = where.startswith(("load:", "save:", "write:"))
        proc = start_sa3d(
            scene, out, cache, env={"PYTHONPATH": str(FAULT_HOOKS), "SA3D_TEST_STALL": where} if stalled else None
        )
        label = f"{point} / {sig.name}"
        text = read_until(proc, "sa3d-test: stalled at" if stalled else where, label)
        proc.send_signal(sig)
        text += proc.communicate(timeout=300)[0]
        assert proc.returncode == code, (label, text[-3000:])
        assert "Traceback" not in text, (label, text[-3000:])
        new = set(sa3d_runs(scene, out)) - before
        if sig == signal.SIGKILL:
            (left[point],) = new
        else:
            what = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
            said = "nothing was written" if point == "inputs" else "Removed the unfinished run folder"
            assert f"stopped by {what}" in text and said in text, (label, text[-3000:])
            assert not new, label
        for run_dir in sa3d_runs(scene, out):  # nothing nerfstudio would load in a models folder
            models = run_dir / "nerfstudio_models"
            assert not models.exists() or not list(models.iterdir()), (label, list(models.iterdir()))
    assert (left["checkpoint"] / f".step-{21:09d}.ckpt.partial").is_file()  # (the half checkpoint, hidden)
    summary = left["summary"] / "sa3d" / "summary.json"  # (the second view's, whole; the third's half in .tmp)
    assert not json.loads(summary.read_text())["complete"] and summary.with_name("summary.json.tmp").is_file()
    assert json.loads((left["checkpoint"] / "sa3d" / "summary.json").read_text())["complete"]
    half = list(cache.rglob("*.tmp"))
    assert len(half) == 1  # (the entry whose write was killed)

    for point, run_dir in left.items():
        r = sa3d_eval(run_dir, cwd=root)
        flat = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 2 and "is not a finished sa3d run" in flat and "Traceback" not in flat, (
            point,
            flat[-2000:],
        )
        if point not in ("mid-loop", "checkpoint"):
            continue  # (ns-render's refusal is nerfstudio's own, the same for every folder without a checkpoint)
        r = run(["ns-render", "dataset", "--load-config", run_dir / "config.yml", "--output-path", root / "kill_renders",
                 "--rendered-output-names", "mask", "--split", "test"], root)  # fmt: skip
        text = " ".join((r.stdout + r.stderr).split())
        assert r.returncode != 0 and "Traceback" not in text and "No checkpoint directory found" in text, (
            point,
            text[-2000:],
        )
        assert not (root / "kill_renders").exists()
    last = left["checkpoint"]
    r = run(["sa3d-export", "masks", "--load-config", last / "config.yml"], root)
    flat = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "it has no checkpoint" in flat and "Run ns-train sa3d again" in flat, flat[-2000:]
    r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle", "--pipeline.add-to",
             last / "config.yml", out="killed_add")  # fmt: skip
    flat = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "that run did not finish" in flat and "Traceback" not in flat, flat[-2000:]

    # the same command again: it finishes, and reuses every whole entry of the cache
    whole = list(cache.rglob("view*.pt"))
    assert len(whole) == 22  # (the checkpoint's runs went through every view)
    before = set(sa3d_runs(scene, out))
    r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle", "--pipeline.cache-dir",
             cache, out=out)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (done,) = set(sa3d_runs(scene, out)) - before
    summary = json.loads((done / "sa3d" / "summary.json").read_text())
    assert (
        summary["complete"] and summary["cache"]["views_reused"] == len(whole) == 22 - summary["cache"]["views_built"]
    )
    assert len(list((done / "nerfstudio_models").glob("step-*.ckpt"))) == 1


@pytest.mark.extended
def test_a_finished_run_outlives_changes_to_its_nerfacto_run(scene, tmp_path):
    """The nerfacto run changes under a finished sa3d run. Moved away: the sa3d run still renders
    (ns-render; it holds the frozen NeRF in its checkpoint). Trained further (a later checkpoint
    in its folder): --pipeline.add-to refuses the run of the older checkpoint with a message naming
    both; the nerfacto run is left as it was (the test's later checkpoint removed)."""
    run_dir = finished_run(scene)
    parked = scene["nerfacto"].parent.with_name("parked_away")
    scene["nerfacto"].parent.rename(parked)
    try:
        r = run(["ns-render", "dataset", "--load-config", run_dir / "config.yml", "--output-path", tmp_path / "renders",
                 "--rendered-output-names", "mask", "--split", "test", "--image-format", "png"], scene["root"])  # fmt: skip
    finally:
        parked.rename(scene["nerfacto"].parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "renders" / "test" / "mask").glob("*.png"))) == 2
    models = scene["nerfacto"].parent / "nerfstudio_models"
    (old,) = list(models.glob("*.ckpt"))
    later = models / "step-000009999.ckpt"
    shutil.copy(old, later)  # (as if trained further: the latest checkpoint is now another file)
    try:
        r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle", "--pipeline.add-to",
                 run_dir / "config.yml", out="outlives")  # fmt: skip
    finally:
        later.unlink()
    flat = "".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "Traceback" not in flat, flat[-3000:]
    assert "thatrunsegmentedanotherNeRF" in flat and old.name in flat and later.name in flat, flat[-3000:]
    assert not sa3d_runs(scene, "outlives")
    assert tree_digest(scene["nerfacto"].parent) == scene["digest"]


class RunsCode:
    """Unpickled (if it ever were), creates the file ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_damaged_or_foreign_cache_entries_are_said_and_built_again(scene):
    """A copy of a finished run's cache with four entries spoiled (cut in half, a tensor of the
    wrong shape, NaN weights, a crafted pickle that would create a file if it ran) beside a folder
    of the same views written by an older cache format under another torch: the run says each (the
    entry's path and what is wrong with it; the old folder and how to free it), builds those four
    views again, never runs the pickle, and segments as the intact cache does."""
    root = scene["root"]
    first = finished_run(scene)
    intact = Path(json.loads((first / "sa3d" / "summary.json").read_text())["cache"]["dir"])  # (that run's own)
    assert len(list(intact.glob("view*.pt"))) == 22
    cache = root / "cache_spoiled"
    folder = cache / intact.name
    shutil.copytree(intact, folder)
    entry = folder / "view00001.pt"
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    entry = folder / "view00002.pt"
    data = torch.load(entry, weights_only=True)
    torch.save({**data, "positions": data["positions"][:, :3]}, entry)
    entry = folder / "view00003.pt"
    data = torch.load(entry, weights_only=True)
    data["weights"][0, 0] = float("nan")
    torch.save(data, entry)
    marker = root / "the_pickle_ran"
    torch.save({"positions": RunsCode(marker)}, folder / "view00004.pt")
    old = cache / "0123456789abcdef"
    old.mkdir()
    key = json.loads((folder / "key.json").read_text())
    (old / "key.json").write_text(json.dumps({**key, "version": 0, "torch": "1.13"}))
    shutil.copy(folder / "view00005.pt", old / "view00005.pt")
    r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle", "--pipeline.cache-dir",
             cache, out="spoiled")  # fmt: skip
    text = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in text, text[-3000:]
    flat = "".join(text.split())
    for n, why in [(1, "cannotberead"), (2, "'positions'is"), (3, "notfinite"), (4, "cannotberead")]:
        assert f"view{n:05d}.pt" in flat and why in flat.split(f"view{n:05d}.pt", 1)[1][:300], (n, text[-3000:])
    assert not marker.exists(), "the crafted pickle ran"
    (run_dir,) = sa3d_runs(scene, "spoiled")
    summary = json.loads((run_dir / "sa3d" / "summary.json").read_text())
    assert summary["cache"]["views_built"] == 4 and summary["cache"]["views_reused"] == 18, summary["cache"]
    assert summary["cache"]["entries_dropped"] == 4
    for n in (1, 2, 3, 4):  # built again, whole
        torch.load(folder / f"view{n:05d}.pt", weights_only=True)
    ious = [
        [v.get("iou") for v in o["views"]] for o in json.loads((first / "sa3d" / "summary.json").read_text())["objects"]
    ]
    assert ious == [[v.get("iou") for v in o["views"]] for o in summary["objects"]]
    # the older folder: not read, and said where a run makes a new folder (another sa3d version)
    shutil.rmtree(folder)
    r = sa3d(scene, "--pipeline.prompt", scene["prompt"], "--pipeline.segmenter", "oracle", "--pipeline.cache-dir",
             cache, out="spoiled")  # fmt: skip
    flat = "".join((r.stdout + r.stderr).split())
    assert (
        r.returncode == 0 and str(old).replace(" ", "") in flat and "cacheformat0" in flat and "torch1.13" in flat
    ), flat[-3000:]
    assert (old / "view00005.pt").is_file()  # (never deleted by a run: the user's to delete)


def test_a_full_disk_while_caching_is_a_clear_error(scene):
    """The cache's disk fills up (every file limited to 256 KB, less than one view's entry): a clear
    message naming the file and its folder, exit 2, no partial cache entry, no run folder left."""
    out, cache = "full_disk", scene["root"] / "cache_full"
    proc = start_sa3d(scene, out, cache, limit_bytes=256 * 1024)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, text[-3000:]
    flat = " ".join(text.split())
    assert "Traceback" not in text and "sa3d error: Could not write the cache entry" in flat, text[-3000:]
    assert str(cache) in flat.replace(" ", "") or cache.name in flat
    assert "--pipeline.cache-dir" in flat and "Removed the unfinished run folder" in flat
    assert not list(cache.rglob("*.pt")) and not list(cache.rglob("*.tmp"))
    assert not list((scene["root"] / out).glob("*/sa3d/*"))


@pytest.mark.extended  # (~2 min: CI runs it with the README's suite)
def test_two_runs_at_once_sharing_one_cache(scene):
    """Two ns-train sa3d started together on the scene, for two objects, into the same output
    folder (nerfstudio's run folders are named to the second: they would be the same folder) and
    with one cache folder (the views' entries are the same for both objects, written by both runs
    at once): each gets its own run folder, both finish with their object segmented, and every
    cache entry left is whole and read back by a third run."""
    root = scene["root"]
    out, cache = "together", root / "cache_together"
    ids = np.asarray(Image.open(root / "scene" / "instances" / "frame_00000.png"))
    depth = cv2.distanceTransform(np.pad(ids == 2, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)  # (the crate's most interior pixel)
    crate = write(
        root / "prompt_crate.json",
        json.dumps({"view": "frame_00000.png", "points": [[float(x), float(y)]], "labels": [1]}),
    )
    same = ("--timestamp", "together")  # (as two runs started in the same second)
    procs = [start_sa3d(scene, out, cache, *same), start_sa3d(scene, out, cache, *same, prompt=crate)]
    texts = [p.communicate(timeout=900)[0] for p in procs]
    for proc, text in zip(procs, texts, strict=True):
        assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    runs = sa3d_runs(scene, out)
    assert len(runs) == 2, runs  # two folders, even when started in the same second
    results = {}
    for run_dir in runs:
        summary = json.loads((run_dir / "sa3d" / "summary.json").read_text())
        assert summary["complete"] and len(list((run_dir / "nerfstudio_models").glob("*.ckpt"))) == 1
        r = sa3d_eval(run_dir, cwd=root)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        result = json.loads((run_dir / "sa3d" / "eval_test" / "eval.json").read_text())
        results[result["objects"][0]["object_id"]] = result["miou"]
    assert set(results) == {1, 2} and results[1] > ORACLE_BAR, results
    entries = list(cache.rglob("*.pt"))
    assert entries and not list(cache.rglob("*.tmp"))
    for path in entries:
        torch.load(path, map_location="cpu", weights_only=True)
    # the crate again, alone, from the cache: the same result as in the run beside another
    # (the crate's own figure depends on this 300-step CPU NeRF: 0.42 to 0.55 measured on such NeRFs)
    r = sa3d(
        scene, "--pipeline.prompt", crate, "--pipeline.segmenter", "oracle", "--pipeline.cache-dir", cache, out=out
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (third,) = set(sa3d_runs(scene, out)) - set(runs)
    assert json.loads((third / "sa3d" / "summary.json").read_text())["cache"]["views_built"] == 0
    r = sa3d_eval(third, cwd=root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    alone = json.loads((third / "sa3d" / "eval_test" / "eval.json").read_text())
    assert abs(alone["miou"] - results[alone["objects"][0]["object_id"]]) < 0.02, (alone["miou"], results)
