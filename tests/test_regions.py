"""The loop's checks of a 2D mask before it is lifted (sa3d_ns.core.regions), on hand-made masks
and depth maps whose answers can be worked out by eye."""

import numpy as np
import pytest
import torch

from sa3d_ns.core.anchors import TRUSTED, click_anchors, judge_anchors, leaves_out, seen_anchors
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.regions import (
    clicked_layer,
    depth_layers,
    depth_region,
    first_mask_warnings,
    keep_supported,
    looks_like_support,
    plausible_choice,
    review_first_masks,
    without_support,
)


def two_objects():
    """A 40 x 40 view: object A (rows 10-25, cols 5-17) and object B touching it on its right
    (rows 12-25, cols 18-31), both standing at depth ~2 on a background at depth 5."""
    depth = np.full((40, 40), 5.0, np.float32)
    a = np.zeros((40, 40), bool)
    a[10:26, 5:18] = True
    b = np.zeros((40, 40), bool)
    b[12:26, 18:32] = True
    depth[a] = 2.0
    depth[b] = 2.3  # B a little behind A: where they touch, depth jumps by 15 %
    return depth, a, b


def test_keep_supported_drops_regions_that_meet_no_evidence():
    blob = np.zeros((30, 30), bool)
    blob[5:12, 5:12] = True
    strip = np.zeros((30, 30), bool)
    strip[25:27, 0:30] = True  # a table edge of the same colour, far from the click
    mask = blob | strip
    assert (keep_supported(mask, points=np.array([[8, 8]])) == blob).all()
    # in a later view the rendered 3D mask is the evidence: one pixel of overlap keeps a region
    support = np.zeros_like(mask)
    support[26, 29] = True
    assert (keep_supported(mask, support=support) == strip).all()
    assert (keep_supported(mask, support=support, points=np.array([[8, 8]])) == mask).all()
    # with a box alone: regions that meet it (a box-prompted mask may reach past the box)
    assert (keep_supported(mask, box=np.array([3, 3, 14, 14])) == blob).all()
    assert (keep_supported(mask, box=np.array([10, 10, 14, 14])) == blob).all()
    # no evidence at all: unchanged; a click on nothing keeps nothing
    assert (keep_supported(mask) == mask).all()
    assert not keep_supported(mask, points=np.array([[20, 15]])).any()


def test_depth_layer_of_a_click_stops_at_the_objects_silhouette():
    depth, a, b = two_objects()
    layers = depth_layers(depth, np.array([[11, 17]]))
    assert layers and any((layer == a).all() for layer in layers)  # A alone, before leaking into B


@pytest.mark.parametrize("along_ray", [False, True])
def test_a_surface_that_flows_into_the_floor_is_offered_without_the_floor(along_ray):
    """A cylinder standing on the floor meets it without a depth step: grown from a click on it,
    a region spreads over the floor (here at a tolerance of 6 %, as a NeRF's noisy depth does at
    the first). Without the floor's surface it is the cylinder (z-depth, and depth along the ray
    as a NeRF renders it); a click on the floor itself leaves nothing."""
    from sa3d_ns.scene.generate import Obj, look_at, pixel_rays, render

    mug = Obj("mug", "cylinder", (0.0, 0.0, 0.3), (0.22, 0.0, 0.3), ((0.5, 0.5, 0.5), (0.4, 0.4, 0.4)), "checker")
    c2w = look_at(np.array([1.7, 1.3, 2.8]), np.array([0.0, 0.0, 0.25]))
    w = h = 96
    focal = 0.5 * w / np.tan(np.radians(25))
    _, ids, depth = render(c2w, w, h, focal, objects=[mug], ss=1)
    if along_ray:  # z over the cosine of the ray's angle to the camera's axis
        depth = depth / -(pixel_rays(c2w, w, h, focal) @ c2w[:3, 2]).reshape(h, w)
    depth = depth.astype(np.float32)
    truth = ids == 1
    ys, xs = np.nonzero(truth)
    click = np.array([[xs.mean(), ys.mean()]])
    flooded = depth_region(depth, click, 0.06)
    assert looks_like_support(flooded)  # (the floor, reached through the cylinder's base)
    layer = without_support(depth, flooded, click)
    assert layer is not None and (layer & truth).sum() / (layer | truth).sum() > 0.9
    floor = np.array([[5.0, h - 5.0]])
    assert ids[h - 5, 5] == 0 and without_support(depth, depth_region(depth, floor, 0.06), floor) is None


