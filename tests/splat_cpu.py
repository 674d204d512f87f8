"""gsplat's rasterization on a CPU, for the tests only (the product never imports this module).

gsplat 1.4.0 (nerfstudio 1.1.5's pin) has no CPU path: its CUDA extension is compiled at first use,
and its pure-PyTorch reference (``gsplat.rendering._rasterization``) still calls CUDA for the tile
intersection and the per-pixel Gaussian lists. :func:`rasterization` has the signature and the
outputs of ``gsplat.rasterization`` (unpacked: ``[C, N]`` meta) and uses gsplat's own reference
functions for everything they cover (the 3D covariances, the projection, spherical harmonics);
written here, in torch, is only what has no reference: which Gaussians a pixel reads and their
compositing, by the CUDA kernel's rules:

- a Gaussian is read by the pixels of the tiles (``tile_size`` squares) its 3-sigma radius
  overlaps, in the order of its depth;
- its alpha at a pixel is ``min(0.999, opacity * exp(-sigma))`` with
  ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` (``dx, dy`` from the pixel centre to its projected
  mean, ``(a, b, c)`` its conic); skipped where ``sigma < 0`` or alpha < 1/255;
- its weight is ``alpha * T`` (T: the transmittance before it), and a pixel stops at the first
  Gaussian that would bring T to 1e-4 or below (that one not counted).

Checked against a compositing written pixel by pixel in ``tests/test_splat_cpu.py``.

:func:`patched` swaps it in for gsplat's own, with what else splatfacto needs on a CPU (its
``.cuda()`` calls made no-ops, LPIPS not built, torch.compile off), and CPU twins of the gsplat
functions that list a view's (Gaussian, pixel) pairs, which the product calls for its per-view
lists (``gsplat.fully_fused_projection``, ``isect_tiles``, ``isect_offset_encode``,
``rasterize_to_indices_in_range``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from gsplat.cuda._torch_impl import (
    _fully_fused_projection,
    _isect_offset_encode,
    _quat_scale_to_covar_preci,
    _spherical_harmonics,
)


def tile_ranges(means2d: torch.Tensor, radii: torch.Tensor, tile_size: int, tiles_w: int, tiles_h: int):
    """Each Gaussian's range of tiles [min, max) on x and y (N x 2 each), as gsplat's isect_tiles
    computes it; empty where the radius is 0."""
    t_mean, t_radius = means2d / tile_size, radii.to(means2d.dtype)[..., None] / tile_size
    lo = torch.floor(t_mean - t_radius).long()
    hi = torch.ceil(t_mean + t_radius).long()
    lo[..., 0], hi[..., 0] = lo[..., 0].clamp(0, tiles_w), hi[..., 0].clamp(0, tiles_w)
    lo[..., 1], hi[..., 1] = lo[..., 1].clamp(0, tiles_h), hi[..., 1].clamp(0, tiles_h)
    hi = torch.where((radii > 0)[..., None], hi, lo)
    return lo, hi


def tile_blend(
    means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, start=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's rules for the pixels (ys, xs) of a tile and its Gaussians in depth order (means2d
    G x 2, conics G x 3, opacities G): each pair's alpha, the transmittance before it (times
    ``start``, P x 1, when given) and whether it counts (the pixel has not stopped), each P x G."""
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).to(means2d)
    d = means2d[None] - (pix[:, None, :] + 0.5)
    a, b, c = conics.unbind(-1)
    sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
    alpha = torch.clamp_max(opacities * torch.exp(-sigma), 0.999)
    alpha = torch.where((sigma >= 0) & (alpha >= 1.0 / 255.0), alpha, torch.zeros_like(alpha))
    logs = torch.log1p(-alpha)  # (T as exp of a cumulative sum: cumprod's backward is several times dearer)
    before = torch.exp(torch.cumsum(logs, 1) - logs)
    if start is not None:
        before = start * before
    counted = torch.cumsum(((before * (1 - alpha) <= 1e-4) & (alpha > 0)).int(), 1) == 0
    return alpha, before, counted


