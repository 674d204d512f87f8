"""core.composite: volume weights, the object alone, the scene without it, the overlay, on rays
worked out by hand."""

import math

import torch

from sa3d_ns.core.composite import (
    cut_out,
    fill_behind,
    front_of_boxes,
    mask_scores,
    overlay,
    probes_behind,
    resample_rays,
    volume_weights,
)


def col(*xs):
    return torch.tensor(xs, dtype=torch.float32).view(1, -1, 1)


def test_volume_weights_by_hand():
    # sigma delta = ln 2 per sample: each sample stops half of what reaches it
    w = volume_weights(col(math.log(2), math.log(2), math.log(2)), col(1.0, 1.0, 1.0))
    assert torch.allclose(w.view(-1), torch.tensor([0.5, 0.25, 0.125]))
    # empty space weighs nothing and lets everything through
    w = volume_weights(col(0.0, math.log(4)), col(1.0, 1.0))
    assert torch.allclose(w.view(-1), torch.tensor([0.0, 0.75]))


def test_volume_weights_are_nerfstudios():
    from nerfstudio.cameras.rays import Frustums, RaySamples

    g = torch.Generator().manual_seed(0)
    density = torch.rand((5, 7, 1), generator=g) * 3
    deltas = torch.rand((5, 7, 1), generator=g)
    ones = torch.ones((5, 7, 3))
    frustums = Frustums(origins=ones, directions=ones, starts=deltas, ends=deltas, pixel_area=deltas)
    samples = RaySamples(frustums=frustums, deltas=deltas)
    assert torch.equal(volume_weights(density, deltas), samples.get_weights(density))


def test_cut_out_of_an_object_in_front_of_a_wall():
    # one ray: empty space, the object (alpha 1/2, red), a wall (alpha 3/4, blue)
    density = col(0.0, math.log(2), math.log(4))
    deltas = col(1.0, 1.0, 1.0)
    mids = col(0.5, 1.5, 2.5)
    rgb = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    inside = col(0, 1, 0).bool()
    white = torch.ones(3)
    cut = cut_out(density, deltas, mids, rgb, inside, inside, white)
    assert torch.allclose(cut.accumulation, torch.tensor([[0.5]]))
    assert torch.allclose(cut.premultiplied, torch.tensor([[0.5, 0.0, 0.0]]))
    assert torch.allclose(cut.rgb, torch.tensor([[1.0, 0.5, 0.5]]))  # half red over white
    assert torch.allclose(cut.depth, torch.tensor([[1.5]]))  # at the object, not the wall
    # without the object the wall shows whole: its alpha, no longer behind the object's half
    assert torch.allclose(cut.rest_weights.view(-1), torch.tensor([0.0, 0.0, 0.75]))
    # removal with a margin that also takes the wall's sample: nothing left on the ray
    cut = cut_out(density, deltas, mids, rgb, inside, col(0, 1, 1).bool(), white)
    assert torch.allclose(cut.rest_weights, torch.zeros(1, 3, 1))


