"""The generated scenes' textured meshes: the OBJ reader, the ray caster (against the analytic box
it must equal, and a brute-force caster), texture lookups, and a scene of real models."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sa3d_ns.scene.generate import Obj, _intersect, look_at, pixel_rays
from sa3d_ns.scene.meshes import Mesh, intersect, load_obj, placed

CUBE_OBJ = """mtllib cube.mtl
v -1 -1 -1
v 1 -1 -1
v 1 1 -1
v -1 1 -1
v -1 -1 1
v 1 -1 1
v 1 1 1
v -1 1 1
vt 0 0
vt 1 0
vt 1 1
vt 0 1
usemtl painted
f 1/1 4/4 3/3 2/2
f 5/1 6/2 7/3 8/4
f 1/1 2/2 6/3 5/4
usemtl plain
f -7 -6 -2 -3
f 3 4 8 7
f 4 1 5 8
"""


def write_cube(folder):
    """A cube (quads, negative indices, two materials: one with a 2 x 2 texture, one of a colour)."""
    (folder / "cube.obj").write_text(CUBE_OBJ)
    (folder / "cube.mtl").write_text("newmtl painted\nKd 1 1 1\nmap_Kd tex.png\nnewmtl plain\nKd 0.2 0.4 0.6\n")
    texture = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], np.uint8)  # top row: v = 1
    Image.fromarray(texture).save(folder / "tex.png")
    return folder / "cube.obj"


def test_obj_reader_splits_polygons_and_reads_materials(tmp_path):
    mesh = load_obj(write_cube(tmp_path))
    assert mesh.vertices.shape == (8, 3) and mesh.faces.shape == (12, 3)
    assert (mesh.faces >= 0).all() and (mesh.faces < 8).all()
    assert mesh.material.tolist() == [0] * 6 + [1] * 6
    assert mesh.textures[0] is not None and mesh.textures[0].shape == (2, 2, 3) and mesh.textures[1] is None
    assert np.allclose(mesh.colours[1], [0.2, 0.4, 0.6])
    assert mesh.normals is None
    assert mesh.uv is not None and mesh.uv.shape == (12, 3, 2)
    assert np.array_equal(mesh.uv[6:], np.zeros((6, 3, 2)))  # (faces without texture coordinates: (0, 0))
    # the face "f -7 -6 -2 -3" names vertices 2, 3, 7, 6 (1-based)
    assert sorted(set(mesh.faces[6:8].ravel().tolist())) == [1, 2, 5, 6]


def brute_force(mesh: Mesh, origin, d):
    """Every ray against every triangle (the definition the binned caster must equal)."""
    t_best = np.full(len(d), np.inf)
    for f in mesh.faces:
        v0, v1, v2 = mesh.vertices[f]
        e1, e2 = v1 - v0, v2 - v0
        p = np.cross(d, e2)
        det = p @ e1
        with np.errstate(divide="ignore", invalid="ignore"):
            s = origin - v0
            u = (p @ s) / det
            q = np.cross(s, e1)
            v = (d @ q) / det
            t = (q @ e2) / det
            hit = (np.abs(det) > 1e-14) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6)
        t_best = np.where(hit & (t < t_best), t, t_best)
    return t_best


@pytest.mark.parametrize("eye", [(3.0, 1.0, 1.5), (-2.0, 2.5, 0.4), (0.3, -0.2, 4.0)])
def test_mesh_cube_is_the_analytic_box(tmp_path, eye):
    """A cube mesh placed as a box object: the same hit distances and normals as the analytic box,
    ray for ray (rays through the edges aside), and the brute-force caster's distances everywhere."""
    half = (0.3, 0.2, 0.15)
    centre = (0.1, -0.2, 0.15)
    mesh = placed(load_obj(write_cube(tmp_path)), (0, 0, 0), half, centre)
    box = Obj("box", "box", centre, half, ((0, 0, 0), (0, 0, 0)), "checker")
    c2w = look_at(np.array(eye), np.array([0.0, 0.0, 0.2]))
    d = pixel_rays(c2w, 80, 60, 200.0)
    origin = c2w[:3, 3]
    t, n, _ = intersect(mesh, origin, d)
    t_box, n_box = _intersect(box, np.broadcast_to(origin, d.shape), d)
    assert np.isfinite(t).sum() > 300
    same = np.isfinite(t) == np.isfinite(t_box)
    assert same.mean() > 0.995  # (rays grazing an edge may fall either way)
    both = np.isfinite(t) & np.isfinite(t_box)
    assert np.allclose(t[both], t_box[both], atol=1e-9)
    hit = o = np.abs((n[both] * n_box[both]).sum(-1))
    assert (o > 1 - 1e-9).mean() > 0.99, hit
    reference = brute_force(mesh, origin, d)
    assert np.array_equal(np.isfinite(t), np.isfinite(reference))
    assert np.allclose(t[np.isfinite(t)], reference[np.isfinite(t)], rtol=0, atol=1e-12)


