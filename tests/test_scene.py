"""The generated demo scene: its instance masks name the pixels of each object, and its cameras
look at the scene from all around."""

import json

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
