"""A generated scene put through a real capture pipeline: nerfstudio's ``ns-process-data images``
(COLMAP, on the CPU) recovers the cameras from the images alone, as it does for a user's photos.

The result is a nerfstudio dataset like a user's (COLMAP's poses in their own frame with
``applied_transform``, an OPENCV camera with distortion coefficients, ``images_2/4/...`` folders,
``colmap/sparse/0``), plus the generator's instance masks, matched to the processed images by file
name (``ns-process-data`` renames the images it keeps), so that held-out mIoU can still be scored:

    python -m sa3d_ns.scene.capture --scene data/demo --output data/demo_colmap
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sa3d_ns.core.errors import SA3DError


def bin_path(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def write_photo(image: Path, target: Path, focal_px: float) -> Path:
    """The image as a camera writes it: a JPEG (quality 95) whose EXIF names the lens's focal
    length in 35 mm terms (FocalLengthIn35mmFilm, whole millimetres: focal_px = f35 / 35 *
    max(width, height)), as a phone's photos carry it. (COLMAP would read it as its prior focal
    length, but nerfstudio 1.1.5's ``ns-process-data images`` re-encodes every image with ffmpeg
    first, which drops EXIF: COLMAP starts from 1.2 x the image size, for a user's photos too.)"""
    from PIL import Image

    img = Image.open(image).convert("RGB")
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "sa3d_ns", "generated scene"  # Make, Model
    exif.get_ifd(0x8769)[0xA405] = round(focal_px / max(img.size) * 35)  # FocalLengthIn35mmFilm
    target = target.with_suffix(".jpg")
    img.save(target, "JPEG", quality=95, exif=exif)
    return target


def process_capture(
    scene: Path, output: Path, num_downscales: int = 2, matching: str = "exhaustive", photos: str = "jpeg"
) -> dict:
    """Run ``ns-process-data images`` on ``scene``'s images into ``output`` and attach the scene's
    instance masks to the frames COLMAP registered. ``photos`` "jpeg": the images given as a
    camera writes them (:func:`write_photo`: JPEG with the focal length in EXIF); "png": the
    rendered PNGs. Either way COLMAP starts from its guess, 1.2 x the image size (see
    :func:`write_photo`), and its focal estimate varies from run to run (285 to 343 measured
    against the true 343).
    Returns {"frames": registered, "images": given}."""
    scene, output = Path(scene), Path(output)
    if shutil.which("colmap") is None:
        raise SA3DError("COLMAP is not installed: 'sudo apt-get install colmap' (Debian), then run again.")
    meta = json.loads((scene / "transforms.json").read_text())
    frames = sorted(meta["frames"], key=lambda f: Path(f["file_path"]).name)
    if output.exists() and any(output.iterdir()):
        raise SA3DError(f"{output} exists and is not empty; give a new folder.")
    raw = output.parent / f"{output.name}_raw_images"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    if photos not in ("jpeg", "png"):
        raise SA3DError(f"photos must be jpeg or png, not {photos!r}")
    for f in frames:  # the photos alone, as a user has them: no poses
        if photos == "jpeg":
            write_photo(scene / f["file_path"], raw / Path(f["file_path"]).name, float(meta["fl_x"]))
        else:
            shutil.copy(scene / f["file_path"], raw / Path(f["file_path"]).name)
    cmd = [bin_path("ns-process-data"), "images", "--data", str(raw), "--output-dir", str(output), "--no-gpu",
           "--matching-method", matching, "--num-downscales", str(num_downscales), "--sfm-tool", "colmap"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(raw, ignore_errors=True)
    if r.returncode != 0 or not (output / "transforms.json").is_file():
        raise SA3DError(f"ns-process-data failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    # ns-process-data copies the images it is given, in sorted order, as frame_00001.png, ...
    renamed = {f"frame_{i + 1:05d}": f for i, f in enumerate(frames)}
    processed = json.loads((output / "transforms.json").read_text())
    (output / "instances").mkdir(exist_ok=True)
    for frame in processed["frames"]:
        source = renamed[Path(frame["file_path"]).stem]
        target = Path("instances") / f"{Path(frame['file_path']).stem}.png"
        shutil.copy(scene / source["instance_mask_path"], output / target)
        frame["instance_mask_path"] = str(target)
        frame["source_image"] = Path(source["file_path"]).name
    (output / "transforms.json").write_text(json.dumps(processed, indent=2))
    if (scene / "objects.json").is_file():
        shutil.copy(scene / "objects.json", output / "objects.json")
    return {"frames": len(processed["frames"]), "images": len(frames)}


@dataclass
class Args:
    scene: Path
    """A generated scene (sa3d-make-scene)."""
    output: Path
    """Folder for the processed dataset (new)."""
    num_downscales: int = 2
    """images_2, images_4, ... folders (ns-process-data's --num-downscales)."""
    matching: str = "exhaustive"
    """COLMAP matching (exhaustive: no vocabulary tree to download)."""
    photos: str = "jpeg"
    """jpeg: the images as a camera writes them (JPEG, focal length in EXIF); png: as rendered (no EXIF)."""


def entrypoint() -> None:
    import tyro

    args = tyro.cli(Args)
    try:
        result = process_capture(args.scene, args.output, args.num_downscales, args.matching, args.photos)
    except SA3DError as err:
        print(f"sa3d error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"COLMAP registered {result['frames']} of {result['images']} images -> {args.output}")


if __name__ == "__main__":
    entrypoint()
