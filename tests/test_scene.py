"""The generated demo scene: its instance masks name the pixels of each object, and its cameras
look at the scene from all around."""

import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from sa3d_ns.scene.generate import OBJECTS, look_at, make_scene, render


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "s"
    make_scene(out, num_views=8, width=48, height=48, progress=False)
    return out


def test_instance_masks_are_the_pixels_each_object_paints():
    """Removing object k from the scene changes the pixels its mask labels k, and nothing far from them."""
    c2w = look_at(np.array([2.6, 1.5, 1.6]), np.array([0.0, 0.0, 0.25]))
    w = h = 64
    focal = 0.5 * w / np.tan(np.radians(25))
    img, ids, _ = render(c2w, w, h, focal)
    assert set(np.unique(ids)) >= {0, 1, 2}  # background and at least two objects in this view
    for k in [int(i) for i in np.unique(ids) if i > 0]:
        without, _, _ = render(c2w, w, h, focal, objects=[o for i, o in enumerate(OBJECTS, start=1) if i != k])
        changed = np.abs(img.astype(int) - without.astype(int)).sum(-1) > 6
        mask = ids == k
        kernel = np.ones((3, 3), np.uint8)
        inner = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
        near = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
        assert changed[inner].mean() > 0.9, f"object {k}: its masked pixels did not change when it was removed"
        assert changed[~near].mean() < 0.01, f"object {k}: pixels outside its mask changed when it was removed"


def test_dataset_files_and_ids(small_scene):
    meta = json.loads((small_scene / "transforms.json").read_text())
    objects = json.loads((small_scene / "objects.json").read_text())
    assert [o["id"] for o in objects["objects"]] == list(range(1, len(OBJECTS) + 1))
    assert len(meta["frames"]) == 8
    seen = set()
    for f in meta["frames"]:
        img = np.asarray(Image.open(small_scene / f["file_path"]))
        ids = np.asarray(Image.open(small_scene / f["instance_mask_path"]))
        assert img.shape == (48, 48, 3) and ids.shape == (48, 48) and ids.dtype == np.uint8
        seen |= set(np.unique(ids).tolist())
        # z-depth in mm: the camera's distance to the scene centre (3.4) along its axis, give or take the scene
        depth = np.asarray(Image.open(small_scene / f["depth_file_path"])).astype(np.float64) / 1000
        assert depth.shape == (48, 48) and 1.5 < np.median(depth[ids > 0]) < 3.4
        assert (depth[ids > 0] > 0).all()
    assert seen == set(range(0, len(OBJECTS) + 1))  # every object appears somewhere, nothing else does


def test_rich_texture_paints_a_mosaic_floor_and_keeps_the_objects():
    c2w = look_at(np.array([3.3, 0.0, 0.9]), np.array([0.0, 0.0, 0.25]))
    focal = 0.5 * 64 / np.tan(np.radians(25))
    plain, ids_plain, _ = render(c2w, 64, 64, focal)
    rich, ids_rich, _ = render(c2w, 64, 64, focal, texture="rich")
    assert np.array_equal(ids_plain, ids_rich)  # the same objects, the same instance masks
    on = ids_plain > 0
    assert np.abs(plain.astype(int) - rich.astype(int))[on].mean() < 1  # objects look the same
    # the background has many more distinct colours (what SIFT needs) than the checkerboard
    colours = lambda img: len({tuple(c) for c in img[~on].reshape(-1, 3)})  # noqa: E731
    assert colours(rich) > 3 * colours(plain)


def test_cameras_look_at_the_scene_from_all_around(small_scene):
    meta = json.loads((small_scene / "transforms.json").read_text())
    objects = json.loads((small_scene / "objects.json").read_text())["objects"]
    centres = np.array([(np.array(o["bounds_min"]) + np.array(o["bounds_max"])) / 2 for o in objects])
    azimuths, elevations = [], []
    for f in meta["frames"]:
        c2w = np.array(f["transform_matrix"])
        eye, forward = c2w[:3, 3], -c2w[:3, 2]
        to_scene = centres.mean(0) - eye
        cos = forward @ to_scene / np.linalg.norm(to_scene)
        assert cos > np.cos(np.radians(10)), "a camera does not look at the scene"
        # every object centre projects inside the image (OpenGL camera: x right, y up, looking down -z)
        cam = (centres - eye) @ c2w[:3, :3]
        assert (cam[:, 2] < 0).all()
        u = meta["cx"] + meta["fl_x"] * cam[:, 0] / -cam[:, 2]
        v = meta["cy"] - meta["fl_y"] * cam[:, 1] / -cam[:, 2]
        assert ((u > 0) & (u < meta["w"]) & (v > 0) & (v < meta["h"])).all()
        azimuths.append(np.degrees(np.arctan2(eye[1], eye[0])) % 360)
        elevations.append(round(float(np.degrees(np.arcsin(-forward[2]))), 1))
    gaps = np.diff(sorted(azimuths) + [sorted(azimuths)[0] + 360])
    assert gaps.max() <= 360 / 8 + 1  # 360 degrees around
    assert len(set(elevations)) >= 2  # more than one elevation


