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


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a binary mask by ``px`` pixels (8-connected: a (2 px + 1) square)."""
    import cv2

    m = _as_bool(mask).astype(np.uint8)
    return m.astype(bool) if px <= 0 else cv2.dilate(m, np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images (or pixel lists) in [0, 1], at most 100 (equal images);
    nan when empty."""
    if a.size == 0:
        return float("nan")
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 100.0 if mse < 1e-10 else float(-10 * np.log10(mse))


def seen_footprint(
    gt: np.ndarray, image: np.ndarray, truth: np.ndarray, seen: np.ndarray | None, margin: int = 2, differs: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """(the footprint, ``gt`` grown by ``margin`` px, where another view sees the surface; its
    pixels where the object shows: the real image and the truth differ by more than ``differs``
    in some channel)."""
    footprint = dilate(gt, margin)
    seen_fp = footprint & (seen if seen is not None else np.ones_like(footprint))
    return seen_fp, seen_fp & (np.abs(image - truth).max(-1) > differs)


def ghost_pixels(removed: np.ndarray, rgb: np.ndarray, truth: np.ndarray, shows: np.ndarray) -> np.ndarray:
    """Where the object shows (``shows``) but ``removed`` is nearer ``rgb`` (the object in place)
    than the truth (the scene without it): a rim or a faint copy left behind."""
    return shows & (np.linalg.norm(removed - rgb, axis=-1) < np.linalg.norm(removed - truth, axis=-1))


def speck_pixels(
    acc_object: np.ndarray, gt: np.ndarray, whole: np.ndarray | None = None, margin: int = 2
) -> np.ndarray:
    """Where the object alone is opaque (``acc_object`` > 0.5) beyond ``margin`` px of the object:
    its visible mask ``gt``, and its ``whole`` silhouette where known (the object alone rightly
    shows its parts hidden by other objects)."""
    return (acc_object > 0.5) & ~dilate(gt if whole is None else (gt | whole), margin)


def cutout_figures(
    gt: np.ndarray,
    acc_object: np.ndarray,
    rgb: np.ndarray,
    removed: np.ndarray,
    image: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    seen: np.ndarray | None = None,
    margin: int = 2,
    differs: float = 0.1,
    whole: np.ndarray | None = None,
) -> dict:
    """How clean one view's cut-outs are (masks H x W bool, images H x W x 3 floats in [0, 1]).

    - ``specks``: the fraction of the image where the object alone is opaque
      (``acc_object`` > 0.5) outside the ground-truth mask grown by ``margin`` px (the mask and,
      where known, the object's ``whole`` silhouette, the parts other objects hide included, which
      the object alone rightly shows): density the 3D mask claims away from the object;
    - ``outside_psnr`` / ``outside_changed``: outside that footprint, removal must change nothing:
      PSNR of ``removed`` against ``rgb``, and the fraction of pixels changed by more than 0.05;

    with the truth (the view rendered without the object) and ``seen`` (the footprint pixels some
    other view sees; the rest can only be inpainted), inside the seen footprint:

    - ``removal_psnr``: PSNR of ``removed`` against the truth, beside ``nerf_psnr``, the NeRF's own
      PSNR there (``rgb`` against the real ``image``): removal can do no better than the NeRF;
    - ``ghost``: of the seen footprint pixels where the object shows (the real image and the truth
      differ by more than ``differs`` in some channel), the fraction where ``removed`` is closer to
      ``rgb`` (the object in place) than to the truth: a rim or a faint copy left behind;
    - ``unseen``: the fraction of the footprint no other view sees (reported apart).
    """
    footprint = dilate(gt, margin)
    out = {
        "specks": float(np.mean(speck_pixels(acc_object, gt, whole, margin))),
        "outside_psnr": psnr(removed[~footprint], rgb[~footprint]),
        "outside_changed": float(np.mean(np.abs(removed - rgb).max(-1)[~footprint] > 0.05))
        if (~footprint).any()
        else 0.0,
    }
    if truth is None or image is None:
        return out
    seen_fp, shows = seen_footprint(gt, image, truth, seen, margin, differs)
    out.update(
        removal_psnr=psnr(removed[seen_fp], truth[seen_fp]),
        nerf_psnr=psnr(rgb[seen_fp], image[seen_fp]),
        ghost=float(ghost_pixels(removed, rgb, truth, shows).sum() / shows.sum()) if shows.any() else 0.0,
        unseen=float(np.mean(~seen_fp[footprint])) if footprint.any() else 0.0,
    )
    return out


def outside_box(points: np.ndarray, lo, hi, margin: float = 0.05) -> float:
    """Fraction of ``points`` (N x 3) beyond the box ``lo``..``hi`` grown on every side by ``margin``
    times its largest side (the object's true box: what an exported cut-out should stay in)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if len(points) == 0:
        return float("nan")
    pad = margin * float((hi - lo).max())
    inside = ((points >= lo - pad) & (points <= hi + pad)).all(axis=1)
    return float(1.0 - inside.mean())
