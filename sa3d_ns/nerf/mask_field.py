"""The 3D mask field: a zero-initialised multi-resolution hash grid with one feature per level."""

from __future__ import annotations

from typing import Literal, cast

import torch
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.encodings import HashEncoding
from torch import nn

from sa3d_ns.core.hashgrid import grid_corners


class MaskField(nn.Module):
    """m(x): a hash grid (nerfstudio's ``HashEncoding``, tcnn or torch) whose levels are summed with
    fixed weights proportional to growth^-level (normalised to sum 1). No activation.

    Positions are normalised exactly as nerfacto's field does (scene contraction then [0, 1]^3, or
    the scene box), and m = 0 outside the unit cube.
    """

    aabb: torch.Tensor  # (buffers)
    level_weights: torch.Tensor

    def __init__(
        self,
        aabb: torch.Tensor,
        spatial_distortion: nn.Module | None,
        num_levels: int = 16,
        min_res: int = 128,
        max_res: int = 2048,
        log2_hashmap_size: int = 19,
        implementation: Literal["tcnn", "torch"] = "torch",
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
        return cast(nn.Parameter, self.encoding.hash_table)  # (nerfstudio's type includes its placeholder tensor)

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
        scale = self.level_weights.view(-1, 1) * inside.view(1, -1).to(p)
        return grid_corners(p, enc.scalings, enc.hash_offset, enc.hash_table_size, scale=scale)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions N x 3 (world) -> mask values N."""
        p, inside = self.normalize(positions)
        feats = self.encoding(p).float()
        return (feats @ self.level_weights) * inside
