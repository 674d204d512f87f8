"""segment-anything (SAM) behind the segmenter interface, and its weights.

Weights: ``checkpoint`` names a local file; with no path the official checkpoint of the variant is
downloaded once to the cache directory (see :mod:`sa3d_ns.weights`) with a progress bar and
checked against its published MD5. segment-anything is imported lazily.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sa3d_ns import weights
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.segmenters.base import Segmentation, Segmenter, check_image, default_labels

SAM_VARIANTS = ("vit_h", "vit_l", "vit_b")
FIX_HINT = "Pass a local checkpoint with --pipeline.sam-checkpoint PATH, or use the segmenter that needs no weights: --pipeline.segmenter weightfree."


def resolve_sam_checkpoint(variant: str, checkpoint: Path | None, allow_download: bool = True) -> Path:
    """The path of the SAM weights to load: the given file, or the cached official one (downloaded
    once with a progress bar and checked against its published MD5)."""
    if variant not in SAM_VARIANTS:
        raise SA3DError(
            f"Unknown SAM variant {variant!r}; choose one of {list(SAM_VARIANTS)} with --pipeline.sam-variant."
        )
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise SA3DError(f"SAM checkpoint not found: {checkpoint}. {FIX_HINT}")
        return checkpoint
    w = weights.get(f"sam-{variant}")
    return weights.fetch(
        w.name, allow_download, hint=f"{FIX_HINT} Or fetch it ahead with `sa3d-weights download {w.name}`."
    )


def build_sam(variant: str, checkpoint: Path | None, device: str | torch.device = "cpu", allow_download: bool = True):
    """Build a SAM model of ``variant`` with real weights."""
    try:
        from segment_anything import sam_model_registry
    except ImportError as err:
        raise SA3DError(
            f"segment-anything is not installed ({err}). Install it with: pip install segment-anything"
        ) from None
    path = resolve_sam_checkpoint(variant, checkpoint, allow_download)
    try:
        model = sam_model_registry[variant](checkpoint=str(path))
    except Exception as err:  # noqa: BLE001 - any failure to read the file is the user's to fix
        raise SA3DError(
            f"Could not load SAM {variant} weights from {path}: {type(err).__name__}: {str(err).splitlines()[0][:200]}. "
            f"Is it a {variant} checkpoint (the variant is set with --pipeline.sam-variant)? {FIX_HINT}"
        ) from None
    return model.to(device).eval()


class SamSegmenter(Segmenter):
    """SAM's image predictor. ``model`` is a ``segment_anything.modeling.Sam``.

    ``identity`` names the weights (variant and file); with it, and an ``embedding_cache`` set by
    the pipeline, the image encoder runs once per training view and its embedding is reused.
    Subclasses (HQ-SAM, SAM 2) change the predictor and what an embedding holds.
    """

    name = "sam"
    bf16_encoder = True
    """On a GPU with bfloat16, SAM's image encoder runs under bf16 autocast (its embedding is then
    kept in float32 for the decoder, as the cache already keeps it in half precision)."""

    def __init__(self, model, identity: dict | None = None):
        # segment_anything's SamPredictor here; HQ-SAM's or SAM 2's in the subclasses (same duck type)
        self.predictor: Any = self._make_predictor(model)
        self.image_shape: tuple[int, int] | None = None
        self.identity = identity
        self.embedding_cache = None

    # --- what differs between SAM-like predictors
    def _make_predictor(self, model):
        from segment_anything import SamPredictor

        return SamPredictor(model)

    def _export(self) -> dict[str, torch.Tensor]:
        """The current image's embedding, as the cache keeps it (half precision)."""
        p = self.predictor
        return {
            "features": p.features.half(),
            "original_size": torch.tensor(p.original_size),
            "input_size": torch.tensor(p.input_size),
        }

    def _import(self, data: dict[str, torch.Tensor]) -> None:
        p = self.predictor
        p.reset_image()
        p.features = data["features"].to(p.device).float()
        p.original_size = tuple(data["original_size"].tolist())
        p.input_size = tuple(data["input_size"].tolist())
        p.is_image_set = True

    def _predict(self, pts, lab, box, multimask):
        return self.predictor.predict(
            point_coords=pts if len(pts) else None,
            point_labels=lab if len(pts) else None,
            box=box,
            multimask_output=multimask,
        )

    def uses_bf16(self) -> bool:
        """Whether the image encoder runs under bf16 autocast: ``bf16_encoder`` on a CUDA device that has it."""
        device = torch.device(self.predictor.device)
        return self.bf16_encoder and device.type == "cuda" and torch.cuda.is_bf16_supported()

    def _encoder_precision(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.uses_bf16() else contextlib.nullcontext()

    # --- the interface
    def set_image(self, image, depth=None, view_id=None) -> None:
        image = check_image(image)
        self.image_shape = (image.shape[0], image.shape[1])
        cache = self.embedding_cache if view_id is not None else None
        name = f"{self.name}{view_id:05d}" if cache is not None else ""
        if cache is not None:
            data = cache.load(name)
            if (
                data is not None
                and "original_size" in data
                and tuple(data["original_size"].tolist()) == image.shape[:2]
            ):
                self._import(data)
                return
        with torch.no_grad(), self._encoder_precision():
            self.predictor.set_image(image)
        if self.bf16_encoder and self.predictor.features.dtype != torch.float32:
            self.predictor.features = self.predictor.features.float()
        if cache is not None:
            data = self._export()
            self._import(data)  # what the cache keeps: a reused view answers the same
            cache.save(name, data)

    def predict(self, points=None, labels=None, box=None, prior=None, multimask=True) -> Segmentation:
        if self.image_shape is None:
            raise RuntimeError("set_image must be called before predict")
        pts, lab = default_labels(points, labels)
        box = None if box is None else np.asarray(box, dtype=np.float32)
        with torch.no_grad():
            masks, scores, _ = self._predict(pts, lab, box, multimask)
        return Segmentation(masks=np.asarray(masks) > 0.5, scores=np.asarray(scores, dtype=np.float32).reshape(-1))
