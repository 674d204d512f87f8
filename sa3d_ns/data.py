"""Reading what a nerfstudio dataset carries besides images: per-frame instance masks.

In ``transforms.json`` a frame may have ``"instance_mask_path"``: a PNG of integer object ids
(0 = background) aligned with the frame's image. Datasets read by other dataparsers (colmap,
blender-data) may keep them as ``instances/<image stem>.png`` in the data folder instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sa3d_ns.core.errors import SA3DError


def transforms_path(data: Path) -> Path:
    data = Path(data)
    return data if data.suffix == ".json" else data / "transforms.json"


def instance_mask_paths(data: Path, image_filenames: Sequence[str | Path]) -> list[Path]:
    """Instance-mask path of each image in ``image_filenames`` (matched by file name)."""
    tpath = transforms_path(data)
    meta = json.loads(tpath.read_text()) if tpath.is_file() else {}
    by_name: dict[str, Path] = {}
    for frame in meta.get("frames", []):
        if "instance_mask_path" in frame:
            by_name[Path(frame["file_path"]).name] = tpath.parent / frame["instance_mask_path"]
    out = []
    for name in image_filenames:
        key = Path(name).name
        fallback = tpath.parent / "instances" / f"{Path(name).stem}.png"
        if key not in by_name and fallback.is_file():  # (datasets of other dataparsers: colmap, blender)
            by_name[key] = fallback
        if key not in by_name:
            raise SA3DError(
                f'The dataset {tpath.parent} has no instance mask for image {key} ("instance_mask_path" in transforms.json, '
                f"or instances/{Path(name).stem}.png): the oracle segmenter needs ground-truth instance masks for every "
                "training frame. Use --pipeline.segmenter weightfree or sam instead."
            )
        if not by_name[key].is_file():
            raise SA3DError(f"Instance mask {by_name[key]} (for image {key}) does not exist.")
        out.append(by_name[key])
    return out


def removal_truth_paths(data: Path, obj: int, image_name: str) -> tuple[Path, Path] | tuple[None, None]:
    """The view ``image_name`` rendered without object ``obj`` and the mask of what of it other
    views see (``removed/<obj>/<stem>.png``, ``removed/<obj>/seen/<stem>.png``, as
    ``sa3d-make-scene`` writes them), or (None, None) when the dataset has none."""
    folder = transforms_path(data).parent / "removed" / str(obj)
    stem = Path(image_name).stem
    truth, seen = folder / f"{stem}.png", folder / "seen" / f"{stem}.png"
    return (truth, seen) if truth.is_file() and seen.is_file() else (None, None)


def whole_mask_path(data: Path, obj: int, image_name: str) -> Path | None:
    """Object ``obj``'s whole silhouette in the view ``image_name``, its hidden parts included
    (``removed/<obj>/whole/<stem>.png``, as ``sa3d-make-scene`` writes it), or None."""
    path = transforms_path(data).parent / "removed" / str(obj) / "whole" / f"{Path(image_name).stem}.png"
    return path if path.is_file() else None
