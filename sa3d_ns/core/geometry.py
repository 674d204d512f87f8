"""Geometry for exports: back-projection, frames, floaters, marching cubes, PLY/OBJ writers.

Plain numpy (scikit-image for marching cubes); nothing here knows about nerfstudio.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np


def backproject(origins: np.ndarray, directions: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Points at ``depth`` along unit rays: N x 3."""
    return origins + directions * depth.reshape(-1, 1)


def to_original_frame(points: np.ndarray, transform: np.ndarray, scale: float) -> np.ndarray:
    """Undo a nerfstudio dataparser's normalisation p' = scale * (R p + t) (``transform`` = [R | t],
    3 x 4): the dataset's own world frame."""
    rot, trans = transform[:3, :3], transform[:3, 3]
    return (points / scale - trans) @ rot


def from_original_frame(points: np.ndarray, transform: np.ndarray, scale: float) -> np.ndarray:
    """The dataparser's normalisation p' = scale * (R p + t): the inverse of :func:`to_original_frame`."""
    rot, trans = transform[:3, :3], transform[:3, 3]
    return scale * (points @ rot.T + trans)


def box_corners(lo, hi) -> np.ndarray:
    """The 8 corners of the axis-aligned box [lo, hi] (8 x 3)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return np.array([[(hi if (c >> k) & 1 else lo)[k] for k in range(3)] for c in range(8)])


def near_the_bulk(points: np.ndarray, factor: float = 3.0, quantile: float = 90.0) -> np.ndarray:
    """Which points lie within ``factor`` times the ``quantile``-th percentile distance from the
    points' median: drops far-off stragglers (hash collisions of the 3D mask in the distant
    background), keeps every part of a compact or elongated object."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    dist = np.linalg.norm(points - np.median(points, axis=0), axis=1)
    return dist <= factor * max(float(np.percentile(dist, quantile)), 1e-12)


def subsample(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Indices of ``k`` of ``n`` items, spread uniformly at random (all when k >= n)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def keep_large_components(occupancy: np.ndarray, min_fraction: float = 0.05) -> np.ndarray:
    """Drop 3D connected components (26-connectivity) smaller than ``min_fraction`` of the
    largest one: removes floaters of a 3D mask."""
    from skimage.measure import label

    labels = cast(np.ndarray, label(occupancy, connectivity=3))  # (a tuple only with return_num=True)
    if labels.max() == 0:
        return occupancy
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= min_fraction * sizes.max()
    keep[0] = False
    return keep[labels]


def marching_cubes(values: np.ndarray, level: float, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a grid sampled on [lo, hi] (grid index i -> lo + i * (hi - lo) / (n - 1)):
    (vertices V x 3 in world units, faces F x 3)."""
    from skimage.measure import marching_cubes as mc

    if not (values.min() < level < values.max()):
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    spacing = (hi - lo) / (np.array(values.shape) - 1)
    verts, faces, _, _ = mc(values, level=level, spacing=tuple(spacing))
    return verts + lo, faces


def write_ply(
    path: Path, points: np.ndarray, colors: np.ndarray | None = None, faces: np.ndarray | None = None
) -> None:
    """Binary little-endian PLY: vertices (float32 xyz, optional uint8 rgb) and optional faces."""
    n = len(points)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += ["property float x", "property float y", "property float z"]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        fields += [("r", "u1"), ("g", "u1"), ("b", "u1")]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    rec = np.zeros(n, dtype=fields)
    rec["x"], rec["y"], rec["z"] = points[:, 0], points[:, 1], points[:, 2]
    if colors is not None:
        rec["r"], rec["g"], rec["b"] = colors[:, 0], colors[:, 1], colors[:, 2]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode())
        f.write(rec.tobytes())
        if faces is not None:
            frec = np.zeros(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
            frec["n"], frec["v"] = 3, faces
            f.write(frec.tobytes())


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read what :func:`write_ply` writes: (points, colors or None, faces or None)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode().splitlines()
    n = int(next(line.split()[-1] for line in header if line.startswith("element vertex")))
    has_color = any("red" in line for line in header)
    nf = next((int(line.split()[-1]) for line in header if line.startswith("element face")), None)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + ([("r", "u1"), ("g", "u1"), ("b", "u1")] if has_color else [])
    rec = np.frombuffer(data, dtype=fields, count=n, offset=end)
    points = np.stack([rec["x"], rec["y"], rec["z"]], 1).astype(np.float64)
    colors = np.stack([rec["r"], rec["g"], rec["b"]], 1) if has_color else None
    faces = None
    if nf is not None:
        frec = np.frombuffer(data, dtype=[("n", "u1"), ("v", "<i4", (3,))], count=nf, offset=end + rec.nbytes)
        faces = frec["v"].astype(np.int64)
    return points, colors, faces


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    with open(path, "w") as f:
        f.writelines(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in vertices)
        f.writelines(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces)
