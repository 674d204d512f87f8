"""The order in which SA3D visits the training views after the prompt view."""

from __future__ import annotations

import numpy as np


def view_order(
    centres: np.ndarray, start: int, mode: str = "dataset", directions: np.ndarray | None = None
) -> list[int]:
    """Visit order of N views beginning with ``start``.

    ``dataset``: start, then the other views in ascending index order.
    ``nearest``: greedy growth, each next view being the unvisited one closest to any visited view
    (camera-centre distance plus, when ``directions`` is given, the angle between viewing directions
    in radians times the median centre spacing), so every view is lifted next to views already seen.

    Example: centres on a line [0, 1, 2, 3], start 2, nearest -> [2, 1, 3, 0] or [2, 3, 1, 0].
    """
    n = len(centres)
    if not 0 <= start < n:
        raise ValueError(f"start {start} outside 0..{n - 1}")
    if mode == "dataset":
        return [start] + [i for i in range(n) if i != start]
    if mode != "nearest":
        raise ValueError(f"unknown view order {mode!r}; expected 'dataset' or 'nearest'")
    c = np.asarray(centres, dtype=np.float64)
    dist = np.linalg.norm(c[:, None] - c[None], axis=-1)
    if directions is not None:
        d = np.asarray(directions, dtype=np.float64)
        d = d / np.linalg.norm(d, axis=-1, keepdims=True).clip(1e-12)
        angle = np.arccos(np.clip(d @ d.T, -1, 1))
        spacing = np.median(dist[dist > 0]) if np.any(dist > 0) else 1.0
        dist = dist + angle * spacing
    order = [start]
    best = dist[start].copy()
    visited = np.zeros(n, dtype=bool)
    visited[start] = True
    for _ in range(n - 1):
        cand = np.where(visited, np.inf, best)
        nxt = int(np.argmin(cand))
        order.append(nxt)
        visited[nxt] = True
        best = np.minimum(best, dist[nxt])
    return order


def auto_downscale(width: int, height: int, max_size: int) -> float:
    """The smallest downscale factor (>= 1) that brings the longer side of a ``width`` x ``height``
    image to at most ``max_size`` pixels (``max_size`` <= 0: 1, the full resolution).

    Example: 1000 x 750 with max_size 500 -> 2.0; 320 x 240 with max_size 500 -> 1.0.
    """
    if max_size <= 0:
        return 1.0
    return max(1.0, max(width, height) / max_size)


def passes_order(order: list[int], num_passes: int, pass_views: float = 1.0) -> list[int]:
    """The views of every pass in turn: the whole visit ``order``, then for each later pass its
    first ``pass_views`` share (at least one view): the views segmented while the 3D mask was
    least complete.

    Example: order [4, 5, 3, 6], 2 passes, share 0.5 -> [4, 5, 3, 6, 4, 5].
    """
    if not order:
        return []
    again = list(order[: max(1, round(pass_views * len(order)))])
    return list(order) + again * (max(num_passes, 1) - 1)
