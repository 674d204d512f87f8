"""``python -m sa3d_ns.tools.figures RUN_DIR OUT_DIR``: pictures of an sa3d run's results.

Writes to OUT_DIR (which must not exist): ``renders.png`` (held-out views: render | overlay |
object alone | object removed | mask, one row per view, from ``RUN_DIR/renders/test``, as the
demo's ``ns-render`` writes them), ``views.png`` (every view's 2D mask and prompt points) and, when
``RUN_DIR/sa3d/export/object_points.ply`` exists, ``pointcloud.png`` (the exported points seen
from three sides).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sa3d_ns.core.geometry import read_ply
from sa3d_ns.tools.contact_sheet import contact_sheet

COLUMNS = ("rgb_overlay", "rgb_object", "rgb_removed", "mask")


def renders_strip(run_dir: Path, out: Path, tile: int = 160) -> Path | None:
    root = Path(run_dir) / "renders" / "test"
    names = sorted(p.name for p in (root / COLUMNS[0]).glob("*.png")) if (root / COLUMNS[0]).is_dir() else []
    if not names:
        return None
    rows = []
    for name in names:
        row = [
            np.asarray(Image.open(root / col / name).convert("RGB").resize((tile, tile), Image.NEAREST))
            for col in COLUMNS
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


def main(run_dir: Path, out_dir: Path) -> list[Path]:
    if out_dir.exists():
        raise SystemExit(f"{out_dir} exists; choose a new folder (nothing was overwritten).")
    out_dir.mkdir(parents=True)
    written = [contact_sheet(run_dir, out_dir / "views.png", tile=96, columns=10)]
    strip = renders_strip(run_dir, out_dir / "renders.png")
    if strip:
        written.append(strip)
    ply = Path(run_dir) / "sa3d" / "export" / "object_points.ply"
    if ply.is_file():
        written.append(pointcloud_views(ply, out_dir / "pointcloud.png"))
    return written


if __name__ == "__main__":
    for path in main(Path(sys.argv[1]), Path(sys.argv[2])):
        print(path)
