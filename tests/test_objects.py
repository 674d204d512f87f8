"""Several objects per run: prompt files, names, colours and exclusive ownership of points."""

import pytest
import torch

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.objects import exclusive, owner, palette
from sa3d_ns.core.prompts import parse_prompt, parse_prompts


def test_one_prompt_is_one_object_named_object():
    (p,) = parse_prompts({"view": 0, "points": [[1, 2]]})
    assert p.name == "object" and p.to_json()["name"] == "object"
    assert parse_prompt({"view": 0, "points": [[1, 2]], "name": "red_ball"}).name == "red_ball"


def test_several_objects_named_or_numbered():
    ps = parse_prompts({"objects": [{"view": 0, "points": [[1, 2]]}, {"view": "b.png", "box": [0, 0, 4, 4]}]})
    assert [p.name for p in ps] == ["object1", "object2"] and ps[1].view == "b.png" and ps[1].box is not None
    ps = parse_prompts({"objects": [{"view": 0, "points": [[1, 2]], "name": "ball"}]})
    assert [p.name for p in ps] == ["ball"]
    assert parse_prompts({"objects": [{"view": 0, "points": [[1, 2]]}]})[0].name == "object"
    assert ps[0].scaled(2, 2).name == "ball"


@pytest.mark.parametrize(
    "data, match",
    [
        ({"objects": []}, "non-empty list"),
        ({"objects": {"view": 0}}, "non-empty list"),
        ({"objects": [{"view": 0, "points": [[1, 2]]}], "view": 0}, "no other top-level keys"),
        ({"objects": [{"view": 0, "points": [[1, 2]]}, {"points": [[1, 2]]}]}, r"objects\[1\].*missing \"view\""),
        (
            {"objects": [{"view": 0, "points": [[1, 2]], "name": "a"}, {"view": 1, "box": [0, 0, 1, 1], "name": "a"}]},
            "used twice",
        ),
        ({"view": 0, "points": [[1, 2]], "name": "my ball"}, "Invalid object name"),
        ({"view": 0, "points": [[1, 2]], "name": "all"}, "reserved"),
        ({"view": 0, "points": [[1, 2]], "name": 3}, "Invalid object name"),
    ],
)
def test_prompt_file_errors_name_the_problem(data, match):
    with pytest.raises(SA3DError, match=match):
        parse_prompts(data)


def test_names_of_objects_added_to_a_run():
    from sa3d_ns.nerf.resolve import new_object_names

    def names(kept, data):
        return new_object_names(kept, parse_prompts(data), "p.json")

    one = {"view": 0, "points": [[1, 2]]}
    assert names(["object"], one) == ["object2"]
    assert names(["ball"], {"objects": [{**one, "name": "crate"}, one]}) == ["crate", "object2"]
    assert names(["object1", "object2"], {"objects": [one, one]}) == ["object3", "object4"]
    with pytest.raises(SA3DError, match="already an object"):
        names(["ball"], {**one, "name": "ball"})
    with pytest.raises(SA3DError, match="already an object"):
        names(["object"], {**one, "name": "object"})  # chosen, not a default


def test_palette_is_distinct_and_starts_with_the_overlay_red():
    colors = palette(8)
    assert colors[0] == (1.0, 0.2, 0.2) and len(set(colors)) == 8
    assert (
        min(sum((a - b) ** 2 for a, b in zip(c1, c2, strict=True)) for i, c1 in enumerate(colors) for c2 in colors[:i])
        > 0.01
    )


def test_exclusive_values_leave_at_most_one_object_on():
    values = torch.tensor([[0.8, 0.3, -1.0], [0.2, 0.5, 0.4], [-0.5, -0.1, -0.2], [0.6, 0.6, 0.0]])
    ex = exclusive(values, 0.0)
    assert ((ex > 0).sum(-1) <= 1).all()
    assert ex[0].tolist() == pytest.approx([0.8, 0.0, -1.0]) and ex[1].tolist() == pytest.approx([0.0, 0.5, 0.0])
    assert torch.equal(ex[2], values[2])  # nothing on: unchanged
    assert owner(values, 0.0).tolist() == [0, 1, -1, 0]
    one = torch.randn(5, 1)
    assert torch.equal(exclusive(one, 0.0), one)  # a single object is never changed


def test_bounds_from_what_the_masks_saw_and_the_crop():
    from sa3d_ns.core.objects import crop, robust_bounds, surface_samples

    positions = torch.zeros(4, 3, 3)
    positions[:, :, 0] = torch.arange(3.0)  # sample s of every ray at x = s
    positions[:, :, 1] = torch.arange(4.0)[:, None]  # ray r at y = r
    weights = torch.tensor([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    mask = torch.tensor([True, True, False, True])
    pts = surface_samples(positions, weights, mask)
    assert pts.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 3.0, 0.0]]
    assert surface_samples(positions, weights, torch.zeros(4, dtype=torch.bool)).shape == (0, 3)

    cloud = torch.rand(1000, 3)
    cloud[:300] = torch.rand(300, 3) * 100 - 50  # 30 % strays all over a large space
    lo, hi = robust_bounds(cloud, quantile=0.5, pad=0.15)
    assert (lo < 0.02).all() and (lo > -0.2).all() and (hi > 0.98).all() and (hi < 1.2).all(), (lo, hi)
    rod = torch.stack([torch.linspace(0, 10, 500), torch.zeros(500), torch.zeros(500)], -1)
    lo, hi = robust_bounds(rod)
    assert lo[0] <= 0.05 and hi[0] >= 9.95  # the whole length of a rod

    bounds = torch.stack([torch.stack([lo, hi]), torch.tensor([[-torch.inf] * 3, [torch.inf] * 3])])
    values = torch.ones(2, 2)
    where = torch.tensor([[0.5, 0.5, 0.5], [5.0, 5.0, 5.0]])
    assert crop(values, where, bounds, 0.0).tolist() == [[1.0, 1.0], [0.0, 1.0]]  # outside box 0: off; no box: kept


def test_object_box_keeps_only_points_the_finished_mask_agrees_with():
    from sa3d_ns.core.objects import object_box

    ball = torch.rand(200, 3)  # the object's surface points, in the unit cube
    behind = torch.rand(150, 3) + torch.tensor([1.5, 0.0, 0.0])  # a mask rim's background, just behind
    points = torch.cat([ball, behind])
    values = torch.cat([torch.ones(200), -torch.ones(150)])  # the finished 3D mask: on the object only
    lo, hi = object_box(points, values, threshold=0.0)
    assert (lo > -0.2).all() and (hi < 1.2).all()  # the background left out
    lo_all, hi_all = object_box(points, torch.ones(350), threshold=0.0)
    assert hi_all[0] > 2.0  # (what the box would be with the background in)
    assert object_box(points, torch.cat([torch.ones(7), -torch.ones(343)]), threshold=0.0) is None  # < 8 points
    assert object_box(points[:7], torch.ones(7), threshold=0.0) is None
