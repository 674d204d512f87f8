"""``sa3d-nvos-prompt``: turn an NVOS scene's reference-view scribbles into an sa3d prompt file.

NVOS ships, per scene (task), ``reference_image/<task>/<name>`` (the view the user scribbled on)
and ``scribbles/<task>/`` with positive (``pos`` in the file name) and negative (``neg``) scribble
images, any non-zero pixel being scribble. The scribbles are thinned to their skeletons and points
are spread along them by farthest-point sampling (deterministic), so the prompt is reproducible:

    sa3d-nvos-prompt --gt-path nvos_masks --nvos-task fern --output fern_prompt.json [--image-size 1008 756]

``--image-size`` scales the points to the training images' resolution when it differs from the
scribbles'. Evaluate the run with ``sa3d-eval --gt nvos --gt-path nvos_masks --nvos-task fern``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sa3d_ns.core.errors import SA3DError


def farthest_points(points: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` of ``points`` (N x 2), spread out: start at the first point in row-major order,
    then repeatedly take the point farthest from those chosen."""
    if len(points) == 0 or k <= 0:
        return points[:0]
    chosen = [0]
    dist = np.linalg.norm(points - points[0], axis=1)
    for _ in range(min(k, len(points)) - 1):
        i = int(np.argmax(dist))
        if dist[i] <= 0:
            break
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(points - points[i], axis=1))
    return points[chosen]


def scribble_points(scribble: np.ndarray, k: int) -> np.ndarray:
    """(x, y) points along the skeleton of a scribble image (any non-zero pixel is scribble)."""
    from skimage.morphology import skeletonize

    mask = scribble.reshape(scribble.shape[0], scribble.shape[1], -1).max(-1) > 0
    skeleton = skeletonize(mask) if mask.any() else mask
    ys, xs = np.nonzero(skeleton)
    return farthest_points(np.stack([xs, ys], 1).astype(np.float32), k)


def nvos_prompt(root: Path, task: str, max_points: int = 10, image_size: tuple[int, int] | None = None) -> dict:
    """The prompt (sa3d prompt-file dict) of NVOS scene ``task`` under ``root``."""
    from PIL import Image

    root = Path(root)
    ref_dir, scr_dir = root / "reference_image" / task, root / "scribbles" / task
    for d in (ref_dir, scr_dir):
        if not d.is_dir():
            raise SA3DError(f"{d} does not exist: --gt-path must be the NVOS root and --nvos-task one of its scenes.")
    refs = sorted(p for p in ref_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(refs) != 1:
        raise SA3DError(f"Expected one reference image in {ref_dir}, found {len(refs)}.")
    pos_files = sorted(p for p in scr_dir.iterdir() if "pos" in p.name.lower())
    neg_files = sorted(p for p in scr_dir.iterdir() if "neg" in p.name.lower())
    if not pos_files:
        raise SA3DError(f"No positive scribble (a file with 'pos' in its name) in {scr_dir}.")
    size = Image.open(refs[0]).size
    points, labels = [], []
    for files, label in ((pos_files, 1), (neg_files, 0)):
        for f in files:
            scribble = np.asarray(Image.open(f))
            if scribble.shape[1::-1] != size:
                raise SA3DError(f"Scribble {f} is {scribble.shape[1::-1]} but the reference image is {size}.")
            pts = scribble_points(scribble, max_points)
            points += pts.tolist()
            labels += [label] * len(pts)
    if not any(labels):
        raise SA3DError(f"The positive scribbles in {scr_dir} are empty.")
    pts = np.asarray(points, np.float64)
    if image_size is not None:
        pts = (pts + 0.5) * np.asarray(image_size, np.float64) / np.asarray(size, np.float64) - 0.5
    return {"view": refs[0].stem, "points": np.round(pts, 2).tolist(), "labels": labels}


@dataclass
class NvosPromptArgs:
    gt_path: Path
    """NVOS root (holding masks/, scribbles/, reference_image/)."""
    nvos_task: str
    """NVOS scene: fern, flower, fortress, horns_center, horns_left, leaves, orchids, trex."""
    output: Path
    """Prompt JSON to write (must not exist)."""
    max_points: int = 10
    """Points per scribble file."""
    image_size: tuple[int, int] | None = None
    """Width and height of the training images, when they differ from the scribbles' (e.g. LLFF images_4)."""


def entrypoint() -> None:
    import tyro

    args = tyro.cli(NvosPromptArgs)
    try:
        if args.output.exists():
            raise SA3DError(f"{args.output} exists; choose another --output (nothing was overwritten).")
        prompt = nvos_prompt(args.gt_path, args.nvos_task, args.max_points, args.image_size)
    except SA3DError as err:
        print(f"sa3d-nvos-prompt error: {err}", file=sys.stderr)
        sys.exit(2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(prompt, indent=1))
    n_pos = sum(prompt["labels"])
    print(
        f"Wrote {args.output}: view {prompt['view']}, {n_pos} positive and {len(prompt['labels']) - n_pos} negative points."
    )


if __name__ == "__main__":
    entrypoint()
