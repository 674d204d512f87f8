"""Multi-resolution hash grids (Instant-NGP's, as nerfstudio's ``HashEncoding`` lays them out),
evaluated by listing each point's trilinear corners: the table entries it reads and their weights.

Both the mask field's votes (which entries a sample touches) and a cheaper evaluation of the frozen
NeRF's own hash grids (a fused gather-multiply-sum over the corners) are built on
:func:`grid_corners`. Also the L-inf scene contraction that maps unbounded positions into the
grids' cube (:func:`contract_inf`). Plain torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HASH_PRIMES = (1, 2654435761, 805459861)  # nerfstudio's HashEncoding.hash_fn (Instant-NGP)


# (level, point) pairs per block on the CPU: a block's temporaries stay in cache and their memory
# is reused, where whole-chunk temporaries (tens of MB each) cost page faults and memory bandwidth
BLOCK_PAIRS = 1 << 17
# (level, point) pairs per block of grid_lookup on the CPU (corner lists of 16 MB each)
LOOKUP_BLOCK_PAIRS = 1 << 19
# how corner lists are summed: "embedding_bag" (one fused kernel), "gather" (index, multiply, sum)
# or "auto": embedding_bag on a CPU, gather on CUDA. Measured (sa3d_ns.tools.gpu_profile, one
# 512x512 view): on an H200 the frozen nerfacto's render took 245 ms with gather against 410 ms
# with embedding_bag (nerfstudio's own lookup: 307 ms) and the mask score 42 against 60 ms (its
# CUDA kernel leaves most threads idle for 1 or 2 features); on our 2-core CPU gather is 2x slower.
BAG_SUM = "auto"


def bag_sum(idx: torch.Tensor, w: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """sum_j w[b, j] * table[idx[b, j]] for bags b of corners: idx, w B x J; table N x F -> B x F."""
    if BAG_SUM == "gather" or (BAG_SUM == "auto" and table.device.type != "cpu"):
        return (table[idx.long()] * w.unsqueeze(-1).to(table.dtype)).sum(1)
    return F.embedding_bag(idx, table, per_sample_weights=w.to(table.dtype), mode="sum")


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
    nerfstudio's 64-bit ones, at half the cost. Computed axis by axis on contiguous (level, point)
    planes, in blocks of points on the CPU.
    """
    assert table_size & (table_size - 1) == 0, "hash table size must be a power of two"
    n, levels, dev = p.shape[0], scalings.numel(), p.device
    shape = (levels, n, 8) if level_major else (n, levels, 8)
    idx = torch.empty(shape, dtype=torch.int32, device=dev)
    wts = torch.empty(shape, dtype=torch.float32, device=dev)
    # planes are L x m (level-major) or m x L, for a block of m points
    res = scalings.to(device=dev, dtype=p.dtype).view((-1, 1) if level_major else (1, -1))
    level_offset = offsets.to(device=dev, dtype=torch.int32).view(res.shape)
    if scale is not None:
        scale = torch.broadcast_to(scale.to(device=dev, dtype=torch.float32), (levels, n))
        scale = scale if level_major else scale.t()
    primes = [(q + 2**31) % 2**32 - 2**31 for q in HASH_PRIMES]  # as int32
    coords = p.t().contiguous()  # 3 x N
    block = n if dev.type != "cpu" else max(1, BLOCK_PAIRS // max(levels, 1))
    for a in range(0, n, block):
        b = min(a + block, n)
        lo, hi, w = [], [], []  # per axis: hashed low / high corner coordinates, (1 - t, t) weights
        for k in range(3):
            x = coords[k, a:b]
            scaled = x[None, :] * res if level_major else x[:, None] * res
            floor = torch.floor(scaled)
            off = scaled - floor
            lo.append(floor.int() * primes[k])
            hi.append(torch.ceil(scaled).int() * primes[k])
            pair = (1 - off, off)
            if k == 0 and scale is not None:  # ``scale`` folded into x once
                part = scale[:, a:b] if level_major else scale[a:b]
                pair = (pair[0] * part, pair[1] * part)
            w.append(pair)
        hxy = [[(hi[0] if i else lo[0]) ^ (hi[1] if j else lo[1]) for j in (0, 1)] for i in (0, 1)]
        wxy = [[w[0][i] * w[1][j] for j in (0, 1)] for i in (0, 1)]
        out_idx, out_w = (idx[:, a:b], wts[:, a:b]) if level_major else (idx[a:b], wts[a:b])
        for c in range(8):  # the order of a point's corners does not matter (they are summed)
            i, j, z = c & 1, (c >> 1) & 1, (c >> 2) & 1
            h = (hxy[i][j] ^ (hi[2] if z else lo[2])).bitwise_and_(table_size - 1)
            torch.add(h, level_offset, out=out_idx[..., c])
            torch.mul(wxy[i][j], w[2][z], out=out_w[..., c])
    return idx, wts


def contract_inf(x: torch.Tensor) -> torch.Tensor:
    """Mip-NeRF 360's scene contraction with the L-inf norm, as nerfstudio's SceneContraction
    (order=inf) computes it: x inside the unit cube, (2 - 1/|x|) x/|x| outside (into the cube of
    side 4). The norm is a max of absolute values (exact)."""
    mag = x.abs().amax(dim=-1, keepdim=True)
    return torch.where(mag < 1, x, (2 - (1 / mag)) * (x / mag))


def grid_lookup(
    table: torch.Tensor, p: torch.Tensor, scalings: torch.Tensor, offsets: torch.Tensor, table_size: int
) -> torch.Tensor:
    """The features of points ``p`` (... x 3, in [0, 1]) in a hash grid: ... x (L * F) for a
    table of L * table_size x F, in nerfstudio's order (level-major, then feature). No gradient.
    On the CPU, in blocks of LOOKUP_BLOCK_PAIRS (level, point) pairs, whose corner lists (a few
    tens of MB) reuse the memory of the block before."""
    shape, levels, table = p.shape[:-1], scalings.numel(), table.detach()
    flat = p.reshape(-1, 3)
    n = flat.shape[0]
    out = torch.empty((n, levels * table.shape[1]), dtype=table.dtype, device=p.device)
    block = n if p.device.type != "cpu" else max(1, LOOKUP_BLOCK_PAIRS // max(levels, 1))
    for a in range(0, n, block):
        b = min(a + block, n)
        idx, w = grid_corners(flat[a:b], scalings, offsets, table_size, level_major=False)
        bags = bag_sum(idx.view(-1, 8), w.view(-1, 8), table)
        out[a:b] = bags.view(b - a, -1)
    return out.view(*shape, levels * table.shape[1])
