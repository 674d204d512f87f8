"""``sa3d-export``: take the segmented object out of an sa3d run.

    sa3d-export masks      --load-config <run>/config.yml [--output DIR]
    sa3d-export pointcloud --load-config <run>/config.yml [--num-points 100000] [--output object.ply]
    sa3d-export mesh       --load-config <run>/config.yml [--resolution 128] [--output object.ply|.obj]

``masks``: a binary PNG (0/255) per training image, at the image file's own resolution, named after
it. ``pointcloud``: coloured points on the object's surface (each training view's rendered depth
where the rendered mask is on), in the dataset's original world frame. ``mesh``: marching cubes of
the NeRF's density restricted to the 3D mask, in a box around the object, in the same frame.
Outputs default to ``<run>/sa3d/export/``; an existing output is never overwritten.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.geometry import (
    backproject,
    keep_large_components,
    marching_cubes,
    subsample,
    to_original_frame,
    write_obj,
    write_ply,
)


def check_run(load_config: Path) -> Path:
    """The run folder of a finished sa3d run's config.yml, or a clear error."""
    load_config = Path(load_config)
    if not load_config.is_file():
        raise SA3DError(f"--load-config {load_config}: file not found. Give the config.yml of an sa3d run.")
    if not (load_config.parent / "sa3d" / "summary.json").is_file():
        raise SA3DError(f"{load_config.parent} is not a finished sa3d run (no sa3d/summary.json).")
    return load_config.parent


