"""Hand-checked cases for the plain-torch SA3D algorithm (sa3d_ns.core)."""

import json
import math

import numpy as np
import pytest
import torch

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.lifting import MaskLifter, render_mask_score, vote_targets
from sa3d_ns.core.metrics import accuracy, binarize_score, confusion, iou
from sa3d_ns.core.prompts import check_inside, load_prompt, parse_prompt, resolve_view
from sa3d_ns.core.self_prompt import masking_half_size, select_self_prompts
from sa3d_ns.core.views import view_order


# ----------------------------------------------------------------------------- metrics
def test_iou_and_accuracy_hand_checked():
    pred = np.array([1, 1, 0, 0], bool)
    gt = np.array([0, 1, 1, 0], bool)
    assert confusion(pred, gt) == (1, 1, 1, 1)
    assert iou(pred, gt) == pytest.approx(1 / 3)
    assert accuracy(pred, gt) == pytest.approx(0.5)
    assert iou(gt, gt) == 1.0 and accuracy(gt, gt) == 1.0
    assert iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_metrics_reject_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        iou(np.zeros((2, 2)), np.zeros((2, 3)))


def test_binarize_rules():
    s = torch.tensor([-1.0, 0.2, 0.4, 0.9])
    assert binarize_score(s).tolist() == [False, True, True, True]
    # mean of positives = 0.5 -> only 0.9 survives
    assert binarize_score(s, "positive_mean").tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="unknown binarisation"):
        binarize_score(s, "nope")


# ----------------------------------------------------------------------------- self-prompting
def test_masking_half_size():
    s = torch.zeros(40, 40)
    s[10:30, 10:30] = 1.0  # A = 400 -> floor(sqrt(400/pi)) = 11 -> 11 // 2 = 5
    assert masking_half_size(s) == 5
    tiny = torch.zeros(10, 10)
    tiny[0, 0] = 1.0
    assert masking_half_size(tiny) == 2


def test_first_point_is_argmax_and_points_are_spread_and_inside():
    s = torch.zeros(40, 40)
    s[10:30, 10:30] = 0.5
    s[20, 15] = 1.0
    pts = select_self_prompts(s, None, num_prompts=3)
    assert pts.shape == (3, 2)
    assert pts[0].tolist() == [15.0, 20.0]  # (x, y) = (col, row)
    for x, y in pts.tolist():
        assert s[int(y), int(x)] > 0  # every prompt lies on the object
    # A = 399 * 0.5 + 1 = 200.5 -> floor(sqrt(200.5 / pi)) = 7 -> half-size 3;
    # consecutive points lie outside each other's blocked square
    assert masking_half_size(s) == 3
    d = (pts[1:] - pts[:-1]).abs().max(dim=1).values
    assert bool((d > 3).all())


def test_no_positive_score_gives_no_prompt():
    assert select_self_prompts(torch.full((8, 8), -0.3), None, 3).shape == (0, 2)


def test_depth_penalty_keeps_points_on_the_same_depth_layer():
    # two blobs with the same score; the far one (depth 10) should lose against the near one
    s = torch.zeros(30, 60)
    s[5:25, 5:25] = 1.0
    s[5:25, 35:55] = 1.0
    s[15, 15] = 1.5
    depth = torch.ones(30, 60)
    depth[:, 30:] = 10.0
    pts = select_self_prompts(s, depth, num_prompts=2)
    assert pts[1, 0] < 30  # second point stays in the near blob


def test_stops_when_nothing_positive_left():
    s = torch.zeros(20, 20)
    s[10, 10] = 1.0
    assert len(select_self_prompts(s, None, num_prompts=5)) == 1