def test_make_scene_never_overwrites(small_scene):
    before = (small_scene / "transforms.json").read_bytes()
    with pytest.raises(FileExistsError):
        make_scene(small_scene, num_views=2, width=16, height=16, progress=False)
    assert (small_scene / "transforms.json").read_bytes() == before


def test_removal_truth_is_the_view_without_the_object_and_seen_marks_what_others_see(tmp_path):
    """removed/<id>/<frame>.png is the view rendered without object id; removed/<id>/seen/ marks,
    in the object's footprint, the uncovered surface that another camera sees: never the floor
    under a box standing on it, and the open floor around the object."""
    from sa3d_ns.scene.generate import TOUCHING, seen_elsewhere

    out = tmp_path / "t"
    make_scene(out, num_views=8, width=48, height=48, objects="touching", progress=False)
    objects = json.loads((out / "objects.json").read_text())
    assert objects["set"] == "touching" and [o["name"] for o in objects["objects"]] == [o.name for o in TOUCHING]
    meta = json.loads((out / "transforms.json").read_text())
    hidden_by_others = dict.fromkeys(range(1, len(TOUCHING) + 1), 0)
    for k in range(1, len(TOUCHING) + 1):
        for f in meta["frames"][:3]:
            name = f["file_path"].split("/")[-1]
            c2w = np.array(f["transform_matrix"])
            without, _, _ = render(c2w, 48, 48, meta["fl_x"], objects=[o for i, o in enumerate(TOUCHING, 1) if i != k])
            assert np.array_equal(np.asarray(Image.open(out / "removed" / str(k) / name)), without)
            seen = np.asarray(Image.open(out / "removed" / str(k) / "seen" / name)) > 0
            ids = np.asarray(Image.open(out / f["instance_mask_path"]))
            near = cv2.dilate((ids == k).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=3) > 0
            assert not (seen & ~near).any()  # only in the footprint
            # the whole silhouette: the visible mask and more where a neighbour hides the object
            whole = np.asarray(Image.open(out / "removed" / str(k) / "whole" / name)) > 0
            alone, alone_ids, _ = render(c2w, 48, 48, meta["fl_x"], objects=[TOUCHING[k - 1]])
            assert not ((ids == k) & ~whole).any() and np.array_equal(whole, alone_ids == 1)
            hidden_by_others[k] += int((whole & (ids != k) & (ids > 0)).sum())
    # (the touching set's mug and ball hide parts of each other in some of these views)
    assert hidden_by_others[1] + hidden_by_others[2] > 0
    # the floor seen by a camera, checked against the same camera with the box in place: seen
    # where the box does not hide it, unseen where it does
    c2w = look_at(np.array([0.0, -3.0, 1.5]), np.array([0.0, 0.0, 0.25]))
    focal = 40.0
    _, _, floor = render(c2w, 32, 32, focal, objects=[])
    _, ids_box, with_box = render(c2w, 32, 32, focal, objects=[TOUCHING[2]])
    seen = seen_elsewhere(floor, c2w, [(c2w, with_box)], focal)
    hidden = cv2.erode((ids_box == 1).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert (hidden & (floor > 0)).sum() > 20 and not seen[hidden].any()
    assert seen[(ids_box == 0) & (floor > 0)].all()
    # a flat tile lies within the depth tolerance of the floor it hides: the pixels that show the
    # tile see nothing of what is under it
    tile = next(o for o in TOUCHING if o.name == "flat_tile")
    c2w = look_at(np.array([0.0, -2.0, 3.0]), np.array(tile.centre))  # (from above)
    _, _, floor = render(c2w, 32, 32, focal, objects=[])
    _, ids_tile, with_tile = render(c2w, 32, 32, focal, objects=[tile])
    under = ids_tile == 1
    by_depth = seen_elsewhere(floor, c2w, [(c2w, with_tile)], focal)
    assert under.sum() > 10 and by_depth[under].mean() > 0.2  # (depth alone counted it seen)
    seen = seen_elsewhere(floor, c2w, [(c2w, with_tile)], focal, covered=[under])
    assert not seen[under].any() and seen[~under & (floor > 0)].all()


def test_touching_objects_touch():
    from sa3d_ns.scene.generate import TOUCHING

    mug, ball = TOUCHING[0], TOUCHING[1]
    gap = np.linalg.norm(np.array(ball.centre[:2]) - np.array(mug.centre[:2])) - ball.size[0] - mug.size[0]
    assert abs(gap) < 1e-9 and ball.centre[2] < 2 * mug.size[2]  # side by side, the ball at the mug's height


def test_clutter_objects_are_as_described():
    """The clutter set: nothing touches; the cup (the vase's colour) is hidden behind the vase in
    some of the scene's cameras; the corner box is cut by the image border in some; each object is
    in view in most of them."""
    from sa3d_ns.scene.generate import CLUTTER, silhouette

    vase, cup, box = (next(o for o in CLUTTER if o.name == n) for n in ("green_vase", "green_cup", "corner_box"))
    assert vase.colors == cup.colors
    for i, a in enumerate(CLUTTER):  # boxes' footprints taken as their circumscribed circles
        for b in CLUTTER[i + 1 :]:
            ra, rb = (np.hypot(*o.size[:2]) if o.kind == "box" else o.size[0] for o in (a, b))
            assert np.linalg.norm(np.array(a.centre[:2]) - np.array(b.centre[:2])) > ra + rb
    w = h = 48
    focal = 0.5 * w / math.tan(math.radians(25))
    hidden, cut, shown = 0, 0, np.zeros(len(CLUTTER))
    for i in range(24):  # make_scene's cameras (radius 3.4, elevations 20 and 45 degrees), every other one
        elev, az = math.radians((20.0, 45.0)[i % 2]), 2 * math.pi * i / 24
        eye = np.array([0, 0, 0.25]) + 3.4 * np.array(
            [math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az), math.sin(elev)]
        )
        c2w = look_at(eye, np.array([0.0, 0.0, 0.25]))
        _, ids, _ = render(c2w, w, h, focal, objects=CLUTTER, ss=1)
        whole = silhouette(cup, c2w, w, h, focal)
        hidden += int(((ids == CLUTTER.index(vase) + 1) & whole).sum() >= 0.25 * whole.sum())
        b = ids == CLUTTER.index(box) + 1
        cut += int(b[0].any() or b[-1].any() or b[:, 0].any() or b[:, -1].any())
        shown += [(ids == k + 1).any() for k in range(len(CLUTTER))]
    assert hidden >= 2 and cut >= 2 and (shown >= 16).all()


