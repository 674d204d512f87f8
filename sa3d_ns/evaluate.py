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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.metrics import accuracy, iou


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


def evaluate_views(pipeline, datasets, data: Path, obj: int, split: str = "test") -> list[dict]:
    """Render the object mask of every view of ``datasets`` and compare it with instance ``obj`` of
    the dataset's instance masks. Rows carry the image name, IoU, accuracy and (under ``_`` keys)
    the prediction, ground truth and render."""
    from rich.progress import track

    from sa3d_ns.data import instance_mask_paths
    from sa3d_ns.segmenters.oracle import read_instance_mask

    rows = []
    pipeline.model.eval()
    for dataset in datasets:
        if dataset is None or len(dataset) == 0:
            raise SA3DError(f"The run's dataset has no {split} views to evaluate.")
        names = [str(p) for p in dataset.image_filenames]
        paths = instance_mask_paths(data, names)
        for i in track(range(len(names)), description=f"Rendering {len(names)} views", transient=True):
            cam = dataset.cameras[i : i + 1].to(pipeline.device)
            out = pipeline.model.get_outputs_for_camera(cam)
            pred = out["mask"][..., 0].cpu().numpy() > 0.5
            gt_ids = read_instance_mask(paths[i])
            if gt_ids.shape != pred.shape:
                raise SA3DError(
                    f"Ground truth {paths[i]} is {gt_ids.shape[::-1]} but the view renders at {pred.shape[::-1]}."
                )
            gt = gt_ids == obj
            rows.append(
                {
                    "image": Path(names[i]).name,
                    "iou": iou(pred, gt),
                    "accuracy": accuracy(pred, gt),
                    "_pred": pred,
                    "_gt": gt,
                    "_rgb": out["rgb"].cpu().numpy(),
                }
            )
    if rows and not any(r["_gt"].any() for r in rows):
        raise SA3DError(
            f"Object {obj} appears in none of the {len(rows)} {split} views' ground-truth masks: nothing to compare with. "
            "Evaluate another split (--split train|all) or check the dataset's instance masks."
        )
    return rows


def evaluate_run(load_config: Path, split: str = "test", output: Path | None = None, worst: int = 4) -> dict:
    from nerfstudio.utils.eval_utils import eval_setup

    from sa3d_ns.data import instance_mask_paths
    from sa3d_ns.segmenters.oracle import read_instance_mask

    load_config = Path(load_config)
    if not load_config.is_file():
        raise SA3DError(f"--load-config {load_config}: file not found. Give the config.yml of an sa3d run.")
    summary_path = load_config.parent / "sa3d" / "summary.json"
    if not summary_path.is_file():
        raise SA3DError(f"{summary_path} is missing: --load-config must name a finished sa3d run.")
    summary = json.loads(summary_path.read_text())
    config, pipeline, _, _ = eval_setup(load_config, test_mode="test")
    dm = pipeline.datamanager
    data = Path(config.pipeline.datamanager.data)
    prompt_view = summary["views"][0]
    train_names = [str(p) for p in dm.train_dataset.image_filenames]
    prompt_image = next(n for n in train_names if Path(n).name == prompt_view["image"])
    inst = read_instance_mask(instance_mask_paths(data, [prompt_image])[0])
    obj = prompted_object_id(inst, summary["prompt"])

    sets = {"test": [dm.eval_dataset], "train": [dm.train_dataset], "all": [dm.train_dataset, dm.eval_dataset]}[split]
    rows = evaluate_views(pipeline, sets, data, obj, split)
    result = {
        "run": str(load_config),
        "split": split,
        "object_id": obj,
        "miou": float(np.mean([r["iou"] for r in rows])),
        "macc": float(np.mean([r["accuracy"] for r in rows])),
        "views": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
    }
    if output is not None:
        write_outputs(Path(output), result, sorted(rows, key=lambda r: r["iou"])[:worst])
    return result


def write_outputs(out: Path, result: dict, worst_rows: list[dict]) -> None:
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


@dataclass
class EvalArgs:
    load_config: Path
    """config.yml of a finished sa3d run."""
    split: Literal["test", "train", "all"] = "test"
    """Views to evaluate: the held-out (test) views, the training views, or all."""
    output: Path | None = None
    """Folder for eval.json and images of the worst views (default: <run>/sa3d/eval_<split>)."""


def entrypoint() -> None:
    import tyro
    from rich.console import Console
    from rich.table import Table

    args = tyro.cli(EvalArgs)
    console = Console()
    try:
        output = args.output or args.load_config.parent / "sa3d" / f"eval_{args.split}"
        result = evaluate_run(args.load_config, args.split, output)
    except SA3DError as err:
        console.print(f"[bold red]sa3d-eval error:[/bold red] {err}")
        sys.exit(2)
    table = Table(title=f"sa3d-eval: object {result['object_id']}, {args.split} views")
    table.add_column("view")
    table.add_column("IoU", justify="right")
    table.add_column("accuracy", justify="right")
    for v in result["views"]:
        table.add_row(v["image"], f"{v['iou']:.4f}", f"{v['accuracy']:.4f}")
    table.add_row("[bold]mean", f"[bold]{result['miou']:.4f}", f"[bold]{result['macc']:.4f}")
    console.print(table)
    console.print(f"Wrote {output / 'eval.json'} and images of the worst views.")


if __name__ == "__main__":
    entrypoint()
