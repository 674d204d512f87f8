"""A promptable segmenter that needs no learned weights: GrabCut seeded by prompts, depth and the
rendered 3D mask.

How a prompt becomes a mask:

1. Seeds. Discs around positive points are sure foreground, around negative points sure
   background; outside a box is sure background.
2. Hints. Where a prior is given (the rendered 3D mask score of later views) pixels with a
   positive score are probable foreground, and pixels whose score is below ``-prior_out`` times
   its largest magnitude (either sign) are sure background: earlier views' 2D masks left them out
   (the 3D mask's negative votes), so a colour shared with a touching neighbour cannot carry the
   mask onto it view after view; a pixel no view has voted on (score 0) stays open, so a 3D mask
   that under-covers the object still grows. Without a prior, the pixels connected to a positive
   point through depth-continuous regions are probable foreground: the region is grown with
   increasing relative depth tolerances and taken where its area is most stable (the object's
   silhouette, before it leaks into what touches it; never a region that spreads over the support
   or background, see ``regions.looks_like_support``); where every region does, the first one
   with the support's surface taken out (``regions.without_support``); where depth gives no region
   (noisy or semi-transparent geometry, a click on the support) or is missing, a disc around each
   positive point. Everything else is probable background.
3. GrabCut (colour Gaussian mixtures + graph cut, OpenCV) refines the labelling within a rectangle
   around the hint and the points, grown by ``roi_margin`` of its size on each side (outside it is
   sure background, as GrabCut is meant to be used): a colour shared with the floor or a
   neighbour cannot carry the mask across the image.
4. Only connected components that contain a positive point are kept (with a box and no points:
   components inside the box); in later views also those the rendered 3D mask covers (score > 0)
   in a pixel: GrabCut cuts an object in bands of two colours (a pole in white and dark bands
   over a floor with dark squares) into pieces, and the pieces away from the self-prompts were
   dropped view after view: the touching scene's pole lost its lower third, held-out mIoU 0.652
   -> 0.759 with them kept (mug 0.919 -> 0.902, the rest of the touching, clutter and demo
   scenes within 0.004).

Candidates (for ``multimask``): the GrabCut result, the GrabCut result before the component
filter, and the depth/prior hint alone. Each is scored by how strongly the image and depth change
across its boundary (mean edge strength on the boundary divided by the image's mean edge strength).
"""

from __future__ import annotations

import cv2
import numpy as np

from sa3d_ns.core.regions import DEPTH_TOLERANCES, depth_layers, depth_region, keep_supported, without_support
from sa3d_ns.segmenters.base import Segmentation, Segmenter, check_image, default_labels

# Without a usable depth region, probable foreground is a disc of this radius (fraction of min(H, W)).
FALLBACK_RADIUS = 0.12


def _disc(mask: np.ndarray, x: float, y: float, radius: int, value: int) -> None:
    cv2.circle(mask, (int(round(x)), int(round(y))), radius, int(value), thickness=-1)  # pyright: ignore[reportCallIssue, reportArgumentType]  (cv2's stubs take no number for a Scalar)


def point_discs(h: int, w: int, points: np.ndarray, radius: float) -> np.ndarray:
    out = np.zeros((h, w), np.uint8)
    for x, y in points:
        _disc(out, x, y, max(1, int(round(radius))), 1)
    return out.astype(bool)


def edge_strength(image: np.ndarray, depth: np.ndarray | None) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    g = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    if depth is not None:
        d = depth.astype(np.float32)
        d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
        g = g + np.hypot(cv2.Sobel(d, cv2.CV_32F, 1, 0), cv2.Sobel(d, cv2.CV_32F, 0, 1))
    return g


def boundary_score(mask: np.ndarray, edges: np.ndarray) -> float:
    if not mask.any() or mask.all():
        return 0.0
    m = mask.astype(np.uint8)
    boundary = (cv2.dilate(m, np.ones((3, 3), np.uint8)) - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)
    return float(edges[boundary].mean() / max(float(edges.mean()), 1e-6))


