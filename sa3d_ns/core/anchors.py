"""The user's clicks as points in 3D, and where a later view sees them.

A positive click says which object is meant; self-prompting forgets it after the first view (later
prompts come from the 3D mask alone), so a first mask that holds a neighbour as well lets later
views drift onto the neighbour. The click's *anchor* is the surface point of its ray in the
prompted view: the ray's heaviest sample. A later view sees the
anchor where one of its rays has its surface point within a few pixel spacings of it (an occluded
anchor is farther from every visible surface point: the nearest one lies on the occluder or on the
object's silhouette). A later view's 2D mask that leaves out an anchor the view sees is not the
clicked object.

An anchor can itself be wrong: the heaviest sample of the click's ray may be a floater of a
poorly trained NeRF in front of the object. Then every later view leaves it out and is rejected,
however well its mask agrees with the 3D mask. So an anchor that the first ``DOUBTS`` views whose
masks pass the IoU test all leave out, with none of them showing it, is dropped
(:func:`judge_anchors`); one that such a view shows is trusted from then on.
"""

from __future__ import annotations

import torch

# A ray with less volume weight than this (sky, holes) has no surface point.
MIN_WEIGHT = 0.5
# The anchor is seen when a ray's surface point is within this many pixel spacings of it.
SPACINGS = 3.0
# An anchor left out by this many views that pass the IoU test, and shown by none, is dropped.
DOUBTS = 2
TRUSTED = -1


def surface_points(positions: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each ray's surface point (R x 3: its heaviest sample, which stays on the dominant surface
    where a weighted mean would fall between a half-transparent surface and what is behind it) and
    whether it has one (R, total weight >= ``MIN_WEIGHT``). ``positions`` R x K x 3, ``weights``
    R x K."""
    w = weights.float()
    heaviest = w.argmax(-1)
    points = positions.float()[torch.arange(len(w), device=w.device), heaviest]
    return points, w.sum(-1) >= MIN_WEIGHT


def click_anchors(positions: torch.Tensor, weights: torch.Tensor, width: int, clicks) -> torch.Tensor:
    """The anchors (N x 3) of clicks (N x 2 pixel (x, y)) in a view of ``width`` columns whose rays
    are in row-major order; clicks on rays without a surface are left out."""
    points, valid = surface_points(positions, weights)
    height = len(points) // width
    out = []
    for x, y in torch.as_tensor(clicks, dtype=torch.float32).reshape(-1, 2).tolist():
        r = min(max(round(y), 0), height - 1) * width + min(max(round(x), 0), width - 1)
        if bool(valid[r]):
            out.append(points[r])
    return torch.stack(out) if out else torch.zeros((0, 3))


def seen_anchors(anchors: torch.Tensor, positions: torch.Tensor, weights: torch.Tensor, width: int) -> list:
    """For each anchor, the pixel (x, y) of the view that sees it, or None (hidden, out of view).

    The tolerance is ``SPACINGS`` times the distance between the nearest surface point and the
    surface points of its neighbouring pixels (the pixel spacing at that depth)."""
    if not len(anchors):
        return []
    points, valid = surface_points(positions, weights)
    height = len(points) // width
    dist = torch.cdist(anchors.float().to(points.device), points)  # A x R
    dist[:, ~valid] = torch.inf
    strength = weights.float().max(-1).values
    out = []
    for a in range(len(anchors)):
        d = dist[a].min()
        if not torch.isfinite(d):
            out.append(None)
            continue
        # of the rays whose surface point is nearest (several, when it is a splat's Gaussian: every
        # pixel it covers most), the one where it weighs most: its centre, not a pixel on its rim
        ties = (dist[a] <= d).nonzero().squeeze(-1)
        r = int(ties[strength[ties].argmax()])
        row, col = divmod(r, width)
        near = [
            rr * width + cc
            for rr, cc in ((row, col - 1), (row, col + 1), (row - 1, col), (row + 1, col))
            if 0 <= rr < height and 0 <= cc < width and bool(valid[rr * width + cc])
        ]
        if not near:
            out.append(None)
            continue
        spacing = float(torch.linalg.norm(points[near] - points[r], dim=-1).median())
        out.append((col, row) if float(d) <= SPACINGS * max(spacing, 1e-6) else None)
    return out


def leaves_out(mask, pixels: list) -> list[int]:
    """Indices of the seen anchors (pixels (x, y), None for unseen) with no mask pixel within one
    pixel of them (H x W bool array or tensor)."""
    m = torch.as_tensor(mask).bool()
    h, w = m.shape
    out = []
    for i, p in enumerate(pixels):
        if p is None:
            continue
        x, y = p
        if not bool(m[max(y - 1, 0) : min(y + 2, h), max(x - 1, 0) : min(x + 2, w)].any()):
            out.append(i)
    return out


def judge_anchors(doubts: list[int], seen: list, missed: list[int], limit: int = DOUBTS) -> tuple[list[int], list[int]]:
    """After a view whose mask passed the IoU test: each anchor's count of such views that left it
    out (``TRUSTED`` once one showed it), updated from the view's ``seen`` anchors (pixels or None)
    and the ``missed`` ones among them; returns (the counts, the anchors to drop: left out by
    ``limit`` such views and shown by none)."""
    out = list(doubts)
    for i, pixel in enumerate(seen):
        if pixel is None or out[i] == TRUSTED:
            continue
        out[i] = out[i] + 1 if i in missed else TRUSTED
    return out, [i for i, n in enumerate(out) if n >= limit]
