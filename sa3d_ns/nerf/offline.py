"""Building nerfacto without downloading anything.

``NerfactoModel.populate_modules`` constructs torchmetrics' LPIPS, which downloads AlexNet weights.
The mask method never computes LPIPS, and offline machines cannot download it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn


class NoLPIPS(nn.Module):
    """Stands in for LPIPS when its weights are unavailable: the metric is reported as NaN
    (nerfacto's evaluation still reports PSNR and SSIM)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return torch.tensor(float("nan"))


@contextlib.contextmanager
def lpips_disabled():
    """Replace torchmetrics' LPIPS class by :class:`NoLPIPS` while building a model."""
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = NoLPIPS
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original


def alexnet_weights_cached() -> bool:
    """Whether torchvision's AlexNet weights (used by LPIPS) are already in torch's hub cache."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()
