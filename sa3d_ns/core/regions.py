"""Regions of a 2D mask: which parts of it a view's evidence supports, and whether a first mask
looks like the object that was clicked.

A 2D segmenter's typical mistakes (SAM's as well as a weight-free one's) are a stray region away
from the object, the object merged with what touches it, and a part for the whole. Once such a
mask is lifted into 3D the later views agree with it (their prompts come from the 3D mask), so the
loop checks masks before lifting them:

- ``keep_supported``: only the connected components of a mask that meet its *support* are kept:
  in the prompted view, the positive clicks (or, with a box alone, components that meet the
  box); in a later view, the rendered 3D mask (score > 0). A component that meets neither is a
  stray region, not the object.
- ``first_mask_warnings``: the first mask is compared with what the click says about the object:
  a positive click outside the mask, regions not connected to a click, a mask touching the image
  border, and a mask much larger than the clicked surface's *depth layer* (the pixels connected to
  the click through depth-continuous neighbours, grown until the area stops changing, before it
  leaks into what touches it; see ``depth_layers``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sa3d_ns.core.errors import SA3DError

# Relative depth steps tried when growing a region from a point (see depth_layers).
DEPTH_TOLERANCES = (0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.16)
# An area growing this much from one tolerance to the next has leaked into what touches the object.
LEAK_GROWTH = 2.0
# ... and a region over this fraction of the image after such a jump is taken for the support or background.
LEAK_AREA = 0.3
# A first mask this many times the area of the clicked depth layer is suspect (merged with a neighbour).
LAYER_EXCESS = 1.5
# A region touching more than this share of the image border and covering more than this share of the
# image is the support or the background the clicked object stands on or before, not the object.
SUPPORT_BORDER = 0.1
SUPPORT_AREA = 0.15
# Taking the support's surface out of a region that flowed into it (see without_support): a pixel
# is on the surface when its inverse depth is within this fraction of the fitted one; the fit's
# random tries, and the pixels each try is scored on (a random subset of a large region).
SURFACE_TOLERANCE = 0.02
SURFACE_TRIES = 200
SURFACE_SAMPLE = 20000


def _clip_point(x: float, y: float, h: int, w: int) -> tuple[int, int]:
    return int(np.clip(round(float(x)), 0, w - 1)), int(np.clip(round(float(y)), 0, h - 1))


def split_clicks(points: np.ndarray | None, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A prompt's points (N x 2, x, y) as floats, their labels (all positive by default), and the
    positive ones."""
    pts = np.zeros((0, 2)) if points is None else np.reshape(np.asarray(points, dtype=np.float64), (-1, 2))
    lab = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
    return pts, lab, pts[lab == 1]


