"""The sa3d pipeline on a splatfacto run: the same loop, flags, prompts, segmenters and run folder as
on a nerfacto run (``nerf.pipeline.SA3DPipeline``), over frozen Gaussians.

What differs is the radiance field (:class:`SplatfactoScene`: each view's pixels' heaviest
Gaussians and blending weights from gsplat's kernel, ``splat.scene.GaussianScene``), the 3D mask
(one value per Gaussian per object, ``core.splats.gaussian_lifter``) and the model
(``splat.model.SA3DSplatModel``). Views' data are kept on disk (the scene's cache folder, as a
NeRF's samples are) and in memory within --pipeline.view-memory-mb (default: a quarter of the
memory free at start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch

from sa3d_ns.core.cache import ViewCache, file_identity
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.lifting import MaskLifter
from sa3d_ns.core.records import ViewData
from sa3d_ns.core.splats import gaussian_lifter
from sa3d_ns.nerf.cameras import training_camera
from sa3d_ns.nerf.pipeline import NerfactoScene, SA3DPipeline, SA3DPipelineConfig, free_memory
from sa3d_ns.nerf.view_store import camera_digest, say_cache
from sa3d_ns.splat.model import SA3DSplatModel, SA3DSplatModelConfig
from sa3d_ns.splat.reference import RasterViews
from sa3d_ns.splat.scene import GaussianScene, View

DEFAULT_SAMPLES = 16  # Gaussians kept per pixel when --pipeline.cache-samples is 0
SPLAT_CACHE_VERSION = 1  # (a new version: lists of earlier code are never read)


@dataclass
class SA3DSplatPipelineConfig(SA3DPipelineConfig):
    """SA3D over the training views of a splatfacto run (filled from --pipeline.source-config)."""

    _target: type = field(default_factory=lambda: SA3DSplatPipeline)
    model: SA3DSplatModelConfig = field(default_factory=SA3DSplatModelConfig)  # type: ignore[assignment]


def camera_view(camera) -> View:
    """A nerfstudio one-camera ``Cameras`` as a :class:`View`."""
    return View(
        camera.camera_to_worlds.reshape(-1, 3, 4)[0],
        camera.get_intrinsics_matrices().reshape(-1, 3, 3)[0],
        int(camera.width.reshape(-1)[0]),
        int(camera.height.reshape(-1)[0]),
    )


class SplatfactoScene(NerfactoScene):
    """The loop's radiance field on a splat: the pipeline's training views (as for a NeRF); a
    view's data from :class:`GaussianScene` (built on first use, once the source checkpoint is
    loaded); object k's 3D mask is the model's ``mask_fields[k]``, read at the Gaussians whose
    means the loop's points are."""

    def __init__(self, pipeline: SA3DSplatPipeline):
        super().__init__(pipeline)
        self._gaussians: GaussianScene | None = None
        # --pipeline.cache False: the faithful reference (every view rendered whole, lifted by autograd)
        self.reference = pipeline.raster_views()

    @property
    def model(self) -> SA3DSplatModel:
        return cast(SA3DSplatModel, self.pipeline.model)

    def gaussians(self) -> GaussianScene:
        model, p = self.model, self.pipeline
        if self._gaussians is None or len(self._gaussians.gaussians) != len(model.means):
            cfg = p.config
            views = [camera_view(training_camera(p, i, scale=1.0 / p.downscale)) for i in range(len(p.train_dataset))]
            budget = cfg.view_memory_mb * 2**20 if cfg.view_memory_mb is not None else free_memory(p.device) // 4
            samples = cfg.cache_samples or DEFAULT_SAMPLES
            self._gaussians = GaussianScene(
                model.gaussians(), views, p.image_names, model.mask_fields, samples=samples, memory_bytes=budget,
                background=splat_background(model), store=self.store(samples),
            )  # fmt: skip
        return self._gaussians

    def store(self, samples: int) -> ViewCache | None:
        """The disk cache of the views' lists (--pipeline.cache; beside a NeRF's, in the scene's
        cache folder), named by everything that produced them."""
        p, cfg = self.pipeline, self.pipeline.config
        root = p.views.root()
        if not cfg.cache or root is None:
            return None
        key = {
            "version": SPLAT_CACHE_VERSION,
            "kind": "gaussian lists",
            "checkpoint": file_identity(cfg.nerfacto_checkpoint),
            "cameras": camera_digest(p.train_dataset.cameras),
            "render_downscale": p.downscale,
            "samples": samples,
            "match_training_views": cfg.match_training_views,
            "background": splat_background(self.model).tolist(),
            "rasterize_mode": self.model.config.rasterize_mode,
        }
        return ViewCache(root, key, background=torch.device(p.device).type == "cuda", say=say_cache)

    def view_data(self, view: int) -> ViewData:
        if self.reference is not None:
            return self.reference.view_data(view)
        return self.gaussians().view_data(view)

    def footprint_key(self, k: int, view: int, data: ViewData):
        return (view, *data["size"].tolist(), "gaussians", len(self.model.means))

    def mask_values(self, k: int, points: torch.Tensor) -> torch.Tensor:
        values = self.model.mask_fields[k].detach()
        return values[self.gaussians().gaussians_at(points).to(values.device)].cpu()


