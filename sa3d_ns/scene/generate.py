"""Generate a small 360-degree scene as a nerfstudio dataset with instance masks.

Several textured objects (spheres, boxes, a cylinder) stand on a checkered support; cameras look
inwards from all around at several elevations. Images are ray-cast analytically (numpy), with 2x2
supersampling; each frame gets an integer instance-id PNG (0 = background/support) written as
``instance_mask_path`` in transforms.json, a z-depth PNG (uint16 millimetres) as ``depth_file_path``
(what depth-nerfacto trains with), and ``objects.json`` names the objects.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sa3d_ns.core.geometry import write_ply
from sa3d_ns.scene.meshes import Mesh, load_obj, load_texture, placed, sample_texture
from sa3d_ns.scene.meshes import intersect as intersect_mesh


@dataclass
class Obj:
    name: str
    kind: str  # sphere | box | cylinder | mesh
    centre: tuple[float, float, float]  # (mesh: where its bounding box's centre goes)
    # sphere: (r, _, _); box: half extents; cylinder: (r, _, half height); mesh: its scale per axis
    size: tuple[float, float, float]
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]  # (mesh: the first where it has no texture)
    pattern: str  # stripes | checker | rings | dots | halves (mesh: "" -- its own materials)
    mesh: str = ""  # mesh: its OBJ file in pybullet_data/ (see sa3d_ns.scene.assets)
    rotate: tuple[float, float, float] = (0.0, 0.0, 0.0)  # mesh: degrees about x, y, z (sa3d_ns.scene.meshes.rotation)

    def bounds(self) -> tuple[list[float], list[float]]:
        c = np.array(self.centre)
        if self.kind == "mesh":
            v = placed_mesh(self).vertices
            return v.min(0).tolist(), v.max(0).tolist()
        if self.kind == "sphere":
            e = np.array([self.size[0]] * 3)
        elif self.kind == "box":
            e = np.array(self.size)
        else:
            e = np.array([self.size[0], self.size[0], self.size[2]])
        return (c - e).tolist(), (c + e).tolist()


OBJECTS = [
    Obj("red_ball", "sphere", (0.45, 0.25, 0.36), (0.36, 0, 0), ((0.85, 0.15, 0.1), (0.95, 0.8, 0.2)), "stripes"),
    Obj("blue_crate", "box", (-0.45, -0.3, 0.3), (0.3, 0.25, 0.3), ((0.15, 0.3, 0.85), (0.9, 0.9, 0.95)), "checker"),
    Obj("green_can", "cylinder", (-0.15, 0.62, 0.38), (0.22, 0, 0.38), ((0.1, 0.6, 0.2), (0.05, 0.25, 0.1)), "rings"),
    Obj("purple_cube", "box", (0.4, -0.55, 0.16), (0.16, 0.16, 0.16), ((0.55, 0.2, 0.7), (1.0, 0.6, 0.2)), "dots"),
]
# What breaks 2D segmenters: two red objects that touch (a mug and a ball), an object of two
# colours split across its height, a thin pole, a flat tile coloured like the support beside it.
TOUCHING = [
    Obj("red_mug", "cylinder", (0.25, 0.15, 0.3), (0.22, 0, 0.3), ((0.8, 0.12, 0.1), (0.6, 0.08, 0.08)), "rings"),
    Obj("red_ball", "sphere", (0.75, 0.15, 0.28), (0.28, 0, 0), ((0.85, 0.15, 0.1), (0.7, 0.1, 0.1)), "dots"),
    Obj(
        "two_tone_box", "box", (-0.5, -0.25, 0.35), (0.22, 0.22, 0.35), ((0.95, 0.85, 0.2), (0.15, 0.25, 0.8)), "halves"
    ),
    Obj("thin_pole", "cylinder", (-0.2, 0.65, 0.5), (0.05, 0, 0.5), ((0.9, 0.9, 0.9), (0.3, 0.3, 0.3)), "stripes"),
    Obj("flat_tile", "box", (0.3, -0.65, 0.03), (0.3, 0.25, 0.03), ((0.7, 0.58, 0.45), (0.5, 0.38, 0.28)), "checker"),
]
# More of what breaks 2D segmenters, none of it touching: two objects of one colour, the small one
# hidden behind the tall one from some sides; a tall object of two far-apart colours in bands; an
# object at the support's corner, cut by the image border in many views; a dark ball the colour of
# the support's dark squares in its shade.
CLUTTER = [
    Obj("green_vase", "cylinder", (-0.15, 0.05, 0.4), (0.2, 0, 0.4), ((0.15, 0.55, 0.2), (0.08, 0.38, 0.12)), "rings"),
    Obj("green_cup", "cylinder", (-0.55, 0.55, 0.14), (0.15, 0, 0.14), ((0.15, 0.55, 0.2), (0.08, 0.38, 0.12)), "dots"),
    Obj("banded_post", "box", (0.5, 0.5, 0.4), (0.14, 0.14, 0.4), ((0.92, 0.92, 0.9), (0.1, 0.15, 0.45)), "stripes"),
    Obj("corner_box", "box", (1.05, -1.0, 0.16), (0.2, 0.2, 0.16), ((0.35, 0.5, 0.7), (0.25, 0.35, 0.5)), "checker"),
    Obj("dark_ball", "sphere", (0.3, -0.35, 0.22), (0.22, 0, 0), ((0.3, 0.24, 0.18), (0.4, 0.32, 0.24)), "dots"),
]


# Real textured models (pybullet's, see sa3d_ns.scene.assets) on a wooden support (texture "wood"):
# a duck, a red mug with a red Lego brick against it, the Stanford bunny in ivory, a football at the
# support's corner, a thin domino, and two identical Jenga blocks, one across the other.
def _model(
    name: str,
    mesh: str,
    centre: tuple[float, float, float],
    scale: float | tuple[float, float, float],
    colour: tuple[float, float, float] = (0.8, 0.8, 0.8),
    rotate: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Obj:
    """A mesh object: ``mesh`` in pybullet_data/, ``colour`` where it has no texture."""
    size = scale if isinstance(scale, tuple) else (float(scale), float(scale), float(scale))
    return Obj(name, "mesh", centre, size, (colour, colour), "", mesh, rotate)


MODELS = [
    _model("duck", "duck.obj", (0.65, 0.5, 0.375), 0.49, rotate=(90, 0, 200)),
    _model("red_mug", "objects/mug.obj", (-0.45, 0.5, 0.3), 6.0, (0.75, 0.12, 0.1)),
    _model("red_brick", "lego/lego.obj", (0.0, 0.38, 0.15), 1.3, (0.8, 0.1, 0.08), (90, 0, 0)),
    _model("bunny", "bunny.obj", (0.8, -0.5, 0.347), 0.35, (0.86, 0.82, 0.72)),
    _model("football", "soccerball.obj", (-1.0, 0.95, 0.225), 0.45, rotate=(0, 0, 30)),
    _model("domino", "domino/domino.obj", (0.2, -0.1, 0.225), 9.0, rotate=(0, 0, 60)),
    _model("jenga_low", "jenga/jenga.obj", (-0.5, -0.5, 0.09), (0.9, 0.3, 0.18)),
    _model("jenga_top", "jenga/jenga.obj", (-0.5, -0.5, 0.27), (0.3, 0.9, 0.18), rotate=(0, 0, 90)),
]
OBJECT_SETS = {"demo": OBJECTS, "touching": TOUCHING, "clutter": CLUTTER, "models": MODELS}
SUPPORT_HALF = 1.4
WALL_RADIUS, WALL_HEIGHT = 6.0, 3.0  # the "rich" scene's backdrop


def _texture(obj: Obj, p: np.ndarray) -> np.ndarray:
    a, b = np.array(obj.colors[0]), np.array(obj.colors[1])
    q = p - np.array(obj.centre)
    if obj.pattern == "stripes":
        t = (np.sin(q[:, 2] * 22.0) > 0).astype(np.float32)
    elif obj.pattern == "checker":
        t = ((np.floor(q[:, 0] * 8) + np.floor(q[:, 1] * 8) + np.floor(q[:, 2] * 8)) % 2).astype(np.float32)
    elif obj.pattern == "halves":  # the lower half one colour, the upper half the other
        t = (q[:, 2] > 0).astype(np.float32)
    elif obj.pattern == "rings":
        t = (np.sin(q[:, 2] * 30.0 + np.arctan2(q[:, 1], q[:, 0]) * 3) > 0.3).astype(np.float32)
    else:
        t = ((np.sin(q[:, 0] * 40) * np.sin(q[:, 1] * 40) * np.sin(q[:, 2] * 40)) > 0.2).astype(np.float32)
    return a[None] * (1 - t[:, None]) + b[None] * t[:, None]


_PLACED: dict[tuple, Mesh] = {}


def placed_mesh(obj: Obj) -> Mesh:
    """A mesh object's model, rotated, scaled and moved into the scene (read once per process)."""
    key = (obj.mesh, obj.rotate, obj.size, obj.centre)
    if key not in _PLACED:
        from sa3d_ns.scene.assets import pybullet_data

        _PLACED[key] = placed(load_obj(pybullet_data() / obj.mesh), obj.rotate, obj.size, obj.centre)
    return _PLACED[key]


