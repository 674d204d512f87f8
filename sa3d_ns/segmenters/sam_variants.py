"""More SAM-family segmenters behind the same interface: HQ-SAM (``segment-anything-hq``, whose
``vit_tiny`` is a light TinyViT model like MobileSAM's) and SAM 2 / 2.1 (the ``sam2`` package).

Both are optional extras (``pip install 'sa3d_ns[hq]'``, ``'sa3d_ns[sam2]'``) imported lazily; a
missing package is a clear error naming the extra. Weights come from a path the user gives or the
cache (:mod:`sa3d_ns.weights`); a file that does not fit the chosen variant is a clear error, never
a model with random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sa3d_ns import weights
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.segmenters.sam import SamSegmenter

SAM_HQ_VARIANTS = ("vit_tiny", "vit_b", "vit_l", "vit_h")
SAM2_VARIANTS = {"hiera_t": "t", "hiera_s": "s", "hiera_b+": "b+", "hiera_l": "l"}
WEIGHTFREE = "or use the segmenter that needs no weights: --pipeline.segmenter weightfree."


def missing_extra(package: str, extra: str, err: Exception) -> SA3DError:
    return SA3DError(
        f"The {package} package is not installed ({err}). Install the extra: pip install 'sa3d_ns[{extra}]' "
        f"(or pip install {package}), {WEIGHTFREE}"
    )


def optional_class(module: str, name: str, package: str, extra: str):
    """``module.name`` from an optional package, or a clear error naming the extra to install."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise missing_extra(package, extra, err) from None


def require(module: str, extra: str) -> None:
    """A clear error now, before any work, when an optional package is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise missing_extra(module.replace("_", "-"), extra, ModuleNotFoundError(f"No module named {module!r}"))


def _load_state(path: Path, what: str, flag: str, key: str | None = None) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state[key] if key else state
    except Exception as err:  # noqa: BLE001 - any failure to read the file is the user's to fix
        raise SA3DError(
            f"Could not read {what} weights from {path}: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}. "
            f"Is it a {what} checkpoint? Give another file with {flag}, {WEIGHTFREE}"
        ) from None


def _fit(model: torch.nn.Module, state: dict, path: Path, what: str, variant_flag: str, flag: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SA3DError(
            f"The weights in {path} do not fit {what} ({str(err).splitlines()[0][:200]}). "
            f"Is it a checkpoint of this variant (set with {variant_flag})? Give another file with {flag}."
        ) from None


# ----------------------------------------------------------------------------- HQ-SAM
def resolve_sam_hq_checkpoint(variant: str, checkpoint: Path | None, allow_download: bool = True) -> Path:
    if variant not in SAM_HQ_VARIANTS:
        raise SA3DError(
            f"Unknown HQ-SAM variant {variant!r}; choose one of {list(SAM_HQ_VARIANTS)} with --pipeline.sam-hq-variant."
        )
    w = weights.get(f"sam-hq-{variant}")
    if checkpoint is not None:
        return weights.local_checkpoint(checkpoint, w)
    return weights.fetch(w.name, allow_download)


def build_sam_hq(variant: str, checkpoint: Path, device: str | torch.device = "cpu"):
    """An HQ-SAM model of ``variant`` with the weights in ``checkpoint`` (all of them: strict)."""
    try:
        from segment_anything_hq import sam_model_registry
    except ImportError as err:
        raise missing_extra("segment-anything-hq", "hq", err) from None
    model = sam_model_registry[variant](checkpoint=None)
    state = _load_state(checkpoint, f"HQ-SAM {variant}", "--pipeline.sam-hq-checkpoint")
    _fit(model, state, checkpoint, f"HQ-SAM {variant}", "--pipeline.sam-hq-variant", "--pipeline.sam-hq-checkpoint")
    return model.to(device).eval()


class SamHQSegmenter(SamSegmenter):
    """HQ-SAM's predictor; its embedding also holds the encoder's intermediate features."""

    name = "sam-hq"
    bf16_encoder = False  # (its intermediate features go to the decoder too: float32 throughout)

    def _make_predictor(self, model):
        return optional_class("segment_anything_hq", "SamPredictor", "segment-anything-hq", "hq")(model)

    def _export(self):
        data = super()._export()
        for i, t in enumerate(self.predictor.interm_features):
            data[f"interm{i}"] = t.half()
        return data

    def _import(self, data):
        super()._import(data)
        p = self.predictor
        p.interm_features = [
            data[f"interm{i}"].to(p.device).float() for i in range(sum(k.startswith("interm") for k in data))
        ]


# ----------------------------------------------------------------------------- SAM 2
def sam2_weights(variant: str) -> weights.Weights:
    if variant not in SAM2_VARIANTS:
        raise SA3DError(
            f"Unknown SAM 2 variant {variant!r}; choose one of {list(SAM2_VARIANTS)} with --pipeline.sam2-variant."
        )
    return weights.get(f"sam2.1-hiera_{SAM2_VARIANTS[variant]}")


def resolve_sam2_checkpoint(variant: str, checkpoint: Path | None, allow_download: bool = True) -> Path:
    w = sam2_weights(variant)
    if checkpoint is not None:
        return weights.local_checkpoint(checkpoint, w)
    return weights.fetch(w.name, allow_download)


def build_sam2_model(variant: str, checkpoint: Path | None, device: str | torch.device = "cpu"):
    """A SAM 2.1 model of ``variant``: with the weights in ``checkpoint`` (strict), or random
    weights when it is None (tests, timing)."""
    sam2_weights(variant)
    try:
        from sam2.build_sam import build_sam2
    except ImportError as err:
        raise missing_extra("sam2", "sam2", err) from None
    config = f"configs/sam2.1/sam2.1_hiera_{SAM2_VARIANTS[variant]}.yaml"
    model = build_sam2(config, None, device="cpu", mode="eval")
    if checkpoint is not None:
        state = _load_state(checkpoint, f"SAM 2.1 {variant}", "--pipeline.sam2-checkpoint", key="model")
        _fit(model, state, checkpoint, f"SAM 2.1 {variant}", "--pipeline.sam2-variant", "--pipeline.sam2-checkpoint")
    return model.to(device).eval()


class Sam2Segmenter(SamSegmenter):
    """SAM 2's image predictor; its embedding is the image embedding and the high-resolution
    features of the two finer levels."""

    name = "sam2"
    bf16_encoder = False

    def _make_predictor(self, model):
        return optional_class("sam2.sam2_image_predictor", "SAM2ImagePredictor", "sam2", "sam2")(model)

    def _export(self):
        p = self.predictor
        data = {"image_embed": p._features["image_embed"].half(), "original_size": torch.tensor(p._orig_hw[0])}
        for i, t in enumerate(p._features["high_res_feats"]):
            data[f"high_res{i}"] = t.half()
        return data

    def _import(self, data):
        p = self.predictor
        p.reset_predictor()
        n = sum(k.startswith("high_res") for k in data)
        p._features = {
            "image_embed": data["image_embed"].to(p.device).float(),
            "high_res_feats": [data[f"high_res{i}"].to(p.device).float() for i in range(n)],
        }
        p._orig_hw = [tuple(data["original_size"].tolist())]
        p._is_image_set = True
        p._is_batch = False
