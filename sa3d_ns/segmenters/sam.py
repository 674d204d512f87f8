"""segment-anything (SAM) behind the segmenter interface, and its weights.

Weights: ``checkpoint`` names a local file; with no path the official checkpoint of the variant is
downloaded once to the cache directory (``$SA3D_CACHE`` or ``~/.cache/sa3d_ns``) with a progress
bar and checked against its published MD5. segment-anything is imported lazily.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.segmenters.base import Segmentation, Segmenter, check_image, default_labels

SAM_WEIGHTS = {
    "vit_h": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "4b8939a88964f0f4ff5f5b2642c598a6",
    ),
    "vit_l": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "0b3195507c641ddb6910d2bb5adee89c",
    ),
    "vit_b": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "01ec64d29a2fca3f0661936605ae66f8",
    ),
}
FIX_HINT = "Pass a local checkpoint with --pipeline.sam-checkpoint PATH, or use the segmenter that needs no weights: --pipeline.segmenter weightfree."


def cache_dir() -> Path:
    return Path(os.environ.get("SA3D_CACHE", Path.home() / ".cache" / "sa3d_ns"))


def md5sum(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, expected_md5: str | None) -> Path:
    """Download ``url`` to ``dest`` with a progress bar; verify the MD5; never leave a partial file."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            ) as bar:
                task = bar.add_task(f"Downloading {dest.name}", total=total)
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(task, advance=len(block))
        if expected_md5 and md5sum(tmp) != expected_md5:
            raise SA3DError(
                f"The download of {url} is corrupt (MD5 mismatch). Try again, or download it yourself. {FIX_HINT}"
            )
        tmp.replace(dest)
        return dest
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise SA3DError(f"Could not download SAM weights from {url} ({err}). You may be offline. {FIX_HINT}") from None
    finally:
        tmp.unlink(missing_ok=True)


def resolve_sam_checkpoint(variant: str, checkpoint: Path | None, allow_download: bool = True) -> Path:
    """The path of the SAM weights to load: the given file, or the cached official one."""
    if variant not in SAM_WEIGHTS:
        raise SA3DError(
            f"Unknown SAM variant {variant!r}; choose one of {sorted(SAM_WEIGHTS)} with --pipeline.sam-variant."
        )
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise SA3DError(f"SAM checkpoint not found: {checkpoint}. {FIX_HINT}")
        return checkpoint
    url, md5 = SAM_WEIGHTS[variant]
    path = cache_dir() / Path(url).name
    verified = path.with_suffix(path.suffix + ".md5ok")
    if path.is_file():
        if verified.is_file() and verified.read_text().strip() == f"{md5} {path.stat().st_size}":
            return path
        if md5sum(path) == md5:
            verified.write_text(f"{md5} {path.stat().st_size}")
            return path
        raise SA3DError(
            f"The cached SAM weights {path} are corrupt (MD5 mismatch). Delete the file to download it again. {FIX_HINT}"
        )
    if not allow_download or os.environ.get("SA3D_OFFLINE"):
        raise SA3DError(f"SAM {variant} weights are not in the cache ({path}) and downloads are disabled. {FIX_HINT}")
    download(url, path, md5)
    verified.write_text(f"{md5} {path.stat().st_size}")
    return path


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
    """

    name = "sam"

    def __init__(self, model, identity: dict | None = None):
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(model)
        self.image_shape: tuple[int, int] | None = None
        self.identity = identity
        self.embedding_cache = None

    def set_image(self, image, depth=None, view_id=None) -> None:
        image = check_image(image)
        self.image_shape = image.shape[:2]
        p = self.predictor
        cache = self.embedding_cache if view_id is not None else None
        name = f"sam{view_id:05d}" if cache is not None else ""
        if cache is not None:
            data = cache.load(name)
            if data is not None and tuple(data["original_size"].tolist()) == tuple(image.shape[:2]):
                p.reset_image()
                p.features = data["features"].to(p.device).float()
                p.original_size = tuple(data["original_size"].tolist())
                p.input_size = tuple(data["input_size"].tolist())
                p.is_image_set = True
                return
        with torch.no_grad():
            p.set_image(image)
        if cache is not None:
            p.features = p.features.half().float()  # what the cache keeps: a reused view answers the same
            cache.save(
                name,
                {
                    "features": p.features.half(),
                    "original_size": torch.tensor(p.original_size),
                    "input_size": torch.tensor(p.input_size),
                },
            )

    def predict(self, points=None, labels=None, box=None, prior=None, multimask=True) -> Segmentation:
        if self.image_shape is None:
            raise RuntimeError("set_image must be called before predict")
        pts, lab = default_labels(points, labels)
        with torch.no_grad():
            masks, scores, _ = self.predictor.predict(
                point_coords=pts if len(pts) else None,
                point_labels=lab if len(pts) else None,
                box=None if box is None else np.asarray(box, dtype=np.float32),
                multimask_output=multimask,
            )
        return Segmentation(masks=masks.astype(bool), scores=np.asarray(scores, dtype=np.float32))