def _intersect_coloured(obj: Obj, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`_intersect`, and for a mesh object the colours at the hits (None for the others, whose
    colours :func:`_texture` gives from the hit points). ``o``: the rays' one origin, broadcast."""
    if obj.kind != "mesh":
        return (*_intersect(obj, o, d), None)
    mesh = placed_mesh(obj)
    t, n, colour = intersect_mesh(mesh, o[0], d)
    if all(texture is None for texture in mesh.textures):
        colour[:] = obj.colors[0]  # (a model without a texture: the object's colour)
    return t, n, colour


def _intersect(obj: Obj, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest positive hit distance (inf if none) and the normal there, for rays o + t d (a mesh
    object: rays from one origin)."""
    if obj.kind == "mesh":
        t, n, _ = intersect_mesh(placed_mesh(obj), o[0], d)
        return t, n
    c = np.array(obj.centre)
    n = np.zeros_like(d)
    t = np.full(len(d), np.inf)
    if obj.kind == "sphere":
        oc = o - c
        b = (oc * d).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - obj.size[0] ** 2)
        ok = disc > 0
        t0 = -b - np.sqrt(np.where(ok, disc, 0))
        ok &= t0 > 1e-4
        t = np.where(ok, t0, np.inf)
        hit = o + d * np.where(ok, t0, 0)[:, None]
        n = (hit - c) / obj.size[0]
    elif obj.kind == "box":
        e = np.array(obj.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            t1, t2 = (c - e - o) * inv, (c + e - o) * inv
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        tn, tf = np.nanmax(tmin, -1), np.nanmin(tmax, -1)
        ok = (tn <= tf) & (tn > 1e-4)
        t = np.where(ok, tn, np.inf)
        axis = np.nanargmax(tmin, -1)
        n[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
    else:
        r, hh = obj.size[0], obj.size[2]
        oc = o - c
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = oc[:, 0] * d[:, 0] + oc[:, 1] * d[:, 1]
        cc = oc[:, 0] ** 2 + oc[:, 1] ** 2 - r * r
        disc = b * b - a * cc
        ok = (disc > 0) & (a > 1e-12)
        ts = (-b - np.sqrt(np.where(ok, disc, 0))) / np.where(a > 1e-12, a, 1)
        z = oc[:, 2] + ts * d[:, 2]
        side = ok & (ts > 1e-4) & (np.abs(z) <= hh)
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = (hh - oc[:, 2]) / d[:, 2]
        pc = oc + d * np.nan_to_num(tc)[:, None]
        cap = (tc > 1e-4) & (pc[:, 0] ** 2 + pc[:, 1] ** 2 <= r * r)
        t = np.where(side, ts, np.inf)
        t = np.where(cap & (tc < t), tc, t)
        hit = oc + d * np.where(np.isfinite(t), t, 0)[:, None]
        n = np.stack([hit[:, 0] / r, hit[:, 1] / r, np.zeros(len(d))], -1)
        n[cap & (tc <= t)] = [0, 0, 1]
    return t, n


MOSAIC = np.random.default_rng(7).uniform(0.15, 0.95, size=(4096, 3))


def mosaic(u: np.ndarray, v: np.ndarray, cell: float) -> np.ndarray:
    """A non-repeating mosaic: cells of side ``cell`` in (u, v), each of a colour picked by a hash
    of its integer coordinates (what feature matchers such as COLMAP's SIFT need; a checkerboard
    repeats and is ambiguous)."""
    iu, iv = np.floor(u / cell).astype(np.int64), np.floor(v / cell).astype(np.int64)
    return MOSAIC[((iu * 73856093) ^ (iv * 19349663)) % len(MOSAIC)]


def pixel_rays(c2w: np.ndarray, w: int, h: int, focal: float, ox: float = 0.5, oy: float = 0.5) -> np.ndarray:
    """Unit directions (H * W x 3, row-major) of the rays through each pixel at offset (ox, oy)
    within it (0.5: its centre) of a camera of :func:`render` (OpenGL axes: looks along -z, y up)."""
    xs, ys = np.meshgrid(np.arange(w) + ox, np.arange(h) + oy)
    d = np.stack([(xs - w / 2) / focal, -(ys - h / 2) / focal, -np.ones_like(xs)], -1).reshape(-1, 3) @ c2w[:3, :3].T
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def backproject(depth: np.ndarray, c2w: np.ndarray, focal: float) -> np.ndarray:
    """The world points (H * W x 3, row-major) of a z-depth map (H x W) of a camera of :func:`render`,
    through the pixel centres."""
    h, w = depth.shape
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    cam = np.stack([(xs - w / 2) / focal * depth, -(ys - h / 2) / focal * depth, -depth], -1).reshape(-1, 3)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def render(
    c2w: np.ndarray, w: int, h: int, focal: float, objects=OBJECTS, ss: int = 2, texture: str = "plain"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast one view: (H x W x 3 uint8 image, H x W uint8 instance ids, H x W z-depth, 0 where
    a ray hits nothing). ``texture`` "rich"
    gives the support a non-repeating mosaic (two scales) instead of a checkerboard, and puts a
    wall with a mosaic around the scene."""
    light = np.array([0.4, 0.3, 0.85])
    light /= np.linalg.norm(light)
    acc = np.zeros((h, w, 3))
    ids_centre = None
    offsets = [((i + 0.5) / ss, (j + 0.5) / ss) for i in range(ss) for j in range(ss)]
    for k, (ox, oy) in enumerate(offsets + [(0.5, 0.5)]):
        d = pixel_rays(c2w, w, h, focal, ox, oy)
        o = np.broadcast_to(c2w[:3, 3], d.shape)
        best_t = np.full(len(d), np.inf)
        best_id = np.zeros(len(d), dtype=np.int64)
        normal = np.zeros_like(d)
        with np.errstate(divide="ignore", invalid="ignore"):
            tp = -o[:, 2] / d[:, 2]
        pp = o + d * np.nan_to_num(tp)[:, None]
        on_support = (tp > 1e-4) & (np.abs(pp[:, 0]) < SUPPORT_HALF) & (np.abs(pp[:, 1]) < SUPPORT_HALF)
        if texture == "rich":  # the floor reaches the wall
            on_support = (tp > 1e-4) & ((pp[:, :2] ** 2).sum(-1) < WALL_RADIUS**2)
        best_t = np.where(on_support, tp, best_t)
        normal[on_support] = [0, 0, 1]
        best_id[on_support] = -1
        if texture == "rich":  # a wall around the scene (radius WALL_RADIUS, up to WALL_HEIGHT): parallax, unlike a sky
            a = (d[:, :2] ** 2).sum(-1)
            b = (o[:, :2] * d[:, :2]).sum(-1)
            c = (o[:, :2] ** 2).sum(-1) - WALL_RADIUS**2
            with np.errstate(divide="ignore", invalid="ignore"):
                tw = (-b + np.sqrt(np.maximum(b * b - a * c, 0))) / a
            zw = o[:, 2] + tw * d[:, 2]
            on_wall = (tw > 1e-4) & (zw > 0) & (zw < WALL_HEIGHT) & (tw < best_t)
            best_t = np.where(on_wall, tw, best_t)
            normal[on_wall] = 0
            best_id[on_wall] = -2
        mesh_colour = np.zeros_like(d)
        for i, obj in enumerate(objects, start=1):
            t, n, colour = _intersect_coloured(obj, o, d)
            closer = t < best_t
            best_t = np.where(closer, t, best_t)
            best_id = np.where(closer, i, best_id)
            normal[closer] = n[closer]
            if colour is not None:
                mesh_colour[closer] = colour[closer]
        hit = o + d * np.where(np.isfinite(best_t), best_t, 0)[:, None]
        col = np.zeros_like(d)
        sky = best_id == 0
        sup = best_id == -1
        col[sky] = (0.55 + 0.35 * d[sky, 2:3].clip(-1, 1)) * np.array([0.75, 0.85, 1.0])
        if texture == "rich":
            col[sup] = 0.6 * mosaic(hit[sup, 0], hit[sup, 1], 0.16) + 0.4 * mosaic(hit[sup, 0] + 9, hit[sup, 1], 0.04)
            wall = best_id == -2
            u = np.arctan2(hit[wall, 1], hit[wall, 0]) * WALL_RADIUS
            col[wall] = 0.6 * mosaic(u, hit[wall, 2], 0.3) + 0.4 * mosaic(u + 7, hit[wall, 2], 0.08)
        elif texture == "wood":  # a wooden table top: the table texture of pybullet_data, once over the support
            uv = (hit[sup, :2] + SUPPORT_HALF) / (2 * SUPPORT_HALF)
            col[sup] = sample_texture(_wood(), uv)
        else:
            chk = ((np.floor(hit[sup, 0] * 4) + np.floor(hit[sup, 1] * 4)) % 2)[:, None]
            col[sup] = np.array([0.72, 0.62, 0.48]) * (1 - chk) + np.array([0.45, 0.36, 0.26]) * chk
        for i, obj in enumerate(objects, start=1):
            sel = best_id == i
            if sel.any():
                col[sel] = mesh_colour[sel] if obj.kind == "mesh" else _texture(obj, hit[sel])
        lit = ~sky & (best_id != -2)
        shade = 0.4 + 0.6 * np.clip((normal[lit] * light).sum(-1), 0, 1)
        col[lit] *= shade[:, None]
        if k < len(offsets):
            acc += col.reshape(h, w, 3)
        else:
            ids_centre = np.clip(best_id, 0, None).reshape(h, w)
            forward = -c2w[:3, 2]
            depth = np.where(np.isfinite(best_t), best_t * (d @ forward), 0.0).reshape(h, w)
    img = (np.clip(acc / len(offsets), 0, 1) * 255).round().astype(np.uint8)
    assert ids_centre is not None  # (set by the last pass, through the pixel centres)
    return img, ids_centre.astype(np.uint8), depth


@functools.cache
def _wood() -> np.ndarray:
    """The "wood" support's texture (pybullet's table top), read once per process."""
    from sa3d_ns.scene.assets import pybullet_data

    return load_texture(pybullet_data() / "table" / "table.png", 256)


def look_at(eye: np.ndarray, target: np.ndarray, up=np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenGL-style camera-to-world (camera looks along -z, y up), as nerfstudio expects."""
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, fwd)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -fwd, eye
    return c2w


def make_scene(
    out: Path,
    num_views: int = 48,
    width: int = 96,
    height: int = 96,
    elevations: tuple[float, ...] = (20.0, 45.0),
    radius: float = 3.4,
    fov_deg: float = 50.0,
    progress: bool = True,
    texture: str = "plain",
    layout: str = "nerfstudio",
    objects: str = "demo",
    removal_truth: bool = True,
    workers: int | None = None,
    points: int = 4000,
) -> Path:
    """Write the dataset to ``out``; returns the transforms.json path (``layout`` "blender":
    the blender-data dataparser's layout, see :func:`write_blender`; returns transforms_train.json).
    ``objects`` names an object set of :data:`OBJECT_SETS`. ``removal_truth``: also write, for
    every object and view, the view rendered with that object taken out and which of the pixels
    it uncovers some other view sees (:func:`write_removal_truth`). ``workers``: processes that
    render views side by side (default: one per CPU core, at most one per view; 1: this process).
    ``points``: a sparse point cloud of the scene's surfaces (``sparse_pc.ply``, named by
    ``ply_file_path`` in transforms.json, as ``ns-process-data`` writes COLMAP's points), which
    splatfacto starts its Gaussians from; 0: none."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder (nothing was overwritten).")
    if layout not in ("nerfstudio", "blender"):
        raise ValueError(f"layout must be nerfstudio or blender, not {layout!r}")
    if objects not in OBJECT_SETS:
        raise ValueError(f"objects must be one of {sorted(OBJECT_SETS)}, not {objects!r}")
    scene_objects = OBJECT_SETS[objects]
    if texture == "wood" or any(o.kind == "mesh" for o in scene_objects):
        from sa3d_ns.scene.assets import pybullet_data

        pybullet_data()  # (fetched once, here, before the workers need them)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "instances").mkdir(parents=True, exist_ok=True)
    (out / "depths").mkdir(parents=True, exist_ok=True)
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    target = np.array([0.0, 0.0, 0.25])
    frames = []
    views = []
    for i in range(num_views):
        elev = math.radians(elevations[i % len(elevations)])
        az = 2 * math.pi * i / num_views
        eye = target + radius * np.array([math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az), math.sin(elev)])
        views.append(look_at(eye, target))
    jobs = [(out, i, views[i], width, height, focal, objects, texture) for i in range(num_views)]
    depths = list(_in_parallel(_render_view, jobs, workers, f"Rendering {num_views} views" if progress else None))
    for i in range(num_views):
        name = f"frame_{i:05d}.png"
        frames.append(
            {"file_path": f"images/{name}", "instance_mask_path": f"instances/{name}",
             "depth_file_path": f"depths/{name}", "transform_matrix": views[i].tolist()}
        )  # fmt: skip
    meta = {
        "camera_model": "OPENCV",
        "fl_x": focal,
        "fl_y": focal,
        "cx": width / 2,
        "cy": height / 2,
        "w": width,
        "h": height,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "frames": frames,
    }
    if points > 0:
        write_ply(out / "sparse_pc.ply", *surface_points(out, frames, views, depths, focal, width, height, points))
        meta["ply_file_path"] = "sparse_pc.ply"
    listed = [
        {"id": i, "name": o.name, "kind": o.kind, "bounds_min": o.bounds()[0], "bounds_max": o.bounds()[1]}
        for i, o in enumerate(scene_objects, start=1)
    ]
    (out / "objects.json").write_text(json.dumps({"background_id": 0, "set": objects, "objects": listed}, indent=1))
    if removal_truth:
        write_removal_truth(out, scene_objects, views, depths, focal, width, height, texture, progress, workers)
    if layout == "blender":
        return write_blender(out, meta, fov_deg)
    (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    return out / "transforms.json"


def surface_points(
    out: Path,
    frames: list[dict],
    views: list[np.ndarray],
    depths: list[np.ndarray],
    focal: float,
    w: int,
    h: int,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """About ``n`` points (N x 3) of the surfaces the views see, with their colours (N x 3 uint8):
    pixels of every view back-projected at their depth (the sky left out), drawn at random (seed 0)."""
    rng = np.random.default_rng(0)
    per_view = -(-n // len(views))
    points, colors = [], []
    for frame, c2w, depth in zip(frames, views, depths, strict=True):
        hits = np.flatnonzero(depth.reshape(-1) > 0)
        pick = rng.choice(hits, size=min(per_view, len(hits)), replace=False)
        points.append(backproject(depth, c2w, focal)[pick])
        rows, cols = np.divmod(pick, w)
        colors.append(np.asarray(Image.open(out / frame["file_path"]).convert("RGB"))[rows, cols])
    return np.concatenate(points)[:n], np.concatenate(colors)[:n]


def project(points: np.ndarray, c2w: np.ndarray, focal: float, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """World points N x 3 -> (pixel indices N x 2 as (column, row), z-depth N) in a camera of
    :func:`render` (OpenGL axes: looks along -z, y up; pixel centres at +0.5)."""
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
    z = -cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = focal * cam[:, 0] / z + w / 2
        v = -focal * cam[:, 1] / z + h / 2
    return np.stack([np.floor(u), np.floor(v)], -1), z


def seen_elsewhere(
    depth: np.ndarray,
    c2w: np.ndarray,
    others: list[tuple[np.ndarray, np.ndarray]],
    focal: float,
    tol: float = 0.02,
    covered: list[np.ndarray] | None = None,
) -> np.ndarray:
    """H x W: which pixels' surface (z-depth ``depth`` in the camera ``c2w``; 0 = nothing) some
    other camera (c2w, its z-depth map of the whole scene) sees: projected there, in its image and
    not hidden (its depth there within ``tol`` relative of the point's). ``covered`` (H x W per
    other camera): pixels that show something else in front of the point however close (the
    object taken out: a flat tile is within ``tol`` of the floor it hides), which see nothing."""
    h, w = depth.shape
    points = backproject(depth, c2w, focal)
    seen = np.zeros(h * w, bool)
    for j, (other_c2w, other_depth) in enumerate(others):
        pix, z = project(points, other_c2w, focal, w, h)
        inside = (z > 1e-3) & (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
        cols, rows = pix[inside, 0].astype(int), pix[inside, 1].astype(int)
        visible = np.abs(other_depth[rows, cols] - z[inside]) < tol * z[inside]
        if covered is not None:
            visible &= ~covered[j][rows, cols]
        seen[np.flatnonzero(inside)[visible]] = True
    return (seen & (depth.reshape(-1) > 0)).reshape(h, w)


_SHARED: dict = {}  # what every job of _in_parallel reads (forked workers inherit it, nothing is pickled)


def _in_parallel(fn, jobs: list, workers: int | None, description: str | None, shared: dict | None = None):
    """fn(*job) for each job, in order, in ``workers`` processes (forked; default one per CPU core),
    with a progress bar when ``description`` is given; ``shared`` is set as _SHARED for the jobs."""
    import multiprocessing
    import os

    _SHARED.clear()
    _SHARED.update(shared or {})
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        pool = multiprocessing.get_context("fork").Pool(workers)
        results = pool.imap(_star, [(fn, job) for job in jobs])
    else:
        pool, results = None, (fn(*job) for job in jobs)
    if description:
        from rich.progress import track

        results = track(results, description=description, total=len(jobs))
    try:
        yield from results
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def _star(item):
    fn, job = item
    return fn(*job)


def _render_view(out: Path, i: int, c2w, width: int, height: int, focal: float, objects: str, texture: str):
    """View ``i`` of the scene written to images/, instances/ and depths/; returns its z-depth."""
    img, ids, depth = render(c2w, width, height, focal, objects=OBJECT_SETS[objects], texture=texture)
    name = f"frame_{i:05d}.png"
    Image.fromarray(img).save(out / "images" / name)
    Image.fromarray(ids).save(out / "instances" / name)
    # z-depth in millimetres (nerfstudio's depth_unit_scale_factor 1e-3), for depth-nerfacto
    Image.fromarray(np.round(depth * 1000).clip(0, 65535).astype(np.uint16)).save(out / "depths" / name)
    return depth


def silhouette(obj: Obj, c2w: np.ndarray, w: int, h: int, focal: float) -> np.ndarray:
    """H x W: the pixels (through their centres) whose ray meets ``obj``, whatever is in front of
    it: the object's whole silhouette in a camera of :func:`render`, hidden parts included."""
    d = pixel_rays(c2w, w, h, focal)
    t, _ = _intersect(obj, np.broadcast_to(c2w[:3, 3], d.shape), d)
    return np.isfinite(t).reshape(h, w)


def _render_removed(k: int, i: int) -> None:
    """View ``i`` without object ``k``, which of the pixels it uncovers other views see, and
    object ``k``'s whole silhouette."""
    from sa3d_ns.core.metrics import dilate

    out, views, depths, objects = _SHARED["out"], _SHARED["views"], _SHARED["depths"], _SHARED["objects"]
    focal, width, height, texture = _SHARED["focal"], _SHARED["width"], _SHARED["height"], _SHARED["texture"]
    folder = out / "removed" / str(k)
    (folder / "seen").mkdir(parents=True, exist_ok=True)
    (folder / "whole").mkdir(parents=True, exist_ok=True)
    rest = [o for j, o in enumerate(objects, start=1) if j != k]
    img, _, depth = render(views[i], width, height, focal, objects=rest, texture=texture)
    name = f"frame_{i:05d}.png"
    Image.fromarray(img).save(folder / name)
    ids = _SHARED["ids"][i]
    footprint = dilate(ids == k, 3)
    others = [(views[j], depths[j]) for j in range(len(views)) if j != i]
    covered = [_SHARED["ids"][j] == k for j in range(len(views)) if j != i]  # (the object hides what is under it)
    seen = np.zeros_like(footprint)
    if footprint.any():
        seen = seen_elsewhere(np.where(footprint, depth, 0.0), views[i], others, focal, covered=covered) & footprint
    Image.fromarray((seen * 255).astype(np.uint8)).save(folder / "seen" / name)
    whole = silhouette(objects[k - 1], views[i], width, height, focal)
    Image.fromarray((whole * 255).astype(np.uint8)).save(folder / "whole" / name)


def write_removal_truth(
    out, objects, views, depths, focal, width, height, texture, progress=True, workers: int | None = None
) -> None:
    """``removed/<id>/<frame>.png``: each view rendered with object ``id`` taken out (what the
    scene without it really looks like), and ``removed/<id>/seen/<frame>.png``: the pixels where
    that object is (its instance mask grown by 3 px) whose uncovered surface at least one *other*
    view sees (255; the object not in front of it there) -- what a NeRF of the views can know
    there; the rest (under the object, in its shadow for every camera) can only be inpainted; ``removed/<id>/whole/<frame>.png``: the
    object's whole silhouette (255), its parts hidden by other objects included (what the object
    rendered alone covers)."""
    jobs = [(k, i) for k in range(1, len(objects) + 1) for i in range(len(views))]
    description = f"Rendering {len(views)} views without each of {len(objects)} objects" if progress else None
    names = [f"frame_{i:05d}.png" for i in range(len(views))]
    ids = [np.asarray(Image.open(Path(out) / "instances" / name)) for name in names]
    shared = dict(
        out=Path(out), views=views, depths=depths, ids=ids, objects=objects, focal=focal, width=width, height=height
    )
    for _ in _in_parallel(_render_removed, jobs, workers, description, {**shared, "texture": texture}):
        pass


def write_blender(out: Path, meta: dict, fov_deg: float, every: int = 8) -> Path:
    """Lay the written frames out as nerfstudio's ``blender-data`` dataparser reads them:
    ``transforms_{train,val,test}.json`` (horizontal field of view ``camera_angle_x``, frames'
    ``file_path`` without ".png") and the images moved into ``train/``, ``val/`` and ``test/``.
    Every ``every``-th view is held out (val and test hold the same views). File names stay unique
    across the splits, so ``instances/<image stem>.png`` (and ``depths/``) still name each image's
    masks: the blender format has no per-frame fields of its own for them."""
    import shutil

    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for i, frame in enumerate(meta["frames"]):
        split = "val" if i % every == every // 2 else "train"
        name = Path(frame["file_path"]).name
        (out / split).mkdir(exist_ok=True)
        shutil.move(out / frame["file_path"], out / split / name)
        splits[split].append(
            {"file_path": f"./{split}/{Path(name).stem}", "transform_matrix": frame["transform_matrix"]}
        )
    (out / "images").rmdir()
    shutil.copytree(out / "val", out / "test")
    angle = math.radians(fov_deg)
    for split, frames in [*splits.items(), ("test", [
        {**f, "file_path": f["file_path"].replace("./val/", "./test/")} for f in splits["val"]])]:  # fmt: skip
        (out / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}, indent=1))
    return out / "transforms_train.json"
