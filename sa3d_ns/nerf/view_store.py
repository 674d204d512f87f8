"""Each training view's data for the loop (``core.records.ViewData``): rendered once by the frozen
NeRF at the segmentation resolution, then kept for every later object of the scene: on disk (a
``core.cache.ViewCache`` whose folder is named by everything that produced the data; the
segmenter's embedding cache beside it) and, within a budget, on the device (CUDA). This module
owns the cache's key, its disk-space check before anything is written, the check of each entry
read back, and the cache's figures in summary.json."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE

from sa3d_ns.core.cache import (
    ViewCache,
    cache_dir,
    file_identity,
    prune_samples,
    tensor_bytes,
    view_bytes,
    view_entry_problem,
)
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.records import ViewData

if TYPE_CHECKING:
    from sa3d_ns.nerf.pipeline import SA3DPipeline

CACHE_VERSION = 1  # (a new version: caches of earlier code are never read)


def camera_digest(cams) -> str:
    """A digest of a nerfstudio ``Cameras``' poses, intrinsics and sizes."""
    h = hashlib.sha256()
    for t in (cams.camera_to_worlds, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def say_cache(text: str) -> None:
    """What a cache found wrong (``ViewCache``'s ``say``), in the run's log."""
    from rich.markup import escape

    CONSOLE.log(f"[yellow]sa3d: {escape(text)}[/yellow]")


class ViewStore:
    """The training views' data of ``pipeline`` (see the module's docstring)."""

    def __init__(self, pipeline: SA3DPipeline):
        from sa3d_ns.nerf.pipeline import view_memory_budget

        self.pipeline = pipeline
        self.cache: ViewCache | None = None
        self.stats = {"views_built": 0, "views_reused": 0, "weight_kept": [], "bytes": 0, "views_in_memory": 0}
        # views' samples kept on the device for later objects (CUDA), within a budget
        self.memo: dict[int, ViewData] = {}
        self.memo_budget = view_memory_budget(pipeline.config.view_memory_mb, pipeline.device)
        self.memo_bytes = 0

    def needs_rgb(self) -> bool:
        """Whether the views are rendered in colour (the segmenter sees the render)."""
        cfg = self.pipeline.config
        if not cfg.cache:
            return True  # the faithful path renders full views
        return cfg.segment_image == "render" and not cfg.segmenter.startswith("oracle")

    def root(self) -> Path | None:
        if self.pipeline.config.cache_dir is not None:
            return Path(self.pipeline.config.cache_dir)
        if self.pipeline.run is not None:
            return self.pipeline.run.root.parent.parent / "sa3d_cache"  # <output>/<experiment>/sa3d_cache
        return None

    def key(self) -> dict:
        cfg, m = self.pipeline.config, self.pipeline.model.config
        return {
            "version": CACHE_VERSION,
            "checkpoint": file_identity(cfg.nerfacto_checkpoint),
            "cameras": camera_digest(self.pipeline.train_dataset.cameras),
            "render_downscale": self.pipeline.downscale,
            "cache_samples": cfg.cache_samples,
            "sample_scale": cfg.sample_scale,
            "rgb": self.needs_rgb(),
            "match_training_views": cfg.match_training_views,
            "nerf": {
                "implementation": m.implementation,
                "num_nerf_samples_per_ray": m.num_nerf_samples_per_ray,
                "num_proposal_samples_per_ray": list(m.num_proposal_samples_per_ray),
                "near_plane": m.near_plane,
                "far_plane": m.far_plane,
                "background_color": str(m.background_color),
            },
        }

    def open(self) -> None:
        root = self.root()
        if not self.pipeline.config.cache or root is None or self.cache is not None:
            return
        key = self.key()  # (hashes every camera: once)
        self.check_space(root, key)
        background = torch.device(self.pipeline.device).type == "cuda"  # (writes in a thread where they stall a GPU)
        self.cache = ViewCache(root, key, background=background, say=say_cache)
        seg = self.pipeline.get_segmenter()
        if seg.identity is not None:
            seg.embedding_cache = ViewCache(
                root, {**key, "segmenter": seg.identity}, background=background, say=say_cache
            )

    def segment_size(self) -> tuple[int, int]:
        """(height, width) of the largest training view at the segmentation resolution."""
        cams = self.pipeline.train_dataset.cameras
        h, w = int(cams.height.max()), int(cams.width.max())
        return round(h / self.pipeline.downscale), round(w / self.pipeline.downscale)

    def check_space(self, root: Path, key: dict) -> None:
        """Say what the cache of ``key`` will hold, and refuse (before writing anything) when the free
        disk space cannot hold it."""
        folder = cache_dir(root, key)
        n = len(self.pipeline.train_dataset)
        todo = sum(not (folder / f"view{v:05d}.pt").is_file() for v in range(n))
        h, w = self.segment_size()
        samples = self.cached_samples()
        need = todo * view_bytes(h, w, samples, self.needs_rgb())
        CONSOLE.log(
            f"sa3d: segmenting {n} views at {w}x{h} (downscale {self.pipeline.downscale:.3g}); caching {samples} NeRF samples "
            f"per ray: {todo} views to render, ~{need / 2**30:.2f} GB in {folder} ({n - todo} already there)"
        )
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        if need > 0 and free < need * 1.05 + 64 * 2**20:
            raise SA3DError(
                f"Not enough free disk space for the view cache in {folder.parent}: it needs ~{need / 2**30:.2f} GB "
                f"({todo} views of {w}x{h} rays, {samples} samples each), {free / 2**30:.2f} GB is free. Segment smaller "
                "views (--pipeline.segment-max-size, e.g. 256, or --pipeline.render-downscale), keep fewer samples "
                "(--pipeline.cache-samples, e.g. 8), put the cache elsewhere (--pipeline.cache-dir PATH), or turn it "
                "off (--pipeline.cache False, slower)."
            )

    def cached_samples(self) -> int:
        """Samples a ray keeps in the cache: the heaviest --pipeline.cache-samples of those rendered."""
        cfg, m = self.pipeline.config, self.pipeline.model.config
        rendered = max(4, round(m.num_nerf_samples_per_ray * cfg.sample_scale))
        return min(cfg.cache_samples, rendered) if cfg.cache_samples > 0 else rendered

    def view_size(self, view: int) -> tuple[int, int]:
        """(height, width) of training view ``view`` at the segmentation resolution."""
        cam = self.pipeline.train_dataset.cameras[view : view + 1]
        cam.rescale_output_resolution(1.0 / self.pipeline.downscale)
        return int(cam.height[0, 0]), int(cam.width[0, 0])

    def get(self, view: int) -> ViewData:
        """What a view needs from the NeRF: positions R x K x 3, weights R x K, depth H x W, rgb
        H x W x 3 uint8 (when rendered), height, width. Cached per view on the default path."""
        cfg = self.pipeline.config
        if view in self.memo:
            self.stats["views_reused"] += 1
            return self.memo[view].copy()
        self.open()
        name = f"view{view:05d}"
        loaded = self.cache.load(name) if self.cache is not None else None
        data: ViewData | None = None
        if loaded is not None:
            problem = view_entry_problem(loaded, *self.view_size(view), self.cached_samples(), self.needs_rgb())
            if problem is None:
                data = cast(ViewData, loaded)
            else:
                assert self.cache is not None
                self.cache.drop(name, f"it does not fit this run: {problem}")
        if data is None:
            data, kept = self.from_render(self.pipeline.render_view(view, rgb=self.needs_rgb()))
            h, w = (int(x) for x in data["size"])
            if cfg.cache:
                self.stats["weight_kept"].append(kept)
                if self.stats["views_built"] == 0 and self.cache is not None:
                    n = len(self.pipeline.train_dataset)
                    size = tensor_bytes(data) / 2**20
                    CONSOLE.log(
                        f"sa3d: caching each view's NeRF samples ({cfg.cache_samples or 'all'} per ray, {h}x{w} rays): "
                        f"~{size:.1f} MB per view, ~{size * n / 1024:.2f} GB for {n} views in {self.cache.dir} "
                        "(lower with --pipeline.render-downscale or --pipeline.cache-samples)"
                    )
                self.stats["views_built"] += 1
                self.stats["bytes"] += tensor_bytes(data)
            if self.cache is not None:
                entry = {**data, "weights": data["weights"].half()}  # (the disk keeps weights in half precision)
                self.cache.save(name, entry)  # pyright: ignore[reportArgumentType]  (a ViewData holds tensors only)
        else:
            data["weights"] = data["weights"].float()
            self.stats["views_reused"] += 1
        data["positions"] = data["positions"].to(self.pipeline.device)
        data["weights"] = data["weights"].to(self.pipeline.device)
        if cfg.cache and self.memo_bytes + tensor_bytes(data) <= self.memo_budget:
            self.memo[view] = data.copy()
            self.memo_bytes += tensor_bytes(data)
            self.stats["views_in_memory"] = len(self.memo)
        return data

    def from_render(self, r: dict) -> tuple[ViewData, float | None]:
        """A render's samples (pruned to the heaviest with the cache), depth, size and rgb; and the
        fraction of volume weight the pruning kept (None without the cache)."""
        cfg = self.pipeline.config
        h, w = r["height"], r["width"]
        positions, weights = r["positions"], r["weights"]
        kept = None
        if cfg.cache:
            positions, weights, kept = prune_samples(positions, weights, cfg.cache_samples)
            weights = weights.half().float()  # what the disk keeps: a cached view reads back the same
        data: ViewData = {
            "positions": positions,
            "weights": weights,
            "depth": r["depth"].view(h, w),
            "size": torch.tensor([h, w]),
        }
        if "rgb" in r:
            data["rgb"] = (r["rgb"].view(h, w, 3).clamp(0, 1) * 255).round().to(torch.uint8)
        return data, kept

    def flush(self) -> None:
        """Wait for the cache writes in flight (views' samples, the segmenter's embeddings)."""
        for cache in (
            self.cache,
            self.pipeline._segmenter.embedding_cache if self.pipeline._segmenter is not None else None,
        ):
            if cache is not None:
                cache.flush()

    def summary(self) -> dict:
        st = self.stats
        out = {
            "enabled": self.pipeline.config.cache,
            "views_built": st["views_built"],
            "views_reused": st["views_reused"],
            "samples_per_ray": self.pipeline.config.cache_samples,
            "weight_kept_mean": round(float(np.mean(st["weight_kept"])), 5) if st["weight_kept"] else None,
            "memory_bytes_built": st["bytes"],
            "footprints_kept": len(self.pipeline.footprints.items),
            "footprint_bytes": self.pipeline.footprints.bytes,
            "footprint_hits": self.pipeline.footprints.hits,
            "views_in_memory": st["views_in_memory"],
            "view_memory_bytes": self.memo_bytes,
        }
        if self.cache is not None:
            out["dir"] = str(self.cache.dir)
            out["disk_bytes"] = self.cache.disk_bytes()
            out["entries_dropped"] = self.cache.dropped
        return out
