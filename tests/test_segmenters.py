"""The 2D segmenters: weight-free (GrabCut + depth), oracle (instance masks) and SAM (the real
segment-anything architecture at small random weights)."""

import urllib.error

import cv2
import numpy as np
import pytest
import torch

from sa3d_ns import weights
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.metrics import iou
from sa3d_ns.core.regions import depth_layers
from sa3d_ns.segmenters.base import Segmentation
from sa3d_ns.segmenters.oracle import OracleSegmenter
from sa3d_ns.segmenters.weightfree import WeightFreeSegmenter


def disc_scene(h=64, w=80, seed=0):
    """A red disc in front of a noisy checkered background; depth 2 on the disc, 5 behind."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    gt = (xx - 30) ** 2 + (yy - 30) ** 2 < 14**2
    checker = ((xx // 8 + yy // 8) % 2).astype(np.float32)
    img = np.stack([0.3 + 0.3 * checker, 0.5 + 0.2 * checker, 0.6 - 0.2 * checker], -1)
    img[gt] = [0.85, 0.15, 0.1]
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
    depth = np.where(gt, 2.0, 5.0).astype(np.float32)
    return (img * 255).astype(np.uint8), depth, gt


def test_weightfree_point_prompt_finds_the_object():
    img, depth, gt = disc_scene()
    seg = WeightFreeSegmenter()
    seg.set_image(img, depth)
    out = seg.predict(np.array([[30.0, 30.0]]), np.array([1]))
    assert out.masks.shape == (3, 64, 80) and out.scores.shape == (3,)
    mask, _ = out.best()
    assert iou(mask, gt) > 0.9


@pytest.mark.parametrize("depth_kind", ["noise", "none"])
def test_weightfree_point_prompt_without_usable_depth(depth_kind):
    """Noisy depth (no region grows from the point) or no depth: colour alone still finds the disc."""
    img, _, gt = disc_scene(seed=3)
    depth = np.random.default_rng(0).uniform(1, 9, gt.shape).astype(np.float32) if depth_kind == "noise" else None
    seg = WeightFreeSegmenter()
    seg.set_image(img, depth)
    mask, _ = seg.predict(np.array([[30.0, 30.0]]), np.array([1])).best()
    assert iou(mask, gt) > 0.8


def test_weightfree_without_depth_and_with_negative_point_and_box():
    img, _, gt = disc_scene(seed=1)
    seg = WeightFreeSegmenter()
    seg.set_image(img)
    out = seg.predict(np.array([[30.0, 30.0], [70.0, 55.0]]), np.array([1, 0]), box=np.array([10, 10, 50, 50]))
    assert iou(out.masks[0], gt) > 0.85
    assert not out.masks[0][55, 70]  # the negative point is background


def test_weightfree_uses_prior_from_rendered_mask():
    img, depth, gt = disc_scene(seed=2)
    prior = np.where(gt, 0.8, -0.5).astype(np.float32)
    prior[:, :18] = -0.5  # an imperfect prior (misses the left part of the disc)
    seg = WeightFreeSegmenter()
    seg.set_image(img, depth)
    out = seg.predict(np.array([[32.0, 30.0]]), prior=prior, multimask=False)
    assert out.masks.shape[0] == 1
    assert iou(out.masks[0], gt) > 0.85


def test_weightfree_never_takes_what_the_3d_mask_voted_out():
    """Later views: pixels whose rendered 3D mask score is below -prior_out x its maximum (earlier
    views' 2D masks left them out) are sure background, whatever their colour; a pixel no view has
    voted on (score 0) or voted out only weakly is left to GrabCut (a 3D mask that under-covers the
    object must still grow). One red blob, the left part voted in, the right part voted out: no
    candidate reaches the right part."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :96]
    blob = ((xx - 48) / 34.0) ** 2 + ((yy - 32) / 14.0) ** 2 < 1
    img = np.stack([0.2 + 0.1 * ((xx // 8 + yy // 8) % 2), np.full(xx.shape, 0.5), np.full(xx.shape, 0.7)], -1)
    img[blob] = [0.85, 0.15, 0.1]
    img = (np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8)
    depth = np.where(blob, 2.0, 5.0).astype(np.float32)
    left, right = blob & (xx < 44), blob & (xx >= 48)
    prior = np.where(left, 1.0, np.where(right, -0.8, 0.0)).astype(np.float32)
    seg = WeightFreeSegmenter()
    seg.set_image(img, depth)
    out = seg.predict(np.array([[30.0, 32.0]]), prior=prior, multimask=True)
    assert all(not (m & right).any() for m in out.masks) and out.best()[0][left].mean() > 0.9
    assert WeightFreeSegmenter().prior_out == 0.5  # (the default, measured on the touching, clutter and demo scenes)


def test_weightfree_keeps_the_parts_of_a_striped_object_that_the_3d_mask_covers():
    """Later views: a pole in white and black bands before a floor of black and tan squares.
    GrabCut gives the black bands to the floor's colours, which cuts the pole into pieces; the
    self-prompts sit in the top piece. The pieces the rendered 3D mask covers (score > 0) are kept,
    not only the ones holding a point (which left the pole's lower half out, view after view), and
    nothing of the floor is."""
    h, w = 64, 64
    yy, xx = np.mgrid[:h, :w]
    floor = ((xx // 8 + yy // 8) % 2).astype(bool)
    img = np.where(floor[..., None], np.array([20, 20, 20]), np.array([180, 150, 115])).astype(np.uint8)
    pole = (np.abs(xx - 32) <= 2) & (yy >= 8) & (yy < 56)
    white = pole & ((yy // 6) % 2 == 0)
    img[pole] = [20, 20, 20]
    img[white] = [235, 235, 235]
    rng = np.random.default_rng(0)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    prior = np.where(pole, 1.0, np.where(np.abs(xx - 32) > 8, -0.1, 0.0)).astype(np.float32)
    seg = WeightFreeSegmenter()
    seg.set_image(img, np.full((h, w), 3.0, np.float32))
    mask = seg.predict(np.array([[32.5, 14.5], [32.5, 26.5]]), prior=prior, multimask=False).best()[0]
    lower = white & (yy >= 32)
    assert mask[lower].mean() > 0.9, mask[lower].mean()
    assert not (mask & ~pole).any()


def test_weightfree_lets_a_3d_mask_grow_whatever_the_scale_of_its_score():
    """The sure-background bar is relative to the score's largest magnitude, either sign: a
    splat's rendered score can peak at 0.14 inside the object and reach -0.8 far out, and against
    its maximum alone every pixel not yet voted in (-0.1 at the object's rim) would be barred, so an
    under-covering 3D mask could never grow (the CPU splat's viewer-prompted ball fell 0.69 ->
    0.36). The blob's core voted in weakly, its rim weakly out, the far background strongly out:
    the mask takes the rim and never the background."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :96]
    blob = ((xx - 48) / 20.0) ** 2 + ((yy - 32) / 14.0) ** 2 < 1
    core = ((xx - 48) / 10.0) ** 2 + ((yy - 32) / 7.0) ** 2 < 1
    img = np.stack([np.full(xx.shape, 0.3), np.full(xx.shape, 0.5), np.full(xx.shape, 0.7)], -1)
    img[blob] = [0.85, 0.15, 0.1]
    img = (np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8)
    prior = np.where(core, 0.14, np.where(blob, -0.1, -0.8)).astype(np.float32)
    seg = WeightFreeSegmenter()
    seg.set_image(img, np.full(xx.shape, 3.0, np.float32))
    mask = seg.predict(np.array([[48.0, 32.0]]), prior=prior, multimask=True).best()[0]
    assert mask[blob & ~core].mean() > 0.9 and not (mask & ~blob).any()


def object_on_its_floor(h=64, w=80, seed=0):
    """A red box (rows 14-39, cols 30-45) standing on a floor of nearly its red, under a blue sky;
    the depth flows without a step from the box's base into the floor and from the floor into the
    sky (as a NeRF's does), so a region grown over depth from the box spreads over the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    gt = (yy >= 14) & (yy < 40) & (xx >= 30) & (xx < 46)
    img = np.where((yy >= 28)[..., None], [0.8, 0.2, 0.15], [0.3, 0.4, 0.8]).astype(np.float32)
    img[gt] = [0.85, 0.15, 0.1]
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
    depth = (3.0 - 0.005 * (yy - 40)).astype(np.float32)  # floor and sky: 0.2 % a row
    depth[gt] = 3.0
    return (img * 255).astype(np.uint8), depth, gt


def test_weightfree_gives_no_depth_hint_that_is_the_floor_and_keeps_grabcut_near_its_hint():
    img, depth, gt = object_on_its_floor()
    click = np.array([[37.0, 26.0]])
    # every region grown over depth from the box is floor and sky (a third of the border, most of
    # the image): no depth layer; the hint is the first region with the floor's surface taken
    # out, inside the box (its lower rows lie within the tolerance of the nearly flat floor's
    # depth), and GrabCut stays near it
    assert depth_layers(depth, click) == []
    seg = WeightFreeSegmenter()
    seg.set_image(img, depth)
    out = seg.predict(click, np.array([1]))
    hint = out.masks[2]  # (the third candidate is the hint itself, with the click's seed disc)
    assert hint.sum() > 0.3 * gt.sum() and not (hint & ~gt).any()
    roi = seg.region_of_interest(out.masks[2], click)  # (the third candidate is the hint itself)
    ys, xs = np.nonzero(roi)
    assert 0 < ys.min() and ys.max() < 63 and 0 < xs.min() and xs.max() < 79  # a rectangle inside the image
    assert all(not (m & ~roi).any() for m in out.masks)  # outside it is sure background
    # a large object in full view (a third of the image, touching no border) keeps its layer
    big = np.full((64, 80), 5.0, np.float32)
    big[8:56, 10:70] = 2.0
    (layer,) = depth_layers(big, click)
    assert layer.sum() == 48 * 60


def test_weightfree_box_only():
    img, depth, gt = disc_scene(seed=3)
    seg = WeightFreeSegmenter()
    seg.set_image(img, depth)
    out = seg.predict(box=np.array([14, 14, 46, 46]), multimask=False)
    assert iou(out.masks[0], gt) > 0.8


def test_oracle_points_and_box():
    inst = np.zeros((20, 30), np.int64)
    inst[2:8, 2:10] = 1
    inst[10:18, 12:28] = 2
    seg = OracleSegmenter(lambda view, size: inst)
    seg.set_image(np.zeros((20, 30, 3), np.uint8), view_id=0)
    # two of three positive points on object 2, one on object 1, a negative on 1 (ignored)
    out = seg.predict(np.array([[15, 12], [20, 15], [3, 3], [4, 4]]), np.array([1, 1, 1, 0]))
    assert (out.masks[0] == (inst == 2)).all() and out.scores[0] == 1.0
    out = seg.predict(box=np.array([1, 1, 11, 9]))
    assert (out.masks[0] == (inst == 1)).all()
    out = seg.predict(np.array([[0, 19]]))  # background only -> empty mask, score 0
    assert not out.masks[0].any() and out.scores[0] == 0.0
    with pytest.raises(SA3DError, match="only works on training views"):
        seg.set_image(np.zeros((20, 30, 3), np.uint8))


def test_mask_choice_out_of_range_is_a_clear_error():
    seg = Segmentation(masks=np.zeros((3, 2, 2), bool), scores=np.array([0.1, 0.9, 0.5]))
    assert seg.best()[1] == 1 and seg.best(2)[1] == 2
    with pytest.raises(SA3DError, match="mask_choice 3 does not exist"):
        seg.best(3)


# ----------------------------------------------------------------------------- SAM
def tiny_sam(img_size=64):
    """The real segment-anything architecture, shrunk, with random weights (no download)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, grid = 32, img_size // 16
    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=16,
            embed_dim=dim,
            depth=1,
            num_heads=2,
            out_chans=dim,
            use_rel_pos=True,
            window_size=0,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            iou_head_hidden_dim=32,
        ),
    ).eval()


def test_sam_segmenter_real_architecture_small_weights():
    from sa3d_ns.segmenters.sam import SamSegmenter

    img, depth, _ = disc_scene()
    seg = SamSegmenter(tiny_sam())
    seg.set_image(img, depth, view_id=0)
    out = seg.predict(np.array([[30.0, 30.0]]), np.array([1]), multimask=True)
    assert out.masks.shape == (3, 64, 80) and out.masks.dtype == bool and out.scores.shape == (3,)
    out = seg.predict(
        np.array([[30.0, 30.0], [60, 50]]), np.array([1, 0]), box=np.array([5, 5, 50, 50]), multimask=False
    )
    assert out.masks.shape == (1, 64, 80)


def test_sam_weights_errors(tmp_path, monkeypatch):
    from sa3d_ns.segmenters import sam

    monkeypatch.setenv("SA3D_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SA3DError, match="SAM checkpoint not found: .*--pipeline.sam-checkpoint.*weightfree"):
        sam.resolve_sam_checkpoint("vit_b", tmp_path / "nope.pth")
    with pytest.raises(SA3DError, match="Unknown SAM variant"):
        sam.resolve_sam_checkpoint("vit_x", None)
    monkeypatch.setenv("SA3D_OFFLINE", "1")
    with pytest.raises(SA3DError, match="not in the cache .*downloads are disabled.*weightfree"):
        sam.resolve_sam_checkpoint("vit_b", None)
    # a failed download (offline) is a clear error and leaves no partial file
    monkeypatch.delenv("SA3D_OFFLINE")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    with pytest.raises(SA3DError, match="Could not download .*sam_vit_b_01ec64.pth .*You may be offline.*weightfree"):
        sam.resolve_sam_checkpoint("vit_b", None)
    assert not any((tmp_path / "cache").glob("*"))
    # a corrupt cached file is detected by its checksum
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache" / "sam_vit_b_01ec64.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SA3DError, match="corrupt \\(MD5 mismatch\\)"):
        sam.resolve_sam_checkpoint("vit_b", None)
    # a corrupt file given by path fails to load with a message naming the flag
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(SA3DError, match="Could not load SAM vit_b weights .*--pipeline.sam-checkpoint"):
        sam.build_sam("vit_b", bad)


def test_sam_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    """A readable state dict whose shapes do not fit the chosen variant names the variant flag."""
    from sa3d_ns.segmenters import sam

    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), path)
    with pytest.raises(SA3DError, match="Is it a vit_b checkpoint"):
        sam.build_sam("vit_b", path)


def test_noisy_oracle_errors_are_sams_kinds():
    """Each injected error, on a view with a ball (1) touching a box (2) and a far can (3)."""
    from sa3d_ns.segmenters.noisy import inject_error

    inst = np.zeros((40, 60), np.int64)
    inst[10:20, 10:20] = 1
    inst[10:20, 20:30] = 2  # touches object 1
    inst[30:36, 50:56] = 3
    ball = inst == 1
    rng = np.random.default_rng(0)
    assert not inject_error(ball, inst, "miss", rng).any()
    part = inject_error(ball, inst, "part", rng, points=np.array([[11.0, 11.0]]))
    assert part[11, 11] and (part & ~ball).sum() == 0 and 0 < part.sum() < ball.sum()  # the clicked part
    merged = inject_error(ball, inst, "merge", rng)
    assert np.array_equal(merged, (inst == 1) | (inst == 2))  # the touching box, not the far can
    lone = inject_error(inst == 3, inst, "merge", rng)  # nothing touches the can: it bleeds around
    assert lone.sum() > (inst == 3).sum() and lone[inst == 3].all()
    stray = inject_error(ball, inst, "stray", rng)
    extra = stray & ~ball
    assert stray[ball].all() and extra.sum() > 5
    n, _ = cv2.connectedComponents(stray.astype(np.uint8))
    assert n - 1 == 2  # the object and a blob apart from it
    with pytest.raises(ValueError, match="unknown error"):
        inject_error(ball, inst, "wrong", rng)


def test_noisy_oracle_is_wrong_in_its_share_of_views_and_the_same_each_time():
    from sa3d_ns.core.errors import SA3DError
    from sa3d_ns.segmenters.noisy import NoisyOracleSegmenter

    inst = np.zeros((64, 64), np.int64)
    inst[8:24, 8:24] = 1
    seg = NoisyOracleSegmenter(lambda view, size: inst, rate=0.3, seed=1)
    image = np.zeros((64, 64, 3), np.uint8)
    wrong, kinds = 0, set()
    for view in range(200):
        seg.set_image(image, view_id=view)
        mask = seg.predict(np.array([[16.0, 16.0]]), np.array([1])).masks[0]
        assert (seg.last_error is None) == np.array_equal(mask, inst == 1)
        wrong += seg.last_error is not None
        kinds.add(seg.last_error)
        again = seg.predict(np.array([[16.0, 16.0]]), np.array([1])).masks[0]
        assert np.array_equal(mask, again)  # a view always gets the same answer
    assert 0.2 < wrong / 200 < 0.4 and kinds == {None, "part", "merge", "stray", "miss"}
    clean = NoisyOracleSegmenter(lambda view, size: inst, rate=0.0)
    clean.set_image(image, view_id=3)
    assert np.array_equal(clean.predict(np.array([[16.0, 16.0]])).masks[0], inst == 1)
    with pytest.raises(SA3DError, match="noise-rate"):
        NoisyOracleSegmenter(lambda view, size: inst, rate=1.5)
    with pytest.raises(SA3DError, match="noise-kinds"):
        NoisyOracleSegmenter(lambda view, size: inst, kinds=("typo",))


def test_instance_masks_of_16_bits_keep_their_ids_and_pass_the_frame_checks(tmp_path):
    """A 16-bit instance-mask PNG (ids above 255, as tools that number many objects write) reads
    back with its ids, resized or not, and a data folder with such masks passes check_frames; one
    whose mask is neither its image's size nor a scaled copy of it does not."""
    from PIL import Image

    from sa3d_ns.data import check_frames
    from sa3d_ns.segmenters.oracle import read_instance_mask

    ids = np.zeros((20, 30), np.uint16)
    ids[2:8, 3:9], ids[10:18, 12:25] = 300, 65535
    cv2.imwrite(str(tmp_path / "m.png"), ids)  # (cv2 writes uint16 as a 16-bit PNG)
    assert Image.open(tmp_path / "m.png").mode.startswith("I")
    assert np.array_equal(read_instance_mask(tmp_path / "m.png"), ids.astype(np.int64))
    assert set(np.unique(read_instance_mask(tmp_path / "m.png", (60, 40))).tolist()) == {0, 300, 65535}
    cv2.imwrite(str(tmp_path / "i.png"), np.zeros((20, 30, 3), np.uint8))
    check_frames(tmp_path, [tmp_path / "i.png"], [(30, 20)], masks=[tmp_path / "m.png"])
    with pytest.raises(SA3DError, match="is 30x20 pixels, but transforms.json gives its camera 31x22"):
        check_frames(tmp_path, [tmp_path / "i.png"], [(31, 22)])
    # (full-size masks beside nerfstudio's downscaled images_2/: a scaled copy, rounded, passes)
    cv2.imwrite(str(tmp_path / "m.png"), cv2.resize(ids, (61, 41), interpolation=cv2.INTER_NEAREST))
    check_frames(tmp_path, [tmp_path / "i.png"], [(30, 20)], masks=[tmp_path / "m.png"])
    cv2.imwrite(str(tmp_path / "m.png"), ids[:10])
    with pytest.raises(SA3DError, match="is 30x10 pixels, but its image i.png is 30x20"):
        check_frames(tmp_path, [tmp_path / "i.png"], [(30, 20)], masks=[tmp_path / "m.png"])
    with pytest.raises(SA3DError, match="hold NaN or infinity"):
        check_frames(tmp_path, [tmp_path / "i.png"], [(30, 20)], poses=[np.full((3, 4), np.inf)])