def composite(
    means2d: torch.Tensor,  # [N, 2]
    conics: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor,  # [N, D]
    depths: torch.Tensor,  # [N]
    radii: torch.Tensor,  # [N]
    width: int,
    height: int,
    tile_size: int = 16,
    with_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One camera's image [H, W, D] and alpha [H, W, 1] by the kernel's rules (module docstring),
    tile by tile; ``with_weights``: also each pixel's weight of each Gaussian, [H * W, N] (dense:
    for small tests)."""
    ids = (radii > 0).nonzero().squeeze(-1)
    ids = ids[torch.argsort(depths[ids], stable=True)]
    tiles_w, tiles_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    lo, hi = tile_ranges(means2d[ids], radii[ids], tile_size, tiles_w, tiles_h)
    image = colors.new_zeros((height, width, colors.shape[-1]))
    alpha_out = colors.new_zeros((height, width, 1))
    weights = colors.new_zeros((height * width, len(means2d))) if with_weights else None
    for ty in range(tiles_h):
        for tx in range(tiles_w):
            here = (lo[:, 0] <= tx) & (tx < hi[:, 0]) & (lo[:, 1] <= ty) & (ty < hi[:, 1])
            g = ids[here]  # (still in depth order)
            y0, x0 = ty * tile_size, tx * tile_size
            y1, x1 = min(y0 + tile_size, height), min(x0 + tile_size, width)
            if len(g) == 0:
                continue
            ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
            alpha, before, counted = tile_blend(means2d[g], conics[g], opacities[g], ys, xs)
            w = alpha * before * counted
            image[y0:y1, x0:x1] = (w @ colors[g]).reshape(y1 - y0, x1 - x0, -1)
            alpha_out[y0:y1, x0:x1] = (1 - torch.prod(1 - alpha * counted, 1, keepdim=True)).reshape(
                y1 - y0, x1 - x0, 1
            )
            if weights is not None:
                rows = (ys * width + xs).reshape(-1)
                weights[rows[:, None], g[None, :]] = w.detach()
    return image, alpha_out, weights


def rasterization(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = True,
    tile_size: int = 16,
    backgrounds: torch.Tensor | None = None,
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: str = "pinhole",
    covars: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``gsplat.rasterization`` on a CPU (see the module docstring); ``packed``, ``sparse_grad``,
    ``channel_chunk`` and ``distributed`` change nothing here (the meta is always unpacked),
    ``absgrad`` is refused (the CUDA backward computes it) as are other camera models."""
    if absgrad or distributed or camera_model != "pinhole" or render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise NotImplementedError(
            f"splat_cpu: absgrad={absgrad}, distributed={distributed}, {camera_model}, {render_mode}"
        )
    C, N = viewmats.shape[0], means.shape[0]
    if covars is None:
        covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    radii, means2d, depths, conics, compensations = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        calc_compensations=rasterize_mode == "antialiased",
    )  # fmt: skip
    if radius_clip > 0:
        radii = torch.where(radii <= radius_clip, torch.zeros_like(radii), radii)
    opac = opacities[None].expand(C, N)
    if compensations is not None:
        opac = opac * compensations
    if sh_degree is None:
        feats = colors if colors.dim() == 3 else colors[None].expand(C, -1, -1)
    else:
        shs = colors if colors.dim() == 4 else colors[None].expand(C, -1, -1, -1)
        dirs = means[None] - torch.inverse(viewmats)[:, None, :3, 3]
        feats = torch.clamp_min(_spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)
        feats = torch.where((radii > 0)[..., None], feats, torch.zeros_like(feats))
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], -1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], -1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
        backgrounds = None if backgrounds is None else backgrounds.new_zeros(C, 1)
    images, alphas = [], []
    for c in range(C):
        image, alpha, _ = composite(
            means2d[c], conics[c], opac[c], feats[c], depths[c], radii[c], width, height, tile_size
        )
        if backgrounds is not None:
            image = image + (1 - alpha) * backgrounds[c]
        images.append(image)
        alphas.append(alpha)
    render, alpha = torch.stack(images), torch.stack(alphas)
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp(min=1e-10)], -1)
    tiles_w, tiles_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    meta = {
        "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d, "depths": depths,
        "conics": conics, "opacities": opac, "tile_width": tiles_w, "tile_height": tiles_h, "width": width,
        "height": height, "tile_size": tile_size, "n_cameras": C,
    }  # fmt: skip
    return render, alpha, meta


