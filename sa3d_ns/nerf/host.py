"""Every change sa3d makes to nerfstudio's (and its libraries') behaviour, with its scope and how
it is undone. Nothing here is applied at import; each is applied by the code that needs it.

| change | where applied | scope | undone by |
|---|---|---|---|
| torch's safe loader allows numpy's scalar and dtype classes by name (``checkpoints.allow_numpy_scalars``) | plugin discovery (``sa3d_ns.config``), every checkpoint load of ours | the process; only adds names, never ``weights_only=False`` | nothing needed: nerfstudio 1.1.5 cannot load a nerfacto checkpoint under torch >= 2.6 without it |
| torchmetrics' LPIPS stands in as :class:`NoLPIPS` while a nerfacto is built (:func:`lpips_disabled`) | ``SA3DModel.populate_modules``, ``sa3d-train-nerfacto`` without AlexNet weights | the ``with`` block | the block's end restores the class |
| frozen torch ``HashEncoding`` and L-inf ``SceneContraction`` modules answer by sa3d's lookups (:func:`fast_lookups`) | the SA3D model's own NeRF and mask fields (``--pipeline.model.fast-hash-grids``) | those module *instances*; nerfstudio's forward where a gradient is wanted | :func:`plain_lookups` |
| segmentation renders scale the proposal sampler's sample counts and embed each training view's appearance (``SA3DModel.sample_rays``) | each call | shallow copies of the sampler and field: renders running meanwhile (the viewer's thread) see the originals | nothing to undo |
| the trainer: steps are SA3D views, no optimizer step, the checkpoint once at the end, ``SA3DError`` -> one line and exit 2 (``trainer.SA3DTrainer``) | ``ns-train sa3d`` | its own subclass | not applied elsewhere |
| the viewer: the SA3D panel is a ``ViewerElement`` of the Control tab, installed from ``ViewerControl._setup`` (``viewer_panel.SA3DViewerControl``); it switches the viewer's output dropdown when a run ends | ``ns-viewer`` / ``ns-train sa3d`` with the viewer | the pipeline's own elements (nerfstudio collects them from the pipeline's attributes) | not applied elsewhere |

The CPU scatter threads of ``core.lifting.scatter_add`` are a process pool of the core (not a change
to nerfstudio); ``concurrent.futures`` joins them when the interpreter exits.
"""

from __future__ import annotations

import contextlib
from types import MethodType

import torch
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.field_components.spatial_distortions import SceneContraction
from torch import nn

from sa3d_ns.core.hashgrid import contract_inf, grid_lookup


def frozen_hash_forward(self: HashEncoding, x: torch.Tensor) -> torch.Tensor:
    """A frozen HashEncoding's forward by sa3d's corner lookup (nerfstudio's own where a
    gradient is wanted)."""
    if torch.is_grad_enabled() and self.hash_table.requires_grad:
        return HashEncoding.forward(self, x)
    return grid_lookup(self.hash_table, x, self.scalings, self.hash_offset, self.hash_table_size)


def fast_contraction_forward(self: SceneContraction, positions):
    """An L-inf SceneContraction's forward with the norm as a max of absolute values (the same
    numbers; torch's linalg.norm with ord=inf is some 40x slower on a CPU); nerfstudio's own for
    Gaussians."""
    if isinstance(positions, torch.Tensor):
        return contract_inf(positions)
    return SceneContraction.forward(self, positions)


def fast_lookups(modules) -> None:
    """Give the torch HashEncodings among ``modules`` sa3d's lookup where no gradient is wanted
    (frozen_hash_forward), and the L-inf scene contractions the cheaper norm (instance attributes:
    other instances are untouched)."""
    for module in modules:
        if isinstance(module, HashEncoding) and module.tcnn_encoding is None:
            module.forward = MethodType(frozen_hash_forward, module)
        if isinstance(module, SceneContraction) and module.order == float("inf"):
            module.forward = MethodType(fast_contraction_forward, module)


def plain_lookups(modules) -> None:
    """Undo :func:`fast_lookups`: nerfstudio's own forward again."""
    for module in modules:
        if isinstance(module, (HashEncoding, SceneContraction)) and "forward" in vars(module):
            del module.forward


class NoLPIPS(nn.Module):
    """Stands in for LPIPS when its weights are unavailable: the metric is reported as NaN
    (nerfacto's evaluation still reports PSNR and SSIM)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return torch.tensor(float("nan"))


@contextlib.contextmanager
def lpips_disabled():
    """Replace torchmetrics' LPIPS class by :class:`NoLPIPS` while building a model
    (``NerfactoModel.populate_modules`` builds LPIPS, which downloads AlexNet's weights)."""
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = NoLPIPS
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original
