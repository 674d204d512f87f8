"""The loop's radiance field for a splat (``core.loop.Scene``): frozen Gaussians over a set of views.

Each view's data is its pixels' heaviest Gaussians (indices, blending weights: gsplat's kernel's
pairs, :mod:`sa3d_ns.splat.lists`), their means as the samples' positions (the surface points the
loop keeps), the expected depth and the rendered image; each object's 3D mask is one value per
Gaussian (:func:`sa3d_ns.core.splats.gaussian_lifter`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sa3d_ns.core.cache import ViewCache, tensor_bytes
from sa3d_ns.core.records import ViewData
from sa3d_ns.core.splats import heaviest
from sa3d_ns.splat.lists import view_pairs

Lists = dict[str, torch.Tensor]
"""A view's data as kept (in memory, on disk): its ViewData without the positions."""


def viewmat_of(c2w: torch.Tensor) -> torch.Tensor:
    """World-to-camera 4 x 4 (OpenCV axes, as gsplat takes it) of a nerfstudio camera-to-world
    3 x 4 (OpenGL axes: y up, looking along -z), as splatfacto's ``get_viewmat`` does."""
    rot = c2w[:3, :3] * torch.tensor([1.0, -1.0, -1.0], device=c2w.device, dtype=c2w.dtype)
    out = torch.eye(4, device=c2w.device, dtype=c2w.dtype)
    out[:3, :3] = rot.T
    out[:3, 3] = -rot.T @ c2w[:3, 3]
    return out


