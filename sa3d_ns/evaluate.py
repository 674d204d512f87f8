"""``sa3d-eval``: compare an sa3d run's rendered object mask with the dataset's instance masks.

    sa3d-eval --load-config outputs/<scene>/sa3d/<timestamp>/config.yml [--split test|train|all] [--output DIR]

The prompted object is the ground-truth instance under the prompt's positive points in the prompt
view (or the one that best fills the prompt's box). Per view: IoU = TP / (TP + FP + FN) and
accuracy = (TP + TN) / pixels; printed as a table, written to ``DIR/eval.json`` with side-by-side
images (ground truth | prediction | overlay) of the worst views.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.metrics import accuracy, cutout_figures, iou
from sa3d_ns.run_folder import RunFolder

if TYPE_CHECKING:
    from sa3d_ns.nerf.model import SA3DModel


def prompted_object_id(instances: np.ndarray, prompt: dict) -> int:
    from sa3d_ns.segmenters.oracle import OracleSegmenter

    seg = OracleSegmenter(lambda view, size: instances)
    seg.set_image(np.zeros((*instances.shape, 3), np.uint8), view_id=0)
    box = None if prompt.get("box") is None else np.asarray(prompt["box"], np.float32)
    mask = seg.predict(
        np.asarray(prompt["points"], np.float32).reshape(-1, 2), np.asarray(prompt["labels"]), box
    ).masks[0]
    if not mask.any():
        raise SA3DError(
            "The prompt does not fall on any ground-truth object in the prompt view; cannot tell which object to evaluate."
        )
    return int(np.bincount(instances[mask]).argmax())


@dataclass
class GroundTruth:
    """One view to evaluate: where it is in the run's datasets and its binary object mask."""

    name: str
    dataset: str  # "train" or "eval"
    index: int
    mask: np.ndarray  # H x W bool, at the resolution the ground truth ships in
    source: Path
    image: Path | None = None  # the real image (for the NeRF's own PSNR)
    removed: Path | None = None  # the view rendered without the object (generated scenes)
    seen: Path | None = None  # which pixels of the object's footprint other views see
    whole: Path | None = None  # the object's whole silhouette, parts hidden by others included


def dataset_views(dm) -> dict[str, tuple[str, int, str]]:
    """File stem -> (dataset, index, file name) for every image of the run (train and eval)."""
    views = {}
    for key, ds in (("train", dm.train_dataset), ("eval", dm.eval_dataset)):
        if ds is None:
            continue
        for i, p in enumerate(ds.image_filenames):
            views[Path(p).stem] = (key, i, Path(p).name)
    return views


def instance_ground_truth(dm, data: Path, split: str, obj: int) -> list[GroundTruth]:
    """The dataset's own instance masks (``instance_mask_path`` in transforms.json), object ``obj``."""
    from sa3d_ns.data import camera_sizes, check_frames, instance_mask_paths, removal_truth_paths, whole_mask_path
    from sa3d_ns.segmenters.oracle import read_instance_mask

    keys = {"test": ["eval"], "train": ["train"], "all": ["train", "eval"]}[split]
    out = []
    for key in keys:
        ds = dm.train_dataset if key == "train" else dm.eval_dataset
        if ds is None or len(ds) == 0:
            raise SA3DError(f"The run's dataset has no {split} views to evaluate.")
        names = [str(p) for p in ds.image_filenames]
        masks = instance_mask_paths(data, names)
        check_frames(data, names, camera_sizes(ds.cameras), masks=masks)
        for i, path in enumerate(masks):
            name = Path(names[i]).name
            removed, seen = removal_truth_paths(data, obj, name)
            mask = read_instance_mask(path) == obj
            whole = whole_mask_path(data, obj, name)
            out.append(GroundTruth(name, key, i, mask, path, Path(names[i]), removed, seen, whole))
    if not any(g.mask.any() for g in out):
        raise SA3DError(
            f"Object {obj} appears in none of the {len(out)} {split} views' ground-truth masks: nothing to compare with. "
            "Evaluate another split (--split train|all) or check the dataset's instance masks."
        )
    return out


