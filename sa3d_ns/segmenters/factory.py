"""Build the segmenter a run asks for (heavy packages are imported only here, lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.segmenters.base import Segmenter

SEGMENTERS = ("sam", "sam2", "sam-hq", "weightfree", "oracle", "oracle-noisy")


def resolve_segmenter_weights(config) -> Path | None:
    """Check up front that the segmenter's package is installed and find (or fetch) its weights."""
    name = config.segmenter
    if name == "sam":
        from sa3d_ns.segmenters.sam import resolve_sam_checkpoint

        return resolve_sam_checkpoint(config.sam_variant, config.sam_checkpoint)
    if name == "sam2":
        from sa3d_ns.segmenters.sam_variants import require, resolve_sam2_checkpoint

        require("sam2", "sam2")
        return resolve_sam2_checkpoint(config.sam2_variant, config.sam2_checkpoint)
    if name == "sam-hq":
        from sa3d_ns.segmenters.sam_variants import require, resolve_sam_hq_checkpoint

        require("segment_anything_hq", "hq")
        return resolve_sam_hq_checkpoint(config.sam_hq_variant, config.sam_hq_checkpoint)
    if name in ("weightfree", "oracle", "oracle-noisy"):
        return None
    raise SA3DError(f"Unknown segmenter {name!r}; choose one of {list(SEGMENTERS)} with --pipeline.segmenter.")


def make_segmenter(config, image_names: Sequence[str], data: Path, device="cpu") -> Segmenter:
    """``config`` is the pipeline config (``segmenter`` and the chosen model's variant and checkpoint)."""
    from sa3d_ns.core.cache import file_identity

    name = config.segmenter
    if name == "weightfree":
        from sa3d_ns.segmenters.weightfree import WeightFreeSegmenter

        return WeightFreeSegmenter()
    if name in ("oracle", "oracle-noisy"):
        from sa3d_ns.data import instance_mask_paths
        from sa3d_ns.segmenters.oracle import OracleSegmenter, read_instance_mask

        paths = instance_mask_paths(data, image_names)
        if name == "oracle":
            return OracleSegmenter(lambda view, size: read_instance_mask(paths[view], size))
        from sa3d_ns.segmenters.noisy import NoisyOracleSegmenter

        return NoisyOracleSegmenter(
            lambda view, size: read_instance_mask(paths[view], size),
            config.noise_rate,
            config.noise_kinds,
            config.noise_seed,
        )
    path = resolve_segmenter_weights(config)
    if name == "sam":
        from sa3d_ns.segmenters.sam import SamSegmenter, build_sam

        model = build_sam(config.sam_variant, path, device)
        identity = {"sam": config.sam_variant, "weights": file_identity(path)}
        seg = SamSegmenter(model, identity=identity)
        seg.bf16_encoder = bool(getattr(config, "sam_bf16", True))
        if seg.bf16_encoder and seg.uses_bf16():
            identity["encoder"] = "bf16"  # its embeddings differ from float32's by rounding: a cache of their own
        return seg
    if name == "sam2":
        from sa3d_ns.segmenters.sam_variants import Sam2Segmenter, build_sam2_model

        model = build_sam2_model(config.sam2_variant, path, device)
        return Sam2Segmenter(model, identity={"sam2": config.sam2_variant, "weights": file_identity(path)})
    from sa3d_ns.segmenters.sam_variants import SamHQSegmenter, build_sam_hq

    model = build_sam_hq(config.sam_hq_variant, path, device)
    return SamHQSegmenter(model, identity={"sam-hq": config.sam_hq_variant, "weights": file_identity(path)})
