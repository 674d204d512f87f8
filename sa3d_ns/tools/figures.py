"""``python -m sa3d_ns.tools.figures RUN_DIR OUT_DIR``: pictures of an sa3d run's results.

Writes to OUT_DIR (which must not exist): ``renders.png`` (held-out views, one row per view: the
outputs ``ns-render`` wrote to ``RUN_DIR/renders/test``, overlay | object alone | object removed |
mask first), ``views.png`` (every view's 2D mask and prompt points) and, when they exist in
``RUN_DIR/sa3d/export/``, ``pointcloud.png`` (``object_points.ply`` seen from three sides) and
``mesh.png`` (``object_mesh.ply``, shaded, from three sides).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sa3d_ns.core.geometry import read_ply
from sa3d_ns.run_folder import RunFolder
from sa3d_ns.tools.contact_sheet import contact_sheet

COLUMNS = ("rgb_overlay", "rgb_object", "rgb_removed", "mask")


def renders_strip(run_dir: Path, out: Path, tile: int = 160) -> Path | None:
    root = Path(run_dir) / "renders" / "test"
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    columns = [c for c in COLUMNS if c in present] + [c for c in present if c not in COLUMNS]
    names = sorted(p.name for p in (root / columns[0]).glob("*.png")) if columns else []
    if not names:
        return None
    rows = []
    for name in names:
        row = [
            np.asarray(Image.open(root / col / name).convert("RGB").resize((tile, tile), Image.Resampling.NEAREST))
            for col in columns
            if (root / col / name).is_file()
        ]
        rows.append(np.concatenate(row, 1))
    Image.fromarray(np.concatenate(rows, 0)).save(out)
    return out


def splat(points: np.ndarray, colors: np.ndarray, axes: tuple[int, int], size: int = 200) -> np.ndarray:
    """An orthographic view of coloured points along the remaining axis (nearest point wins)."""
    depth_axis = ({0, 1, 2} - set(axes)).pop()
    p = points[:, list(axes)]
    lo, hi = p.min(0), p.max(0)
    scale = (size - 9) / max(float((hi - lo).max()), 1e-9)
    uv = ((p - lo) * scale + 4).astype(int)
    img = np.full((size, size, 3), 255, np.uint8)
    order = np.argsort(points[:, depth_axis])
    for dy in (0, 1):
        for dx in (0, 1):
            img[size - 1 - uv[order, 1] - dy, uv[order, 0] + dx] = colors[order]
    return img


def pointcloud_views(ply: Path, out: Path) -> Path:
    points, colors, _ = read_ply(ply)
    if colors is None:
        colors = np.full((len(points), 3), 80, np.uint8)
    views = [splat(points, colors, axes) for axes in ((0, 1), (0, 2), (1, 2))]
    Image.fromarray(np.concatenate(views, 1)).save(out)
    return out


def mesh_views(ply: Path, out: Path) -> Path:
    """The mesh's vertices, grey, shaded by their normals (a light from the viewer), from three sides."""
    points, _, faces = read_ply(ply)
    normals = np.zeros_like(points)
    if faces is not None and len(faces):
        tri = points[faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        for c in range(3):
            np.add.at(normals, faces[:, c], n)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    views = []
    for axes in ((0, 1), (0, 2), (1, 2)):
        depth_axis = ({0, 1, 2} - set(axes)).pop()
        shade = 0.25 + 0.75 * np.abs(normals[:, depth_axis])
        colors = (np.array([200, 200, 210]) * shade[:, None]).astype(np.uint8)
        views.append(splat(points, colors, axes))
    Image.fromarray(np.concatenate(views, 1)).save(out)
    return out


def main(run_dir: Path, out_dir: Path) -> list[Path]:
    if out_dir.exists():
        raise SystemExit(f"{out_dir} exists; choose a new folder (nothing was overwritten).")
    out_dir.mkdir(parents=True)
    written = [contact_sheet(run_dir, out_dir / "views.png", tile=96, columns=10)]
    strip = renders_strip(run_dir, out_dir / "renders.png")
    if strip:
        written.append(strip)
    export = RunFolder(Path(run_dir)).export
    if (export / "object_points.ply").is_file():
        written.append(pointcloud_views(export / "object_points.ply", out_dir / "pointcloud.png"))
    if (export / "object_mesh.ply").is_file():
        written.append(mesh_views(export / "object_mesh.ply", out_dir / "mesh.png"))
    return written


if __name__ == "__main__":
    for path in main(Path(sys.argv[1]), Path(sys.argv[2])):
        print(path)