def components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected components of a bool mask: (count including the background 0, H x W labels)."""
    return cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8)


def keep_supported(
    mask: np.ndarray,
    support: np.ndarray | None = None,
    points: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> np.ndarray:
    """The components of ``mask`` that meet the evidence for the object.

    A component is kept when it overlaps ``support`` (H x W bool, e.g. the rendered 3D mask) or
    ``box`` ([x0, y0, x1, y1]; a box-prompted mask may reach past the box) in at least one pixel, or
    contains one of ``points`` (positive clicks, x, y). With no evidence at all the mask is returned
    unchanged.

    Example: a blob around the click and a strip along the table's edge far from it, with the click
    as the only evidence: the strip is dropped.
    """
    mask = np.asarray(mask, dtype=bool)
    has_points = points is not None and len(np.reshape(points, (-1, 2))) > 0
    if not mask.any() or (support is None and not has_points and box is None):
        return mask
    n, labels = components(mask)
    keep = np.zeros(n, dtype=bool)
    if support is not None:
        keep[np.unique(labels[mask & np.asarray(support, dtype=bool)])] = True
    if has_points and points is not None:
        h, w = mask.shape
        for px, py in np.reshape(points, (-1, 2)):
            x, y = _clip_point(px, py, h, w)
            keep[labels[y, x]] = True
    if box is not None:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        inside = np.zeros(mask.shape, dtype=bool)
        inside[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        keep[np.unique(labels[mask & inside])] = True
    keep[0] = False
    return keep[labels]


def depth_region(depth: np.ndarray, seeds: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels connected to a seed (x, y) through neighbours whose depths differ by less than
    ``tolerance`` times the seed depth (a flood fill with a floating range)."""
    h, w = depth.shape
    region = np.zeros((h, w), dtype=bool)
    d = depth.astype(np.float32).copy()
    for sx, sy in np.reshape(seeds, (-1, 2)):
        xi, yi = _clip_point(sx, sy, h, w)
        if region[yi, xi]:
            continue
        # the seed's depth is the median of its 3 x 3 neighbourhood: one noisy pixel must not decide
        d_seed = float(np.median(depth[max(yi - 1, 0) : yi + 2, max(xi - 1, 0) : xi + 2]))
        step = float(tolerance * max(abs(d_seed), 1e-6))
        ff = np.zeros((h + 2, w + 2), np.uint8)
        img = d.copy()
        img[yi, xi] = d_seed
        cv2.floodFill(img, ff, (xi, yi), 0, loDiff=step, upDiff=step, flags=4 | cv2.FLOODFILL_MASK_ONLY | (1 << 8))  # pyright: ignore[reportCallIssue, reportArgumentType]  (cv2's stubs take no number for a Scalar)
        region |= ff[1:-1, 1:-1].astype(bool)
    return region


def min_region(h: int, w: int) -> float:
    """Fewer pixels than this is noise around a point, not a region."""
    return max(16.0, 0.003 * h * w)


def border_pixels(a: np.ndarray) -> np.ndarray:
    """The values of an H x W array on the image's border (each border pixel once)."""
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def border_share(region: np.ndarray) -> float:
    """The share of the image's border pixels that ``region`` (H x W bool) covers."""
    edge = border_pixels(region)
    return float(edge.mean()) if edge.size else 0.0


def looks_like_support(region: np.ndarray) -> bool:
    """Whether a region grown from a click is the support or the background rather than an object:
    it covers more than ``SUPPORT_AREA`` of the image and more than ``SUPPORT_BORDER`` of its
    border (an object standing on a floor meets it without a depth step, so the region grown from
    it can spread over the floor, and a NeRF's sky blends into the horizon). A large object in
    full view touches no border; a small one cut by the frame covers little of the image."""
    return region.mean() > SUPPORT_AREA and border_share(region) > SUPPORT_BORDER


def depth_layers(
    depth: np.ndarray, seeds: np.ndarray, tolerances: tuple[float, ...] = DEPTH_TOLERANCES
) -> list[np.ndarray]:
    """Candidate depth regions around the seeds: the clicked surface before it leaks.

    Growing the tolerance first fills the object's surface, then stalls at its silhouette (the
    object stands out from what is behind it), then leaks into whatever touches it. Candidates:
    the region whose area changes least to the next tolerance (the plateau) and, when the area
    jumps (at least ``LEAK_GROWTH`` times) somewhere, the region just before the largest jump.
    Regions of a few pixels are noise around the seed and never offered, nor regions that
    ``looks_like_support`` (when every candidate does, the smallest tolerance's region if it does
    not). Empty when depth gives no region (noisy or semi-transparent geometry, or a surface that
    flows into the support at once: see ``without_support``).
    """
    regions = [depth_region(depth, seeds, t) for t in tolerances]
    found = _plateau_and_leak(regions, depth)
    kept = [r for r in found if not looks_like_support(r)]
    if found and not kept:
        first = regions[0]
        if first.sum() >= min_region(*depth.shape) and not looks_like_support(first):
            kept = [first]
    return kept


def _surface_terms(xs: np.ndarray, ys: np.ndarray, h: int, w: int) -> np.ndarray:
    u, v = xs / w - 0.5, ys / h - 0.5
    return np.stack([np.ones_like(u), u, v, u * u + v * v], 1)


