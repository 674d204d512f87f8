"""Cross-view self-prompting: choose point prompts for a view from the rendered 3D mask.

Given the rendered mask score S (H x W) of a view and its depth, SA3D picks positive points for the
2D segmenter:

1. the first point is argmax S; if max S <= 0 the view gets no prompt;
2. after each point a square of half-size ``max(floor(sqrt(A / pi)) // 2, 2)`` around it is
   blocked, where A = sum(clip(S, 0, 1)) is the object's apparent area in pixels (a disc of area
   A has radius sqrt(A / pi));
3. every candidate is penalised by its distance to the previous point in
   (row / H, col / W, normalised depth) space, times the best score on the object, so points
   spread over the object but do not jump to another depth layer;
4. it stops after ``num_prompts`` points or when no unblocked pixel with S > 0 is left.
"""

from __future__ import annotations

import math

import torch


def masking_half_size(score: torch.Tensor) -> int:
    """Half-size of the square blocked around each chosen point.

    Example: S = 1 on a 20 x 20 square -> A = 400, sqrt(400 / pi) = 11.28 -> 11 // 2 = 5.
    A tiny object gets the minimum of 2.
    """
    area = float(score.clamp(0, 1).sum())
    return max(int(math.floor(math.sqrt(area / math.pi))) // 2, 2)


def normalise_depth(depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Map depth to [0, 1] using its range over ``valid`` pixels (all pixels by default)."""
    d = depth.float()
    ref = d[valid] if valid is not None and bool(valid.any()) else d.reshape(-1)
    lo, hi = ref.min(), ref.max()
    return ((d - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)


def select_self_prompts(
    score: torch.Tensor,
    depth: torch.Tensor | None = None,
    num_prompts: int = 3,
    distance_weight: float = 1.0,
) -> torch.Tensor:
    """Choose up to ``num_prompts`` positive point prompts from a rendered mask score.

    Args:
        score: H x W rendered mask score S.
        depth: H x W rendered depth, or None to use only image distance.
        num_prompts: the most points to return.
        distance_weight: scale of the distance penalty (1 = the authors' rule).

    Returns:
        K x 2 float tensor of (x, y) pixel coordinates (column, row), K <= num_prompts; K = 0 when
        the view has no positive score.
    """
    if score.dim() != 2:
        raise ValueError(f"score must be H x W, got shape {tuple(score.shape)}")
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    s = score.detach().float()
    h, w = s.shape
    best = float(s.max())
    if best <= 0:
        return torch.zeros((0, 2), dtype=torch.float32)
    half = masking_half_size(s)
    rows = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w) / h
    cols = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w) / w
    dn = normalise_depth(depth.detach(), s > 0) if depth is not None else torch.zeros_like(s)
    available = s > 0
    candidates = s.clone()
    points = []
    for _ in range(num_prompts):
        masked = torch.where(available, candidates, torch.full_like(candidates, -math.inf))
        idx = int(torch.argmax(masked))
        if not bool(available.view(-1)[idx]):
            break
        r, c = divmod(idx, w)
        points.append((float(c), float(r)))
        available[max(r - half, 0) : r + half + 1, max(c - half, 0) : c + half + 1] = False
        dist = torch.sqrt((rows - r / h) ** 2 + (cols - c / w) ** 2 + (dn - dn[r, c]) ** 2)
        candidates = s - distance_weight * best * dist
    return torch.tensor(points, dtype=torch.float32).view(-1, 2)