def test_first_mask_warnings_name_what_is_wrong():
    depth, a, b = two_objects()
    click = np.array([[11, 17]])
    layer = clicked_layer(depth, click)
    assert layer == a.sum()  # A's surface alone
    assert first_mask_warnings(a, click, None, layer) == {}
    merged = first_mask_warnings(a | b, click, None, layer)
    assert set(merged) == {"depth_layer"} and "(404 px vs 208 px)" in merged["depth_layer"]
    assert set(first_mask_warnings(b, click, None, layer)) == {"click_outside"}
    neg = first_mask_warnings(a | b, np.array([[11, 17], [25, 20]]), np.array([1, 0]), layer)
    assert {"negative_inside", "depth_layer"} <= set(neg)
    edge = a.copy()
    edge[10:26, 0:5] = True
    assert "border" in first_mask_warnings(edge, click)
    assert "disconnected" in first_mask_warnings(a, click, dropped=50)


def test_review_prefers_the_best_scoring_plausible_candidate():
    depth, a, b = two_objects()
    stray = np.zeros_like(a)
    stray[33:36, 30:36] = True
    candidates = np.stack([a | b, a | stray, a[:]])  # SAM-like: whole-and-more, the object + a blob, the object
    scores = np.array([0.95, 0.9, 0.8])
    review = review_first_masks(candidates, scores, np.array([[11, 17]]), depth=depth)
    # the merged one is implausible; the blob of the second is left out, so it is the object itself
    assert review.choice == 1 and (review.masks[1] == a).all()
    assert set(review.warnings[0]) == {"depth_layer"} and set(review.warnings[1]) == {"disconnected"}
    assert review_first_masks(candidates, scores, np.array([[11, 17]]), depth=depth, pick="score").choice == 0
    assert review_first_masks(candidates, scores, np.array([[11, 17]]), depth=depth, choice=2).choice == 2
    kept = review_first_masks(candidates, scores, np.array([[11, 17]]), depth=depth, drop_stray=False)
    assert (kept.masks[1] == (a | stray)).all()
    assert plausible_choice(np.array([0.9, 0.5]), [{"depth_layer": "x"}, {"click_outside": "y"}]) == 0
    with pytest.raises(ValueError, match="unknown pick"):
        review_first_masks(candidates, scores, pick="best")


def test_a_merged_only_candidate_is_offered_again_clipped_to_the_clicked_surface():
    depth, a, b = two_objects()
    click = np.array([[11, 17]])
    depth[20, 10] = 2.6  # a noisy pixel inside A: a pinhole in its depth layer, filled from the mask
    merged = (a | b)[None]  # one candidate (what the noisy oracle, or a segmenter without choices, gives)
    review = review_first_masks(merged, np.array([0.9]), click, depth=depth, clip=True)
    assert len(review.masks) == 2 and review.clipped == [False, True] and review.sources == [0, 0]
    assert review.choice == 1 and (review.masks[1] == a).all() and review.scores.tolist() == [0.9, 0.9]
    assert set(review.warnings[0]) == {"depth_layer"} and set(review.warnings[1]) == {"clipped"}
    assert review.warnings[1]["clipped"].endswith("clipped to that layer (208 px)")  # the pinhole filled
    # off, or picked by score, or a plausible candidate given: the segmenter's candidates alone decide
    assert len(review_first_masks(merged, np.array([0.9]), click, depth=depth).masks) == 1  # (off by default)
    assert review_first_masks(merged, np.array([0.9]), click, depth=depth, pick="score", clip=True).choice == 0
    both = review_first_masks(np.stack([a | b, a]), np.array([0.9, 0.5]), click, depth=depth, clip=True)
    assert len(both.masks) == 2 and both.choice == 1 and not any(both.clipped)
    # a prompt file's mask_choice may name the clipped candidate; one beyond them is a clear error
    assert review_first_masks(merged, np.array([0.9]), click, depth=depth, choice=1, clip=True).choice == 1
    with pytest.raises(SA3DError, match="mask_choice 2 does not exist: the prompt gave 2 candidate"):
        review_first_masks(merged, np.array([0.9]), click, depth=depth, choice=2, clip=True)
    # a click on B: B alone
    on_b = review_first_masks(merged, np.array([0.9]), np.array([[25, 20]]), depth=depth, clip=True)
    assert on_b.choice == 1 and (on_b.masks[1] == b).all()
    # a mask only a little larger than the clicked layer is not clipped (a true mask over a noisy layer)
    grown = a.copy()
    grown[10:26, 18:22] = True  # A and a 4-px strip of B: 1.3 times A's layer
    assert len(review_first_masks(grown[None], np.array([0.9]), click, depth=depth, clip=True).masks) == 1


