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


def camera_sizes(cameras) -> list[tuple[int, int]]:
    """(width, height) of each camera of a nerfstudio ``Cameras``."""
    widths, heights = cameras.width.flatten().tolist(), cameras.height.flatten().tolist()
    return [(int(w), int(h)) for w, h in zip(widths, heights, strict=True)]


def check_frames(
    data: Path,
    image_filenames: Sequence[str | Path],
    sizes: Sequence[tuple[int, int]],
    poses: Sequence | None = None,
    masks: Sequence[Path] | None = None,
) -> None:
    """The frames of a data folder (a split's images) are what its transforms.json says, or a clear error
    naming the frame: every image exists and can be read, its size (W, H) is the camera's in
    ``sizes`` (one pixel of rounding allowed: nerfstudio's downscaled copies), every camera pose
    in ``poses`` (3 x 4 or 4 x 4 arrays) is finite, every instance mask in ``masks`` has its image's
    size or is a scaled copy of it. Reads only the files' headers."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    where = f"the data folder {Path(data)}"
    fix = "Fix the data folder (or give the one the source run was trained on: --data)."
    if poses is not None:
        bad = [
            Path(n).name
            for n, pose in zip(image_filenames, poses, strict=True)
            if not np.isfinite(np.asarray(pose)).all()
        ]
        if bad:
            raise SA3DError(
                f"The camera poses of {len(bad)} training frame(s) in {where} hold NaN or infinity ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}): check their transform_matrix in transforms.json. {fix}"
            )

    def size_of(path: Path, what: str) -> tuple[int, int]:
        try:
            with Image.open(path) as img:
                return img.size
        except FileNotFoundError:
            raise SA3DError(f"The {what} {path} of {where} does not exist. {fix}") from None
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise SA3DError(f"The {what} {path} of {where} cannot be read as an image ({err}). {fix}") from None

    for i, (name, (w, h)) in enumerate(zip(image_filenames, sizes, strict=True)):
        iw, ih = size_of(Path(name), "image")
        if abs(iw - w) > 1 or abs(ih - h) > 1:
            raise SA3DError(
                f"The image {name} is {iw}x{ih} pixels, but transforms.json gives its camera {w}x{h} (w, h or the "
                f"intrinsics of {where} do not match its images). {fix}"
            )
        if masks is not None:
            mw, mh = size_of(Path(masks[i]), "instance mask")
            # (a scaled copy is fine: with nerfstudio's --downscale-factor the images come from
            # images_<n>/ while instance_mask_path keeps the full-size masks; they are resized
            # with nearest neighbour when read; one pixel of rounding allowed either way)
            if min(mw, mh) < 1 or abs(mh * iw / mw - ih) > 1 or abs(mw * ih / mh - iw) > 1:
                raise SA3DError(
                    f"The instance mask {masks[i]} is {mw}x{mh} pixels, but its image {Path(name).name} is {iw}x{ih}: an "
                    f"instance mask must have its image's size or be a scaled copy of it (same aspect ratio). {fix}"
                )


def check_poses(data: Path) -> None:
    """Every frame's transform_matrix in the data folder's transforms.json (when it has one) is a
    4 x 4 (or 3 x 4) array of finite numbers, or a clear error naming the frames (before
    nerfstudio's dataparser, which would otherwise spread one NaN over every camera when it
    centres and orients the poses)."""
    import numpy as np

    tpath = transforms_path(data)
    if not tpath.is_file():
        return
    try:
        meta = json.loads(tpath.read_text())
    except (OSError, ValueError) as err:
        raise SA3DError(
            f"{tpath} cannot be read as JSON ({err}). Fix it, or give another data folder (--data)."
        ) from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise SA3DError(f"{tpath} lists no frames. Give the data folder the source run was trained on (--data).")
    bad = []
    for i, frame in enumerate(frames):
        name = str(frame.get("file_path", f"frame {i}")) if isinstance(frame, dict) else f"frame {i}"
        try:
            pose = np.asarray(frame["transform_matrix"], dtype=np.float64)  # type: ignore[index]
            ok = pose.shape in ((4, 4), (3, 4)) and bool(np.isfinite(pose).all())
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(name)
    if bad:
        raise SA3DError(
            f"{tpath}: the transform_matrix of {len(bad)} frame(s) is not a 4 x 4 array of finite numbers "
            f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}). Fix those frames or give another data folder (--data)."
        )