def test_blender_layout(tmp_path):
    """The blender-data dataparser's files: transforms_{train,val,test}.json with camera_angle_x,
    images in train/ val/ test/ (names unique across splits), instances/ by image name."""
    out = tmp_path / "b"
    path = make_scene(out, num_views=16, width=32, height=32, progress=False, layout="blender", removal_truth=False)
    assert path == out / "transforms_train.json" and not (out / "transforms.json").exists()
    splits = {s: json.loads((out / f"transforms_{s}.json").read_text()) for s in ("train", "val", "test")}
    names = {s: [f["file_path"] for f in m["frames"]] for s, m in splits.items()}
    assert len(names["train"]) == 14 and len(names["val"]) == 2 and len(names["test"]) == 2
    stems = [p.split("/")[-1] for p in names["train"] + names["val"]]
    assert len(set(stems)) == 16
    for s, paths in names.items():
        for p in paths:
            assert p.startswith(f"./{s}/") and (out / (p[2:] + ".png")).is_file()
            assert (out / "instances" / (p.split("/")[-1] + ".png")).is_file()
    assert math.isclose(
        0.5 * 32 / math.tan(0.5 * splits["train"]["camera_angle_x"]), 0.5 * 32 / math.tan(math.radians(25))
    )


def test_sparse_point_cloud_lies_on_the_surfaces_the_views_see(small_scene):
    """sparse_pc.ply (named in transforms.json, as ns-process-data names COLMAP's points): points
    on the support or on an object, coloured as the views see them; nerfstudio's dataparser reads
    it as splatfacto's seed points."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    meta = json.loads((small_scene / "transforms.json").read_text())
    assert meta["ply_file_path"] == "sparse_pc.ply"
    parser = NerfstudioDataParserConfig(data=small_scene, load_3D_points=True).setup()
    outputs = parser.get_dataparser_outputs("train")
    seeded = outputs.metadata["points3D_xyz"]
    assert 3000 <= len(seeded) <= 4000 and outputs.metadata["points3D_rgb"].shape == seeded.shape
    # back in the scene's own frame: on the support (z = 0) or within an object's box
    scale, transform = outputs.dataparser_scale, outputs.dataparser_transform
    points = ((seeded / scale) - transform[:, 3]) @ transform[:, :3]
    points = points.numpy()
    on_support = np.abs(points[:, 2]) < 1e-3
    in_object = np.zeros(len(points), bool)
    for obj in OBJECTS:
        lo, hi = obj.bounds()
        in_object |= ((points >= np.array(lo) - 1e-3) & (points <= np.array(hi) + 1e-3)).all(1)
    assert (on_support | in_object).all() and in_object.sum() > 0.1 * len(points)
    # without: no point cloud, and transforms.json names none
    out = small_scene.parent / "nopoints"
    make_scene(out, num_views=4, width=16, height=16, progress=False, removal_truth=False, points=0)
    assert "ply_file_path" not in json.loads((out / "transforms.json").read_text())
    assert not (out / "sparse_pc.ply").exists()


@pytest.mark.parametrize("flag", [["--points", "-1"], ["--num-views", "1"], ["--workers", "0"]])
def test_make_scene_refuses_bad_numbers(tmp_path, flag):
    from helpers import run

    r = run(["sa3d-make-scene", "--output", tmp_path / "s", "--width", "16", "--height", "16", *flag], tmp_path)
    assert r.returncode == 2 and "sa3d-make-scene: need" in r.stderr and not (tmp_path / "s").exists()
