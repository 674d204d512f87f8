"""The noisy oracle: ground-truth instance masks with the mistakes a 2D segmenter makes.

It measures how the loop holds up when a view's 2D mask is wrong, apart from any particular
segmenter. In a chosen fraction ``rate`` of the views (drawn from ``seed`` and the view index, so a
view always gets the same answer, as from SAM) the oracle's mask is replaced by one of SAM's
typical errors:

- ``part``: a part for the whole: the mask cut by a line through its centroid at a random angle,
  the side holding most of the positive points kept;
- ``merge``: the whole and more: the mask joined with the instance that touches it most (or, with
  none touching, grown into its surroundings by 30 % of its radius);
- ``stray``: a disconnected blob (a disk of half the mask's radius) added away from the object;
- ``miss``: nothing found: an empty mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.metrics import dilate
from sa3d_ns.segmenters.base import Segmentation, default_labels
from sa3d_ns.segmenters.oracle import OracleSegmenter

ERRORS = ("part", "merge", "stray", "miss")


def _disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    ys, xs = np.ogrid[: shape[0], : shape[1]]
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2


def inject_error(
    mask: np.ndarray, instances: np.ndarray, kind: str, rng: np.random.Generator, points: np.ndarray | None = None
) -> np.ndarray:
    """``mask`` (H x W bool, the true object) turned into the error ``kind`` (see the module's
    docstring); ``instances`` is the view's instance-id map, ``points`` the positive points (x, y)."""
    if kind not in ERRORS:
        raise ValueError(f"unknown error {kind!r}; expected one of {ERRORS}")
    if kind == "miss" or not mask.any():
        return np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    radius = np.sqrt(mask.sum() / np.pi)
    if kind == "part":
        angle = rng.uniform(0, np.pi)
        gy, gx = np.mgrid[: mask.shape[0], : mask.shape[1]]
        side = (gx - cx) * np.cos(angle) + (gy - cy) * np.sin(angle) > 0
        if points is not None and len(points):
            px = np.clip(np.round(points[:, 0]).astype(int), 0, mask.shape[1] - 1)
            py = np.clip(np.round(points[:, 1]).astype(int), 0, mask.shape[0] - 1)
            if side[py, px].mean() < 0.5:
                side = ~side
        part = mask & side
        return part if part.any() else mask
    if kind == "merge":
        ring = dilate(mask, 2)
        me = np.bincount(instances[mask]).argmax()
        around = instances[ring & ~mask]
        around = around[(around > 0) & (around != me)]
        if len(around):
            return mask | (instances == np.bincount(around).argmax())
        grow = max(int(round(0.3 * radius)), 1)
        return dilate(mask, grow)
    # stray: a disk away from the object (its centre at least 2 radii from the mask's), inside the image
    h, w = mask.shape
    r = max(radius / 2, 1.0)
    near = dilate(mask, 2)
    for _ in range(50):
        c = (rng.uniform(r, w - r), rng.uniform(r, h - r))
        blob = _disk((h, w), c, r)
        if not (blob & near).any():
            return mask | blob
    return mask  # (no room for a blob apart from the object)


def check_noise(rate: float, kinds: Sequence[str]) -> None:
    """The noisy oracle's settings, checked before anything runs."""
    if not 0 <= rate <= 1:
        raise SA3DError(f"--pipeline.noise-rate must be in [0, 1], got {rate}.")
    unknown = [k for k in kinds if k not in ERRORS]
    if unknown or not kinds:
        raise SA3DError(f"--pipeline.noise-kinds: unknown {unknown or 'none given'}; choose from {list(ERRORS)}.")


class NoisyOracleSegmenter(OracleSegmenter):
    """:class:`OracleSegmenter` whose answer is wrong in a fraction ``rate`` of the views, with
    an error drawn from ``kinds`` (the module's docstring); ``last_error`` names the last one."""

    name = "oracle-noisy"

    def __init__(
        self,
        mask_loader: Callable[[int, tuple[int, int]], np.ndarray],
        rate: float = 0.2,
        kinds: Sequence[str] = ERRORS,
        seed: int = 0,
    ):
        super().__init__(mask_loader)
        check_noise(rate, kinds)
        self.rate, self.kinds, self.seed = rate, tuple(kinds), seed
        self.view_id: int | None = None

    def set_image(self, image, depth=None, view_id=None) -> None:
        super().set_image(image, depth, view_id)
        self.view_id = view_id

    def error_for(self, view_id: int) -> tuple[str | None, np.random.Generator]:
        """The error drawn for a view (None: the true mask) and the generator that shapes it."""
        rng = np.random.default_rng([self.seed, view_id])
        wrong = rng.random() < self.rate
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        return (kind if wrong else None), rng

    def predict(self, points=None, labels=None, box=None, prior=None, multimask=True) -> Segmentation:
        result = super().predict(points, labels, box, prior, multimask)
        assert self.view_id is not None and self.instances is not None  # (set_image checked and set both)
        kind, rng = self.error_for(self.view_id)
        self.last_error = None
        if kind is None:
            return result
        pts, lab = default_labels(points, labels)
        mask = inject_error(result.masks[0], self.instances, kind, rng, pts[lab == 1])
        if not np.array_equal(mask, result.masks[0]):  # (a stray blob may find no room apart)
            self.last_error = kind
        return Segmentation(masks=mask[None], scores=result.scores)
