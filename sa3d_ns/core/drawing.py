"""Masks and prompts drawn on images (uint8 RGB, H x W x 3) for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

MASK_COLOR = (255, 60, 60)


def tint(image: np.ndarray, mask: np.ndarray | None, color=MASK_COLOR, alpha: float = 0.5) -> np.ndarray:
    """``image`` with the pixels of ``mask`` blended towards ``color``: (1 - alpha) x pixel +
    alpha x color, rounded down to uint8."""
    vis = image.astype(np.float32)
    if mask is not None:
        vis[mask] = (1 - alpha) * vis[mask] + alpha * np.asarray(color, np.float32)
    return vis.clip(0, 255).astype(np.uint8)


def enlarge(image: np.ndarray, min_side: int) -> tuple[np.ndarray, int]:
    """``image`` scaled up by the smallest whole factor that makes its longer side at least
    ``min_side`` (nearest neighbour: pixels stay square), and that factor."""
    scale = max(1, int(np.ceil(min_side / max(image.shape[:2]))))
    if scale == 1:
        return image, 1
    h, w = image.shape[:2]
    return cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST), scale