def test_textures_are_looked_up_where_the_ray_meets_the_face(tmp_path):
    """A ray into each quarter of the textured face -z (uv (0,0) at vertex 1 .. (1,1) at vertex 3)
    gets that quarter's texel; the faces of the plain material their colour."""
    mesh = load_obj(write_cube(tmp_path))
    origin = np.array([0.0, 0.0, -5.0])
    # face "1/1 4/4 3/3 2/2": vertex 1 (-1, -1) has uv (0, 0), 4 (-1, 1) (0, 1), 3 (1, 1) (1, 1), 2 (1, -1) (1, 0):
    # so the point (x, y, -1) has uv ((x + 1) / 2, (y + 1) / 2)
    uvs = np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    points = np.stack([-1 + 2 * uvs[:, 0], -1 + 2 * uvs[:, 1], np.full(4, -1.0)], -1)
    d = points - origin
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    t, n, colour = intersect(mesh, origin, d)
    assert np.allclose(t, np.linalg.norm(points - origin, axis=-1))
    assert np.allclose(n, [0, 0, -1])
    # the texture's rows: v = 1 at the top; bilinear lookups at texel centres are the texels
    expected = [[0, 0, 1], [1, 1, 0], [1, 0, 0], [0, 1, 0]]
    assert np.allclose(colour, expected)
    side = np.array([[5.0, 0.0, 0.0]])
    _, _, c = intersect(mesh, side[0], np.array([[-1.0, 0.0, 0.0]]))
    assert np.allclose(c, [[0.2, 0.4, 0.6]])


def test_rays_behind_or_beside_meet_nothing(tmp_path):
    mesh = load_obj(write_cube(tmp_path))
    origin = np.array([0.0, 0.0, -5.0])
    away = np.array([[0.0, 0.0, -1.0], [0.05, 0.0, -1.0]])
    t, _, _ = intersect(mesh, origin, away / np.linalg.norm(away, axis=-1, keepdims=True))
    assert np.isinf(t).all()
    with pytest.raises(ValueError, match="80 degrees"):
        intersect(mesh, origin, np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]))


@pytest.mark.extended
def test_the_models_scene_is_made_from_pybullets_models(tmp_path):
    """``sa3d-make-scene --objects models --texture wood``: the models are fetched from pybullet's
    wheel on PyPI into $SA3D_ASSETS (once), every object shows in the views with its instance id,
    each object's own mask equals the pixels that change when it is taken out, and its removal
    truth is written; the objects' boxes lie on the support."""
    import json

    env = {**os.environ, "SA3D_ASSETS": str(tmp_path / "assets")}
    out = tmp_path / "scene"
    cmd = [sys.executable, "-m", "sa3d_ns.scene.cli", "--output", str(out), "--objects", "models"]
    cmd += ["--texture", "wood", "--num-views", "6", "--width", "48", "--height", "48", "--workers", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "assets" / "pybullet_data" / "duck.obj").is_file()
    listed = json.loads((out / "objects.json").read_text())["objects"]
    assert [o["name"] for o in listed][:3] == ["duck", "red_mug", "red_brick"] and len(listed) == 8
    for o in listed:
        assert o["bounds_min"][2] > -0.005 and o["bounds_max"][2] < 0.8  # (on the support, not in it)
        assert max(abs(o["bounds_min"][0]), abs(o["bounds_max"][0]), abs(o["bounds_min"][1])) < 1.4
    seen = set()
    for i in range(6):
        ids = np.asarray(Image.open(out / "instances" / f"frame_{i:05d}.png"))
        seen |= set(np.unique(ids).tolist())
        assert (out / "removed" / "1" / f"frame_{i:05d}.png").is_file()
    assert seen >= set(range(9))
    image = np.asarray(Image.open(out / "images" / "frame_00000.png")).astype(float)
    ids = np.asarray(Image.open(out / "instances" / "frame_00000.png"))
    duck = image[ids == 1].mean(0)
    assert duck[0] > 120 and duck[1] > 100 and duck[2] < 0.5 * duck[0]  # (yellow: its texture, not grey)
    assert math.isfinite(float(image.mean()))


def test_the_models_scene_says_what_to_do_when_its_models_cannot_be_fetched(tmp_path):
    """No models in $SA3D_ASSETS and no package index to fetch them from: sa3d-make-scene exits 2
    with what failed and what to do, and writes no scene folder."""
    env = {**os.environ, "SA3D_ASSETS": str(tmp_path / "assets"), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
    env.pop("PIP_FIND_LINKS", None)
    out = tmp_path / "scene"
    cmd = [sys.executable, "-m", "sa3d_ns.scene.cli", "--output", str(out), "--objects", "models"]
    done = subprocess.run(
        cmd + ["--num-views", "4", "--width", "16", "--height", "16"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "could not download pybullet" in done.stderr and "unpack pybullet_data/" in done.stderr
    assert not out.exists() and not (tmp_path / "assets" / "pybullet_data").exists()


def test_a_row_of_rays_is_cast_like_a_grid(tmp_path):
    """Rays along one line (no area to bin them over) meet the cube where the brute force says."""
    mesh = load_obj(write_cube(tmp_path))
    origin = np.array([0.3, 0.2, -5.0])
    xs = np.linspace(-0.4, 0.4, 300)
    d = np.stack([xs, np.zeros_like(xs), np.ones_like(xs)], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    t, _, _ = intersect(mesh, origin, d)
    reference = brute_force(mesh, origin, d)
    assert 0 < np.isfinite(t).sum() < len(t)
    assert np.array_equal(np.isfinite(t), np.isfinite(reference))
    assert np.allclose(t[np.isfinite(t)], reference[np.isfinite(t)], rtol=0, atol=1e-12)
