"""Which Gaussians each pixel of a view reads, and with what weight, from gsplat's own kernel.

gsplat's ``rasterize_to_indices_in_range`` lists the (Gaussian, pixel) pairs that count in a view
(the CUDA kernel's tiles, depth order, alpha and transmittance rules); the weights alpha * T of
those pairs are then computed in torch (:mod:`sa3d_ns.core.splats`). The functions are looked up
on the ``gsplat`` module at each call.
"""

from __future__ import annotations

import math

import torch

from sa3d_ns.core.splats import pair_alphas, pair_weights

TILE = 16  # gsplat's (and splatfacto's) tile size


@torch.no_grad()
def view_pairs(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    antialiased: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One camera's pairs (pixel index row-major, Gaussian index, blending weight), sorted by pixel
    and then front to back: means N x 3, quats N x 4, scales N x 3 and opacities N as
    ``gsplat.rasterization`` takes them (activated), viewmat 4 x 4 (world to camera), K 3 x 3."""
    import gsplat

    radii, means2d, depths, conics, compensations = gsplat.fully_fused_projection(
        means, None, quats, scales, viewmat[None], K[None], width, height, packed=False,
        calc_compensations=antialiased,
    )  # fmt: skip
    opac = opacities[None] * compensations if antialiased and compensations is not None else opacities[None]
    tiles_w, tiles_h = math.ceil(width / TILE), math.ceil(height / TILE)
    _, isect_ids, flatten_ids = gsplat.isect_tiles(means2d, radii, depths, TILE, tiles_w, tiles_h, packed=False)
    offsets = gsplat.isect_offset_encode(isect_ids, 1, tiles_w, tiles_h)
    batches = len(flatten_ids) // (TILE * TILE) + 1  # (every Gaussian of every tile in one call)
    start = torch.ones((1, height, width), device=means.device)
    gaussians, pixels, _ = gsplat.rasterize_to_indices_in_range(
        0, batches, start, means2d, conics, opac, width, height, TILE, offsets, flatten_ids
    )
    gaussians, pixels = gaussians.long(), pixels.long()
    alphas = pair_alphas(means2d[0], conics[0], opac[0], gaussians, pixels, width)
    order, weights = pair_weights(pixels, depths[0][gaussians], alphas)
    return pixels[order], gaussians[order], weights
