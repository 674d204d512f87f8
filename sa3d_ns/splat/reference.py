"""The faithful reference on a splat (``--pipeline.cache False``): every view rendered whole by
gsplat, and every lifting step through gsplat's own backward pass.

Per view: the splat's image and expected depth are rendered (nothing is listed or kept); the mask
score of a pixel is gsplat's render of the object's per-Gaussian values as a colour channel, and
a view's vote (or SGD step) is its gradient with respect to those values, by autograd through
``gsplat.rasterization``, one view at a time, as SA3D's authors lift (their SGD version: one step
per view). The default path lists each view's (pixel, Gaussian, weight) triples once instead
(``splat.scene.GaussianScene``) and scatters; both give the same numbers up to the per-pixel cut
at the heaviest Gaussians.

The loop reads a view's rays as ``samples`` (pixel indices, one per ray), ``weights`` (the
render's alpha) and ``positions`` (the expected surface point): the score sum_i w_i m_i of a ray
is then its alpha times the field's value, the raster score divided by the alpha.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sa3d_ns.core.lifting import MaskLifter
from sa3d_ns.core.records import ViewData
from sa3d_ns.splat.scene import GaussianScene, View, viewmat_of


class RasterViews:
    """The views of ``gaussians()`` (the splat and its views, built once the source checkpoint
    is loaded) rendered whole each time they are asked for; the last one is the view the lifters'
    fields render."""

    def __init__(self, gaussians: Callable[[], GaussianScene]):
        self.gaussians = gaussians
        self.current: View | None = None
        self.alpha: torch.Tensor | None = None
        self.stats = {"views_built": 0, "views_reused": 0, "views_in_memory": 0, "bytes": 0}

    @torch.no_grad()
    def view_data(self, view: int) -> ViewData:
        gs = self.gaussians()
        v, g = gs.views[view], gs.gaussians
        image, alpha = gs.image(v)  # (its alpha: each ray's weight)
        import gsplat

        viewmat = viewmat_of(v.c2w)
        ed, _, _ = gsplat.rasterization(
            g.means, g.quats, g.scales, g.opacities, g.means.new_zeros((len(g), 1)), viewmat[None], v.K[None],
            v.width, v.height, packed=False, render_mode="ED",
            rasterize_mode="antialiased" if g.antialiased else "classic",
        )  # fmt: skip
        depth = ed[0, ..., 0]  # (expected depth: gsplat divides by the alpha)
        self.current, self.alpha = v, alpha.reshape(-1, 1).float()
        self.stats["views_built"] += 1
        pixels = torch.arange(v.width * v.height, device=alpha.device)
        return {
            "samples": pixels[:, None],
            "positions": surface_points(v, depth)[:, None, :],
            "weights": self.alpha,
            "depth": depth.float(),
            "size": torch.tensor([v.height, v.width]),
            "rgb": image,
        }

    def field(self, table: torch.nn.Parameter):
        """Object ``table``'s mask on the current view's pixels: gsplat's render of the values
        (differentiable in them), divided by the render's alpha (the ray's weight)."""

        def values(pixels: torch.Tensor) -> torch.Tensor:
            import gsplat

            assert self.current is not None and self.alpha is not None, "no view rendered yet"
            g, v = self.gaussians().gaussians, self.current
            score, _, _ = gsplat.rasterization(
                g.means, g.quats, g.scales, g.opacities, table[:, None], viewmat_of(v.c2w)[None], v.K[None],
                v.width, v.height, packed=False, rasterize_mode="antialiased" if g.antialiased else "classic",
            )  # fmt: skip
            flat = score.reshape(-1, 1) / self.alpha.clamp_min(1e-6)
            return flat[pixels.reshape(-1)].reshape(pixels.shape)

        return values

    def lifter(self, table: torch.nn.Parameter, mode: str, lr: float, vote_prior: float) -> MaskLifter:
        """One object's lifter: scores and votes by autograd through the rasterizer, the whole
        view at once (no chunks: each chunk would render the view again)."""
        return MaskLifter(self.field(table), table, mode=mode, lr=lr, vote_prior=vote_prior, chunk_rays=1 << 40)


def surface_points(v: View, depth: torch.Tensor) -> torch.Tensor:
    """Each pixel's point at z-depth ``depth`` (H x W) seen by camera ``v``, world frame (P x 3)."""
    fx, fy, cx, cy = v.K[0, 0], v.K[1, 1], v.K[0, 2], v.K[1, 2]
    rows, cols = torch.meshgrid(
        torch.arange(v.height, device=depth.device) + 0.5, torch.arange(v.width, device=depth.device) + 0.5,
        indexing="ij",
    )  # fmt: skip
    cam = torch.stack([(cols - cx) / fx, (rows - cy) / fy, torch.ones_like(cols)], -1) * depth[..., None]
    w2c = viewmat_of(v.c2w)
    rot, t = w2c[:3, :3], w2c[:3, 3]
    return ((cam.reshape(-1, 3) - t) @ rot).float()  # rot^T (x - t), row-wise
