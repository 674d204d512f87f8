"""Building nerfacto without downloading anything.

``NerfactoModel.populate_modules`` constructs torchmetrics' LPIPS, which downloads AlexNet weights.
The mask method never computes LPIPS, and offline machines cannot download it: the stand-in and
the context manager that puts it in place live with the other host changes (``sa3d_ns.nerf.host``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sa3d_ns.nerf.host import NoLPIPS, lpips_disabled

__all__ = ["NoLPIPS", "alexnet_weights_cached", "lpips_disabled"]


def alexnet_weights_cached() -> bool:
    """Whether torchvision's AlexNet weights (used by LPIPS) are already in torch's hub cache."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()