def read_binary_mask(path: Path) -> np.ndarray:
    from PIL import Image

    arr = np.asarray(Image.open(path))
    if arr.ndim == 3:
        arr = arr[..., :3].max(-1) if arr.shape[-1] != 2 else arr[..., 0]
    return arr > 0


def spinnerf_ground_truth(dm, folder: Path) -> list[GroundTruth]:
    """SPIn-NeRF's multiview segmentation masks: one folder per scene holding ``<name>.png`` masks
    (next to ``<name>_pseudo.png``, ``<name>_cutout.png`` and ``annotations.json``, which are
    ignored). ``<name>`` is an image's file stem, the stem with a ``0_`` / ``1_`` prefix, or
    ``imageNNN`` (an index into the scene's images sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SA3DError(f"--gt-path {folder}: not a folder. Give the scene's folder of SPIn-NeRF multiview masks.")
    files = sorted(
        p for p in folder.glob("*.png") if not p.stem.endswith(("_pseudo", "_cutout")) and "cutout" not in p.stem
    )
    if not files:
        raise SA3DError(f"No mask PNGs in {folder} (SPIn-NeRF masks are <image name>.png).")
    views = dataset_views(dm)
    ordered = sorted(views)
    out, unmatched = [], []
    for f in files:
        stem = f.stem
        key = None
        if stem in views:
            key = stem
        elif stem[:2] in ("0_", "1_") and stem[2:] in views:
            key = stem[2:]
        elif stem.startswith("image") and stem[5:].isdigit() and int(stem[5:]) < len(ordered):
            key = ordered[int(stem[5:])]
        if key is None:
            unmatched.append(f.name)
            continue
        ds, idx, name = views[key]
        out.append(GroundTruth(name, ds, idx, read_binary_mask(f), f))
    if unmatched:
        raise SA3DError(
            f"{len(unmatched)} SPIn-NeRF mask(s) in {folder} match no image of the run's dataset (e.g. {unmatched[:3]}); "
            "is --gt-path the folder of the same scene?"
        )
    return out


def nvos_ground_truth(dm, root: Path, task: str | None) -> list[GroundTruth]:
    """NVOS: ``<root>/masks/<task>/<target>_mask.png`` is the target view's mask (0/255);
    ``<target>`` is the file stem of an image of the scene. Only the target view is evaluated."""
    root = Path(root)
    masks_dir = root / "masks"
    if not masks_dir.is_dir():
        raise SA3DError(
            f"--gt-path {root} has no masks/ folder: give the NVOS root (with masks/, scribbles/, reference_image/)."
        )
    tasks = sorted(p.name for p in masks_dir.iterdir() if p.is_dir())
    if task is None:
        raise SA3DError(f"Name the NVOS scene with --nvos-task (one of {tasks}).")
    if task not in tasks:
        raise SA3DError(f"NVOS task {task!r} not found in {masks_dir}; choose one of {tasks}.")
    targets = sorted((masks_dir / task).glob("*_mask.png"))
    if len(targets) != 1:
        raise SA3DError(f"Expected one <target>_mask.png in {masks_dir / task}, found {len(targets)}.")
    stem = targets[0].stem[: -len("_mask")]
    views = dataset_views(dm)
    if stem not in views:
        raise SA3DError(
            f"The NVOS target view {stem} is not an image of the run's dataset; is it the same LLFF scene ({task})?"
        )
    ds, idx, name = views[stem]
    return [GroundTruth(name, ds, idx, read_binary_mask(targets[0]), targets[0])]


def read_rgb(path: Path | None, size: tuple[int, int]) -> np.ndarray | None:
    """An image file as H x W x 3 floats in [0, 1] at ``size`` (w, h); None without a path."""
    if path is None:
        return None
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, np.float32) / 255


def evaluate_views(pipeline, truths: list[GroundTruth], k: int = 0) -> list[dict]:
    """Render object ``k``'s mask in every ground-truth view at the ground truth's resolution and
    compare. Rows carry the image name, IoU, accuracy, the cut-out figures
    (:func:`sa3d_ns.core.metrics.cutout_figures`: specks, removal against the truth where the
    dataset has it) and (under ``_`` keys) the prediction, ground truth and renders."""
    return evaluate_objects(pipeline, [(truths, k)])[0]


def evaluate_objects(pipeline, jobs: list[tuple[list[GroundTruth], int]]) -> list[list[dict]]:
    """:func:`evaluate_views` for several objects ((ground truths, object index) each): each view
    is rendered once for all the objects that are scored in it (a render makes every object's
    outputs, their cut-outs included, so a view rendered per object cost K times more)."""
    from rich.progress import track

    views: dict[tuple, list[tuple[int, int, GroundTruth]]] = {}
    for j, (truths, _) in enumerate(jobs):
        for i, gt in enumerate(truths):
            views.setdefault((gt.dataset, gt.index, gt.mask.shape), []).append((j, i, gt))
    rows: list[list[dict]] = [[{} for _ in truths] for truths, _ in jobs]
    pipeline.model.eval()
    for wanted in track(list(views.values()), description=f"Rendering {len(views)} views", transient=True):
        out = render_truth_view(pipeline, wanted[0][2])
        for j, i, gt in wanted:
            rows[j][i] = score_view(pipeline, out, gt, jobs[j][1])
    return rows


def render_truth_view(pipeline, gt: GroundTruth) -> dict:
    """Every output of the run in ``gt``'s view, rendered at the ground truth's resolution."""
    from sa3d_ns.nerf.cameras import rescaled, training_camera

    if gt.dataset == "train":  # (at the pose the run learned for the image, which its masks line up with)
        cam = training_camera(pipeline, gt.index)
    else:
        cam = pipeline.datamanager.eval_dataset.cameras[gt.index : gt.index + 1].to(pipeline.device)
    w, h = int(cam.width[0, 0]), int(cam.height[0, 0])
    gh, gw = gt.mask.shape
    if (gw, gh) != (w, h):
        if abs(gw / gh - w / h) > 0.01 * (w / h):
            raise SA3DError(
                f"Ground truth {gt.source} is {gw}x{gh} but view {gt.name} is {w}x{h} (another aspect ratio): "
                "are the masks from the same images?"
            )
        rescaled(cam, gw / w)
    return pipeline.model.get_outputs_for_camera(cam)


def score_view(pipeline, out: dict, gt: GroundTruth, k: int) -> dict:
    """The row of object ``k`` in one rendered view (``out``) against its ground truth ``gt``."""
    gh, gw = gt.mask.shape
    name = pipeline.model.output_name
    pred = out[name("mask", k)][..., 0].cpu().numpy() > 0.5
    rgb = out["rgb"].cpu().numpy()
    removed = out[name("rgb_removed", k)].cpu().numpy()
    alone = out[name("rgb_object", k)].cpu().numpy()
    acc = out[name("accumulation_object", k)][..., 0].cpu().numpy()
    if pred.shape != gt.mask.shape:  # rounding of the rescaled size: at most a pixel or two
        import cv2

        pred, rgb, removed, alone, acc = (
            cv2.resize(a, (gw, gh), interpolation=cv2.INTER_NEAREST)
            for a in (pred.astype(np.uint8), rgb, removed, alone, acc)
        )
        pred = pred.astype(bool)
    truth, image = read_rgb(gt.removed, (gw, gh)), read_rgb(gt.image, (gw, gh))
    seen = None if gt.seen is None else read_binary_mask(gt.seen)
    whole = None if gt.whole is None else read_binary_mask(gt.whole)
    if whole is not None and whole.shape != gt.mask.shape:
        whole = None
    return {
        "image": gt.name,
        "iou": iou(pred, gt.mask),
        "accuracy": accuracy(pred, gt.mask),
        **cutout_figures(gt.mask, acc, rgb, removed, image, truth, seen, whole=whole),
        "_pred": pred,
        "_gt": gt.mask,
        "_rgb": rgb,
        "_removed": removed,
        "_alone": alone,
        "_acc": acc,
        "_truth": truth,
        "_image": image,
        "_seen": seen,
        "_whole": whole,
    }


def evaluate_run(
    load_config: Path,
    split: str = "test",
    output: Path | None = None,
    worst: int = 4,
    gt: str = "instances",
    gt_path: Path | None = None,
    nvos_task: str | None = None,
    object_name: str | None = None,
) -> dict:
    """Evaluate one object of the run (``object_name``), or with the dataset's instance masks
    every object (each against the instance under its prompt)."""
    from nerfstudio.utils.eval_utils import eval_setup

    load_config = Path(load_config)
    if not load_config.is_file():
        raise SA3DError(f"--load-config {load_config}: file not found. Give the config.yml of an sa3d run.")
    run = RunFolder.of(load_config)
    run.check_finished()
    summary_path = run.summary_path
    if gt != "instances" and gt_path is None:
        raise SA3DError(f"--gt {gt} needs --gt-path: the folder the benchmark's masks were unpacked to.")
    if gt not in ("instances", "spinnerf", "nvos"):
        raise SA3DError(f"Unknown --gt {gt!r}; choose instances, spinnerf or nvos.")
    objects = run.summary().get("objects") or []
    if not objects or not all(o.get("views") for o in objects):
        raise SA3DError(f"{summary_path} lists no processed views: the run did not finish its first view.")
    names = [o["name"] for o in objects]
    if object_name is not None and object_name not in names:
        raise SA3DError(f"--object {object_name}: the run's objects are {names}.")
    if object_name is None and gt != "instances" and len(names) > 1:
        raise SA3DError(f"The run has several objects {names}: say which one the {gt} masks show with --object NAME.")
    chosen = [o for o in objects if object_name in (None, o["name"])]
    config, pipeline, _, _ = eval_setup(load_config, test_mode="test")
    dm = pipeline.datamanager
    assert config.pipeline.datamanager.data is not None  # (an sa3d run's config names its data)
    data = Path(config.pipeline.datamanager.data)
    ids, jobs = [], []
    for o in chosen:
        obj = None
        if gt == "instances":
            obj = prompted_instance(dm, data, o)
            truths = instance_ground_truth(dm, data, split, obj)
        elif gt == "spinnerf":
            assert gt_path is not None  # (checked above)
            truths = spinnerf_ground_truth(dm, gt_path)
        else:
            assert gt_path is not None  # (checked above)
            truths = nvos_ground_truth(dm, gt_path, nvos_task)
        ids.append(obj)
        jobs.append((truths, cast("SA3DModel", pipeline.model).object_index(o["name"])))
    results = []
    for o, obj, rows in zip(chosen, ids, evaluate_objects(pipeline, jobs), strict=True):
        results.append(
            {
                "object": o["name"],
                "object_id": obj,
                "miou": float(np.mean([r["iou"] for r in rows])),
                "macc": float(np.mean([r["accuracy"] for r in rows])),
                "cutout": {key: float(np.nanmean([r[key] for r in rows])) for key in CUTOUT_KEYS if key in rows[0]},
                "views": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                "_rows": rows,
            }
        )
    result = {
        "run": str(load_config),
        "ground_truth": gt if gt == "instances" else f"{gt}: {gt_path}",
        "split": split if gt == "instances" else "annotated views",
        "miou": float(np.mean([r["miou"] for r in results])),
        "macc": float(np.mean([r["macc"] for r in results])),
        "objects": [{k: v for k, v in r.items() if k != "_rows"} for r in results],
    }
    if len(results) == 1:  # one object: its views at the top level too
        result.update(object=results[0]["object"], object_id=results[0]["object_id"], views=results[0]["views"])
    if output is not None:

        def tagged(r, row):
            return {**row, "image": f"{r['object']}_{row['image']}" if len(results) > 1 else row["image"]}

        worst_rows = [tagged(r, row) for r in results for row in sorted(r["_rows"], key=lambda x: x["iou"])[:worst]]
        cutouts = [
            (kind, tagged(r, max(r["_rows"], key=lambda x: x.get(kind, 0))))
            for r in results
            for kind in ("specks", "ghost")
            if kind in r["_rows"][0]
        ]
        write_outputs(Path(output), result, worst_rows, cutouts)
    return result


CUTOUT_KEYS = ("specks", "ghost", "removal_psnr", "nerf_psnr", "unseen", "outside_psnr", "outside_changed")
CUTOUT_HEADERS = {
    "specks": "specks %",
    "ghost": "ghost %",
    "removal_psnr": "removed dB",
    "nerf_psnr": "NeRF dB",
    "unseen": "unseen %",
    "outside_psnr": "outside dB",
    "outside_changed": "outside %",
}


def prompted_instance(dm, data: Path, obj: dict) -> int:
    """The instance id under an object's prompt, in its prompt view's instance mask (at the
    training image's size: a dataparser's downscale makes it smaller than the mask file)."""
    from sa3d_ns.data import instance_mask_paths
    from sa3d_ns.segmenters.oracle import read_instance_mask

    prompt_view = obj["views"][0]
    train_names = [str(p) for p in dm.train_dataset.image_filenames]
    index = next(i for i, n in enumerate(train_names) if Path(n).name == prompt_view["image"])
    cams = dm.train_dataset.cameras
    size = (int(cams.width[index]), int(cams.height[index]))  # the prompt's pixels are the training image's
    inst = read_instance_mask(instance_mask_paths(data, [train_names[index]])[0], size)
    return prompted_object_id(inst, obj["prompt"])


def cutout_tile(row: dict, margin: int = 2) -> np.ndarray:
    """One view's cut-outs side by side: the NeRF's render | the object alone, its specks (opaque
    outside the ground truth grown by ``margin`` px) in magenta | the scene without it | the truth
    without it (where the dataset has it) | the ghost pixels ``cutout_figures``
    counts (removal nearer the render than the truth where the object shows) in red over the truth."""
    from sa3d_ns.core.metrics import ghost_pixels, seen_footprint, speck_pixels

    alone = row["_alone"].clip(0, 1).copy()
    alone[speck_pixels(row["_acc"], row["_gt"], row.get("_whole"), margin)] = (1.0, 0.0, 1.0)
    tiles = [row["_rgb"].clip(0, 1), alone, row["_removed"].clip(0, 1)]
    if row.get("_truth") is not None:
        truth = row["_truth"]
        _, shows = seen_footprint(row["_gt"], row["_image"], truth, row["_seen"], margin)
        ghost = truth * 0.5
        ghost[ghost_pixels(row["_removed"], row["_rgb"], truth, shows)] = (1.0, 0.0, 0.0)
        tiles += [truth, ghost]
    return (np.concatenate(tiles, 1) * 255).astype(np.uint8)


def write_outputs(out: Path, result: dict, worst_rows: list[dict], cutouts: Sequence[tuple[str, dict]] = ()) -> None:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    for r in worst_rows:
        gt = np.repeat(r["_gt"][..., None], 3, -1).astype(np.float32)
        pred = np.repeat(r["_pred"][..., None], 3, -1).astype(np.float32)
        rgb = r["_rgb"].clip(0, 1)
        overlay = rgb * 0.5 + 0.5 * np.stack([r["_pred"], r["_gt"], np.zeros_like(r["_gt"])], -1)
        tile = (np.concatenate([gt, pred, overlay], 1) * 255).astype(np.uint8)
        Image.fromarray(tile).save(out / f"worst_{r['iou']:.3f}_{Path(r['image']).stem}.png")
    for kind, r in cutouts:  # the view with the most specks, and with the most ghost
        Image.fromarray(cutout_tile(r)).save(out / f"worst_{kind}_{r[kind]:.4f}_{Path(r['image']).stem}.png")


@dataclass
class EvalArgs:
    load_config: Path
    """config.yml of a finished sa3d run."""
    split: Literal["test", "train", "all"] = "test"
    """Views to evaluate: the held-out (test) views, the training views, or all."""
    output: Path | None = None
    """Folder for eval.json and images of the worst views (default: <run>/sa3d/eval_<split> or eval_<gt>)."""
    gt: Literal["instances", "spinnerf", "nvos"] = "instances"
    """Ground truth: the dataset's instance masks (transforms.json instance_mask_path), SPIn-NeRF's multiview masks, or NVOS."""
    gt_path: Path | None = None
    """spinnerf: the scene's folder of <image>.png masks; nvos: the NVOS root (masks/, scribbles/, reference_image/)."""
    nvos_task: str | None = None
    """NVOS scene name (fern, flower, fortress, horns_center, horns_left, leaves, orchids, trex)."""
    object: str | None = None
    """The object to evaluate (default: every object with --gt instances; needed with other --gt when the run has several)."""


