"""``sa3d-export``: take the segmented object out of an sa3d run.

    sa3d-export masks      --load-config <run>/config.yml [--output DIR] [--object NAME|all]
    sa3d-export pointcloud --load-config <run>/config.yml [--num-points 100000] [--output object.ply] [--object NAME|all]
    sa3d-export mesh       --load-config <run>/config.yml [--resolution 128] [--output object.ply|.obj] [--object NAME|all]
    sa3d-export gaussians  --load-config <run>/config.yml [--output DIR] [--object NAME|all]   (splatfacto runs)

``masks``: a binary PNG (0/255) per training image, at the image file's own resolution, named after
it. ``pointcloud``: coloured points on the object's surface (each training view's rendered depth
where the rendered mask is on), in the dataset's original world frame. ``mesh``: marching cubes of
the NeRF's density restricted to the 3D mask, in a box around the object, in the same frame (NeRF
runs). ``gaussians`` (splatfacto runs): the object's Gaussians and the scene without them, as two
.ply files in the layout of splatfacto's ``ns-export gaussian-splat`` (its frame: nerfstudio's).
Outputs default to ``<run>/sa3d/export/``; an existing output is never overwritten. A run with
several objects writes one output per object (``--object all``, the default) or the one named.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from sa3d_ns.core.errors import SA3DError, write_failure
from sa3d_ns.core.geometry import (
    backproject,
    box_corners,
    from_original_frame,
    keep_large_components,
    marching_cubes,
    near_the_bulk,
    subsample,
    to_original_frame,
    write_obj,
    write_ply,
)
from sa3d_ns.run_folder import RunFolder


def check_run(load_config: Path) -> Path:
    """The run folder of a finished sa3d run's config.yml, or a clear error."""
    load_config = Path(load_config)
    if not load_config.is_file():
        raise SA3DError(f"--load-config {load_config}: file not found. Give the config.yml of an sa3d run.")
    run = RunFolder.of(load_config)
    run.check_finished()
    return run.root