def without_support(
    depth: np.ndarray, region: np.ndarray, seeds: np.ndarray, tolerance: float = SURFACE_TOLERANCE
) -> np.ndarray | None:
    """A region grown from a click that flowed into the support, with the support taken out: the
    part connected to a seed. None when no such part is left (the click on the support itself,
    or too little of the region is one surface).

    An object standing on a floor meets it without a depth step, so the region grown from it
    spreads over the floor. The floor is the region's dominant surface: on a plane, 1 / z-depth is
    affine in the pixel's coordinates, and a NeRF's depth along the ray (z over the cosine of the
    ray's angle) adds a nearly radial factor, so 1 / depth ~ a + b u + c v + e (u^2 + v^2). The
    surface is fitted by random tries of 4 pixels (deterministic), keeping the fit that most of
    the region's pixels lie on (within ``tolerance`` of their inverse depth), refitted on those
    pixels; the pixels on it are taken out, the rest opened by one pixel (a thin bridge along the
    object's base is not the object) and the components holding the seeds (or within 2 px of
    them) kept. The weight-free segmenter's first-view hint where ``depth_layers`` gives none
    (README, "weight-free"); not the loop's clicked layer, whose area judges first masks: the
    tolerance can take an object's lowest rows with the floor."""
    h, w = depth.shape
    ys, xs = np.nonzero(region)
    if len(xs) < 4 * min_region(h, w):
        return None
    inv = 1.0 / np.maximum(depth[ys, xs].astype(np.float64), 1e-6)
    terms = _surface_terms(xs.astype(np.float64), ys.astype(np.float64), h, w)
    rng = np.random.default_rng(0)
    sample = rng.choice(len(xs), min(len(xs), SURFACE_SAMPLE), replace=False)
    best, best_count = None, 0
    for _ in range(SURFACE_TRIES):
        pick = rng.choice(sample, terms.shape[1], replace=False)
        try:
            coef = np.linalg.solve(terms[pick], inv[pick])
        except np.linalg.LinAlgError:
            continue
        count = int((np.abs(terms[sample] @ coef - inv[sample]) < tolerance * inv[sample]).sum())
        if count > best_count:
            best, best_count = coef, count
    if best is None or best_count < 0.5 * len(sample):
        return None
    on = np.abs(terms @ best - inv) < tolerance * inv
    coef, *_ = np.linalg.lstsq(terms[on], inv[on], rcond=None)
    on = np.abs(terms @ coef - inv) < tolerance * inv
    rest = region.copy()
    rest[ys[on], xs[on]] = False
    rest = cv2.morphologyEx(rest.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    _, labels = cv2.connectedComponents(rest, connectivity=4)
    keep = np.zeros((h, w), dtype=bool)
    for sx, sy in np.reshape(seeds, (-1, 2)):
        xi, yi = _clip_point(sx, sy, h, w)
        near = labels[max(yi - 2, 0) : yi + 3, max(xi - 2, 0) : xi + 3]
        near = near[near > 0]
        if labels[yi, xi] > 0:
            keep |= labels == labels[yi, xi]
        elif len(near):
            keep |= labels == int(np.bincount(near).argmax())
    if keep.sum() < min_region(h, w) or looks_like_support(keep):
        return None
    return keep


def _plateau_and_leak(regions: list[np.ndarray], depth: np.ndarray) -> list[np.ndarray]:
    """``depth_layers``' candidates among the regions grown at increasing tolerances."""
    areas = np.array([max(int(r.sum()), 1) for r in regions], dtype=np.float64)
    growth = areas[1:] / areas[:-1]
    valid = areas[:-1] >= min_region(*depth.shape)
    if not valid.any():
        return []
    picks = [int(np.argmin(np.where(valid, growth, np.inf)))]
    jumps = np.where(valid, growth, 0.0)
    if jumps.max() >= LEAK_GROWTH and int(np.argmax(jumps)) not in picks:
        picks.append(int(np.argmax(jumps)))
        # a plateau reached after the leak, spreading over much of the image, is the support or
        # the background, not the object
        if areas[picks[0]] > LEAK_AREA * depth.size and picks[0] > picks[1]:
            picks = picks[1:]
    return [regions[k] for k in picks]


def clicked_surface(
    depth: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None = None
) -> np.ndarray | None:
    """The positive clicks' depth layer (H x W bool): the largest of ``depth_layers``; None without
    depth, positive clicks or a usable layer."""
    _, _, pos = split_clicks(points, labels)
    if depth is None or not len(pos):
        return None
    layers = depth_layers(np.asarray(depth, dtype=np.float32), pos)
    return max(layers, key=lambda r: int(r.sum())) if layers else None


def clicked_layer(depth: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None = None) -> int | None:
    """The area (pixels) of the positive clicks' depth layer (``clicked_surface``); None without one."""
    surface = clicked_surface(depth, points, labels)
    return int(surface.sum()) if surface is not None else None


def fill_holes(mask: np.ndarray, within: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: the pixels of ``within`` that ``mask`` encloses (regions of
    its complement that do not reach the image border)."""
    n, labels = components(~mask)
    border = np.unique(border_pixels(labels))
    hole = np.ones(n, dtype=bool)
    hole[border] = False
    return mask | (hole[labels] & ~mask & within)


def clip_to_surface(mask: np.ndarray, surface: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The part of ``mask`` on the clicked surface: ``mask`` within ``surface`` (the clicks' depth
    layer), its holes filled from ``mask`` (a noisy depth leaves pinholes in the layer), and only
    the regions that hold a positive click (``points``, x, y)."""
    mask = np.asarray(mask, dtype=bool)
    clipped = fill_holes(mask & surface, within=mask)
    return keep_supported(clipped, points=points)


def first_mask_warnings(
    mask: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    layer: int | None = None,
    dropped: int = 0,
) -> dict[str, str]:
    """What makes a first (user-prompted) mask look unlike the clicked object: {kind: words};
    empty when nothing does. Kinds: ``click_outside``, ``negative_inside``, ``disconnected``,
    ``border``, ``depth_layer`` (see the module's docstring).

    Args:
        mask: H x W bool, the mask that will be lifted.
        points, labels: the prompt's points (x, y) and labels (1 positive, 0 negative).
        layer: the area of the clicked surface's depth layer (``clicked_layer``), for the
            depth-layer check.
        dropped: pixels of the segmenter's mask already dropped as not connected to a click.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    out = {}
    pts, lab, pos = split_clicks(points, labels)
    neg = pts[lab == 0]
    area = int(mask.sum())
    missed = [i for i, (x, y) in enumerate(pos) if not mask[_clip_point(x, y, h, w)[::-1]]]
    if missed:
        out["click_outside"] = f"positive click(s) {missed} fall outside the mask"
    covered = [i for i, (x, y) in enumerate(neg) if mask[_clip_point(x, y, h, w)[::-1]]]
    if covered:
        out["negative_inside"] = f"negative click(s) {covered} fall inside the mask"
    if dropped:
        share = dropped / max(area + dropped, 1)
        out["disconnected"] = (
            f"{dropped} px in regions not connected to a click were left out ({share:.0%} of the mask)"
        )
    edges = int(border_pixels(mask).sum())
    if edges:
        out["border"] = (
            f"it touches the image border ({edges} px): the object may be cut off, or the mask spilled into the background"
        )
    if layer and area > LAYER_EXCESS * layer:
        out["depth_layer"] = (
            f"it is {area / layer:.1f} times the area of the clicked surface's depth layer ({area} px vs "
            f"{layer} px): it may hold what touches the object"
        )
    return out


# Warnings that make a candidate a worse pick than a plausible one (a border is no reason: objects
# near the frame touch it; regions not connected to a click are already left out).
IMPLAUSIBLE = ("click_outside", "negative_inside", "depth_layer")


def plausible_choice(scores: np.ndarray, warnings: list[dict[str, str]]) -> int:
    """The best-scoring candidate among those without an ``IMPLAUSIBLE`` warning (the best-scoring
    one when every candidate has one)."""
    scores = np.asarray(scores, dtype=np.float64)
    ok = np.array([not any(k in w for k in IMPLAUSIBLE) for w in warnings], dtype=bool)
    if not ok.any():
        return int(np.argmax(scores))
    return int(np.argmax(np.where(ok, scores, -np.inf)))


@dataclass
class FirstMasks:
    """A segmenter's candidates for the user's prompt, reviewed: ``masks`` K x H x W (stray regions
    left out), ``scores`` (K), ``warnings`` per candidate ({kind: words}), ``choice`` the one to
    lift, and ``sources``: for each candidate, the index of the segmenter's candidate it is or was
    clipped from (see ``review_first_masks``)."""

    masks: np.ndarray
    scores: np.ndarray
    warnings: list[dict[str, str]]
    choice: int
    sources: list[int]

    @property
    def clipped(self) -> list[bool]:
        """Which candidates are clipped copies (offered after the segmenter's, so their source
        index is another's)."""
        return [src != i for i, src in enumerate(self.sources)]


def review_first_masks(
    masks: np.ndarray,
    scores: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    drop_stray: bool = True,
    pick: str = "plausible",
    choice: int | None = None,
    clip: bool = False,
) -> FirstMasks:
    """Review the candidates for the first view: leave out each one's regions that meet no
    positive click (or, with a box alone, lie wholly outside the box) when ``drop_stray``, warn
    about each (``first_mask_warnings``), and choose: ``choice`` when given, else the best-scoring
    candidate (``pick`` "score") or the best-scoring plausible one ("plausible").

    With ``clip``, when no candidate is plausible and some are much larger than the clicked
    surface's depth layer (merged with what touches the object, a segmenter's common mistake that
    gives no better candidate to pick), each of those is offered again clipped to that layer (after
    the segmenter's candidates, with the same score, and a ``clipped`` warning saying so), and the
    plausible pick chooses among them. ``choice`` may name such a candidate.
    """
    if pick not in ("score", "plausible"):
        raise ValueError(f"unknown pick {pick!r}; expected 'score' or 'plausible'")
    pts, lab, pos = split_clicks(points, labels)
    surface = clicked_surface(depth, pts, lab)  # (the same for every candidate)
    layer = int(surface.sum()) if surface is not None else None
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    kept, warnings = [], []
    for m in np.asarray(masks, dtype=bool):
        k = keep_supported(m, points=pos, box=box if not len(pos) else None) if drop_stray else m
        kept.append(k)
        warnings.append(first_mask_warnings(k, pts, lab, layer, dropped=int(m.sum() - k.sum())))
    sources = list(range(len(kept)))
    ok = [not any(k in w for k in IMPLAUSIBLE) for w in warnings]
    if clip and surface is not None and layer and len(pos) and not any(ok):
        h, w = surface.shape
        for i in range(len(kept)):
            if "depth_layer" not in warnings[i]:
                continue
            c = clip_to_surface(kept[i], surface, pos)
            if c.sum() < min_region(h, w) or any((c == k).all() for k in kept):
                continue
            found = first_mask_warnings(c, pts, lab, layer)
            found["clipped"] = (
                f"candidate {i} ({int(kept[i].sum())} px, {kept[i].sum() / layer:.1f} times the clicked surface's "
                f"depth layer) clipped to that layer ({int(c.sum())} px)"
            )
            kept.append(c)
            warnings.append(found)
            sources.append(i)
            scores = np.append(scores, scores[i])
    if choice is not None and not 0 <= choice < len(kept):
        raise SA3DError(
            f"mask_choice {choice} does not exist: the prompt gave {len(kept)} candidate mask(s) "
            f"(valid 0..{len(kept) - 1}, or null for the first plausible one)."
        )
    if choice is None:
        choice = plausible_choice(scores, warnings) if pick == "plausible" else int(np.argmax(scores[: len(masks)]))
    return FirstMasks(
        np.stack(kept) if kept else np.asarray(masks, dtype=bool),
        scores,
        warnings,
        int(choice),
        sources,
    )