# ---------------------------------------------------------------- gsplat's pair functions, on a CPU
def fully_fused_projection(
    means, covars, quats, scales, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01, far_plane=1e10,
    radius_clip=0.0, packed=False, sparse_grad=False, calc_compensations=False, camera_model="pinhole",
):  # fmt: skip
    """``gsplat.fully_fused_projection`` (unpacked, pinhole) through gsplat's reference functions."""
    if packed or camera_model != "pinhole":
        raise NotImplementedError("splat_cpu: unpacked pinhole projection only")
    if covars is None:
        covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    radii, means2d, depths, conics, comp = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        calc_compensations=calc_compensations,
    )  # fmt: skip
    if radius_clip > 0:
        radii = torch.where(radii <= radius_clip, torch.zeros_like(radii), radii)
    return radii, means2d, depths, conics, comp


def isect_tiles(
    means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, packed=False, n_cameras=None,
    camera_ids=None, gaussian_ids=None,
):  # fmt: skip
    """``gsplat.isect_tiles`` (unpacked): every (camera, tile, Gaussian) its radius overlaps, as
    ids (camera | tile | the depth's float bits) sorted, and the flat Gaussian index of each."""
    if packed:
        raise NotImplementedError("splat_cpu: unpacked intersections only")
    C, N = radii.shape
    lo, hi = tile_ranges(means2d, radii, tile_size, tile_width, tile_height)
    size = hi - lo
    counts = (size[..., 0] * size[..., 1]).reshape(-1)
    flat = torch.repeat_interleave(torch.arange(C * N), counts)
    local = torch.arange(len(flat)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    lo, size = lo.reshape(-1, 2)[flat], size.reshape(-1, 2)[flat]
    tx, ty = lo[:, 0] + local % size[:, 0].clamp(min=1), lo[:, 1] + local // size[:, 0].clamp(min=1)
    bits = (tile_width * tile_height).bit_length()
    depth_bits = depths.reshape(-1)[flat].float().contiguous().view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = ((flat // N) << (32 + bits)) | ((ty * tile_width + tx) << 32) | depth_bits
    if sort:
        isect_ids, order = torch.sort(isect_ids)
        flat = flat[order]
    return counts.reshape(C, N).int(), isect_ids, flat.int()


def isect_offset_encode(isect_ids, n_cameras, tile_width, tile_height):
    """``gsplat.isect_offset_encode``: gsplat's own reference."""
    return _isect_offset_encode(isect_ids, n_cameras, tile_width, tile_height)


def rasterize_to_indices_in_range(
    range_start, range_end, transmittances, means2d, conics, opacities, image_width, image_height, tile_size,
    isect_offsets, flatten_ids,
):  # fmt: skip
    """``gsplat.rasterize_to_indices_in_range``: the (Gaussian, pixel, camera) triples that count,
    for the Gaussians of batches [range_start, range_end) (tile_size^2 each) of each tile's
    front-to-back list, starting from ``transmittances``."""
    C, N = opacities.shape
    block = tile_size * tile_size
    offsets = torch.cat([isect_offsets.reshape(-1).long(), torch.tensor([len(flatten_ids)])])
    tile_height, tile_width = isect_offsets.shape[1:3]
    out_g, out_p, out_c = [], [], []
    for t in range(C * tile_height * tile_width):
        a, b = int(offsets[t]) + range_start * block, min(int(offsets[t]) + range_end * block, int(offsets[t + 1]))
        if a >= b:
            continue
        cam, tile = divmod(t, tile_height * tile_width)
        ty, tx = divmod(tile, tile_width)
        g = flatten_ids[a:b].long() - cam * N
        y0, x0 = ty * tile_size, tx * tile_size
        ys, xs = torch.meshgrid(
            torch.arange(y0, min(y0 + tile_size, image_height)), torch.arange(x0, min(x0 + tile_size, image_width)),
            indexing="ij",
        )  # fmt: skip
        pix = (ys * image_width + xs).reshape(-1)
        start = transmittances[cam].reshape(-1)[pix][:, None]
        alpha, _, counted = tile_blend(means2d[cam, g], conics[cam, g], opacities[cam, g], ys, xs, start)
        rows, cols = (counted & (alpha > 0)).nonzero(as_tuple=True)
        out_g.append(g[cols])
        out_p.append(pix[rows])
        out_c.append(torch.full_like(rows, cam))
    if not out_g:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    return torch.cat(out_g), torch.cat(out_p), torch.cat(out_c)


PAIR_FUNCTIONS = ("fully_fused_projection", "isect_tiles", "isect_offset_encode", "rasterize_to_indices_in_range")


@contextmanager
def patched():
    """gsplat's rasterization replaced by :func:`rasterization` where nerfstudio and gsplat look it
    up, ``Tensor.cuda`` a no-op (splatfacto calls it), LPIPS not built, torch.compile off."""
    import gsplat
    import gsplat.rendering
    import nerfstudio.models.splatfacto as splatfacto
    import torch._dynamo.config as dynamo

    from sa3d_ns.nerf.host import lpips_disabled

    saved = (gsplat.rasterization, gsplat.rendering.rasterization, splatfacto.rasterization, torch.Tensor.cuda)
    saved_pairs = {name: getattr(gsplat, name) for name in PAIR_FUNCTIONS}
    compile_off = dynamo.disable
    gsplat.rasterization = gsplat.rendering.rasterization = splatfacto.rasterization = rasterization
    for name in PAIR_FUNCTIONS:
        setattr(gsplat, name, globals()[name])
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    dynamo.disable = True  # (splatfacto compiles get_viewmat: 16 s on a CPU for nothing)
    try:
        with lpips_disabled():
            yield
    finally:
        gsplat.rasterization, gsplat.rendering.rasterization, splatfacto.rasterization, torch.Tensor.cuda = saved
        for name, fn in saved_pairs.items():
            setattr(gsplat, name, fn)
        dynamo.disable = compile_off


# splatfacto sized for a CPU: full resolution from the start, SH degree 1, few random seed
# Gaussians when the data has no points, refinement early and often, no absgrad (CUDA only)
CPU_SPLATFACTO_FLAGS = [
    "--machine.device-type", "cpu", "--viewer.quit-on-train-completion", "True", "--vis", "tensorboard",
    "--pipeline.model.num-downscales", "0", "--pipeline.model.sh-degree", "1", "--pipeline.model.sh-degree-interval", "100",
    "--pipeline.model.use-absgrad", "False", "--pipeline.model.num-random", "3000", "--pipeline.model.random-scale", "2.0",
    "--pipeline.model.warmup-length", "100", "--pipeline.model.refine-every", "50", "--pipeline.model.reset-alpha-every", "10",
    "--pipeline.model.background-color", "black", "--steps-per-eval-image", "100000", "--steps-per-eval-batch", "100000",
    "--steps-per-eval-all-images", "100000", "--pipeline.datamanager.cache-images", "gpu",  # (on the training device: "cpu" pins memory, CUDA only)
]  # fmt: skip


def train(argv: list[str]) -> None:
    """``ns-train`` with gsplat's rasterization on the CPU (``python tests/splat_cpu.py splatfacto
    --data ... [flags]``): :data:`CPU_SPLATFACTO_FLAGS` go before the given flags."""
    import sys

    from nerfstudio.scripts import train as ns_train

    method, rest = argv[0], argv[1:]
    sys.argv = ["ns-train", method, *CPU_SPLATFACTO_FLAGS, *rest]
    with patched():
        ns_train.entrypoint()


def run(argv: list[str]) -> None:
    """Any installed command with gsplat's rasterization on the CPU (``python tests/splat_cpu.py
    run ns-train sa3d ...``, ``... run ns-render ...``, ``... run sa3d-export ...``)."""
    import sys
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name=argv[0])
    sys.argv = list(argv)
    with patched():
        script.load()()


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "run":
        run(sys.argv[2:])
    else:
        train(sys.argv[1:])
