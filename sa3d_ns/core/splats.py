"""SA3D on 3D Gaussians: what each pixel of a view reads, and the mask as one value per Gaussian.

A splat's pixel p is the front-to-back blend of the Gaussians it reads: colour(p) = sum_i w_i(p) c_i
with w_i(p) = alpha_i(p) T_i(p), T_i the transmittance left before Gaussian i. With a mask value m_i
per Gaussian, the rendered mask score is S(p) = sum_i w_i(p) m_i, linear in m exactly as the hash
grid's is in its table: SA3D's loss casts one fixed vote per view, and the lifting's rules
(:mod:`sa3d_ns.core.lifting`) apply unchanged, with one "corner" per sample, the Gaussian itself.

This module is plain torch: the (Gaussian, pixel) pairs come from gsplat's kernel (the glue in
``sa3d_ns/splat``), and here they become each pixel's weights and its heaviest Gaussians.
"""

from __future__ import annotations

import torch

ALPHA_MAX = 0.999  # gsplat's kernel: a Gaussian's alpha is capped here
ALPHA_MIN = 1.0 / 255.0  # ... and skipped below this
T_STOP = 1e-4  # ... and a pixel stops before the Gaussian that would bring its transmittance to this


def pair_alphas(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    gaussians: torch.Tensor,
    pixels: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """The alpha of each (Gaussian, pixel) pair as gsplat's kernel computes it: means2d N x 2,
    conics N x 3 (the projected covariances' inverses: a, b, c), opacities N, pairs M (pixel index
    row-major in an image ``width`` wide) -> M alphas (0 where the kernel skips the Gaussian)."""
    px = (pixels % width).to(means2d.dtype) + 0.5
    py = torch.div(pixels, width, rounding_mode="floor").to(means2d.dtype) + 0.5
    dx, dy = means2d[gaussians, 0] - px, means2d[gaussians, 1] - py
    a, b, c = conics[gaussians].unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[gaussians] * torch.exp(-sigma), ALPHA_MAX)
    return torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))


def pair_weights(pixels: torch.Tensor, depths: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blending weights of (Gaussian, pixel) pairs given in any order: pixels M, the Gaussians'
    depths M, alphas M -> (the order that sorts the pairs by pixel, then front to back; the weights
    alpha * T in that order, 0 from the Gaussian that would bring T to 1e-4 or below on, as the
    kernel stops there)."""
    order = torch.argsort(depths, stable=True)
    order = order[torch.argsort(pixels[order], stable=True)]
    p, a = pixels[order], alphas[order].double()
    # T before each pair: exp of the sum of log(1 - alpha) of the pixel's pairs before it
    logs = torch.log1p(-a)
    run = torch.cumsum(logs, 0)
    first = torch.ones_like(p, dtype=torch.bool)
    first[1:] = p[1:] != p[:-1]
    starts = torch.nonzero(first).squeeze(-1)
    segment = torch.cumsum(first.long(), 0) - 1
    base = (run - logs)[starts][segment]  # the running sum before the pixel's first pair
    before = torch.exp(run - logs - base)
    stops = (before * (1 - a) <= T_STOP) & (a > 0)
    # a pair counts unless the pixel stopped at it or before
    stopped = torch.cumsum(stops.long(), 0)
    stopped = stopped - (stopped - stops.long())[starts][segment]
    weights = torch.where(stopped == 0, a * before, torch.zeros_like(a))
    return order, weights.to(alphas.dtype)


def heaviest(
    pixels: torch.Tensor, gaussians: torch.Tensor, weights: torch.Tensor, num_pixels: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's ``k`` heaviest Gaussians: pairs M (pixel, Gaussian, weight) -> (ids P x k,
    weights P x k), heaviest first, padded with Gaussian 0 at weight 0."""
    ids = torch.zeros((num_pixels, k), dtype=torch.long, device=pixels.device)
    out = torch.zeros((num_pixels, k), dtype=weights.dtype, device=pixels.device)
    if len(pixels) == 0:
        return ids, out
    order = torch.argsort(weights, descending=True, stable=True)
    order = order[torch.argsort(pixels[order], stable=True)]
    p = pixels[order]
    first = torch.ones_like(p, dtype=torch.bool)
    first[1:] = p[1:] != p[:-1]
    starts = torch.nonzero(first).squeeze(-1)
    rank = torch.arange(len(p), device=p.device) - starts[torch.cumsum(first.long(), 0) - 1]
    keep = rank < k
    ids[p[keep], rank[keep]] = gaussians[order][keep]
    out[p[keep], rank[keep]] = weights[order][keep]
    return ids, out


def gaussian_lifter(
    table: torch.nn.Parameter, mode: str = "vote", lr: float = 0.1, vote_prior: float = 0.0, footprints=None
):
    """A :class:`~sa3d_ns.core.lifting.MaskLifter` for a per-Gaussian mask (``table``: one value per
    Gaussian): a sample is a Gaussian's index, its one "corner" the Gaussian itself with weight 1,
    so scores are gathers and votes scatter-adds, as for the hash grid."""
    from sa3d_ns.core.lifting import MaskLifter

    def field(ids: torch.Tensor) -> torch.Tensor:
        return table[ids]

    def corners(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids.reshape(1, -1, 1), torch.ones((1, ids.numel(), 1), dtype=torch.float32, device=ids.device)

    return MaskLifter(field, table, mode=mode, lr=lr, corners=corners, vote_prior=vote_prior, footprints=footprints)
