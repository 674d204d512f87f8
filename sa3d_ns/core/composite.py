"""What the 3D masks make of a render: the object alone, the scene without it, the overlay.

Along a ray with samples i = 1..S, densities sigma_i and lengths delta_i, volume rendering weighs
sample i by

    w_i = (1 - exp(-sigma_i delta_i)) * exp(-sum_{j<i} sigma_j delta_j)

(:func:`volume_weights`). The object alone keeps the density of the samples inside its 3D mask
(sigma_i -> sigma_i [i inside]) and renders that: its accumulation A = sum w_i, its colour
C = sum w_i c_i + (1 - A) b on a background b, its depth sum w_i t_i / A at the samples'
midpoints t_i. The scene without the object keeps the density of every other sample
(sigma_i -> sigma_i [i not gone]: the 3D mask, grown by the removal margin), so what the object
hid shows through. A pixel belongs to object k when its mask score s_k = sum w_i m_k(x_i) (the
volume-rendered 3D mask) passes the threshold; the overlay blends the pixel towards the colour of
the object with the highest passing score.

Shapes: R rays, S samples, K objects; tensors as nerfstudio keeps them (R x S x 1 per sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def volume_weights(density: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """R x S x 1 densities and sample lengths -> R x S x 1 volume-rendering weights (the same
    numbers as nerfstudio's ``RaySamples.get_weights``)."""
    delta_density = deltas * density
    alphas = 1 - torch.exp(-delta_density)
    transmittance = torch.cumsum(delta_density[..., :-1, :], dim=-2)
    zeros = torch.zeros((*transmittance.shape[:1], 1, 1), device=density.device, dtype=transmittance.dtype)
    transmittance = torch.exp(-torch.cat([zeros, transmittance], dim=-2))
    return torch.nan_to_num(alphas * transmittance)


@dataclass
class CutOut:
    """One object's renders along a batch of rays (R x 1 or R x 3)."""

    rgb: torch.Tensor  # the object alone on the background colour
    accumulation: torch.Tensor  # its opacity
    premultiplied: torch.Tensor  # its colour times its opacity (no background)
    depth: torch.Tensor  # where its own density is along the ray
    rest_weights: (
        torch.Tensor
    )  # R x S x 1: the weights of the scene without it (render them with the NeRF's background rule)


def cut_out(
    density: torch.Tensor,
    deltas: torch.Tensor,
    mids: torch.Tensor,
    sample_rgb: torch.Tensor,
    inside: torch.Tensor,
    gone: torch.Tensor,
    background: torch.Tensor,
) -> CutOut:
    """The object alone and the weights of the scene without it: densities, lengths, midpoints
    R x S x 1, colours R x S x 3; ``inside`` R x S x 1 (the object's 3D mask), ``gone`` R x S x 1
    (what removal leaves out); ``background`` 3 (the colour behind the object alone)."""
    w_obj = volume_weights(density * inside, deltas)
    acc = w_obj.sum(dim=-2)
    premultiplied = (w_obj * sample_rgb).sum(dim=-2)
    return CutOut(
        rgb=premultiplied + (1 - acc) * background,
        accumulation=acc,
        premultiplied=premultiplied,
        depth=(w_obj * mids).sum(dim=-2) / acc.clamp(min=1e-6),
        rest_weights=volume_weights(density * ~gone, deltas),
    )


RESAMPLE_WEIGHT = 0.02


def resample_rays(weights: torch.Tensor, gone: torch.Tensor, min_weight: float = RESAMPLE_WEIGHT) -> torch.Tensor:
    """R x S volume weights, R x S removed samples -> the indices of the rays whose removed samples
    weighed more than ``min_weight`` together: the rays where the render without the object
    depends on samples placed for the object's surface (they are sampled again); elsewhere the
    NeRF's samples already cover what shows."""
    return ((weights * gone).sum(-1) > min_weight).nonzero(as_tuple=True)[0]


def fill_behind(gone: torch.Tensor, solid: torch.Tensor, near: torch.Tensor) -> torch.Tensor:
    """R x S x K removed samples (ordered along each ray), R x S non-empty samples, R x S x K
    samples near each object -> the removed samples with the solid run behind each object's 3D
    mask: a sample is added when it is solid, near the object, and no empty sample outside the
    mask lies between it and a removed one in front of it on its ray (samples are sparse: the one
    in the mask may lie in its empty rim, the next one deep inside).

    The 3D mask is lifted from views' volume weights, which sit on the object's visible surface:
    the solid inside of the object behind that surface never had a weight, so no 2D mask voted for
    it, and once the surface is removed it shows (a copy of the object in its own colours). What
    lies behind an empty gap (the floor behind the object, a wall) is kept. The run can go on from
    the inside into what the object stands on or against, without a gap: the model keeps only the
    added samples with the object's mask further along the ray (``probes_behind``), the inside
    between the object's front and its back.

    Example, one ray, one object: gone 0 1 0 0 0 0, solid 1 0 1 1 0 1 -> 0 1 1 1 0 0.
    """
    idx = torch.arange(gone.shape[1], device=gone.device).view(1, -1, 1)
    last_gone = torch.where(gone, idx, -1).cummax(dim=1).values
    last_gap = torch.where(solid[..., None] | gone, -1, idx).cummax(dim=1).values
    return gone | ((last_gone > last_gap) & solid[..., None] & near)


def probes_behind(
    points: torch.Tensor, directions: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n: int
) -> torch.Tensor:
    """points N x 3 on rays of unit ``directions`` N x 3, boxes ``lo`` / ``hi`` N x 3 -> N x n x 3:
    ``n`` points evenly spaced along each ray from its point to where the ray leaves its box, the
    last one there (a point already out of its box, or a zero direction: its own position n times).

    Example: the point (0, 0, 0) looking along +x in the box -1..1, n = 2 -> (0.5, 0, 0), (1, 0, 0).
    """
    d = directions
    safe = torch.where(d.abs() > 1e-12, d, torch.full_like(d, 1e-12))
    far = torch.where(d > 0, hi, lo)
    t_axis = torch.where(d.abs() > 1e-12, (far - points) / safe, torch.full_like(d, float("inf")))
    t_exit = t_axis.min(-1).values.clamp(min=0.0)
    t_exit = torch.where(torch.isfinite(t_exit), t_exit, torch.zeros_like(t_exit))
    steps = torch.arange(1, n + 1, device=points.device, dtype=points.dtype) / n
    return points[:, None, :] + (t_exit[:, None] * steps)[..., None] * d[:, None, :]


def front_of_boxes(inside: torch.Tensor) -> torch.Tensor:
    """inside R x S x K (whether each sample, in ray order, lies in each object's box) -> R x S x K:
    the samples before the ray's first one in the box, what lies between the camera and the box;
    none on a ray that never enters it."""
    return (inside.int().cumsum(1) == 0) & inside.any(1, keepdim=True)


def mask_scores(
    weights: torch.Tensor, values: torch.Tensor, front: torch.Tensor | None = None, min_visibility: float = 0.0
) -> torch.Tensor:
    """R x S volume weights and R x S x K mask values -> R x K: each object's rendered mask score.

    With ``front`` (R x S x K, ``front_of_boxes``): where the object's box is at least
    ``min_visibility`` visible through what lies in front of it (the transmittance at the box, 1 -
    the weight in front), the score leaves that out: a NeRF's floaters or haze between a camera and
    the object carry the votes of the views that saw them against a background, and outweigh a
    visible object behind them (the clutter scene's held-out frame 46: 71 % of the weight in a haze
    in front of the box, the objects' masks empty). Less visible (an occluder) the whole score
    counts, the occluder's votes with it."""
    w = weights[..., None]
    scores = (w * values).sum(1)
    if front is None:
        return scores
    hidden = (w * front).sum(1)
    behind = (w * values * ~front).sum(1)
    return torch.where(1 - hidden >= min_visibility, behind, scores)


def overlay(
    rgb: torch.Tensor, scores: torch.Tensor, threshold: float, colors: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask R x 1, mask score R x 1, overlay R x 3) of all objects together: a pixel is on when any
    object's score passes ``threshold``; its score is the highest; the overlay is
    rgb x (1 - alpha) + colour x alpha there, with the colour (``colors`` K x 3, at least one row)
    of the highest passing object, and rgb elsewhere."""
    on = scores > threshold
    mask = on.any(-1, keepdim=True).to(rgb.dtype)
    k = scores.shape[-1]
    score = scores.max(-1, keepdim=True).values if k else torch.zeros_like(mask)
    best = torch.where(on, scores, torch.full_like(scores, -torch.inf)).argmax(-1) if k else 0
    a = alpha * mask
    return mask, score, rgb * (1 - a) + colors[best] * a
