"""Multi-resolution hash grids (Instant-NGP's, as nerfstudio's ``HashEncoding`` lays them out),
evaluated by listing each point's trilinear corners: the table entries it reads and their weights.

Both the mask field's votes (which entries a sample touches) and a cheaper evaluation of the frozen
NeRF's own hash grids (a fused gather-multiply-sum over the corners) are built on
:func:`grid_corners`. Plain torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HASH_PRIMES = (1, 2654435761, 805459861)  # nerfstudio's HashEncoding.hash_fn (Instant-NGP)


def grid_corners(
    p: torch.Tensor,
    scalings: torch.Tensor,
    offsets: torch.Tensor,
    table_size: int,
    scale: torch.Tensor | None = None,
    level_major: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 trilinear corners of N points ``p`` (N x 3, in [0, 1]) at each of the L levels.

    Args:
        scalings: L grid resolutions; offsets: L first table rows of each level.
        table_size: rows per level (a power of two).
        scale: optional factor of each (level, point) weight, broadcastable to L x N.
        level_major: indices / weights L x N x 8 (each level's entries together), else N x L x 8.

    Returns (indices int32, weights float32). value(x) = sum over its entries of weight * table[index].
    The hash is nerfstudio's: xor over the axes of (coordinate * prime), modulo the table size. The
    table size is a power of two, so 32-bit products that wrap around give the same low bits as
    nerfstudio's 64-bit ones, at half the cost.
    """
    assert table_size & (table_size - 1) == 0, "hash table size must be a power of two"
    if level_major:
        scaled = p[None, :, :] * scalings.view(-1, 1, 1).to(p)  # L x N x 3
        level_offset = offsets.to(device=p.device, dtype=torch.int32).view(-1, 1)
    else:
        scaled = p[:, None, :] * scalings.view(1, -1, 1).to(p)  # N x L x 3
        level_offset = offsets.to(device=p.device, dtype=torch.int32).view(1, -1)
        scale = None if scale is None else scale.transpose(0, 1)
    floor = torch.floor(scaled)
    off = scaled - floor
    primes = torch.tensor([(q + 2**31) % 2**32 - 2**31 for q in HASH_PRIMES], dtype=torch.int32, device=p.device)
    lo, hi = floor.int() * primes, torch.ceil(scaled).int() * primes
    # per-axis weights (1 - t for the low corner, t for the high one); ``scale`` folded into x once
    wx = (1 - off[..., 0], off[..., 0])
    if scale is not None:
        wx = (wx[0] * scale, wx[1] * scale)
    wy = (1 - off[..., 1], off[..., 1])
    wz = (1 - off[..., 2], off[..., 2])
    wxy = [[wx[a] * wy[b] for b in (0, 1)] for a in (0, 1)]
    hxy = [[(hi if a else lo)[..., 0] ^ (hi if b else lo)[..., 1] for b in (0, 1)] for a in (0, 1)]
    idx = torch.empty((*scaled.shape[:2], 8), dtype=torch.int32, device=p.device)
    wts = torch.empty((*scaled.shape[:2], 8), dtype=torch.float32, device=p.device)
    for c in range(8):  # the order of a point's corners does not matter (they are summed)
        a, b, z = c & 1, (c >> 1) & 1, (c >> 2) & 1
        h = hxy[a][b] ^ (hi if z else lo)[..., 2]
        torch.add(h & (table_size - 1), level_offset, out=idx[..., c])
        torch.mul(wxy[a][b], wz[z], out=wts[..., c])
    return idx, wts


def grid_lookup(
    table: torch.Tensor, p: torch.Tensor, scalings: torch.Tensor, offsets: torch.Tensor, table_size: int
) -> torch.Tensor:
    """The features of points ``p`` (... x 3, in [0, 1]) in a hash grid: ... x (L * F) for a
    table of L * table_size x F, in nerfstudio's order (level-major, then feature). No gradient."""
    shape = p.shape[:-1]
    flat = p.reshape(-1, 3)
    idx, w = grid_corners(flat, scalings, offsets, table_size, level_major=False)
    levels = idx.shape[1]
    out = F.embedding_bag(idx.view(-1, 8), table.detach(), per_sample_weights=w.view(-1, 8).to(table.dtype), mode="sum")
    return out.view(*shape, levels * table.shape[1])
