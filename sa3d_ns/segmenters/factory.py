"""The segmenters, registered by name: each with what checks its package and weights up front and
what builds it (heavy packages are imported only there, lazily).

A new segmenter is a :class:`~sa3d_ns.segmenters.base.Segmenter` subclass plus one
``@register("name")`` builder here (and the name in the pipeline config's ``segmenter`` Literal,
which tyro shows in ``--help``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.segmenters.base import Segmenter


@dataclass(frozen=True)
class SegmenterContext:
    """What a builder may need: the pipeline config (the chosen model's variant and checkpoint),
    the training images, the dataset folder, the device."""

    config: Any  # (a SA3DPipelineConfig; any object with its fields)
    image_names: Sequence[str]
    data: Path
    device: str | torch.device = "cpu"


Weights = Callable[[Any], Path | None]
Builder = Callable[[SegmenterContext], Segmenter]


@dataclass(frozen=True)
class Entry:
    build: Builder
    weights: Weights  # checks the package and finds (or fetches) the weights; None: it needs none


REGISTRY: dict[str, Entry] = {}


def no_weights(config) -> None:
    return None


def register(name: str, weights: Weights = no_weights) -> Callable[[Builder], Builder]:
    def add(build: Builder) -> Builder:
        REGISTRY[name] = Entry(build, weights)
        return build

    return add


def entry(name: str) -> Entry:
    if name not in REGISTRY:
        raise SA3DError(f"Unknown segmenter {name!r}; choose one of {list(REGISTRY)} with --pipeline.segmenter.")
    return REGISTRY[name]


def resolve_segmenter_weights(config) -> Path | None:
    """Check up front that the segmenter's package is installed and find (or fetch) its weights."""
    return entry(config.segmenter).weights(config)


def make_segmenter(config, image_names: Sequence[str], data: Path, device: str | torch.device = "cpu") -> Segmenter:
    """``config`` is the pipeline config (``segmenter`` and the chosen model's variant and checkpoint)."""
    return entry(config.segmenter).build(SegmenterContext(config, image_names, Path(data), device))


# ----------------------------------------------------------------------------- SAM and its variants
def sam_weights(config) -> Path:
    from sa3d_ns.segmenters.sam import resolve_sam_checkpoint

    return resolve_sam_checkpoint(config.sam_variant, config.sam_checkpoint)


def sam2_weights(config) -> Path:
    from sa3d_ns.segmenters.sam_variants import require, resolve_sam2_checkpoint

    require("sam2", "sam2")
    return resolve_sam2_checkpoint(config.sam2_variant, config.sam2_checkpoint)


def sam_hq_weights(config) -> Path:
    from sa3d_ns.segmenters.sam_variants import require, resolve_sam_hq_checkpoint

    require("segment_anything_hq", "hq")
    return resolve_sam_hq_checkpoint(config.sam_hq_variant, config.sam_hq_checkpoint)


@register("sam", sam_weights)
def build_sam_segmenter(ctx: SegmenterContext) -> Segmenter:
    from sa3d_ns.core.cache import file_identity
    from sa3d_ns.segmenters.sam import SamSegmenter, build_sam

    cfg = ctx.config
    path = sam_weights(cfg)
    model = build_sam(cfg.sam_variant, path, ctx.device)
    identity = {"sam": cfg.sam_variant, "weights": file_identity(path)}
    seg = SamSegmenter(model, identity=identity)
    seg.bf16_encoder = bool(getattr(cfg, "sam_bf16", True))
    if seg.bf16_encoder and seg.uses_bf16():
        identity["encoder"] = "bf16"  # its embeddings differ from float32's by rounding: a cache of their own
    return seg


@register("sam2", sam2_weights)
def build_sam2_segmenter(ctx: SegmenterContext) -> Segmenter:
    from sa3d_ns.core.cache import file_identity
    from sa3d_ns.segmenters.sam_variants import Sam2Segmenter, build_sam2_model

    cfg = ctx.config
    path = sam2_weights(cfg)
    model = build_sam2_model(cfg.sam2_variant, path, ctx.device)
    return Sam2Segmenter(model, identity={"sam2": cfg.sam2_variant, "weights": file_identity(path)})


@register("sam-hq", sam_hq_weights)
def build_sam_hq_segmenter(ctx: SegmenterContext) -> Segmenter:
    from sa3d_ns.core.cache import file_identity
    from sa3d_ns.segmenters.sam_variants import SamHQSegmenter, build_sam_hq

    cfg = ctx.config
    path = sam_hq_weights(cfg)
    model = build_sam_hq(cfg.sam_hq_variant, path, ctx.device)
    return SamHQSegmenter(model, identity={"sam-hq": cfg.sam_hq_variant, "weights": file_identity(path)})


# ----------------------------------------------------------------------------- without learned weights
@register("weightfree")
def build_weightfree(ctx: SegmenterContext) -> Segmenter:
    from sa3d_ns.segmenters.weightfree import WeightFreeSegmenter

    return WeightFreeSegmenter()


def instance_reader(ctx: SegmenterContext):
    from sa3d_ns.data import instance_mask_paths
    from sa3d_ns.segmenters.oracle import read_instance_mask

    paths = instance_mask_paths(ctx.data, ctx.image_names)
    return lambda view, size: read_instance_mask(paths[view], size)


@register("oracle")
def build_oracle(ctx: SegmenterContext) -> Segmenter:
    from sa3d_ns.segmenters.oracle import OracleSegmenter

    return OracleSegmenter(instance_reader(ctx))


@register("oracle-noisy")
def build_noisy_oracle(ctx: SegmenterContext) -> Segmenter:
    from sa3d_ns.segmenters.noisy import NoisyOracleSegmenter

    cfg = ctx.config
    return NoisyOracleSegmenter(instance_reader(ctx), cfg.noise_rate, cfg.noise_kinds, cfg.noise_seed)
