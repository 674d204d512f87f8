"""Text prompts: Grounding DINO finds the box of a phrase in the prompt view; the segmenter then
segments that box.

The implementation is the one in Hugging Face ``transformers`` (``GroundingDinoForObjectDetection``,
pure PyTorch, nothing to compile), an optional extra: ``pip install 'sa3d_ns[text]'``. Weights are
a Hugging Face model folder (``--pipeline.text-checkpoint DIR``, for example one written by
``save_pretrained`` or a clone of ``IDEA-Research/grounding-dino-tiny``) or are fetched once into the
cache (:mod:`sa3d_ns.weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sa3d_ns import weights
from sa3d_ns.core.errors import SA3DError

TEXT_MODELS = ("grounding-dino-tiny", "grounding-dino-base")


@dataclass
class Detection:
    box: np.ndarray
    """[x0, y0, x1, y1] in pixels of the image searched."""
    score: float
    """The box's best token score (what the box threshold is compared with)."""
    label: str
    """The words of the text whose tokens scored above the text threshold."""

    def to_json(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(self.score, 4), "label": self.label}


def normalize_text(text: str) -> str:
    """Grounding DINO expects lower-case phrases, each ending with a period."""
    text = " ".join(text.lower().split())
    return text if text.endswith(".") else text + "."


def require_transformers() -> None:
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise SA3DError(
            "Text prompts need the transformers package (Grounding DINO), which is not installed. Install the extra: "
            "pip install 'sa3d_ns[text]', or give points or a box in the prompt instead of text."
        )


def resolve_text_checkpoint(model: str, checkpoint: Path | None, allow_download: bool = True) -> Path:
    require_transformers()
    if model not in TEXT_MODELS:
        raise SA3DError(f"Unknown text model {model!r}; choose one of {list(TEXT_MODELS)} with --pipeline.text-model.")
    w = weights.get(model)
    if checkpoint is not None:
        path = weights.local_checkpoint(checkpoint, w, kind="folder")
        if not (path / "config.json").is_file():
            raise SA3DError(
                f"{path} is not a Hugging Face model folder (it has no config.json) ({w.flag}). Give the folder of a "
                f"Grounding DINO model (files config.json, model.safetensors, the tokenizer and preprocessor files), "
                f"or leave {w.flag} unset to use the cached or downloaded {w.repo}."
            )
        return path
    return weights.fetch(w.name, allow_download)


class TextDetector:
    """Grounding DINO from a Hugging Face model folder."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu"):
        try:
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        except ImportError as err:
            raise SA3DError(
                f"Text prompts need the transformers package ({err}). Install the extra: pip install 'sa3d_ns[text]', "
                "or give points or a box in the prompt instead of text."
            ) from None
        try:
            self.processor = AutoProcessor.from_pretrained(folder)
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).to(device).eval()
        except Exception as err:  # noqa: BLE001 - any failure to read the folder is the user's to fix
            raise SA3DError(
                f"Could not load Grounding DINO from {folder}: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}. "
                "Give the folder of a Grounding DINO model with --pipeline.text-checkpoint."
            ) from None
        self.device = device

    @torch.no_grad()
    def detect(self, image: np.ndarray, text: str, text_threshold: float) -> list[Detection]:
        """Every box for ``text`` in ``image`` (H x W x 3 uint8), best score first."""
        inputs = self.processor(images=image, text=normalize_text(text), return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        (result,) = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=0.0, text_threshold=text_threshold, target_sizes=[image.shape[:2]]
        )
        labels = result.get("text_labels", result.get("labels"))
        found = [
            Detection(
                box=b.cpu().numpy().astype(np.float32), score=float(s), label=str(lab).replace("[SEP]", "").strip()
            )
            for b, s, lab in zip(result["boxes"], result["scores"], labels, strict=True)
        ]
        return sorted(found, key=lambda d: -d.score)


def best_box(
    detections: list[Detection], text: str, box_threshold: float, where: str, width: int, height: int
) -> Detection:
    """The best detection above ``box_threshold``, clipped to the image; a clear error when none is."""
    if not detections or detections[0].score < box_threshold:
        best = (
            f"the best score was {detections[0].score:.3f} for {detections[0].label or text!r} at box "
            f"{[round(float(v), 1) for v in detections[0].box]}"
            if detections
            else "nothing was found at all"
        )
        raise SA3DError(
            f"Grounding DINO found no box for the text {text!r} in {where} above the box threshold {box_threshold} "
            f"({best}). Rephrase the text, lower --pipeline.text-box-threshold, prompt from another view, "
            "or give points or a box instead."
        )
    d = detections[0]
    box = np.clip(d.box, 0, [width, height, width, height]).astype(np.float32)
    if not (box[2] > box[0] and box[3] > box[1]):
        raise SA3DError(f"Grounding DINO's box for {text!r} in {where} lies outside the image ({d.box.tolist()}).")
    return Detection(box=box, score=d.score, label=d.label)