def test_mask_scores_and_overlay_by_hand():
    weights = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])  # 3 rays, 2 samples
    values = torch.tensor(  # 2 objects' mask values at the samples
        [[[1.0, -1.0], [1.0, 3.0]], [[-1.0, 2.0], [5.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]]
    )
    scores = mask_scores(weights, values)
    assert torch.allclose(scores, torch.tensor([[1.0, 1.0], [-1.0, 2.0], [0.0, 0.0]]))
    rgb = torch.full((3, 3), 0.2)
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mask, score, out = overlay(rgb, torch.tensor([[0.5, 0.9], [-1.0, 2.0], [0.0, 0.0]]), 0.0, colors, 0.5)
    assert mask.view(-1).tolist() == [1.0, 1.0, 0.0]  # a score must pass the threshold (0 does not)
    assert torch.allclose(score.view(-1), torch.tensor([0.9, 2.0, 0.0]))
    assert torch.allclose(out[0], torch.tensor([0.1, 0.6, 0.1]))  # the higher-scoring object's green
    assert torch.allclose(out[1], torch.tensor([0.1, 0.6, 0.1]))  # the only passing object's green
    assert torch.equal(out[2], rgb[2])  # untouched off the mask
    # no object yet: nothing on, the render as it is
    mask, score, out = overlay(rgb, torch.zeros((3, 0)), 0.0, torch.zeros((1, 3)), 0.5)
    assert mask.sum() == 0 and score.sum() == 0 and torch.equal(out, rgb)


def test_a_haze_in_front_of_the_box_does_not_hide_a_visible_object_but_an_occluder_does():
    # 4 samples per ray, one object: samples 2 and 3 lie in its box; the object (value 1) at 2
    inside = torch.tensor([[False, False, True, True]] * 3 + [[False] * 4])[..., None]
    front = front_of_boxes(inside)
    assert front[..., 0].tolist() == [[True, True, False, False]] * 3 + [[False] * 4]  # (never enters: none)
    values = torch.tensor([[-1.0, -1.0, 1.0, -1.0]] * 4)[..., None]
    weights = torch.tensor(
        [
            [0.35, 0.35, 0.25, 0.05],  # a haze (voted out) in front: 70 % of the weight, the object 25 %
            [0.5, 0.49, 0.01, 0.0],  # an occluder in front: the box 1 % visible
            [0.0, 0.0, 0.3, 0.7],  # the object's rim: the rest is the background behind it, in the box
            [0.35, 0.35, 0.25, 0.05],  # a ray that never enters the box: its whole score
        ]
    )
    whole = mask_scores(weights, values)
    assert torch.allclose(whole[:, 0], torch.tensor([-0.5, -0.98, -0.4, -0.5]))
    seen = mask_scores(weights, values, front, 0.2)
    # the haze left out (the box is 30 % visible through it); the occluder's votes kept (1 % visible);
    # what lies behind or around the object counts as before
    assert torch.allclose(seen[:, 0], torch.tensor([0.2, -0.98, -0.4, -0.5]))
    # a higher bar than the box's visibility: the whole score
    assert torch.allclose(mask_scores(weights, values, front, 0.31)[:, 0], whole[:, 0])


def test_resample_rays_are_those_the_removed_samples_weighed_on():
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.01, 0.9, 0.09], [0.0, 0.0, 1.0]])
    gone = torch.tensor([[True, False, False], [True, False, False], [False, False, False]])
    assert resample_rays(weights, gone).tolist() == [0]  # 0.01 of the second ray: its samples cover the rest
    assert resample_rays(weights, gone, min_weight=0.005).tolist() == [0, 1]


def test_fill_behind_takes_the_solid_run_behind_a_removed_sample():
    """One ray of six samples, two objects: object 0's mask holds sample 1 (in its empty rim), the
    solid samples right behind it go too, up to the empty one; object 1's mask holds nothing."""
    gone = torch.zeros(1, 6, 2, dtype=torch.bool)
    gone[0, 1, 0] = True
    solid = torch.tensor([[True, False, True, True, False, True]])
    near = torch.ones(1, 6, 2, dtype=torch.bool)
    out = fill_behind(gone, solid, near)
    assert out[0, :, 0].int().tolist() == [0, 1, 1, 1, 0, 0]  # the solid run behind, not past the gap
    assert not out[..., 1].any()
    near[0, 3, 0] = False  # beyond the object's box: kept
    assert fill_behind(gone, solid, near)[0, :, 0].int().tolist() == [0, 1, 1, 0, 0, 0]
    solid[0, 1] = True  # nothing in front of the mask goes
    gone[0, 1, 0], gone[0, 2, 0] = False, True
    assert fill_behind(gone, solid, torch.ones_like(near))[0, :, 0].int().tolist() == [0, 0, 1, 1, 0, 0]


def test_probes_behind_run_from_each_point_to_where_its_ray_leaves_its_box():
    """Probes along each ray up to the box's far side, whatever the ray's direction; a point out of
    its box already (its far side behind it) probes only itself."""
    points = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [1.0, 0.0, 0.0]])
    lo, hi = torch.full((4, 3), -1.0), torch.full((4, 3), 1.0)
    p = probes_behind(points, dirs, lo, hi, 4)
    assert p.shape == (4, 4, 3)
    assert torch.allclose(p[0, :, 0], torch.tensor([0.25, 0.5, 0.75, 1.0]))
    assert torch.allclose(p[1, :, 0], torch.tensor([0.125, -0.25, -0.625, -1.0]))
    assert torch.allclose(p[2, -1], torch.tensor([0.75, 1.0, 0.0]))  # (leaves through y = 1, at t = 1.25)
    assert torch.allclose(p[3], points[3].expand(4, 3))