def rays_from_depth(depth: np.ndarray, focal: float = 20.0):
    """A pinhole camera at the origin looking down -z: each pixel's ray has two samples, its
    surface (weight 1, at ``depth`` along z) and a far one (weight 0)."""
    h, w = depth.shape
    ys, xs = np.mgrid[:h, :w]
    dirs = np.stack([(xs - w / 2) / focal, -(ys - h / 2) / focal, -np.ones_like(xs, dtype=float)], -1).reshape(-1, 3)
    surface = dirs * depth.reshape(-1, 1)
    positions = torch.tensor(np.stack([surface, dirs * 50.0], 1), dtype=torch.float32)
    weights = torch.tensor([[1.0, 0.0]] * (h * w))
    return positions, weights


def test_a_click_is_anchored_in_3d_and_found_where_a_view_sees_it():
    depth, a, b = two_objects()
    positions, weights = rays_from_depth(depth)
    anchors = click_anchors(positions, weights, 40, np.array([[11.0, 17.0]]))
    assert anchors.shape == (1, 3) and torch.allclose(anchors[0], positions[17 * 40 + 11, 0])
    assert seen_anchors(anchors, positions, weights, 40) == [(11, 17)]
    assert leaves_out(a, [(11, 17)]) == [] and leaves_out(b, [(11, 17)]) == [0]
    assert leaves_out(b, [None]) == []  # an anchor the view does not see decides nothing
    # an occluder in front of the click (depth 1 over rows 14-21, cols 8-15): the anchor is hidden
    occluded = depth.copy()
    occluded[14:22, 8:16] = 1.0
    assert seen_anchors(anchors, *rays_from_depth(occluded), 40) == [None]
    # the same scene from a camera moved sideways by 0.3 (the points shift, the anchor stays)
    moved_positions = positions.clone()
    moved_positions[..., 0] -= 0.3
    assert seen_anchors(anchors + torch.tensor([-0.3, 0.0, 0.0]), moved_positions, weights, 40) == [(11, 17)]
    # a click on the sky (no surface) gives no anchor
    empty = torch.zeros_like(weights)
    assert click_anchors(positions, empty, 40, np.array([[11.0, 17.0]])).shape == (0, 3)


def test_an_anchor_that_the_agreeing_views_leave_out_is_dropped_one_they_show_is_trusted():
    # view 1 (its mask passed the IoU test) sees both anchors, shows the first, leaves out the second
    doubts, drop = judge_anchors([0, 0], [(1, 1), (5, 5)], [1])
    assert doubts == [TRUSTED, 1] and drop == []
    # view 2 does not see the second: nothing changes
    doubts, drop = judge_anchors(doubts, [(1, 1), None], [])
    assert doubts == [TRUSTED, 1] and drop == []
    # view 3 leaves out both: the first stays trusted (drift onto a neighbour is still caught by
    # the check), the second is left out a second time and dropped
    doubts, drop = judge_anchors(doubts, [(1, 1), (5, 5)], [0, 1])
    assert doubts == [TRUSTED, 2] and drop == [1]


def test_a_start_is_restarted_after_enough_disagreeing_views_and_restored_once():
    from sa3d_ns.core.loop import start_trial

    assert start_trial(2, 3, on_trial=False) is None  # not yet
    assert start_trial(3, 3, on_trial=False) == "restart"
    assert start_trial(4, 3, on_trial=False) is None  # (one try: at the 3rd)
    assert start_trial(3, 3, on_trial=True) == "restore"  # the restart found no support
    assert start_trial(50, 0, on_trial=False) is None  # 0: never