@dataclass
class Gaussians:
    """Activated Gaussians, as ``gsplat.rasterization`` takes them: means N x 3, quats N x 4,
    scales N x 3, opacities N, colors (SH coefficients N x B x 3 with ``sh_degree``, else N x 3)."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    sh_degree: int | None = None
    antialiased: bool = False

    def __len__(self) -> int:
        return len(self.means)


@dataclass
class View:
    """A camera: camera-to-world 3 x 4 (nerfstudio's OpenGL axes), intrinsics K 3 x 3, size."""

    c2w: torch.Tensor
    K: torch.Tensor
    width: int
    height: int


class GaussianScene:
    """Frozen Gaussians seen by ``views`` (named ``names``); object k's mask is ``tables[k]`` (one
    value per Gaussian). ``samples`` Gaussians are kept per pixel (the heaviest). Views' data are
    kept in memory once computed, up to ``memory_bytes`` (None: all), and with a ``store`` on disk
    (every later run of the same splat and views reads them back); the rest is computed again when
    asked for. ``background`` (3) is the colour behind the splat in the images segmented."""

    def __init__(
        self,
        gaussians: Gaussians,
        views: list[View],
        names: list[str],
        tables,
        samples: int = 16,
        memory_bytes: int | None = None,
        background: torch.Tensor | None = None,
        store: ViewCache | None = None,
    ):
        self.gaussians, self.views, self.names, self.tables, self.samples = gaussians, views, names, tables, samples
        self.memory_bytes, self.background, self.store = memory_bytes, background, store
        self.bounds: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._data: dict[int, Lists] = {}  # (without positions: see view_data)
        self._kept_bytes = 0
        self.stats = {"views_built": 0, "views_reused": 0, "views_from_disk": 0, "views_in_memory": 0, "bytes": 0}
        self._tree = None

    # ------------------------------------------------------------------ views
    def image_names(self) -> list[str]:
        return self.names

    def image_size(self, view: int) -> tuple[int, int]:
        return self.views[view].width, self.views[view].height

    def camera_centres(self) -> tuple[np.ndarray, np.ndarray]:
        c2w = torch.stack([v.c2w for v in self.views]).cpu().numpy()
        return c2w[:, :3, 3], -c2w[:, :3, 2]

    @torch.no_grad()
    def render(self, view: View, colors: torch.Tensor | None = None, opacities: torch.Tensor | None = None):
        """gsplat's render of ``view``: (image H x W x C, alpha H x W), the Gaussians' own colours
        unless ``colors`` (N x C, no SH) are given, their opacities unless ``opacities``."""
        import gsplat

        g = self.gaussians
        own = colors is None
        out, alpha, _ = gsplat.rasterization(
            g.means, g.quats, g.scales, g.opacities if opacities is None else opacities,
            g.colors if own else colors, viewmat_of(view.c2w)[None], view.K[None], view.width, view.height,
            sh_degree=g.sh_degree if own else None, packed=False,
            rasterize_mode="antialiased" if g.antialiased else "classic",
        )  # fmt: skip
        return out[0], alpha[0, ..., 0]

    def view_data(self, view: int) -> ViewData:
        """View ``view``'s data; its ``positions`` (the samples' means, 12 of a sample's 20 bytes) are
        gathered from the Gaussians at each call, never kept in memory or on disk."""
        if view in self._data:
            self.stats["views_reused"] += 1
            return self.with_positions(self._data[view])
        data = self.stored(view)
        if data is None:
            data = self.data_of(self.views[view])
            self.stats["views_built"] += 1
            if self.store is not None:
                self.store.save(f"view{view:05d}", {k: v for k, v in data.items() if isinstance(v, torch.Tensor)})
        else:
            self.stats["views_from_disk"] += 1
        size = tensor_bytes(data)
        if self.memory_bytes is None or self._kept_bytes + size <= self.memory_bytes:
            self._data[view] = data
            self._kept_bytes += size
            self.stats["views_in_memory"], self.stats["bytes"] = len(self._data), self._kept_bytes
        return self.with_positions(data)

    def with_positions(self, data: Lists) -> ViewData:
        """A view's lists with their samples' positions (the Gaussians' means) added: its ViewData."""
        return {**data, "positions": self.gaussians.means[data["samples"].long()]}  # type: ignore[typeddict-item]

    def stored(self, view: int) -> Lists | None:
        """View ``view``'s data from the store, when an entry is there and fits the view (a
        truncated or foreign entry is dropped and rebuilt)."""
        if self.store is None:
            return None
        name = f"view{view:05d}"
        entry = self.store.load(name)
        if entry is None:
            return None
        v, n = self.views[view], len(self.gaussians)
        pixels = v.width * v.height
        shapes = {"samples": (pixels, self.samples), "weights": (pixels, self.samples), "depth": (v.height, v.width),
                  "size": (2,), "rgb": (v.height, v.width, 3)}  # fmt: skip
        samples = entry.get("samples")
        if (
            any(k not in entry or tuple(entry[k].shape) != shape for k, shape in shapes.items())
            or samples is None
            or (len(samples) and (int(samples.min()) < 0 or int(samples.max()) >= n))
        ):
            self.store.drop(name, "its Gaussian lists do not fit this view")
            return None
        device = self.gaussians.means.device
        return {k: t.to(device) if k != "size" else t for k, t in entry.items()}

    @torch.no_grad()
    def data_of(self, v: View) -> Lists:
        """What the loop needs of camera ``v``: each pixel's heaviest Gaussians (ids, weights; their
        means are the positions ``view_data`` adds), the expected depth, the render."""
        g = self.gaussians
        viewmat = viewmat_of(v.c2w)
        pixels, ids, weights = view_pairs(
            g.means, g.quats, g.scales, g.opacities, viewmat, v.K, v.width, v.height, g.antialiased
        )
        samples, w = heaviest(pixels, ids, weights, v.width * v.height, self.samples)
        z = (g.means @ viewmat[:3, :3].T + viewmat[:3, 3])[:, 2]
        total = torch.zeros(v.width * v.height, dtype=weights.dtype, device=weights.device).index_add_(
            0, pixels, weights
        )
        depth = torch.zeros_like(total).index_add_(0, pixels, weights * z[ids]) / total.clamp_min(1e-8)
        return {
            "samples": samples.int(),
            "weights": w.float(),
            "depth": depth.view(v.height, v.width).float(),
            "size": torch.tensor([v.height, v.width]),
            "rgb": self.image(v)[0],
        }

    def image(self, v: View) -> tuple[torch.Tensor, torch.Tensor]:
        """The splat's image seen by ``v`` (its own colours on ``background``, H x W x 3 uint8) and
        its alpha (H x W)."""
        rgb, alpha = self.render(v)
        if self.background is not None:
            rgb = rgb[..., :3] + (1 - alpha[..., None]) * self.background.to(rgb)
        return (rgb[..., :3].clamp(0, 1) * 255).round().to(torch.uint8), alpha

    def segment_input(self, view: int, data: ViewData) -> np.ndarray:
        rgb = data.get("rgb")
        assert rgb is not None  # (view_data renders it)
        return rgb.cpu().numpy()

    def footprint_key(self, k: int, view: int, data: ViewData):
        return (view, *data["size"].tolist(), "gaussians", len(self.gaussians))

    # ------------------------------------------------------------------ the objects' masks
    def gaussians_at(self, points: torch.Tensor) -> torch.Tensor:
        """The index of the Gaussian whose mean is nearest each point (N x 3): the samples'
        positions are Gaussians' means, so this finds them back."""
        if self._tree is None:
            from scipy.spatial import KDTree

            self._tree = KDTree(self.gaussians.means.cpu().numpy())
        return torch.from_numpy(self._tree.query(points.cpu().numpy())[1]).long()

    def mask_values(self, k: int, points: torch.Tensor) -> torch.Tensor:
        return self.tables[k].detach()[self.gaussians_at(points)].cpu()

    def mask_threshold(self) -> float:
        return 0.0

    def set_bounds(self, k: int, box: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.bounds[k] = box

    def flush(self) -> None:
        pass

    def object_values(self, k: int) -> torch.Tensor:
        """Object k's mask value of every Gaussian (N), off (at the threshold) outside its box."""
        values = self.tables[k].detach().clone()
        box = self.bounds.get(k)
        if box is not None:
            lo, hi = box
            outside = ((self.gaussians.means < lo) | (self.gaussians.means > hi)).any(-1)
            values[outside] = values[outside].clamp(max=self.mask_threshold())
        return values