def entrypoint() -> None:
    import tyro
    from rich.console import Console
    from rich.table import Table

    args = tyro.cli(EvalArgs)
    console = Console()
    try:
        tag = args.split if args.gt == "instances" else args.gt
        output = args.output or RunFolder.of(args.load_config).eval_dir(tag)
        result = evaluate_run(
            args.load_config,
            args.split,
            output,
            gt=args.gt,
            gt_path=args.gt_path,
            nvos_task=args.nvos_task,
            object_name=args.object,
        )
    except SA3DError as err:
        console.print(f"[bold red]sa3d-eval error:[/bold red] {err}")
        sys.exit(2)
    for r in result["objects"]:
        inst = f" (instance {r['object_id']}), {args.split} views" if args.gt == "instances" else ""
        table = Table(title=f"sa3d-eval: {r['object']}{inst}" + ("" if inst else f", {result['ground_truth']}"))
        table.add_column("view")
        table.add_column("IoU", justify="right")
        table.add_column("accuracy", justify="right")
        for v in r["views"]:
            table.add_row(v["image"], f"{v['iou']:.4f}", f"{v['accuracy']:.4f}")
        table.add_row("[bold]mean", f"[bold]{r['miou']:.4f}", f"[bold]{r['macc']:.4f}")
        console.print(table)
        cut = [key for key in CUTOUT_KEYS if key in r["cutout"] and key != "outside_psnr"]
        if cut:  # (a table of its own: both fit an 80-column terminal)
            table = Table(title=f"cut-outs: {r['object']}")
            table.add_column("view")
            for key in cut:
                table.add_column(CUTOUT_HEADERS[key], justify="right")

            def fmt(key, value):
                return f"{value:.1f}" if key.endswith("psnr") else f"{100 * value:.2f}"

            for v in r["views"]:
                table.add_row(v["image"], *(fmt(c, v[c]) for c in cut))
            table.add_row("[bold]mean", *(f"[bold]{fmt(c, r['cutout'][c])}" for c in cut))
            console.print(table)
    if len(result["objects"]) > 1:
        console.print(
            f"mean over {len(result['objects'])} objects: mIoU {result['miou']:.4f}, accuracy {result['macc']:.4f}"
        )
    if any(r["cutout"] for r in result["objects"]):
        console.print(
            "Cut-outs (held-out views): specks = the object alone opaque beyond 2 px of its true mask, % of the image; "
            "outside = pixels changed by removal beyond that margin, %. Where the dataset has the views rendered without "
            "the object (sa3d-make-scene): removed dB = PSNR of rgb_removed against them and NeRF dB = the NeRF's own "
            "PSNR, both inside the footprint other views see; ghost = % of it where the removal stays nearer the object "
            "than the truth; unseen = % of the footprint no other view sees (only inpainting could fill it)."
        )
    console.print(f"Wrote {output / 'eval.json'} and images of the worst views.")


if __name__ == "__main__":
    entrypoint()
