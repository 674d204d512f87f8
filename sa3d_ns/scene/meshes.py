"""Textured triangle meshes for the generated scenes: a Wavefront OBJ reader (its MTL colours and
diffuse textures) and a ray caster for rays that leave one point (a pinhole camera's), in numpy.

The caster bins the rays by where they cross a plane in front of their origin and tests each
triangle only against the rays in the bins its projection's bounding box covers, so a view costs
about (pixels the meshes cover) x (triangles per pixel), not pixels x triangles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Mesh:
    vertices: np.ndarray  # V x 3
    faces: np.ndarray  # F x 3 vertex indices
    uv: np.ndarray | None  # F x 3 x 2 texture coordinates of each face's corners (None: the file has none)
    normals: np.ndarray | None  # F x 3 x 3 normals of each face's corners (None: the faces' own)
    material: np.ndarray  # F: index into colours / textures
    colours: list[np.ndarray]  # per material: its diffuse colour (3,)
    textures: list[np.ndarray | None]  # per material: its diffuse texture (H x W x 3 floats in [0, 1]) or None


def load_texture(path: Path, max_size: int) -> np.ndarray:
    """An image as an H x W x 3 texture of floats in [0, 1], shrunk to at most ``max_size`` pixels a
    side with a box filter (what a camera far from it averages)."""
    from PIL import Image

    picture = Image.open(path).convert("RGB")
    if max(picture.size) > max_size:
        scale = max_size / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BOX)
    return np.asarray(picture, dtype=np.float64) / 255.0


def _read_mtl(path: Path, max_texture: int) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Materials of an MTL file: name -> (diffuse colour, diffuse texture or None). A texture file
    that is missing leaves the material its colour."""
    found: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    name = None
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "newmtl":
            name = " ".join(parts[1:])
            found[name] = (np.full(3, 0.8), None)
        elif name is not None and parts[0] == "Kd" and len(parts) >= 4:
            found[name] = (np.array([float(x) for x in parts[1:4]]), found[name][1])
        elif name is not None and parts[0] == "map_Kd" and len(parts) >= 2:
            image = path.parent / parts[-1]
            if image.is_file():
                found[name] = (found[name][0], load_texture(image, max_texture))
    return found


def load_obj(path: Path | str, max_texture: int = 256) -> Mesh:
    """A Wavefront OBJ file as a :class:`Mesh`: polygons split into triangle fans; materials from
    its MTL file (next to it) where there is one, else one grey material. Textures are shrunk to at
    most ``max_texture`` pixels a side."""
    path = Path(path)
    vertices: list[list[float]] = []
    tex: list[list[float]] = []
    norms: list[list[float]] = []
    faces: list[list[int]] = []
    face_uv: list[list[int]] = []
    face_n: list[list[int]] = []
    face_mat: list[int] = []
    libraries: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    names: list[str] = []
    current = -1
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        key = parts[0]
        if key == "v":
            vertices.append([float(x) for x in parts[1:4]])
        elif key == "vt":
            tex.append([float(x) for x in parts[1:3]])
        elif key == "vn":
            norms.append([float(x) for x in parts[1:4]])
        elif key == "mtllib":
            library = path.parent / " ".join(parts[1:])
            if library.is_file():
                libraries.update(_read_mtl(library, max_texture))
        elif key == "usemtl":
            name = " ".join(parts[1:])
            if name not in names:
                names.append(name)
            current = names.index(name)
        elif key == "f":
            corners = []
            for token in parts[1:]:
                fields = (token.split("/") + ["", ""])[:3]
                index = []
                for field, count in zip(fields, (len(vertices), len(tex), len(norms)), strict=True):
                    if field == "":
                        index.append(-1)
                    else:
                        k = int(field)
                        index.append(k - 1 if k > 0 else count + k)
                corners.append(index)
            for k in range(1, len(corners) - 1):  # a fan
                tri = (corners[0], corners[k], corners[k + 1])
                faces.append([c[0] for c in tri])
                face_uv.append([c[1] for c in tri])
                face_n.append([c[2] for c in tri])
                face_mat.append(current)
    if not faces:
        raise ValueError(f"{path} has no faces")
    if not names:
        names = [""]
    material = np.array(face_mat)
    material[material < 0] = 0
    colours = [libraries.get(n, (np.full(3, 0.8), None))[0] for n in names]
    textures = [libraries.get(n, (None, None))[1] for n in names]
    uv_index = np.array(face_uv)
    n_index = np.array(face_n)
    uv = None
    if tex:  # (corners without texture coordinates read the texture's corner (0, 0))
        uv = np.where((uv_index >= 0)[..., None], np.array(tex)[uv_index.clip(0)], 0.0)
    normals = np.array(norms)[n_index] if norms and (n_index >= 0).all() else None
    return Mesh(np.array(vertices, dtype=np.float64), np.array(faces), uv, normals, material, colours, textures)


def rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """3 x 3: rotations about x, then y, then z, by these angles in degrees."""
    ax, ay, az = (math.radians(a) for a in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def placed(mesh: Mesh, rotate: tuple[float, float, float], scale: tuple[float, float, float], centre) -> Mesh:
    """The mesh rotated (:func:`rotation`), centred on its bounding box's centre, scaled per axis and
    moved so that its bounding box's centre is at ``centre``."""
    r = rotation(rotate)
    v = mesh.vertices @ r.T
    v = (v - (v.min(0) + v.max(0)) / 2) * np.asarray(scale, dtype=np.float64) + np.asarray(centre, dtype=np.float64)
    normals = None
    if mesh.normals is not None:  # (normals under a per-axis scale: the inverse transpose)
        normals = (mesh.normals @ r.T) / np.asarray(scale, dtype=np.float64)
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True).clip(1e-12)
    return Mesh(v, mesh.faces, mesh.uv, normals, mesh.material, mesh.colours, mesh.textures)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookups of a texture (H x W x 3) at N texture coordinates (OBJ's: v up, wrapping)."""
    h, w = texture.shape[:2]
    x = (uv[:, 0] % 1.0) * w - 0.5
    y = (1.0 - uv[:, 1] % 1.0) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64) % w, y0.astype(np.int64) % h
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def intersect(mesh: Mesh, origin: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rays ``origin + t d`` (one origin; ``d``: N x 3 unit directions, all within 80 degrees of
    their mean) against the mesh: (nearest hit t, inf where none; N x 3 unit normals there, facing
    the ray; N x 3 diffuse colours there). Faces are two-sided. Faces with a corner behind the plane
    through ``origin`` across the rays' mean direction are not tested (an origin inside a model)."""
    n = len(d)
    t_best = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    colour = np.zeros((n, 3))
    if n == 0:
        return t_best, normal, colour
    forward = d.mean(0)
    if np.linalg.norm(forward) < 0.5:
        raise ValueError("mesh rays must lie within 80 degrees of their mean direction")
    forward /= np.linalg.norm(forward)
    helper = np.array([1.0, 0, 0]) if abs(forward[0]) < 0.9 else np.array([0, 1.0, 0])
    right = np.cross(forward, helper)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    frame = np.stack([right, up, forward], 1)  # world -> (right, up, forward)
    # where each ray crosses the plane at distance 1 along `forward`
    rd = d @ frame
    if (rd[:, 2] < 0.17).any():
        raise ValueError("mesh rays must lie within 80 degrees of their mean direction")
    ray_xy = rd[:, :2] / rd[:, 2:3]
    lo = ray_xy.min(0)
    span = ray_xy.max(0) - lo
    # about one ray a bin (rays along a line: bins as long as their spacing along it)
    cell = max(math.sqrt(span[0] * span[1] / n), float(span.max()) / n, 1e-9)
    grid = np.maximum(np.ceil(span / cell).astype(np.int64), 1) + 1
    ray_bin = np.floor((ray_xy - lo) / cell).astype(np.int64)
    ray_key = ray_bin[:, 1] * grid[0] + ray_bin[:, 0]
    order = np.argsort(ray_key, kind="stable")
    starts = np.searchsorted(ray_key[order], np.arange(grid[0] * grid[1] + 1))
    # each face's corners in that frame; a face with a corner behind the origin's plane is left out
    # (its projection is unbounded; the scenes' cameras are far outside every model)
    tri = mesh.vertices[mesh.faces] - origin  # F x 3 x 3
    local = tri @ frame
    front = (local[:, :, 2] > 1e-6).all(1)
    faces = np.flatnonzero(front)
    proj = local[faces, :, :2] / local[faces, :, 2:3]
    b_lo = np.floor((proj.min(1) - lo) / cell).astype(np.int64)
    b_hi = np.floor((proj.max(1) - lo) / cell).astype(np.int64)
    keep = (b_hi[:, 0] >= 0) & (b_hi[:, 1] >= 0) & (b_lo[:, 0] < grid[0]) & (b_lo[:, 1] < grid[1])
    faces, b_lo, b_hi = faces[keep], np.maximum(b_lo[keep], 0), np.minimum(b_hi[keep], grid - 1)
    if len(faces) == 0:
        return t_best, normal, colour
    # (face, bin) pairs over each face's box of bins, then (face, ray) pairs over each bin's rays
    nx, ny = b_hi[:, 0] - b_lo[:, 0] + 1, b_hi[:, 1] - b_lo[:, 1] + 1
    per_face = nx * ny
    pair_face = np.repeat(np.arange(len(faces)), per_face)
    k = np.arange(per_face.sum()) - np.repeat(np.cumsum(per_face) - per_face, per_face)
    bx = b_lo[pair_face, 0] + k % nx[pair_face]
    by = b_lo[pair_face, 1] + k // nx[pair_face]
    key = by * grid[0] + bx
    count = starts[key + 1] - starts[key]
    pair_face = np.repeat(pair_face, count)
    first = np.repeat(starts[key], count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    ray = order[first + k]
    face = faces[pair_face]
    # Moller-Trumbore on the pairs
    v0 = mesh.vertices[mesh.faces[face, 0]]
    e1 = mesh.vertices[mesh.faces[face, 1]] - v0
    e2 = mesh.vertices[mesh.faces[face, 2]] - v0
    dr = d[ray]
    p = np.cross(dr, e2)
    det = (e1 * p).sum(-1)
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - v0
    u = (s * p).sum(-1) * inv
    q = np.cross(s, e1)
    v = (dr * q).sum(-1) * inv
    t = (e2 * q).sum(-1) * inv
    ok &= (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6)
    if not ok.any():
        return t_best, normal, colour
    ray, face, t, u, v = ray[ok], face[ok], t[ok], u[ok], v[ok]
    np.minimum.at(t_best, ray, t)
    win = t == t_best[ray]  # the nearest hit of each ray (ties: the last pair)
    ray, face, u, v = ray[win], face[win], u[win], v[win]
    bary = np.stack([1 - u - v, u, v], -1)[:, :, None]
    if mesh.normals is not None:
        nrm = (mesh.normals[face] * bary).sum(1)
    else:
        e1, e2 = e1[ok][win], e2[ok][win]
        nrm = np.cross(e1, e2)
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True).clip(1e-12)
    nrm *= -np.sign((nrm * d[ray]).sum(-1, keepdims=True) + 1e-12)  # two-sided: face the ray
    normal[ray] = nrm
    mat = mesh.material[face]
    col = np.array(mesh.colours)[mat]
    if mesh.uv is not None:
        uv = (mesh.uv[face] * bary).sum(1)
        for m, texture in enumerate(mesh.textures):
            sel = mat == m
            if texture is not None and sel.any():
                col[sel] = sample_texture(texture, uv[sel])
    colour[ray] = col
    return t_best, normal, colour