def load_run(load_config: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    check_run(load_config)
    _, pipeline, _, _ = eval_setup(load_config, test_mode="test")
    pipeline.model.eval()
    return pipeline


def fresh_output(path: Path, default: Path, is_dir: bool) -> Path:
    out = Path(path) if path is not None else default
    if out.exists() and (not is_dir or any(out.iterdir())):
        raise SA3DError(f"{out} exists; choose another --output (nothing was overwritten).")
    (out if is_dir else out.parent).mkdir(parents=True, exist_ok=True)
    return out


def training_views(pipeline):
    """(dataset, index, image path) for every training image."""
    ds = pipeline.datamanager.train_dataset
    return [(ds, i, Path(p)) for i, p in enumerate(ds.image_filenames)]


@torch.no_grad()
def render_camera(pipeline, dataset, index: int, size: tuple[int, int] | None = None) -> dict:
    cam = dataset.cameras[index : index + 1].to(pipeline.device)
    if size is not None and size[0] != int(cam.width[0, 0]):
        cam.rescale_output_resolution(size[0] / int(cam.width[0, 0]))
    out = pipeline.model.get_outputs_for_camera(cam)
    bundle = cam.generate_rays(camera_indices=0, keep_shape=True)
    out["origins"], out["directions"] = bundle.origins, bundle.directions
    return out


def export_masks(pipeline, out_dir: Path) -> list[Path]:
    """A 0/255 PNG per training image at the image file's resolution, named after the image."""
    from PIL import Image
    from rich.progress import track

    written = []
    for ds, i, path in track(training_views(pipeline), description="Rendering masks"):
        size = Image.open(path).size if path.is_file() else None
        out = render_camera(pipeline, ds, i, size)
        mask = out["mask"][..., 0].cpu().numpy() > 0.5
        if size is not None and mask.shape[::-1] != tuple(size):
            import cv2

            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        target = out_dir / f"{path.stem}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(target)
        written.append(target)
    return written


def object_points(pipeline, min_accumulation: float = 0.5, every: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Surface points of the object (nerfstudio frame) with colours, from every ``every``-th
    training view."""
    from rich.progress import track

    pts, cols = [], []
    for ds, i, _ in track(training_views(pipeline)[::every], description="Back-projecting views"):
        out = render_camera(pipeline, ds, i)
        sel = (out["mask"][..., 0] > 0.5) & (out["accumulation"][..., 0] > min_accumulation)
        if not sel.any():
            continue
        o = out["origins"][sel].cpu().numpy()
        d = out["directions"][sel].cpu().numpy()
        p = backproject(o, d, out["depth"][sel][..., 0].cpu().numpy())
        # a surface point belongs to the object only where the 3D mask is on: drops the pixels on the
        # mask's rim whose expected depth falls behind the object (on the background or in mid-air)
        on = in_mask(pipeline, p)
        pts.append(p[on])
        cols.append((out["rgb"][sel][torch.from_numpy(on)].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
    if not pts or sum(len(p) for p in pts) == 0:
        raise SA3DError("The object's mask is empty in every training view: nothing to export.")
    return np.concatenate(pts), np.concatenate(cols)


@torch.no_grad()
def in_mask(pipeline, points: np.ndarray) -> np.ndarray:
    """Whether the 3D mask is on at each point (nerfstudio frame)."""
    model = pipeline.model
    x = torch.as_tensor(points, dtype=torch.float32, device=pipeline.device)
    values = torch.cat([model.mask_field(c).reshape(-1) for c in x.split(1 << 16)]) if len(x) else x[:, 0]
    return (values > model.config.mask_threshold).cpu().numpy()


def original_frame(pipeline, points: np.ndarray) -> np.ndarray:
    dpo = pipeline.datamanager.train_dataparser_outputs
    return to_original_frame(points, dpo.dataparser_transform.cpu().numpy(), float(dpo.dataparser_scale))


def export_pointcloud(pipeline, out: Path, num_points: int, seed: int = 0) -> int:
    pts, cols = object_points(pipeline)
    keep = subsample(len(pts), num_points, seed)
    write_ply(out, original_frame(pipeline, pts[keep]), cols[keep])
    return len(keep)


@torch.no_grad()
def density_at(pipeline, points: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(points, dtype=torch.float32, device=pipeline.device)
    return torch.cat([pipeline.model.field.density_fn(c)[..., 0] for c in x.split(1 << 16)]).cpu().numpy()


@torch.no_grad()
def object_density_grid(pipeline, resolution: int, margin: float = 0.1):
    """The NeRF's density inside the 3D mask on a grid over the object's box, and the density at
    the object's rendered surface points: (grid, lo, hi, surface densities), nerfstudio frame.
    The box comes from the surface points (grown by ``margin`` of its size)."""
    from rich.progress import track

    model = pipeline.model
    pts, _ = object_points(pipeline, every=max(1, len(training_views(pipeline)) // 8))  # a box needs a few views
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    pad = margin * (hi - lo).max()
    lo, hi = lo - pad, hi + pad
    axes = [np.linspace(lo[k], hi[k], resolution) for k in range(3)]
    grid = np.zeros((resolution,) * 3, np.float32)
    for ix in track(range(resolution), description="Sampling density"):
        yy, zz = np.meshgrid(axes[1], axes[2], indexing="ij")
        x = torch.tensor(np.stack([np.full_like(yy, axes[0][ix]), yy, zz], -1).reshape(-1, 3), dtype=torch.float32)
        x = x.to(pipeline.device)
        density = model.field.density_fn(x)[..., 0]
        inside = model.mask_field(x) > model.config.mask_threshold
        grid[ix] = (density * inside).view(resolution, resolution).cpu().numpy()
    return grid, lo, hi, density_at(pipeline, pts)


def export_mesh(
    pipeline, out: Path, resolution: int, clean: bool = True, level: float | None = None
) -> tuple[int, int]:
    grid, lo, hi, surface = object_density_grid(pipeline, resolution)
    if level is None:
        # the iso-level from the NeRF itself: the density most of the rendered surface exceeds
        # (independent of the grid resolution, and of how sharp this NeRF's density is)
        level = float(np.percentile(surface, SURFACE_PERCENTILE))
    if clean:
        occupied = keep_large_components(grid > level)
        grid = np.where(occupied, grid, np.minimum(grid, 0.5 * level))
    verts, faces = marching_cubes(grid, level, lo, hi)
    if len(faces) == 0:
        raise SA3DError(
            f"No surface found in the masked density at level {level:.3g} on a {resolution}^3 grid; "
            "try a larger --resolution or a lower --level."
        )
    verts = original_frame(pipeline, verts)
    if out.suffix.lower() == ".obj":
        write_obj(out, verts, faces)
    else:
        write_ply(out, verts, faces=faces)
    return len(verts), len(faces)


SURFACE_PERCENTILE = 20.0


@dataclass
class Masks:
    """Binary masks (0/255 PNG) for every training image, at its own resolution."""

    load_config: Path
    output: Path | None = None
    """Folder to create (default <run>/sa3d/export/masks)."""


@dataclass
class PointCloud:
    """A coloured point cloud of the object only (.ply), in the dataset's world frame."""

    load_config: Path
    output: Path | None = None
    """.ply file to write (default <run>/sa3d/export/object_points.ply)."""
    num_points: int = 100_000
    """At most this many points (uniformly subsampled)."""


@dataclass
class Mesh:
    """A mesh of the object only (.ply or .obj): marching cubes of the masked NeRF density."""

    load_config: Path
    output: Path | None = None
    """.ply or .obj file to write (default <run>/sa3d/export/object_mesh.ply)."""
    resolution: int = 128
    """Grid cells per side of the box around the object."""
    remove_floaters: bool = True
    """Drop small disconnected blobs of the 3D mask before meshing."""
    level: float | None = None
    """Density iso-level of the surface (default: the density that 80 % of the object's rendered
    surface points exceed). Lower it for a fuller, blobbier mesh; raise it for a tighter one."""


def run_export(args) -> str:
    run = check_run(args.load_config)  # before any output folder is made
    if isinstance(args, Masks):
        out = fresh_output(args.output, run / "sa3d" / "export" / "masks", is_dir=True)
        pipeline = load_run(args.load_config)
        return f"Wrote {len(export_masks(pipeline, out))} masks to {out}"
    if isinstance(args, PointCloud):
        if args.num_points < 1:
            raise SA3DError(f"--num-points must be >= 1, got {args.num_points}.")
        out = fresh_output(args.output, run / "sa3d" / "export" / "object_points.ply", is_dir=False)
        if out.suffix.lower() != ".ply":
            raise SA3DError(f"--output {out}: point clouds are written as .ply.")
        n = export_pointcloud(load_run(args.load_config), out, args.num_points)
        return f"Wrote {n} points to {out}"
    if args.resolution < 8:
        raise SA3DError(f"--resolution must be >= 8, got {args.resolution}.")
    if args.level is not None and not args.level > 0:
        raise SA3DError(f"--level must be a positive density, got {args.level}.")
    out = fresh_output(args.output, run / "sa3d" / "export" / "object_mesh.ply", is_dir=False)
    if out.suffix.lower() not in (".ply", ".obj"):
        raise SA3DError(f"--output {out}: meshes are written as .ply or .obj.")
    nv, nf = export_mesh(load_run(args.load_config), out, args.resolution, args.remove_floaters, args.level)
    return f"Wrote a mesh of {nv} vertices and {nf} faces to {out}"


def entrypoint() -> None:
    import tyro

    args = tyro.cli(
        Annotated[Masks, tyro.conf.subcommand("masks")]
        | Annotated[PointCloud, tyro.conf.subcommand("pointcloud")]
        | Annotated[Mesh, tyro.conf.subcommand("mesh")]
    )
    try:
        print(run_export(args))
    except SA3DError as err:
        print(f"sa3d-export error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    entrypoint()