# ----------------------------------------------------------------------------- lifting
class LinearField(torch.nn.Module):
    """m(x) = table[cell(x)]: a 1D grid of 4 cells on x in [0, 4) (linear, non-negative weights)."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(4))

    def forward(self, positions):
        idx = positions[:, 0].long().clamp(0, 3)
        return self.table[idx]


def test_vote_targets():
    assert vote_targets(torch.tensor([True, False]), 1.0).tolist() == [1.0, -1.0]
    assert vote_targets(torch.tensor([True, False]), 0.3).tolist() == pytest.approx([1.0, -0.3])


def test_vote_lifting_is_weighted_average_of_targets():
    field = LinearField()
    lifter = MaskLifter(field, field.table, mode="vote")
    # two rays, one sample each: ray 0 sees cell 0 (inside mask), ray 1 sees cell 1 (outside)
    pos = torch.tensor([[[0.5, 0, 0]], [[1.5, 0, 0]]])
    w = torch.tensor([[1.0], [1.0]])
    lifter.add_view(pos, w, torch.tensor([True, False]), neg_weight=1.0)
    assert field.table.tolist() == [1.0, -1.0, 0.0, 0.0]
    # second view: cell 0 seen outside the mask with weight 0.5 -> (1*1 + 0.5*(-1)) / 1.5 = 1/3
    lifter.add_view(torch.tensor([[[0.5, 0, 0]]]), torch.tensor([[0.5]]), torch.tensor([False]), neg_weight=1.0)
    assert field.table[0].item() == pytest.approx(1 / 3)
    assert field.table[1].item() == pytest.approx(-1.0)
    # rendered score S = sum w m
    s = render_mask_score(field, pos, w)
    assert s.tolist() == pytest.approx([1 / 3, -1.0])


def test_sgd_lifting_is_gradient_step():
    field = LinearField()
    lifter = MaskLifter(field, field.table, mode="sgd", lr=0.1)
    pos = torch.tensor([[[0.5, 0, 0], [2.5, 0, 0]], [[1.5, 0, 0], [1.5, 0, 0]]])
    w = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    lifter.add_view(pos, w, torch.tensor([True, False]), neg_weight=2.0)
    # L = -(1/2) sum_p t_p S_p; -dL/dtable = (1/2) [0.6*1, 1.0*(-2), 0.4*1, 0] ; step 0.1
    assert field.table.tolist() == pytest.approx([0.03, -0.1, 0.02, 0.0])


def test_lifter_rejects_bad_shapes_and_mode():
    field = LinearField()
    with pytest.raises(ValueError, match="lifting mode"):
        MaskLifter(field, field.table, mode="adam")
    lifter = MaskLifter(field, field.table)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        lifter.add_view(torch.zeros(2, 3, 3), torch.zeros(2, 2), torch.zeros(2, dtype=torch.bool), 1.0)


# ----------------------------------------------------------------------------- view order
def test_view_order_dataset_and_nearest():
    centres = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [10, 0, 0]])
    assert view_order(centres, 2, "dataset") == [2, 0, 1, 3, 4]
    order = view_order(centres, 2, "nearest")
    # greedy growth, ties broken by the lower index: 2 -> 1 (dist 1) -> 0 (dist 1 from 1) -> 3 -> 4
    assert order == [2, 1, 0, 3, 4]
    assert sorted(order) == list(range(5))
    with pytest.raises(ValueError, match="unknown view order"):
        view_order(centres, 0, "random")


def test_later_passes_go_over_the_first_views_of_the_order_again():
    from sa3d_ns.core.views import passes_order

    order = [4, 5, 3, 6]
    assert passes_order(order, 1) == order
    assert passes_order(order, 2) == order * 2
    assert passes_order(order, 2, 0.5) == [4, 5, 3, 6, 4, 5]
    assert passes_order(order, 3, 0.25) == [4, 5, 3, 6, 4, 4]
    assert passes_order(order, 2, 0.01) == [4, 5, 3, 6, 4]  # (at least one view)
    assert passes_order([], 2) == []


# ----------------------------------------------------------------------------- prompts
def test_parse_prompt_defaults_and_scaling():
    p = parse_prompt({"view": 3, "points": [[10, 20], [5, 5]], "labels": [1, 0]})
    assert p.view == 3 and p.labels.tolist() == [1, 0] and p.mask_choice is None
    q = parse_prompt({"view": "a.png", "points": [[10, 20]]})
    assert q.labels.tolist() == [1]
    half = parse_prompt({"view": 0, "points": [[9.5, 19.5]], "box": [0, 0, 20, 40]}).scaled(0.5, 0.5)
    assert half.points.tolist() == [
        [4.5, 9.5]
    ]  # pixel centres: (9.5 + 0.5) * 0.5 - 0.5 and half.box.tolist() == [0, 0, 10, 20]
    t = parse_prompt({"view": 0, "text": "  a Yellow duck ", "points": [[3, 4]], "labels": [0]})
    assert t.text == "a Yellow duck" and t.box is None and t.scaled(0.5, 0.5).text == t.text
    assert t.to_json()["text"] == "a Yellow duck"


@pytest.mark.parametrize(
    "data, match",
    [
        ([1, 2], "expected a JSON object"),
        ({"points": [[1, 2]]}, 'missing "view"'),
        ({"view": 0, "points": [[1, 2]], "colour": 1}, "unknown key"),
        ({"view": 0, "text": ""}, '"text" must be a non-empty phrase'),
        ({"view": 0, "text": ["a duck"]}, '"text" must be a non-empty phrase'),
        ({"view": 0, "text": "a duck", "box": [0, 0, 5, 5]}, "not both"),
        ({"view": 0, "points": [[1, 2, 3]]}, "list of \\[x, y\\]"),
        ({"view": 0, "points": [[1, 2]], "labels": [1, 0]}, "one label per point"),
        ({"view": 0, "points": [[1, 2]], "labels": [2]}, "1 \\(positive\\) / 0 \\(negative\\)"),
        ({"view": 0, "points": [[1, 2]], "labels": [0]}, "at least one positive point"),
        ({"view": 0, "box": [5, 5, 1, 1]}, "x0 < x1"),
        ({"view": -1, "points": [[1, 2]]}, "must be >= 0"),
        ({"view": 0, "points": [[1, 2]], "mask_choice": "best"}, "mask_choice"),
    ],
)
def test_parse_prompt_errors(data, match):
    with pytest.raises(SA3DError, match=match):
        parse_prompt(data)


def test_load_prompt_file_errors(tmp_path):
    with pytest.raises(SA3DError, match="Prompt file not found"):
        load_prompt(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"view": 0, "points": [[1, 2]')
    with pytest.raises(SA3DError, match="not valid JSON .* line 1"):
        load_prompt(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"view": 0, "points": [[1, 2]]}))
    assert load_prompt(good).points.tolist() == [[1, 2]]


def test_resolve_view_and_inside():
    names = ["/d/images/frame_00000.png", "/d/images/frame_00002.png"]
    assert resolve_view(1, names) == 1
    assert resolve_view("frame_00002.png", names) == 1
    assert resolve_view("images/frame_00002.png", names) == 1
    with pytest.raises(SA3DError, match="out of range"):
        resolve_view(2, names)
    with pytest.raises(SA3DError, match="not a training image"):
        resolve_view("frame_00001.png", names)
    p = parse_prompt({"view": 0, "points": [[64, 3]]})
    with pytest.raises(SA3DError, match="outside view 0, which is 64 x 48"):
        check_inside(p, 64, 48)
    check_inside(parse_prompt({"view": 0, "points": [[63.9, 47]]}), 64, 48)
    with pytest.raises(SA3DError, match="box"):
        check_inside(parse_prompt({"view": 0, "box": [0, 0, 65, 10]}), 64, 48)
    assert math.isfinite(float(p.points[0, 0]))


def test_vote_prior_shrinks_rarely_seen_entries():
    field = LinearField()
    lifter = MaskLifter(field, field.table, mode="vote", vote_prior=1.0)
    # cell 0 seen with weight 3 (inside), cell 1 with weight 1 (inside): mean touch 2 -> prior 2
    pos = torch.tensor([[[0.5, 0, 0]], [[1.5, 0, 0]]])
    lifter.add_view(pos, torch.tensor([[3.0], [1.0]]), torch.tensor([True, True]), neg_weight=1.0)
    assert field.table[0].item() == pytest.approx(3 / (3 + 2))
    assert field.table[1].item() == pytest.approx(1 / (1 + 2))
    assert field.table[2].item() == 0.0  # never seen


def test_original_frame_roundtrip_and_box_corners():
    from sa3d_ns.core.geometry import box_corners, from_original_frame, to_original_frame

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    transform = np.concatenate([q, rng.normal(size=(3, 1))], 1)
    p = rng.normal(size=(50, 3))
    assert np.allclose(to_original_frame(from_original_frame(p, transform, 0.3), transform, 0.3), p)
    c = box_corners([0, 1, 2], [3, 4, 5])
    assert c.shape == (8, 3) and {tuple(x) for x in c} == {(x, y, z) for x in (0, 3) for y in (1, 4) for z in (2, 5)}


def test_near_the_bulk_drops_only_far_stragglers():
    from sa3d_ns.core.geometry import near_the_bulk

    rng = np.random.default_rng(0)
    rod = np.stack([rng.uniform(0, 10, 2000), rng.normal(0, 0.1, 2000), rng.normal(0, 0.1, 2000)], 1)  # elongated
    far = np.array([[200.0, 0, 0], [0, -150.0, 40.0]])
    keep = near_the_bulk(np.concatenate([rod, far]))
    assert keep[:2000].all() and not keep[2000:].any()


def test_lifter_releases_its_sums_and_needs_a_reset_to_lift_again():
    field = LinearField()
    lifter = MaskLifter(field, field.table, mode="vote")
    pos, w = torch.tensor([[[0.5, 0, 0]]]), torch.tensor([[1.0]])
    lifter.add_view(pos, w, torch.tensor([True]), neg_weight=1.0)
    lifter.release()
    assert lifter.touch is None and field.table[0].item() == 1.0  # the field keeps its values
    with pytest.raises(RuntimeError, match="reset"):
        lifter.add_view(pos, w, torch.tensor([False]), neg_weight=1.0)
    lifter.reset()
    lifter.add_view(pos, w, torch.tensor([False]), neg_weight=1.0)
    assert field.table[0].item() == -1.0


def test_auto_downscale_and_cache_size():
    from sa3d_ns.core.cache import view_bytes
    from sa3d_ns.core.views import auto_downscale

    assert auto_downscale(1000, 750, 500) == 2.0
    assert auto_downscale(320, 240, 500) == 1.0
    assert auto_downscale(1000, 750, 0) == 1.0
    assert auto_downscale(750, 1000, 512) == 1000 / 512
    # 16 samples (12 + 2 bytes each), depth (4) and colour (3) per ray: 231 bytes
    assert view_bytes(10, 20, 16, True) == 200 * 231
    assert view_bytes(10, 20, 16, False) == 200 * 228


def test_power_law_fit_recovers_exponents():
    from sa3d_ns.bench import fit_power_law

    views, pixels = [25, 50, 100, 25, 50, 100], [64**2] * 3 + [128**2] * 3
    values = [3.0 * v**1.0 * p**0.5 for v, p in zip(views, pixels, strict=True)]
    a, b = fit_power_law(views, pixels, values)
    assert abs(a - 1.0) < 1e-9 and abs(b - 0.5) < 1e-9
    a, b = fit_power_law([25, 50], [100, 100], [2.0, 8.0])
    assert abs(a - 2.0) < 1e-9 and np.isnan(b)


def test_cutout_figures_hand_checked():
    """A 10 x 10 view, the object a 2 x 2 square: specks are opaque pixels beyond its 2-px
    margin; ghost counts the footprint pixels where the removal stayed nearer the object than the
    truth; outside the footprint removal must change nothing."""
    from sa3d_ns.core.metrics import cutout_figures, dilate, psnr

    gt = np.zeros((10, 10), bool)
    gt[4:6, 4:6] = True
    assert dilate(gt, 2).sum() == 36 and dilate(gt, 0).sum() == 4
    acc = np.zeros((10, 10))
    acc[4:6, 4:6] = 1.0
    acc[0, 0] = acc[9, 9] = 0.9  # two specks
    acc[3, 3] = 0.9  # inside the margin: not a speck
    truth = np.full((10, 10, 3), 0.2)  # the scene without the object
    image = truth.copy()
    image[gt] = 0.9  # the object, bright
    rgb = image.copy()  # a perfect NeRF
    removed = truth.copy()
    removed[4, 4] = 0.8  # one object pixel left behind: a ghost
    f = cutout_figures(gt, acc, rgb, removed, image, truth, np.ones((10, 10), bool))
    assert f["specks"] == pytest.approx(2 / 100)
    assert f["ghost"] == pytest.approx(1 / 4)  # of the 4 pixels where the object shows
    assert f["removal_psnr"] == pytest.approx(-10 * math.log10(0.36 / 36))  # one pixel off by 0.6 of 36
    assert f["nerf_psnr"] == 100.0 and f["outside_psnr"] == 100.0 and f["outside_changed"] == 0.0
    assert f["unseen"] == 0.0
    removed[0, 9] = 0.5  # a change far from the object
    seen = np.ones((10, 10), bool)
    seen[4:6, 4:6] = False  # under the object: no other view sees it
    f = cutout_figures(gt, acc, rgb, removed, image, truth, seen)
    assert f["outside_changed"] == pytest.approx(1 / 64) and f["unseen"] == pytest.approx(4 / 36)
    assert f["ghost"] == 0.0 and f["removal_psnr"] == 100.0  # the ghost pixel is unseen: reported apart
    assert set(cutout_figures(gt, acc, rgb, removed)) == {"specks", "outside_psnr", "outside_changed"}
    # where another object hides part of it, the object alone rightly shows that part: not specks
    whole = gt.copy()
    whole[0:2, 0:2] = True  # (a hidden part around the first speck)
    assert cutout_figures(gt, acc, rgb, removed, whole=whole)["specks"] == pytest.approx(1 / 100)
    assert math.isnan(psnr(np.zeros(0), np.zeros(0)))


def test_outside_box_counts_points_beyond_the_grown_box():
    from sa3d_ns.core.metrics import outside_box

    lo, hi = [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]  # grown by 5 % of 2 = 0.1 on every side
    points = np.array([[0.5, 1.0, 0.5], [1.05, 1.0, 0.5], [0.5, 2.2, 0.5], [-0.2, 0.0, 0.0]])
    assert outside_box(points, lo, hi) == pytest.approx(0.5)
    assert outside_box(points, lo, hi, margin=0.2) == 0.0
    assert math.isnan(outside_box(np.zeros((0, 3)), lo, hi))


def test_benchmark_refuses_a_source_run_that_is_not_one(tmp_path):
    from sa3d_ns.bench import main

    with pytest.raises(SystemExit, match="benchmark: --splatfacto-config .*nope.yml: file not found"):
        main(["--workdir", str(tmp_path / "b"), "--device", "cpu", "--splatfacto-config", str(tmp_path / "nope.yml")])


def test_benchmark_refuses_a_negative_export_check(tmp_path):
    from sa3d_ns.bench import main

    with pytest.raises(SystemExit, match="--export-check takes 0"):
        main(["--workdir", str(tmp_path / "b"), "--export-check", "-1"])
    assert not (tmp_path / "b").exists()
