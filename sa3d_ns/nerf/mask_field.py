"""The 3D mask field: a zero-initialised multi-resolution hash grid with one feature per level."""

from __future__ import annotations

import torch
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.encodings import HashEncoding
from torch import nn

HASH_PRIMES = (1, 2654435761, 805459861)  # nerfstudio's HashEncoding.hash_fn (Instant-NGP)


class MaskField(nn.Module):
    """m(x): a hash grid (nerfstudio's ``HashEncoding``, tcnn or torch) whose levels are summed with
    fixed weights proportional to growth^-level (normalised to sum 1). No activation.

    Positions are normalised exactly as nerfacto's field does (scene contraction then [0, 1]^3, or
    the scene box), and m = 0 outside the unit cube.
    """

    def __init__(
        self,
        aabb: torch.Tensor,
        spatial_distortion: nn.Module | None,
        num_levels: int = 16,
        min_res: int = 128,
        max_res: int = 2048,
        log2_hashmap_size: int = 19,
        implementation: str = "torch",
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.clone().float())
        self.spatial_distortion = spatial_distortion
        self.encoding = HashEncoding(
            num_levels=num_levels,
            min_res=min_res,
            max_res=max_res,
            log2_hashmap_size=log2_hashmap_size,
            features_per_level=1,
            hash_init_scale=0.0,
            implementation=implementation,
        )
        growth = float(self.encoding.growth_factor)
        weights = torch.tensor([growth ** (-level) for level in range(num_levels)], dtype=torch.float32)
        self.register_buffer("level_weights", weights / weights.sum())
        with torch.no_grad():
            self.table.zero_()

    @property
    def table(self) -> nn.Parameter:
        """The one trainable tensor (torch hash table or tcnn parameters)."""
        if self.encoding.tcnn_encoding is not None:
            return self.encoding.tcnn_encoding.params
        return self.encoding.hash_table

    def normalize(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spatial_distortion is not None:
            p = (self.spatial_distortion(positions) + 2.0) / 4.0
        else:
            p = SceneBox.get_normalized_positions(positions, self.aabb)
        inside = ((p > 0.0) & (p < 1.0)).all(dim=-1)
        return p * inside[..., None], inside

    @property
    def explicit(self) -> bool:
        """True when the table is nerfstudio's torch hash table, whose lookups :meth:`corners` can
        list (tcnn keeps its own layout: votes then go through autograd)."""
        return self.encoding.tcnn_encoding is None

    def layout(self) -> tuple:
        """What decides which table entries a position reads (equal for every object of a run)."""
        enc = self.encoding
        return (
            enc.num_levels, enc.hash_table_size, tuple(enc.scalings.tolist()),
            tuple(self.aabb.flatten().tolist()), type(self.spatial_distortion).__name__,
        )  # fmt: skip

    def corners(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The table entries each position reads and their weights: m(x) = sum_{l,j} w table[i].

        Returns (indices L x N x 8 int32, weights L x N x 8 float32), level-major: the 8 trilinear
        corners at each of the L levels (each level owns its own part of the table, so work split
        by level never writes the same entry twice), hashed with the encoding's own hash function,
        weights including the level weights and the outside-the-unit-cube zero. Same maths as
        nerfstudio's torch forward.
        """
        p, inside = self.normalize(positions)
        enc = self.encoding
        scaled = p[None, :, :] * enc.scalings.view(-1, 1, 1).to(p)  # L x N x 3
        floor = torch.floor(scaled)
        off = scaled - floor
        # nerfstudio's hash: xor over axes of (coordinate * prime); the per-axis products are formed once
        # The table size is a power of two, so the hash's low bits are all that matter: 32-bit
        # products that wrap around give the same low bits as nerfstudio's 64-bit ones, at half the cost.
        size = enc.hash_table_size
        assert size & (size - 1) == 0, "hash table size must be a power of two"
        primes = torch.tensor([(q + 2**31) % 2**32 - 2**31 for q in HASH_PRIMES], dtype=torch.int32, device=p.device)
        lo, hi = floor.int() * primes, torch.ceil(scaled).int() * primes
        level_offset = enc.hash_offset.to(device=p.device, dtype=torch.int32).view(-1, 1)
        # per-axis interpolation weights (1 - t for the low corner, t for the high one); the level
        # weights and the outside-the-cube zero are folded into the x axis once
        scale_x = self.level_weights.view(-1, 1) * inside.view(1, -1).to(off)
        wx = ((1 - off[..., 0]) * scale_x, off[..., 0] * scale_x)
        wy = (1 - off[..., 1], off[..., 1])
        wz = (1 - off[..., 2], off[..., 2])
        wxy = [[wx[a] * wy[b] for b in (0, 1)] for a in (0, 1)]
        hxy = [[(hi if a else lo)[..., 0] ^ (hi if b else lo)[..., 1] for b in (0, 1)] for a in (0, 1)]
        # the order of a position's entries within its level does not matter (they are summed)
        levels, n = scaled.shape[:2]
        idx = torch.empty((levels, n, 8), dtype=torch.int32, device=p.device)
        wts = torch.empty((levels, n, 8), dtype=torch.float32, device=p.device)
        for c in range(8):
            a, b, z = c & 1, (c >> 1) & 1, (c >> 2) & 1
            h = hxy[a][b] ^ (hi if z else lo)[..., 2]
            torch.add(h & (size - 1), level_offset, out=idx[..., c])
            torch.mul(wxy[a][b], wz[z], out=wts[..., c])
        return idx, wts

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions N x 3 (world) -> mask values N."""
        p, inside = self.normalize(positions)
        feats = self.encoding(p).float()
        return (feats @ self.level_weights) * inside