class WeightFreeSegmenter(Segmenter):
    """GrabCut on the rendered image, seeded by the prompt, the rendered depth and the 3D mask.

    Args:
        iterations: GrabCut iterations.
        seed_radius: radius of the sure-label discs around points, as a fraction of min(H, W).
        depth_tolerances: relative depth steps tried when growing the depth hint from a point.
        roi_margin: GrabCut's rectangle: the box around the hint and the points grown on each side by
            this fraction of its size (at least 5 % of the image's smaller side).
        prior_out: later views: a score below -prior_out x the rendered score's largest magnitude
            (max(score.max(), -score.min())) is sure background (None: the prior only hints).
            Measured with the product's weight-free first masks, held-out mIoU, one run each
            (README, "weight-free"): touching scene (1200-step NeRF) mug / ball / mean of its five
            objects 0.596 / 0.440 / 0.568 without, 0.882 / 0.951 / 0.728 at 0.5, 0.777 / 0.732 /
            0.663 at 0.6, 0.830 / 0.759 / 0.672 at 0.75; the 64-px demo's crate 0.909 without,
            0.629 at 0.5, 0.909 at 0.6 and 0.75 (an early view that under-covers a two-coloured
            object votes its own part out); on a second training of that demo the crate was 0.58
            to 0.60 whatever the bar. The CPU splat's viewer-prompted ball: 0.686 without and at
            0.5 or 0.6 (0.355 when the bar was relative to the maximum alone). Since GrabCut is
            seeded (the figures before carried its random start), again at 0.5 / 0.6: touching
            0.919 / 0.951 / 0.733 against 0.767 / 0.734 / 0.659, the clutter scene's five objects
            and the 128-px demo's four equal, the 64-px demo's crate 0.928 at both; on a later
            training of that demo the crate 0.444 / 0.519 (0.586 without; its prompt view sees
            only its top). 0.5 is the default on the sum; the bar cannot tell a part voted out by
            an early view that saw only part of the object from a neighbour voted out by many.
    """

    name = "weightfree"
    uses_prior = True

    def __init__(
        self,
        iterations: int = 5,
        seed_radius: float = 0.015,
        depth_tolerances: tuple[float, ...] = DEPTH_TOLERANCES,
        roi_margin: float = 0.5,
        prior_out: float | None = 0.5,
    ):
        self.iterations = iterations
        self.seed_radius = seed_radius
        self.depth_tolerances = tuple(depth_tolerances)
        self.roi_margin = roi_margin
        self.prior_out = prior_out
        self.image: np.ndarray | None = None
        self.depth: np.ndarray | None = None

    def set_image(self, image, depth=None, view_id=None) -> None:
        self.image = check_image(image)
        self.depth = None if depth is None else np.asarray(depth, dtype=np.float32).reshape(self.image.shape[:2])

    def predict(self, points=None, labels=None, box=None, prior=None, multimask=True) -> Segmentation:
        if self.image is None:
            raise RuntimeError("set_image must be called before predict")
        img, h, w = self.image, self.image.shape[0], self.image.shape[1]
        pts, lab = default_labels(points, labels)
        pos, neg = pts[lab == 1], pts[lab == 0]
        radius = max(1, int(round(self.seed_radius * min(h, w))))

        inside = np.ones((h, w), dtype=bool)
        if box is not None:
            x0, y0, x1, y1 = [int(round(v)) for v in box]
            inside[:] = False
            inside[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True

        prior_hint = prior is not None and float(np.max(prior)) > 0
        if prior_hint:
            score = np.asarray(prior, dtype=np.float32).reshape(h, w)
            hints = [score > 0]
            if self.prior_out is not None:
                # (relative to the score's largest magnitude, either sign: a splat's rendered
                # score can be 0.14 at most where it is -0.8 at least, and against its maximum
                # every pixel not yet voted in would be barred and the mask could never grow)
                scale = max(float(score.max()), -float(score.min()))
                inside &= ~(score < -self.prior_out * scale)
        elif self.depth is not None and len(pos):
            hints = depth_layers(self.depth, pos, self.depth_tolerances)
            if not hints:  # flowed into the support at once: the support's surface taken out
                flooded = depth_region(self.depth, pos, self.depth_tolerances[0])
                rest = without_support(self.depth, flooded, pos)
                hints = [rest] if rest is not None else []
            if not hints:  # no usable depth there (noisy, semi-transparent, the support): a disc
                hints = [point_discs(h, w, pos, FALLBACK_RADIUS * min(h, w))]
        elif len(pos):
            hints = [point_discs(h, w, pos, FALLBACK_RADIUS * min(h, w))]
        elif box is not None:
            hints = [inside.copy()]
        else:
            hints = [np.zeros((h, w), dtype=bool)]

        edges = edge_strength(img, self.depth)
        candidates = []
        for hint in hints:
            hint = hint & inside
            roi = inside & self.region_of_interest(hint, pos)
            final, raw, init = self._grabcut(hint, roi, pos, neg, radius, support=hint if prior_hint else None)
            candidates += [final, raw, hint | init] if multimask else [final]
        scores = np.array([boundary_score(m, edges) for m in candidates], dtype=np.float32)
        if not multimask and len(candidates) > 1:
            best = int(np.argmax(scores))
            candidates, scores = [candidates[best]], scores[best : best + 1]
        return Segmentation(masks=np.stack(candidates).astype(bool), scores=scores)

    def region_of_interest(self, hint: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """GrabCut's rectangle: the box around the hint and the positive points, grown on each side
        by ``roi_margin`` times its size (at least 5 % of the image's smaller side); outside it is
        sure background."""
        h, w = hint.shape
        ys, xs = np.nonzero(hint)
        xs = np.concatenate([xs, pos[:, 0]]) if len(pos) else xs
        ys = np.concatenate([ys, pos[:, 1]]) if len(pos) else ys
        roi = np.zeros((h, w), dtype=bool)
        if not len(xs):
            roi[:] = True
            return roi
        x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
        floor = 0.05 * min(h, w)
        mx, my = max(self.roi_margin * (x1 - x0 + 1), floor), max(self.roi_margin * (y1 - y0 + 1), floor)
        roi[max(int(y0 - my), 0) : int(y1 + my) + 1, max(int(x0 - mx), 0) : int(x1 + mx) + 1] = True
        return roi

    def _grabcut(self, hint, inside, pos, neg, radius, support=None):
        """GrabCut from a hint: (final mask, GrabCut result before the component filter, seeds)."""
        assert self.image is not None  # (predict checked it)
        h, w = hint.shape
        gc = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        gc[hint] = cv2.GC_PR_FGD
        gc[~inside] = cv2.GC_BGD
        for x, y in pos:
            _disc(gc, x, y, radius, cv2.GC_FGD)
        for x, y in neg:
            _disc(gc, x, y, radius, cv2.GC_BGD)
        init = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD))
        raw = init
        if init.any() and (~init).any():
            try:
                bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
                # (GrabCut starts its colour models from a random k-means: seeded, a view's mask
                # depends on its inputs alone, not on how many masks the process made before it;
                # over seeds one view's IoU varies by 0.1 on the touching scene's mug)
                cv2.setRNGSeed(0)
                cv2.grabCut(self.image, gc, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)  # pyright: ignore[reportCallIssue, reportArgumentType]  (cv2's stubs: no rect is None)
                raw = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD))
            except cv2.error:
                raw = init
        final = keep_supported(raw, support=support, points=pos) if len(pos) else raw & inside
        return final, raw, init
