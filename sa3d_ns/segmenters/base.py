"""The interface every 2D segmenter implements.

A segmenter is given one image at a time (``set_image``) and then answers prompts on it
(``predict``). All coordinates are pixels of that image: points are N x 2 (x, y), a box is
[x0, y0, x1, y1].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sa3d_ns.core.cache import ViewCache


@dataclass
class Segmentation:
    """Candidate masks for one prompt: ``masks`` K x H x W bool, ``scores`` K (higher is better)."""

    masks: np.ndarray
    scores: np.ndarray
    warnings: list[dict[str, str]] | None = None
    """Per candidate, what makes it look unlike the prompted object ({kind: words}), when reviewed
    (``sa3d_ns.core.regions.review_first_masks``)."""

    def best(self, choice: int | None = None) -> tuple[np.ndarray, int]:
        """The chosen candidate (``choice``) or the highest-scoring one, with its index."""
        if choice is None:
            choice = int(np.argmax(self.scores))
        if not 0 <= choice < len(self.masks):
            from sa3d_ns.core.errors import SA3DError

            raise SA3DError(
                f"mask_choice {choice} does not exist: the segmenter returned {len(self.masks)} candidate mask(s) "
                f"(valid 0..{len(self.masks) - 1}, or null for the highest-scoring one)."
            )
        return self.masks[choice], choice


class Segmenter(ABC):
    """A promptable 2D segmenter."""

    name = "base"
    uses_prior = False
    """Whether its answers in later views start from the rendered 3D mask (``predict``'s ``prior``):
    then they are not independent of the first mask, and the loop never restarts an object from
    them (``SA3DLoop.outvoted``)."""
    last_error: str | None = None
    """A mistake the segmenter made on purpose in its last answer (oracle-noisy), for the run's record."""
    identity: dict | None = None
    """What its work on an image depends on (model, variant, weights file) when that work is worth
    keeping per training view (SAM's image embeddings); None: nothing to keep."""
    embedding_cache: ViewCache | None = None
    """Where that work is kept (a ``sa3d_ns.core.cache.ViewCache`` keyed by ``identity`` and the
    scene), given by the pipeline when ``identity`` is set; ``set_image`` with a ``view_id`` reads
    and writes it."""

    @abstractmethod
    def set_image(self, image: np.ndarray, depth: np.ndarray | None = None, view_id: int | None = None) -> None:
        """Set the image to segment.

        Args:
            image: H x W x 3 uint8 RGB.
            depth: H x W rendered depth (optional helper for segmenters that use it).
            view_id: training-view index of the image, when it is one (None for other cameras).
        """

    @abstractmethod
    def predict(
        self,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        prior: np.ndarray | None = None,
        multimask: bool = True,
    ) -> Segmentation:
        """Segment the current image.

        Args:
            points: N x 2 (x, y) pixel coordinates, or None.
            labels: N labels, 1 positive / 0 negative (default all positive).
            box: [x0, y0, x1, y1] or None.
            prior: H x W float score of where the object is believed to be (the rendered 3D mask
                score in later views); segmenters may use it as a hint.
            multimask: return several candidates (SAM's three) instead of one.
        """


def check_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def default_labels(points: np.ndarray | None, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    pts = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    lab = np.ones(len(pts), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    if len(lab) != len(pts):
        raise ValueError(f"got {len(pts)} points but {len(lab)} labels")
    return pts, lab
