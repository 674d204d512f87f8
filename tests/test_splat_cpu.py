"""The tests' CPU stand-in for gsplat's rasterization (tests/splat_cpu.py) against a compositing
written pixel by pixel, Gaussian by Gaussian, from the CUDA kernel's rules."""

import math

import numpy as np
import pytest
import torch
from splat_cpu import composite, rasterization, tile_ranges


def a_few_gaussians(n: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * torch.tensor([1.2, 1.2, 0.6]) - torch.tensor([0.6, 0.6, 0.3])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.25 + 0.03
    opacities = torch.rand(n, generator=g) * 0.8 + 0.2
    colors = torch.rand(n, 3, generator=g)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0  # the camera 3 units in front of the Gaussians, looking at them
    K = torch.tensor([[40.0, 0.0, 12.0], [0.0, 40.0, 10.0], [0.0, 0.0, 1.0]])
    return means, quats, scales, opacities, colors, viewmat[None], K[None]


def pixel_by_pixel(means2d, conics, opacities, colors, depths, radii, width, height, tile_size):
    """The kernel's loop, literally: per pixel, the Gaussians of its tile front to back."""
    lo, hi = tile_ranges(means2d, radii, tile_size, math.ceil(width / tile_size), math.ceil(height / tile_size))
    order = sorted(range(len(depths)), key=lambda i: float(depths[i]))
    image = np.zeros((height, width, colors.shape[1]))
    alpha_out = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            T = 1.0
            for i in order:
                if radii[i] <= 0:
                    continue
                tx, ty = x // tile_size, y // tile_size
                if not (lo[i, 0] <= tx < hi[i, 0] and lo[i, 1] <= ty < hi[i, 1]):
                    continue
                dx, dy = float(means2d[i, 0]) - (x + 0.5), float(means2d[i, 1]) - (y + 0.5)
                a, b, c = (float(v) for v in conics[i])
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(0.999, float(opacities[i]) * math.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                image[y, x] += alpha * T * colors[i].double().numpy()
                T *= 1 - alpha
            alpha_out[y, x] = 1 - T
    return image, alpha_out


def test_compositing_matches_the_kernel_rules_pixel_by_pixel():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    means, quats, scales, opacities, colors, viewmats, Ks = a_few_gaussians()
    opacities[0] = 1.0  # an opaque one: pixels behind it stop (T <= 1e-4 after two at 0.999)
    means = torch.cat([means, means[:1] + torch.tensor([0.0, 0.0, 0.2])])
    quats, scales = torch.cat([quats, quats[:1]]), torch.cat([scales, scales[:1]])
    opacities, colors = torch.cat([opacities, opacities[:1]]), torch.cat([colors, colors[:1]])
    covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, 24, 20)
    args = (means2d[0], conics[0], opacities, colors, depths[0], radii[0], 24, 20, 8)
    image, alpha, weights = composite(*args, with_weights=True)
    assert weights is not None
    want_image, want_alpha = pixel_by_pixel(*args)
    assert np.abs(image.double().numpy() - want_image).max() < 1e-5
    assert np.abs(alpha[..., 0].double().numpy() - want_alpha).max() < 1e-5
    # the weights behind the image: they sum to its alpha, and weight x colour gives it back
    assert torch.allclose(weights.sum(1), alpha.reshape(-1), atol=1e-5)
    assert torch.allclose(weights @ colors, image.reshape(-1, 3), atol=1e-5)
    assert (want_alpha > 0.999).any() and (want_alpha < 0.5).any()  # (the case covers both)


def test_rasterization_has_gsplats_outputs_and_gradients():
    means, quats, scales, opacities, colors, viewmats, Ks = a_few_gaussians(n=20, seed=1)
    means.requires_grad_(True)
    colors.requires_grad_(True)
    render, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, 24, 20, render_mode="RGB+ED",
        backgrounds=torch.ones(1, 3),
    )  # fmt: skip
    assert render.shape == (1, 20, 24, 4) and alpha.shape == (1, 20, 24, 1)
    assert {"means2d", "radii", "width", "height", "n_cameras", "gaussian_ids"} <= set(meta)
    assert meta["means2d"].shape == (1, 20, 2) and meta["radii"].shape == (1, 20)
    # the background fills what the Gaussians leave; the depth channel is the expected depth
    plain, a2, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, 24, 20)
    assert torch.allclose(render[..., :3], plain + (1 - a2) * 1.0, atol=1e-6)
    seen = alpha[0, ..., 0] > 0.5
    assert ((render[0, ..., 3][seen] > 2.0) & (render[0, ..., 3][seen] < 4.0)).all()
    # a per-Gaussian scalar rendered as a colour: the gradient of (render x mask).sum() is each
    # Gaussian's summed weight over the masked pixels (what SA3D's votes on Gaussians read)
    meta["means2d"].retain_grad()
    value = torch.zeros(20, 1, requires_grad=True)
    out, _, _ = rasterization(means, quats, scales, opacities, value, viewmats, Ks, 24, 20)
    mask = torch.zeros(20, 24)
    mask[5:15, 6:18] = 1.0
    (out[0, ..., 0] * mask).sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0
    render[..., :3].sum().backward()
    assert means.grad is not None and means.grad.abs().sum() > 0  # (splatfacto trains through it)


def test_refuses_what_it_does_not_do():
    means, quats, scales, opacities, colors, viewmats, Ks = a_few_gaussians()
    with pytest.raises(NotImplementedError):
        rasterization(means, quats, scales, opacities, colors, viewmats, Ks, 8, 8, absgrad=True)


def test_the_products_pair_lists_give_the_kernels_weights():
    """sa3d_ns.splat.lists.view_pairs (gsplat's pair functions, here their CPU twins, then the
    weights in torch) lists the same weights as the compositing, and the heaviest per pixel."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci
    from splat_cpu import patched

    from sa3d_ns.core.splats import heaviest
    from sa3d_ns.splat.lists import view_pairs

    means, quats, scales, opacities, colors, viewmats, Ks = a_few_gaussians(n=40, seed=2)
    opacities[:5] = 1.0  # (some pixels stop early)
    w, h = 40, 36  # (tiles cut by the image's edge)
    with patched():
        pixels, gaussians, weights = view_pairs(means, quats, scales, opacities, viewmats[0], Ks[0], w, h)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, w, h)
    _, _, dense = composite(means2d[0], conics[0], opacities, colors, depths[0], radii[0], w, h, 16, with_weights=True)
    assert dense is not None
    listed = torch.zeros_like(dense)
    listed[pixels, gaussians] = weights
    assert torch.allclose(listed, dense, atol=1e-6) and (dense > 0).sum() == len(weights)
    # each pixel's pairs come front to back
    same = pixels[1:] == pixels[:-1]
    assert (depths[0][gaussians][1:][same] >= depths[0][gaussians][:-1][same]).all()
    ids, top = heaviest(pixels, gaussians, weights, w * h, 3)
    best = dense.topk(3, dim=1)
    assert torch.allclose(top, best.values, atol=1e-6)
    assert (ids[top > 0] == best.indices[top > 0]).all()
