"""Several objects in one run: names, colours, and which object owns a point.

Each object has its own mask field m_k(x). Where several are on at once, the point belongs to the
object with the largest value only: the others' values there are capped at the threshold, so every
rendered mask, render and export of one object excludes the points of the others.
"""

from __future__ import annotations

import colorsys
import re

import torch

from sa3d_ns.core.errors import SA3DError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
FIRST_COLOR = (1.0, 0.2, 0.2)


def check_name(name, source: str = "prompt") -> str:
    """An object name usable in output names and file names, or a clear error."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name == "all":
        raise SA3DError(
            f"Invalid object name {name!r} in {source}: use 1-40 letters, digits, '_' or '-', starting with a "
            "letter or digit ('all' is reserved), e.g. \"red_ball\"."
        )
    return name


def check_unique(names: list[str], source: str = "prompt") -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise SA3DError(f'Object name "{n}" is used twice in {source}; give every object its own "name".')
        seen.add(n)


def palette(n: int) -> list[tuple[float, float, float]]:
    """n distinct, saturated colours; the first is the single-object overlay red."""
    colors = [FIRST_COLOR]
    golden = 0.618033988749895
    hue = 0.0
    while len(colors) < n:
        hue = (hue + golden) % 1.0
        r, g, b = colorsys.hsv_to_rgb((hue + 0.33) % 1.0, 0.85, 0.95)
        colors.append((round(r, 3), round(g, 3), round(b, 3)))
    return colors[:n]


def exclusive(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """values ... x K (one column per object) -> the same, with every object but the largest
    capped at ``threshold`` at each point, so that at most one object is on (> threshold) there.
    With one object the values are unchanged."""
    if values.shape[-1] == 1:
        return values
    owner = values.argmax(dim=-1, keepdim=True)
    mine = torch.zeros_like(values, dtype=torch.bool).scatter_(-1, owner, True)
    return torch.where(mine, values, values.clamp(max=threshold))


def owner(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """values ... x K -> the index of the object that owns each point, -1 where none is on."""
    best, idx = values.max(dim=-1)
    return torch.where(best > threshold, idx, torch.full_like(idx, -1))


def surface_samples(positions: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, limit: int = 4096):
    """The heaviest sample of every ray inside a view's 2D mask (positions R x S x 3, weights
    R x S, mask R): where the view saw the object's surface; at most ``limit``, evenly strided."""
    rays = mask.reshape(-1).nonzero().squeeze(-1)
    if len(rays) == 0:
        return positions.new_zeros((0, 3))
    rays = rays[:: max(1, -(-len(rays) // limit))]
    best = weights[rays].argmax(dim=-1)
    return positions[rays, best].float()


def robust_bounds(points: torch.Tensor, quantile: float = 0.5, pad: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """A box around the bulk of points (N x 3): points farther from their median than 4x the
    median distance are left out (robust to up to half of them being strays, and still covers a
    whole sphere or rod), then the [quantile, 100 - quantile] percentiles on each axis, grown on
    every side by ``pad`` of the box's largest side."""
    dist = (points - points.median(dim=0).values).norm(dim=-1)
    points = points[dist <= 4 * dist.median().clamp_min(1e-12)]
    q = torch.tensor([quantile / 100, 1 - quantile / 100], dtype=points.dtype, device=points.device)
    lo, hi = torch.quantile(points, q, dim=0)
    margin = pad * (hi - lo).max()
    return lo - margin, hi + margin


def object_box(
    points: torch.Tensor, values: torch.Tensor, threshold: float, min_points: int = 8
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An object's 3D box (min, max) when its last view is lifted: the robust bounds of the surface
    points its lifted 2D masks saw (N x 3), kept only where the finished 3D mask agrees (its values
    there, N, above ``threshold``: a mask's rim also saw the background behind the object). None
    with fewer than ``min_points`` such points (the object stays unbounded)."""
    points = points[values > threshold]
    return robust_bounds(points) if len(points) >= min_points else None


def in_boxes(points: torch.Tensor, bounds: torch.Tensor, grow: float = 0.0) -> torch.Tensor:
    """points ... x 3, bounds K x 2 x 3 (min, max) -> ... x K: whether each point lies in each box
    grown by ``grow`` on every side (an unbounded box, -inf to inf, holds every point)."""
    p = points[..., None, :]
    return ((p >= bounds[:, 0] - grow) & (p <= bounds[:, 1] + grow)).all(-1)


def crop(values: torch.Tensor, positions: torch.Tensor, bounds: torch.Tensor, threshold: float) -> torch.Tensor:
    """values N x K, positions N x 3, bounds K x 2 x 3 (min, max): each object's values capped at
    ``threshold`` outside its box."""
    return torch.where(in_boxes(positions, bounds), values, values.clamp(max=threshold))
