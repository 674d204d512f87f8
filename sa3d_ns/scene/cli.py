"""``sa3d-make-scene``: write the generated demo scene as a nerfstudio dataset."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class MakeSceneArgs:
    output: Path
    """Folder to create (must not exist or be empty)."""
    num_views: int = 48
    """Number of cameras around the scene (alternating elevations)."""
    width: int = 96
    """Image width in pixels."""
    height: int = 96
    """Image height in pixels."""
    elevations: tuple[float, ...] = (20.0, 45.0)
    """Camera elevations in degrees, used in turn."""
    texture: Literal["plain", "rich", "wood"] = "plain"
    """rich: non-repeating mosaics on the support and the sky (for COLMAP / ns-process-data, whose SIFT matching fails on the plain scene's checkerboard and gradient); wood: a wooden table top (pybullet's table texture, fetched like the models' files)."""
    layout: Literal["nerfstudio", "blender"] = "nerfstudio"
    """nerfstudio: transforms.json (nerfstudio-data dataparser); blender: transforms_{train,val,test}.json and train/ val/ test/ image folders (blender-data dataparser; every 8th view held out)."""
    objects: Literal["demo", "touching", "clutter", "models"] = "demo"
    """demo: four separate primitives; touching: what breaks 2D segmenters (two red objects that touch, a two-coloured box, a thin pole, a tile coloured like the support); clutter: more of it, nothing touching (two green objects, the small one hidden behind the tall one from some sides, a post in white and navy bands, a box at the support's corner cut by the image border, a dark ball the colour of the support's dark squares); models: real textured models (pybullet's: a duck, a red mug with a red Lego brick against it, the Stanford bunny, a football at the corner, a thin domino, two identical Jenga blocks one across the other; their files are fetched once from pybullet's wheel on PyPI into ~/.cache/sa3d_ns/assets, or $SA3D_ASSETS)."""
    removal_truth: bool = True
    """Also render every view without each object (removed/<id>/, for sa3d-eval's removal figures) and which uncovered pixels other views see (removed/<id>/seen/)."""
    workers: int | None = None
    """Processes rendering views side by side (default: one per CPU core)."""
    points: int = 4000
    """Points of the sparse point cloud (sparse_pc.ply, back-projected from the views' depths) that splatfacto starts from, as from COLMAP's; 0: none (random start)."""


def entrypoint() -> None:
    import tyro

    from sa3d_ns.scene.assets import AssetsError
    from sa3d_ns.scene.generate import make_scene

    args = tyro.cli(MakeSceneArgs)
    if (
        args.num_views < 2 or args.width < 8 or args.height < 8 or (args.workers is not None and args.workers < 1)
        or args.points < 0
    ):  # fmt: skip
        print(
            "sa3d-make-scene: need --num-views >= 2, --width/--height >= 8, --workers >= 1 and --points >= 0.",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        path = make_scene(
            args.output,
            args.num_views,
            args.width,
            args.height,
            tuple(args.elevations),
            texture=args.texture,
            layout=args.layout,
            objects=args.objects,
            removal_truth=args.removal_truth,
            workers=args.workers,
            points=args.points,
        )
    except (FileExistsError, AssetsError) as err:
        print(f"sa3d-make-scene: {err}", file=sys.stderr)
        sys.exit(2)
    print(
        f"Wrote {path} (instance masks in {args.output / 'instances'}, object names in {args.output / 'objects.json'})"
    )


if __name__ == "__main__":
    entrypoint()
