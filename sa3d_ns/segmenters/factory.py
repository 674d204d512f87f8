"""Build the segmenter a run asks for (heavy packages are imported only here, lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.segmenters.base import Segmenter

SEGMENTERS = ("sam", "weightfree", "oracle")


def make_segmenter(config, image_names: Sequence[str], data: Path, device="cpu") -> Segmenter:
    """``config`` has ``segmenter``, ``sam_variant`` and ``sam_checkpoint`` (the pipeline config)."""
    name = config.segmenter
    if name == "weightfree":
        from sa3d_ns.segmenters.weightfree import WeightFreeSegmenter

        return WeightFreeSegmenter()
    if name == "oracle":
        from sa3d_ns.data import instance_mask_paths
        from sa3d_ns.segmenters.oracle import OracleSegmenter, read_instance_mask

        paths = instance_mask_paths(data, image_names)
        return OracleSegmenter(lambda view, size: read_instance_mask(paths[view], size))
    if name == "sam":
        from sa3d_ns.core.cache import file_identity
        from sa3d_ns.segmenters.sam import SamSegmenter, build_sam, resolve_sam_checkpoint

        path = resolve_sam_checkpoint(config.sam_variant, config.sam_checkpoint)
        model = build_sam(config.sam_variant, path, device)
        return SamSegmenter(model, identity={"sam": config.sam_variant, "weights": file_identity(path)})
    raise SA3DError(f"Unknown segmenter {name!r}; choose one of {list(SEGMENTERS)} with --pipeline.segmenter.")