def load_run(load_config: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    check_run(load_config)
    _, pipeline, _, _ = eval_setup(Path(load_config), test_mode="test")
    pipeline.model.eval()
    return pipeline


def training_views(pipeline):
    """(dataset, index, image path) for every training image."""
    ds = pipeline.datamanager.train_dataset
    return [(ds, i, Path(p)) for i, p in enumerate(ds.image_filenames)]


@torch.no_grad()
def render_camera(pipeline, dataset, index: int, size: tuple[int, int] | None = None) -> dict:
    """Training view ``index`` at the pose the nerfacto run learned for it (so masks line up with
    the training image), at ``size`` (width, height) or the dataset's resolution."""
    from sa3d_ns.nerf.cameras import rescaled, training_camera

    cam = training_camera(pipeline, index)
    if size is not None and size[0] != int(cam.width[0, 0]):
        rescaled(cam, size[0] / int(cam.width[0, 0]))
    out = pipeline.model.get_outputs_for_camera(cam)
    bundle = cam.generate_rays(camera_indices=0, keep_shape=True)
    out["origins"], out["directions"] = bundle.origins, bundle.directions
    return out


def export_masks(pipeline, targets: dict[int, Path]) -> list[Path]:
    """For each object k -> folder: a 0/255 PNG per training image at the image file's
    resolution, named after the image (one render per view for all objects)."""
    from PIL import Image
    from rich.progress import track

    model = pipeline.model
    written = []
    for ds, i, path in track(training_views(pipeline), description="Rendering masks"):
        size = Image.open(path).size if path.is_file() else None
        out = render_camera(pipeline, ds, i, size)
        for k, out_dir in targets.items():
            mask = out[model.output_name("mask", k)][..., 0].cpu().numpy() > 0.5
            if size is not None and mask.shape[::-1] != tuple(size):
                import cv2

                mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            target = out_dir / f"{path.stem}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(target)
            written.append(target)
    return written


def object_points(
    pipeline, objects: list[int], min_accumulation: float = 0.5, every: int = 1
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Surface points (nerfstudio frame) with colours of each object k in ``objects``, from every
    ``every``-th training view: where the view's rendered mask of k is on and k's own density is
    mostly opaque, at the expected depth of k's own density (so a pixel on the mask's rim gives a
    point on the object, not on the background behind it or in mid-air); far-off stragglers dropped."""
    from rich.progress import track

    model = pipeline.model
    pts: dict[int, list] = {k: [] for k in objects}
    cols: dict[int, list] = {k: [] for k in objects}
    for ds, i, _ in track(training_views(pipeline)[::every], description="Back-projecting views"):
        out = render_camera(pipeline, ds, i)
        for k in objects:
            acc = out[model.output_name("accumulation_object", k)][..., 0]
            sel = (out[model.output_name("mask", k)][..., 0] > 0.5) & (acc > min_accumulation)
            if not sel.any():
                continue
            o = out["origins"][sel].cpu().numpy()
            d = out["directions"][sel].cpu().numpy()
            pts[k].append(backproject(o, d, out[model.output_name("depth_object", k)][sel][..., 0].cpu().numpy()))
            rgb = out[model.output_name("rgb_object_premultiplied", k)][sel] / acc[sel][:, None]
            cols[k].append((rgb.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
    result = {}
    for k in objects:
        if sum(len(p) for p in pts[k]) == 0:
            raise SA3DError(
                f"The mask of object {model.object_names[k]!r} is empty in every training view: nothing to export."
            )
        p, c = np.concatenate(pts[k]), np.concatenate(cols[k])
        keep = near_the_bulk(p)
        result[k] = (p[keep], c[keep])
    return result


@torch.no_grad()
def in_mask(pipeline, points: np.ndarray, k: int) -> np.ndarray:
    """Whether object k owns each point (nerfstudio frame): its 3D mask is on there, and is the
    largest of the objects' masks."""
    model = pipeline.model
    x = torch.as_tensor(points, dtype=torch.float32, device=pipeline.device)
    if len(x) == 0:
        return np.zeros(0, dtype=bool)
    values = torch.cat([model.object_values(c)[:, k] for c in x.split(1 << 16)])
    return (values > model.config.mask_threshold).cpu().numpy()


def original_frame(pipeline, points: np.ndarray) -> np.ndarray:
    dpo = pipeline.datamanager.train_dataparser_outputs
    return to_original_frame(points, dpo.dataparser_transform.cpu().numpy(), float(dpo.dataparser_scale))


def in_box(points: np.ndarray, box) -> np.ndarray:
    """Which points (original frame) lie in ``box`` = (min xyz, max xyz); all when box is None."""
    if box is None:
        return np.ones(len(points), dtype=bool)
    return ((points >= np.asarray(box[0])) & (points <= np.asarray(box[1]))).all(axis=1)


def box_in_nerfstudio_frame(pipeline, box) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned box (nerfstudio frame) around a box of the dataset's original frame."""
    dpo = pipeline.datamanager.train_dataparser_outputs
    corners = from_original_frame(
        box_corners(*box), dpo.dataparser_transform.cpu().numpy(), float(dpo.dataparser_scale)
    )
    return corners.min(0), corners.max(0)


def export_pointclouds(pipeline, targets: dict[int, Path], num_points: int, seed: int = 0, box=None) -> dict[int, int]:
    """For each object k -> .ply file: at most ``num_points`` coloured surface points (those in
    ``box``, original frame, when given)."""
    counts = {}
    for k, (pts, cols) in object_points(pipeline, list(targets)).items():
        pts = original_frame(pipeline, pts)
        inside = in_box(pts, box)
        if not inside.any():
            raise SA3DError(f"No point of {pipeline.model.object_names[k]!r} lies in the box {box}: widen the box.")
        pts, cols = pts[inside], cols[inside]
        keep = subsample(len(pts), num_points, seed)
        write_ply(targets[k], pts[keep], cols[keep])
        counts[k] = len(keep)
    return counts


@torch.no_grad()
def density_at(pipeline, points: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(points, dtype=torch.float32, device=pipeline.device)
    return torch.cat([pipeline.model.field.density_fn(c)[..., 0] for c in x.split(1 << 16)]).cpu().numpy()


@torch.no_grad()
def object_density_grid(pipeline, k: int, resolution: int, margin: float = 0.1, box=None):
    """The NeRF's density inside object k's 3D mask on a grid over its box, and the density at
    its rendered surface points: (grid, lo, hi, surface densities), nerfstudio frame. The box
    comes from the surface points (grown by ``margin`` of its size), or is ``box`` (original
    frame) when given."""
    from rich.progress import track

    model = pipeline.model
    every = max(1, len(training_views(pipeline)) // 8)  # a box needs a few views
    pts, _ = object_points(pipeline, [k], every=every)[k]
    if box is None:
        lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
        pad = margin * (hi - lo).max()
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = box_in_nerfstudio_frame(pipeline, box)
        pts = pts[in_box(original_frame(pipeline, pts), box)]
        if len(pts) == 0:
            raise SA3DError(f"No surface point of {model.object_names[k]!r} lies in the box {box}: widen the box.")
    axes = [np.linspace(lo[a], hi[a], resolution) for a in range(3)]
    grid = np.zeros((resolution,) * 3, np.float32)
    for ix in track(range(resolution), description="Sampling density"):
        yy, zz = np.meshgrid(axes[1], axes[2], indexing="ij")
        x = torch.tensor(np.stack([np.full_like(yy, axes[0][ix]), yy, zz], -1).reshape(-1, 3), dtype=torch.float32)
        x = x.to(pipeline.device)
        density = model.field.density_fn(x)[..., 0]
        inside = model.object_values(x)[:, k] > model.config.mask_threshold
        grid[ix] = (density * inside).view(resolution, resolution).cpu().numpy()
    return grid, lo, hi, density_at(pipeline, pts)


def export_mesh(
    pipeline, k: int, out: Path, resolution: int, clean: bool = True, level: float | None = None, box=None
) -> tuple[int, int]:
    """Object k's mesh (.ply or .obj): (vertices, faces)."""
    grid, lo, hi, surface = object_density_grid(pipeline, k, resolution, box=box)
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
    """Folder to create (default <run>/sa3d/export/masks; with several objects one sub-folder per object)."""
    object: str = "all"
    """Object name, or all: one folder per object."""


@dataclass
class PointCloud:
    """A coloured point cloud of the object only (.ply), in the dataset's world frame."""

    load_config: Path
    output: Path | None = None
    """.ply file to write (default <run>/sa3d/export/object_points.ply; with several objects one file per object, <stem>_<name>.ply)."""
    num_points: int = 100_000
    """At most this many points per object (uniformly subsampled)."""
    object: str = "all"
    """Object name, or all: one file per object."""
    bbox_min: tuple[float, float, float] | None = None
    """Keep only points inside [bbox-min, bbox-max] (x y z in the dataset's original world frame)."""
    bbox_max: tuple[float, float, float] | None = None
    """Upper corner of that box."""


@dataclass
class Mesh:
    """A mesh of the object only (.ply or .obj): marching cubes of the masked NeRF density."""

    load_config: Path
    output: Path | None = None
    """.ply or .obj file to write (default <run>/sa3d/export/object_mesh.ply; with several objects one file per object, <stem>_<name>.ply)."""
    resolution: int = 128
    """Grid cells per side of the box around the object."""
    remove_floaters: bool = True
    """Drop small disconnected blobs of the 3D mask before meshing."""
    level: float | None = None
    """Density iso-level of the surface (default: the density that 80 % of the object's rendered
    surface points exceed). Lower it for a fuller, blobbier mesh; raise it for a tighter one."""
    object: str = "all"
    """Object name, or all: one file per object."""
    bbox_min: tuple[float, float, float] | None = None
    """Mesh only inside [bbox-min, bbox-max] (x y z in the dataset's original world frame) instead of the box around the object's surface points."""
    bbox_max: tuple[float, float, float] | None = None
    """Upper corner of that box."""


@dataclass
class Gaussians:
    """A splatfacto run's object as Gaussians: object.ply (its Gaussians) and scene_without_object.ply (the rest), in the layout of ns-export gaussian-splat (any 3DGS viewer opens them)."""

    load_config: Path
    output: Path | None = None
    """Folder to create (default <run>/sa3d/export/gaussians; with several objects one sub-folder per object)."""
    object: str = "all"
    """Object name, or all: one folder per object."""


def check_box(args):
    """(min, max) of --bbox-min/--bbox-max, None when neither is given."""
    lo, hi = args.bbox_min, args.bbox_max
    if lo is None and hi is None:
        return None
    if lo is None or hi is None:
        raise SA3DError("Give both --bbox-min X Y Z and --bbox-max X Y Z (or neither).")
    if not all(a < b for a, b in zip(lo, hi, strict=True)):
        raise SA3DError(f"--bbox-min {list(lo)} must be below --bbox-max {list(hi)} on every axis.")
    return tuple(lo), tuple(hi)


def chosen_objects(run: Path, name: str) -> tuple[list[str], list[int]]:
    """The run's object names and the indices ``--object`` selects."""
    names = RunFolder(run).object_names()
    if name == "all":
        return names, list(range(len(names)))
    if name not in names:
        raise SA3DError(f"--object {name}: the run's objects are {names} (or all).")
    return names, [names.index(name)]


def output_paths(
    given: Path | None, default: Path, names: list[str], chosen: list[int], is_dir: bool
) -> dict[int, Path]:
    """Where each chosen object's output goes; none may exist yet. One object: the path itself
    (the default named after the object when the run has several); several: a sub-folder or a
    ``<stem>_<name>`` file per object."""
    base = Path(given) if given is not None else default
    several = len(chosen) > 1
    paths = {}
    for k in chosen:
        if is_dir:
            p = base / names[k] if several or (given is None and len(names) > 1) else base
        elif several or (given is None and len(names) > 1):
            p = base.with_name(f"{base.stem}_{names[k]}{base.suffix}")
        else:
            p = base
        paths[k] = p
    for p in paths.values():
        if p.exists() and (not is_dir or any(p.iterdir())):
            raise SA3DError(f"{p} exists; choose another --output (nothing was overwritten).")
    for p in paths.values():
        (p if is_dir else p.parent).mkdir(parents=True, exist_ok=True)
    return paths


@contextmanager
def whole_or_nothing(outs: dict[int, Path]):
    """Outputs written whole or not at all: a write that fails (a full disk, a file-size limit)
    removes what this export wrote into ``outs`` (files, or the files in folders it was given
    empty) and says which file and how much space is free."""
    try:
        yield
    except OSError as err:
        for p in outs.values():
            for f in [q for q in p.rglob("*") if q.is_file()] if p.is_dir() else [p]:
                f.unlink(missing_ok=True)
        where = Path(err.filename) if err.filename else next(iter(outs.values()))
        raise SA3DError(write_failure(where, err)) from None


def run_method(load_config: Path) -> str:
    """ "splatfacto" for an sa3d run of a splatfacto run, else "nerfacto" (read from config.yml)."""
    import yaml

    try:
        config = yaml.load(Path(load_config).read_text(), Loader=yaml.Loader)
    except Exception as err:  # noqa: BLE001
        raise SA3DError(f"--load-config {load_config}: not a readable config.yml ({type(err).__name__}).") from None
    return "splatfacto" if type(getattr(config, "pipeline", None)).__name__ == "SA3DSplatPipelineConfig" else "nerfacto"


@torch.no_grad()
def export_gaussians(pipeline, targets: dict[int, Path]) -> dict[int, tuple[int, int]]:
    """For each object k -> folder: ``object.ply`` (its Gaussians) and ``scene_without_object.ply``
    (all the others), splatfacto's layout; returns (object's count, the rest's count)."""
    from sa3d_ns.splat.ply import exportable, splat_fields, write_splat_ply

    model = pipeline.model
    fields = splat_fields(
        *(t.detach().cpu().numpy() for t in (model.means, model.features_dc, model.features_rest)),
        *(t.detach().cpu().numpy() for t in (model.opacities, model.scales, model.quats)),
    )
    keep = exportable(fields)
    on = (model.object_values() > model.config.mask_threshold).cpu().numpy()
    counts = {}
    for k, folder in targets.items():
        mine = on[:, k] & keep
        if not mine.any():
            raise SA3DError(f"No Gaussian of {model.object_names[k]!r} is in its 3D mask: nothing to export.")
        n_obj = write_splat_ply(folder / "object.ply", {c: v[mine] for c, v in fields.items()})
        n_rest = write_splat_ply(
            folder / "scene_without_object.ply", {c: v[~on[:, k] & keep] for c, v in fields.items()}
        )
        counts[k] = (n_obj, n_rest)
    return counts


def run_export(args) -> str:
    run = check_run(args.load_config)  # before any output folder is made
    names, chosen = chosen_objects(run, args.object)
    export_dir = RunFolder(run).export
    method = run_method(args.load_config)
    if isinstance(args, Gaussians) and method != "splatfacto":
        raise SA3DError(
            f"{args.load_config} segmented a NeRF, which has no Gaussians: export it as a pointcloud or mesh."
        )
    if isinstance(args, Mesh) and method == "splatfacto":
        raise SA3DError(
            f"{args.load_config} segmented a splatfacto run: a mesh needs a NeRF's density; export its Gaussians "
            "(sa3d-export gaussians) or a pointcloud."
        )
    if isinstance(args, Gaussians):
        outs = output_paths(args.output, export_dir / "gaussians", names, chosen, is_dir=True)
        pipeline = load_run(args.load_config)
        with whole_or_nothing(outs):
            counts = export_gaussians(pipeline, outs)
        return "\n".join(
            f"Wrote {counts[k][0]} Gaussians of {names[k]} to {outs[k] / 'object.ply'} and the other {counts[k][1]} "
            f"to {outs[k] / 'scene_without_object.ply'}"
            for k in chosen
        )
    if isinstance(args, Masks):
        outs = output_paths(args.output, export_dir / "masks", names, chosen, is_dir=True)
        pipeline = load_run(args.load_config)
        with whole_or_nothing(outs):
            written = export_masks(pipeline, outs)
        return f"Wrote {len(written)} masks to " + ", ".join(str(p) for p in outs.values())
    if isinstance(args, PointCloud):
        if args.num_points < 1:
            raise SA3DError(f"--num-points must be >= 1, got {args.num_points}.")
        if args.output is not None and Path(args.output).suffix.lower() != ".ply":
            raise SA3DError(f"--output {args.output}: point clouds are written as .ply.")
        box = check_box(args)
        outs = output_paths(args.output, export_dir / "object_points.ply", names, chosen, is_dir=False)
        pipeline = load_run(args.load_config)
        with whole_or_nothing(outs):
            counts = export_pointclouds(pipeline, outs, args.num_points, box=box)
        return "\n".join(f"Wrote {counts[k]} points of {names[k]} to {outs[k]}" for k in chosen)
    if args.resolution < 8:
        raise SA3DError(f"--resolution must be >= 8, got {args.resolution}.")
    if args.level is not None and not args.level > 0:
        raise SA3DError(f"--level must be a positive density, got {args.level}.")
    if args.output is not None and Path(args.output).suffix.lower() not in (".ply", ".obj"):
        raise SA3DError(f"--output {args.output}: meshes are written as .ply or .obj.")
    box = check_box(args)
    outs = output_paths(args.output, export_dir / "object_mesh.ply", names, chosen, is_dir=False)
    pipeline = load_run(args.load_config)
    lines = []
    for k in chosen:
        with whole_or_nothing(outs):
            nv, nf = export_mesh(pipeline, k, outs[k], args.resolution, args.remove_floaters, args.level, box)
        lines.append(f"Wrote a mesh of {names[k]} with {nv} vertices and {nf} faces to {outs[k]}")
    return "\n".join(lines)


def entrypoint() -> None:
    import tyro

    args = tyro.cli(
        Annotated[Masks, tyro.conf.subcommand("masks")]
        | Annotated[PointCloud, tyro.conf.subcommand("pointcloud")]
        | Annotated[Mesh, tyro.conf.subcommand("mesh")]
        | Annotated[Gaussians, tyro.conf.subcommand("gaussians")]
    )
    try:
        print(run_export(args))
    except SA3DError as err:
        print(f"sa3d-export error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    entrypoint()
