"""Mask metrics used by SA3D and its successors.

IoU = TP / (TP + FP + FN) and pixel accuracy = (TP + TN) / all pixels, computed per view.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_bool(mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool)


def confusion(pred, gt) -> tuple[int, int, int, int]:
    """Return (TP, FP, FN, TN) of two binary masks of the same shape."""
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise ValueError(f"mask shapes differ: prediction {p.shape} vs ground truth {g.shape}")
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    tn = int(p.size - tp - fp - fn)
    return tp, fp, fn, tn


def iou(pred, gt) -> float:
    """Intersection over union. Two empty masks agree perfectly: IoU 1.

    Example: pred = [1, 1, 0, 0], gt = [0, 1, 1, 0] -> TP 1, FP 1, FN 1 -> 1/3.
    """
    tp, fp, fn, _ = confusion(pred, gt)
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def accuracy(pred, gt) -> float:
    """Fraction of pixels where the masks agree: (TP + TN) / all pixels."""
    tp, fp, fn, tn = confusion(pred, gt)
    total = tp + fp + fn + tn
    return 1.0 if total == 0 else (tp + tn) / total


def binarize_score(score: torch.Tensor, rule: str = "positive") -> torch.Tensor:
    """Turn a rendered mask score into a binary mask.

    ``positive``: score > 0 (the 3D mask's own decision rule).
    ``positive_mean``: score > 0 and above the mean of the positive scores (the authors' voxel
    version binarises this way before the IoU check; it drops the faint fringe).
    """
    pos = score > 0
    if rule == "positive":
        return pos
    if rule == "positive_mean":
        if not bool(pos.any()):
            return pos
        return pos & (score > score[pos].mean())
    raise ValueError(f"unknown binarisation rule {rule!r}; expected 'positive' or 'positive_mean'")