def splat_background(model: SA3DSplatModel) -> torch.Tensor:
    """The colour behind the splat in its renders outside training (splatfacto's rule)."""
    kind = model.config.background_color
    if kind == "white":
        return torch.ones(3, device=model.device)
    if kind == "black":
        return torch.zeros(3, device=model.device)
    return torch.as_tensor(model.background_color, device=model.device).float()


class SA3DSplatPipeline(SA3DPipeline):
    config: SA3DSplatPipelineConfig  # type: ignore[assignment]

    @property
    def model(self) -> SA3DSplatModel:  # type: ignore[override]
        return cast(SA3DSplatModel, super().model)

    def raster_views(self) -> RasterViews | None:
        """With --pipeline.cache False, the reference's views (one for the scene and the lifters)."""
        if self.config.cache:
            return None
        if getattr(self, "_raster_views", None) is None:
            self._raster_views = RasterViews(lambda: self.scene.gaussians())
        return self._raster_views

    def _touch_bytes(self) -> int:
        return 0  # (no footprints: a Gaussian's mask value is read directly)

    def _make_scene(self) -> SplatfactoScene:
        return SplatfactoScene(self)

    @property
    def scene(self) -> SplatfactoScene:
        return cast(SplatfactoScene, self.loop.scene)

    def _make_lifter(self, f) -> MaskLifter:
        cfg = self.config
        raster = self.raster_views()
        if raster is not None:  # (the reference: autograd through gsplat's rasterizer)
            return raster.lifter(f, mode=cfg.lifting, lr=cfg.sgd_lr, vote_prior=cfg.vote_prior)
        return gaussian_lifter(f, mode=cfg.lifting, lr=cfg.sgd_lr, vote_prior=cfg.vote_prior)

    def view_data(self, view: int) -> ViewData:
        return self.scene.view_data(view)

    @property
    def view_cache(self) -> ViewCache | None:
        built = self.scene._gaussians
        return built.store if built is not None else None

    @property
    def cache_stats(self) -> dict:
        return self.scene.reference.stats if self.scene.reference is not None else self.scene.gaussians().stats

    def cache_summary(self) -> dict:
        store = self.view_cache
        kind = "none" if not self.config.cache else "disk and memory" if store is not None else "memory"
        disk = {"dir": str(store.dir), "entries_dropped": store.dropped} if store is not None else {}
        return {"kind": kind, **disk, **self.cache_stats}

    def flush_caches(self) -> None:
        if self.view_cache is not None:
            self.view_cache.flush()

    def camera_data(self, camera) -> ViewData:
        """What segmentation needs from any camera (the viewer's): its pixels' Gaussians, depth
        and render (not kept)."""
        scene = self.scene.gaussians()
        return scene.with_positions(scene.data_of(camera_view(camera.to(self.device))))

    def render_view(self, view: int, rgb: bool = True) -> dict:
        raise SA3DError("render_view is the NeRF's; a splat's views are listed by SplatfactoScene.view_data.")

    def render_camera(self, cam, rgb: bool = True, appearance: int | None = None) -> dict:
        raise SA3DError("render_camera is the NeRF's; a splat's cameras are listed by SA3DSplatPipeline.camera_data.")
