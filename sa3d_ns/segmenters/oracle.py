"""The oracle segmenter: ground-truth instance masks shipped with a dataset.

For evaluation only: it separates the error of lifting masks into 3D from the error of the 2D
segmenter. It answers a prompt with the instance under most positive points (or, with a box and no
points, the instance with the best IoU against the box).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.segmenters.base import Segmentation, Segmenter, check_image, default_labels


def read_instance_mask(path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an integer instance-id PNG (0 = background); resize with nearest neighbour to (W, H)."""
    img = Image.open(path)
    if size is not None and img.size != tuple(size):
        img = img.resize(size, Image.Resampling.NEAREST)
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.int64)


class OracleSegmenter(Segmenter):
    """Answers prompts from ground-truth instance masks.

    Args:
        mask_loader: maps a training-view index and an image size (W, H) to that view's H x W
            integer instance mask.
    """

    name = "oracle"

    def __init__(self, mask_loader: Callable[[int, tuple[int, int]], np.ndarray]):
        self.mask_loader = mask_loader
        self.instances: np.ndarray | None = None

    def set_image(self, image, depth=None, view_id=None) -> None:
        image = check_image(image)
        if view_id is None:
            raise SA3DError("The oracle segmenter only works on training views (it reads their ground-truth masks).")
        h, w = image.shape[:2]
        inst = self.mask_loader(view_id, (w, h))
        if inst.shape != (h, w):
            raise SA3DError(f"Instance mask of view {view_id} has shape {inst.shape}, expected {(h, w)}.")
        self.instances = inst

    def predict(self, points=None, labels=None, box=None, prior=None, multimask=True) -> Segmentation:
        if self.instances is None:
            raise RuntimeError("set_image must be called before predict")
        inst = self.instances
        h, w = inst.shape
        pts, lab = default_labels(points, labels)
        pos = pts[lab == 1]
        chosen = 0
        if len(pos):
            xs = np.clip(np.round(pos[:, 0]).astype(int), 0, w - 1)
            ys = np.clip(np.round(pos[:, 1]).astype(int), 0, h - 1)
            ids = inst[ys, xs]
            ids = ids[ids > 0]
            if len(ids):
                values, counts = np.unique(ids, return_counts=True)
                chosen = int(values[np.argmax(counts)])
        elif box is not None:
            x0, y0, x1, y1 = [int(round(v)) for v in box]
            rect = np.zeros_like(inst, dtype=bool)
            rect[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
            best = 0.0
            for obj in np.unique(inst[rect]):
                if obj == 0:
                    continue
                m = inst == obj
                score = np.count_nonzero(m & rect) / np.count_nonzero(m | rect)
                if score > best:
                    best, chosen = score, int(obj)
        mask = inst == chosen if chosen > 0 else np.zeros_like(inst, dtype=bool)
        return Segmentation(masks=mask[None], scores=np.array([1.0 if chosen > 0 else 0.0], dtype=np.float32))
