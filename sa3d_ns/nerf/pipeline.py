"""The sa3d pipeline: SA3D's cross-view self-prompting loop over a nerfacto run's training views.

Each trainer iteration is one step of the loop (``sa3d_ns.core.loop.SA3DLoop``: one view of one
object: render, segment, accept or reject, lift). This module is the nerfstudio side of it: the
config and its flags, the frozen model, renders of training views and viewer cameras, the 2D
segmenter and text detector, objects added in the viewer, ``summary.json``'s run-level fields;
:class:`NerfactoScene` is the loop's radiance field, ``nerf.view_store.ViewStore`` each view's
data and its caches. See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import cv2
import numpy as np
import torch
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig, module_wrapper
from nerfstudio.utils.rich_utils import CONSOLE

from sa3d_ns.core.cache import ViewCache
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.lifting import FootprintCache, MaskLifter
from sa3d_ns.core.loop import LoopSettings, SA3DLoop
from sa3d_ns.core.prompts import Prompt, check_inside, load_prompts
from sa3d_ns.core.records import ObjectState, ViewData, ViewRecord
from sa3d_ns.core.views import auto_downscale
from sa3d_ns.nerf.cameras import training_camera
from sa3d_ns.nerf.checkpoints import load_checkpoint
from sa3d_ns.nerf.model import MASK_PREFIX, SA3DModel, SA3DModelConfig
from sa3d_ns.nerf.view_store import ViewStore
from sa3d_ns.run_folder import RunFolder
from sa3d_ns.segmenters.base import Segmentation


@dataclass
class SA3DPipelineConfig(VanillaPipelineConfig):
    """SA3D over the training views of a nerfacto run."""

    _target: type = field(default_factory=lambda: SA3DPipeline)
    datamanager: VanillaDataManagerConfig = field(default_factory=VanillaDataManagerConfig)
    model: SA3DModelConfig = field(default_factory=SA3DModelConfig)
    source_config: Path | None = None
    """config.yml of the run to segment: a nerfacto or a splatfacto run (its data, dataparser settings, model settings and latest checkpoint are used; the run is only read)."""
    nerfacto_config: Path | None = None
    """config.yml of a nerfacto run to segment (as --pipeline.source-config, which also takes splatfacto runs)."""
    nerfacto_checkpoint: Path | None = None
    """Filled from --pipeline.source-config: the source run's checkpoint the frozen NeRF (or splat) was loaded from."""
    prompt: Path | None = None
    """Prompt JSON: {"view": 0, "points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1, y1], "mask_choice": null, "name": "object"}, or several objects: {"objects": [prompt, ...]}."""
    add_to: Path | None = None
    """config.yml of a finished sa3d run of the same nerfacto: its objects are kept as they are (not segmented again) and the prompt's objects are added, in a new run."""
    add_to_checkpoint: Path | None = None
    """Filled from --pipeline.add-to: the checkpoint the kept objects' mask fields are loaded from."""
    segmenter: Literal["sam", "sam2", "sam-hq", "weightfree", "oracle", "oracle-noisy"] = "sam"
    """2D segmenter: sam (segment-anything), sam2 (SAM 2.1, extra [sam2]), sam-hq (HQ-SAM, its vit_tiny is light; extra [hq]), weightfree (GrabCut + depth, no learned weights), oracle (the dataset's instance masks) or oracle-noisy (those masks with a 2D segmenter's mistakes in a fraction of the views: --pipeline.noise-*)."""
    noise_rate: float = 0.2
    """oracle-noisy: the fraction of views whose 2D mask is wrong (drawn per view from noise-seed, the prompt view included)."""
    noise_kinds: tuple[str, ...] = ("part", "merge", "stray", "miss")
    """oracle-noisy: the mistakes drawn from: part (a part for the whole), merge (joined with the touching neighbour), stray (a disconnected blob added), miss (an empty mask)."""
    noise_seed: int = 0
    """oracle-noisy: the seed of the draws."""
    sam_variant: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    """SAM image encoder size."""
    sam_checkpoint: Path | None = None
    """SAM weights; without it the official checkpoint is downloaded once to ~/.cache/sa3d_ns (or $SA3D_CACHE)."""
    sam_bf16: bool = True
    """On CUDA, SAM's image encoder runs under bf16 autocast (ViT-H on 1024 x 1024, measured on an H200: 56 ms a view against 183 ms in float32; masks agree to float rounding). False: float32, as the authors ran it. (SAM only; HQ-SAM and SAM 2 run in float32.)"""
    sam2_variant: Literal["hiera_t", "hiera_s", "hiera_b+", "hiera_l"] = "hiera_l"
    """SAM 2.1 image encoder size."""
    sam2_checkpoint: Path | None = None
    """SAM 2.1 weights (.pt); without it facebook/sam2.1-hiera-* is fetched once into the cache."""
    sam_hq_variant: Literal["vit_tiny", "vit_b", "vit_l", "vit_h"] = "vit_tiny"
    """HQ-SAM image encoder size (vit_tiny: the light TinyViT encoder)."""
    sam_hq_checkpoint: Path | None = None
    """HQ-SAM weights (.pth); without it lkeab/hq-sam's file is fetched once into the cache."""
    text_model: Literal["grounding-dino-tiny", "grounding-dino-base"] = "grounding-dino-tiny"
    """Grounding DINO model for text prompts ("text" in the prompt file; extra [text])."""
    text_checkpoint: Path | None = None
    """Folder of a Grounding DINO model in Hugging Face format; without it IDEA-Research/<text-model> is fetched once into the cache."""
    text_box_threshold: float = 0.35
    """A text prompt's best box must score at least this (Grounding DINO's default)."""
    text_threshold: float = 0.25
    """Words of the text whose token score passes this label the box (Grounding DINO's default)."""
    num_prompts: int = 3
    """Self-prompt points per view (authors: 3 in the main version, 10 in the nerfstudio one; 20 helps thin objects)."""
    prompt_distance_weight: float = 1.0
    """Scale of the depth-aware distance penalty between self-prompt points (1 = authors)."""
    iou_threshold: float = 0.5
    """A view's 2D mask is rejected when its IoU with the rendered 3D mask is below this (authors: 0.5)."""
    iou_binarize: Literal["positive", "positive_mean"] = "positive"
    """How the rendered score is binarised for the IoU check: score > 0, or also above the mean positive score."""
    neg_weight: float = 1.0
    """lambda: weight of pixels outside the 2D mask in later views (authors: 1.0)."""
    neg_weight_first: float = 1.0
    """lambda for the user-prompted first view (authors' voxel version: 5.0)."""
    lifting: Literal["vote", "sgd"] = "vote"
    """vote: per table entry, the weighted average of the targets of the samples that touched it (the authors' voxel rule), with vote-prior; sgd: one SGD step per view (the authors' hash-grid rule). Both are exact scatters on the default path."""
    vote_prior: float = 16.0
    """vote lifting: pseudo-count of zero votes per table entry (in units of the mean touch weight), so rarely seen entries lean to 0 (0 = plain average)."""
    sgd_lr: float = 0.1
    """Step size of the sgd lifting (loss averaged over the view's pixels)."""
    view_order: Literal["dataset", "nearest"] = "nearest"
    """Order of views after the prompt view: dataset order, or nearest-first growth from the prompt view."""
    num_passes: int = 1
    """Passes over the training views (authors' main version: 1)."""
    pass_views: float = 1.0
    """The share of the visit order each pass after the first goes over again: its first views, those segmented while the 3D mask was least complete (1: every view)."""
    pass_votes: Literal["add", "replace"] = "replace"
    """With more than one pass, how a view's mask of a later pass counts: replace (its earlier pass's vote is withdrawn first, so the final 3D mask is every view's latest accepted mask, each made from the 3D mask the views before it built) or add (every pass's mask votes, as the authors' gradient steps over passes do)."""
    drop_stray_regions: bool = True
    """Before a view's 2D mask is lifted, leave out its connected regions that meet no evidence of the object: in the prompted view no positive click (with a box alone: wholly outside the box), in later views nowhere the rendered 3D mask is positive (a segmenter's stray region, e.g. a table edge of the object's colour, would otherwise be lifted and followed)."""
    anchor_check: bool = True
    """Reject a later view's 2D mask that leaves out a point the user clicked where the view sees it (the click's surface point in 3D, found among the view's rendered surface points): self-prompts come from the 3D mask alone, so without it a first mask holding a neighbour as well lets later views drift onto the neighbour. A clicked point that the first two views agreeing with the 3D mask both leave out (a floater of the NeRF on the click's ray) is dropped, with a line in the log."""
    first_mask_pick: Literal["score", "plausible"] = "plausible"
    """Without "mask_choice" in the prompt, the candidate lifted in the prompted view: the segmenter's best-scoring one, or the best-scoring one without a warning that it is not the clicked object (a click outside it, much larger than the clicked surface's depth layer). Every candidate's warnings are logged and kept in summary.json."""
    clip_first_mask: bool = False
    """When every candidate of the prompted view is much larger than the clicked surface's depth layer (merged with what touches the object, and the segmenter gives nothing better), offer each again clipped to that layer (a candidate of its own, logged with a warning saying so) for the plausible pick. Off by default: on a coarse depth the clicked layer can be a small part of the object, which the loop may not grow back (see the README)."""
    restart_after: int = 3
    """While no later view has agreed with an object's first mask, this many rejected views in a row restart it: of their masks that hold the clicked points their views see, the one that, lifted alone, agrees (IoU test) with the most of the others (at least one) becomes the new start, with those it agrees with; none: the first mask stays. One wrong first mask (merged with a neighbour, a part) otherwise leaves every later view rejected. If as many views then disagree with the restart too, the first mask is restored. Logged and kept in summary.json (restart_from, restart_with, restored, the object's warnings). Not with weightfree (its later masks start from the rendered 3D mask) nor for objects prompted in a viewer camera. 0: never."""
    render_downscale: float | None = None
    """Segment at the training resolution divided by this (>= 1). Default: the smallest factor that brings the longer image side to --pipeline.segment-max-size. The mask field renders at any resolution afterwards."""
    segment_max_size: int = 512
    """Without --pipeline.render-downscale: segment views downscaled so that their longer side is at most this many pixels (bounds time, memory and cache size on large images; 0 = the training resolution)."""
    cache: bool = True
    """Keep per-view NeRF samples, depth, images (and SAM image embeddings) on disk and reuse them for every later object in the scene; False = re-render every view (the authors' way)."""
    cache_dir: Path | None = None
    """Where the caches live (default: <output-dir>/<experiment>/sa3d_cache, next to the runs)."""
    cache_samples: int = 16
    """With the cache: keep each ray's this many heaviest NeRF samples (0 = all). The fraction of volume weight kept is reported."""
    footprint_memory_mb: int | None = None
    """With the cache: memory (RAM, or GPU memory on CUDA) for views' table footprints (the mask-table entries each ray reads, the same for every object) and touches (a view summed into one table; room for one per view is held first), kept between objects; what does not fit is recomputed. Default: a quarter of the memory free at start-up, at most 2048 MB or one touch per view if that is more (0 = keep none)."""
    view_memory_mb: int | None = None
    """With the cache: GPU memory for views' cached samples kept on the device between objects (a later object then reads no view from the disk cache). Default: on CUDA a quarter of the GPU memory free at start-up; on a CPU none (the disk cache, read through the page cache, serves). 0 = none."""
    sample_scale: float = 0.5
    """With the cache: scale nerfacto's proposal and NeRF sample counts for the segmentation renders (e.g. 0.5 halves them; the NeRF's cost is mostly its samples)."""
    segment_image: Literal["render", "train"] = "render"
    """Image the 2D segmenter sees: the NeRF's render, or the training image itself (then the NeRF renders geometry only)."""
    match_training_views: bool = True
    """Render each training view at the pose the nerfacto run optimised for it (its camera optimizer, e.g. nerfacto's default SO3xR3) and with its own appearance embedding, so renders line up with the training images and their instance masks (False: the dataset's poses and nerfacto's mean appearance)."""
    save_view_images: bool = True
    """Write each view's 2D mask and prompt points as images into the run folder (sa3d/)."""


class SA3DPipeline(VanillaPipeline):
    config: SA3DPipelineConfig

    def __init__(
        self, config: SA3DPipelineConfig, device, test_mode="val", world_size=1, local_rank=0, grad_scaler=None
    ):
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self._segmenter = None
        self._detector = None
        # one lifter per object; the default path votes by gathers and scatters over each view's
        # footprint (kept in memory for every later object; room is held first for every view's
        # touch, one table each), the faithful path (no cache) by autograd
        touch_bytes = self._touch_bytes()
        budget = footprint_budget(config.footprint_memory_mb, self.device, touch_bytes)
        self.footprints = FootprintCache(budget, reserve=touch_bytes)
        objects = [ObjectState(self._make_lifter(f)) for f in self.model.mask_fields]  # one record per object
        self.views = ViewStore(self)  # each view's data for the loop: rendered once, cached
        self.kept: list[dict] = []  # the summaries of objects kept from --pipeline.add-to
        # the loop, over this NeRF (NerfactoScene) and the segmenter
        self.loop = SA3DLoop(
            self._make_scene(), LoopSettings.of(config), objects, names=lambda: self.model.object_names,
            segmenter=self.get_segmenter, find_text=self.find_text, log=CONSOLE.log,
        )  # fmt: skip
        # the SA3D panel of the nerfstudio viewer (picked up by the viewer when there is one)
        from sa3d_ns.nerf.viewer_panel import SA3DPanel, SA3DViewerControl

        self.sa3d_panel = SA3DPanel(self)
        self.sa3d_viewer_control = SA3DViewerControl(self.sa3d_panel)
        if test_mode == "val":
            self._setup_segmentation()

    # ------------------------------------------------------------------ setup
    def _touch_bytes(self) -> int:
        """The bytes of one touch table (a view summed into an object's mask table) per view."""
        mcfg = self.model.config
        return len(self.train_dataset) * mcfg.mask_num_levels * 2**mcfg.mask_log2_hashmap_size * 4

    def _make_scene(self):
        """The loop's radiance field (``core.loop.Scene``)."""
        return NerfactoScene(self)

    @property
    def model(self) -> SA3DModel:
        """The sa3d model (unwrapped if in DDP, as nerfstudio's)."""
        return cast(SA3DModel, module_wrapper(self._model))

    @property
    def train_dataset(self) -> InputDataset:
        """The training views (the nerfacto run's)."""
        dataset = self.datamanager.train_dataset
        assert dataset is not None, "the datamanager has no training set"
        return dataset

    @property
    def run(self) -> RunFolder | None:
        """The run's folder (set by the trainer; None outside a run: nothing is written)."""
        return self.loop.run

    @run.setter
    def run(self, run: RunFolder | None) -> None:
        self.loop.run = run
        self.loop.on_summary = self.write_summary if run is not None else None

    @property
    def output_dir(self) -> Path | None:
        """<run>/sa3d: what SA3D writes beside nerfstudio's files (None outside a run)."""
        return self.run.sa3d if self.run is not None else None

    # the loop's state, as the viewer panel, the benchmark and scripts read it
    @property
    def objects(self) -> list[ObjectState]:
        return self.loop.objects

    @property
    def records(self) -> list[ViewRecord]:
        return self.loop.records

    @property
    def active(self) -> list[int]:
        return self.loop.active

    @property
    def last_view(self) -> dict | None:
        return self.loop.last_view

    @property
    def downscale(self) -> float:
        """The factor training views are downscaled by for segmentation: --pipeline.render-downscale,
        or the smallest that fits the longer side of the largest image into --pipeline.segment-max-size."""
        if self.config.render_downscale is not None:
            return float(self.config.render_downscale)
        cams = self.train_dataset.cameras
        return auto_downscale(int(cams.width.max()), int(cams.height.max()), self.config.segment_max_size)

    @property
    def image_names(self) -> list[str]:
        return [str(p) for p in self.train_dataset.image_filenames]

    def _setup_segmentation(self) -> None:
        cfg = self.config
        if cfg.nerfacto_checkpoint is None:
            raise SA3DError(
                "No source checkpoint: pass --pipeline.source-config outputs/<scene>/<method>/<timestamp>/config.yml."
            )
        state = load_checkpoint(cfg.nerfacto_checkpoint, "source run's checkpoint")["pipeline"]
        self.model.load_source_state(state, cfg.nerfacto_checkpoint)
        if cfg.prompt is None:  # prompts come from the viewer's SA3D panel
            CONSOLE.log("sa3d: no prompt file; prompt objects in the viewer (Control tab, SA3D panel).")
        prompts = load_prompts(cfg.prompt) if cfg.prompt is not None else []
        first = len(self.model.mask_fields) - len(prompts)
        if cfg.add_to is not None:
            assert cfg.add_to_checkpoint is not None  # (resolve_add_to fills it)
            self.kept = load_kept_objects(self.model, cfg.add_to, cfg.add_to_checkpoint, first)
        for i, prompt in enumerate(prompts):
            prompt.name = self.model.object_names[first + i]  # as resolved (renamed when added to a run)
        self.start_objects(prompts, first)

    def start_objects(self, prompts: list[Prompt], first: int = 0) -> None:
        """Plan the segmentation of objects ``first``, ``first + 1``, ... from their prompts (see
        ``SA3DLoop.start_objects``)."""
        self.loop.start_objects(prompts, first)

    def start_object(self, prompt: Prompt) -> None:
        """Segment (again) the first object from a new prompt (benchmark, scripts)."""
        self.start_objects([prompt], 0)

    @property
    def order(self) -> list[int]:
        """The visit order of the first object being segmented (empty when none is)."""
        return self.objects[self.active[0]].order if self.active else []

    @property
    def prompts(self) -> list[Prompt | None]:
        """Each object's prompt (None until it has one)."""
        return [o.prompt for o in self.objects]

    @property
    def plan(self) -> list[tuple[int, int]]:
        """(object, step of that object's visit order) for every step of this run."""
        return self.loop.plan

    def segment_all(self) -> list[ViewRecord]:
        """Run every remaining view of the visit order (outside the trainer: benchmark, scripts)."""
        return self.loop.run_steps()

    def get_segmenter(self):
        """The 2D segmenter, built on first use (a method, not a property: the viewer getattr()s
        every public attribute of the pipeline when it starts)."""
        if self._segmenter is None:
            from sa3d_ns.segmenters.factory import make_segmenter

            self._segmenter = make_segmenter(
                self.config, self.image_names, Path(self.datamanager.get_datapath()), self.device
            )
        return self._segmenter

    def find_text(self, text: str, image: np.ndarray, where: str):
        """Grounding DINO's best box for ``text`` in ``image`` (built on first use, released when
        no object left to start has a text prompt)."""
        from sa3d_ns.segmenters.text import TextDetector, best_box, resolve_text_checkpoint

        cfg = self.config
        if self._detector is None:
            self._detector = TextDetector(resolve_text_checkpoint(cfg.text_model, cfg.text_checkpoint), self.device)
        found = self._detector.detect(image, text, cfg.text_threshold)
        det = best_box(found, text, cfg.text_box_threshold, where, image.shape[1], image.shape[0])
        if not self.loop.text_prompt_later(len(self.records)):
            self._detector = None
        return det

    def num_steps(self) -> int:
        return len(self.plan)

    def _make_lifter(self, f) -> MaskLifter:
        cfg = self.config
        corners = f.corners if f.explicit and cfg.cache else None
        return MaskLifter(
            f, f.table, mode=cfg.lifting, lr=cfg.sgd_lr, corners=corners, vote_prior=cfg.vote_prior,
            footprints=self.footprints,
        )  # fmt: skip

    # ------------------------------------------------------------------ objects prompted in any camera (the viewer)
    def add_object(self, name: str) -> int:
        """A new, empty object (mask field and lifter) at the end; returns its index."""
        k = self.model.add_object(name)
        self.objects.append(ObjectState(self._make_lifter(self.model.mask_fields[k])))
        return k

    def remove_object(self, k: int) -> None:
        """Remove object ``k`` (the caller makes sure it is not being segmented right now; the
        viewer panel refuses while a run is going)."""
        name = self.model.object_names[k]
        self.model.remove_object(k)
        del self.objects[k]
        self.loop.active = [i - (i > k) for i in self.active if i != k]
        self.loop.records = [r for r in self.records if r["object"] != name]

    def camera_data(self, camera) -> ViewData:
        """What segmentation needs from any camera (a nerfstudio ``Cameras`` of one camera): its
        render (rgb uint8, depth) and the NeRF samples the mask is lifted with (not cached)."""
        data, _ = self.views.from_render(self.render_camera(camera.to(self.device), rgb=True))
        return data

    def segment_camera(self, data: ViewData, prompt: Prompt):
        """The segmenter's candidates for ``prompt`` (pixels of the camera's render), reviewed as the
        first view of a prompt file is (stray regions left out, each one's warnings)."""
        seg = self.get_segmenter()
        if seg.name.startswith("oracle"):
            raise SA3DError(
                "The oracle segmenter only knows the training views' instance masks; prompts in the viewer need "
                "sam, sam2, sam-hq or weightfree (set --pipeline.segmenter when the run is made)."
            )
        h, w = (int(x) for x in data["size"])
        check_inside(prompt, w, h)
        depth = data["depth"].view(h, w).cpu().float().numpy()
        assert "rgb" in data  # (camera_data renders it)
        seg.set_image(data["rgb"].cpu().numpy(), depth, view_id=None)
        result = seg.predict(prompt.points, prompt.labels, prompt.box, prior=None, multimask=True)
        review = self.loop.review_first(result, prompt, depth)
        return Segmentation(masks=review.masks, scores=review.scores, warnings=review.warnings)

    def start_object_from_camera(self, k: int, camera, data: ViewData, mask: np.ndarray, prompt: Prompt) -> None:
        """Start object ``k`` from its 2D ``mask`` in any camera: lift the mask there, then plan
        every training view (self-prompted), nearest to that camera first."""
        cam_c2w = camera.camera_to_worlds.reshape(-1, 3, 4)[0].cpu().numpy()
        on_device = data.copy()
        on_device["positions"], on_device["weights"] = (
            data["positions"].to(self.device),
            data["weights"].to(self.device),
        )
        self.loop.start_from_camera(k, cam_c2w[:3, 3], -cam_c2w[:3, 2], on_device, mask, prompt)

    def run_steps(self, stop=None, on_step=None) -> list[ViewRecord]:
        """Process the remaining views of the plan (the viewer's Segment button); ``stop()`` is
        asked between views, ``on_step(record)`` is told after each."""
        return self.loop.run_steps(stop, on_step)

    # ------------------------------------------------------------------ rendering
    @torch.no_grad()
    def render_view(self, view: int, rgb: bool = True) -> dict:
        """Render training view ``view`` at the segmentation resolution with the frozen NeRF (at
        the pose and with the appearance the nerfacto run learned for it, unless
        --pipeline.match-training-views False)."""
        cam = training_camera(self, view, scale=1.0 / self.downscale)
        return self.render_camera(cam, rgb, appearance=view if self.config.match_training_views else None)

    @torch.no_grad()
    def render_camera(self, cam, rgb: bool = True, appearance: int | None = None) -> dict:
        """Render one camera (on the device) with the frozen NeRF: samples, weights, depth, rgb
        (with training image ``appearance``'s appearance embedding, else nerfacto's mean one)."""
        bundle = cam.generate_rays(camera_indices=0, keep_shape=True)
        if appearance is not None:
            bundle.camera_indices = torch.full_like(bundle.camera_indices, appearance)
        h, w = bundle.shape[:2]
        scale = self.config.sample_scale if self.config.cache else 1.0
        chunk = self.model.config.eval_num_rays_per_chunk
        was_training = self.model.training
        self.model.eval()
        parts: dict[str, list[torch.Tensor]] = {}
        try:
            for start in range(0, h * w, chunk):
                ray_chunk = bundle.get_row_major_sliced_ray_bundle(start, start + chunk)
                out = self.model.sample_rays(
                    ray_chunk, rgb=rgb, sample_scale=scale, own_appearance=appearance is not None
                )
                for k, v in out.items():
                    parts.setdefault(k, []).append(v)
        finally:
            self.model.train(was_training)
        out = {k: torch.cat(v) for k, v in parts.items()}
        out["height"], out["width"] = h, w
        return out

    def segment_input(self, view: int, data: ViewData) -> np.ndarray:
        """The image the 2D segmenter sees for ``view``, at the segmentation resolution."""
        h, w = (int(x) for x in data["size"])
        if self.config.segment_image == "train" or "rgb" not in data:
            img = self.train_dataset.get_numpy_image(view)[..., :3]
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            return np.ascontiguousarray(img)
        return data["rgb"].cpu().numpy()

    # ------------------------------------------------------------------ per-view data (the ViewStore's)
    def view_data(self, view: int) -> ViewData:
        return self.views.get(view)

    @property
    def view_cache(self) -> ViewCache | None:
        return self.views.cache

    @property
    def cache_stats(self) -> dict:
        return self.views.stats

    def cache_summary(self) -> dict:
        return self.views.summary()

    def flush_caches(self) -> None:
        self.views.flush()

    # ------------------------------------------------------------------ the SA3D step
    def sa3d_step(self, step: int) -> ViewRecord:
        """Process the ``step``-th view of the plan (``SA3DLoop.step``); returns its record."""
        return self.loop.step(step)

    def object_summary(self, k: int) -> dict:
        summary = self.loop.object_summary(k)
        return {"name": summary.pop("name"), "color": list(self.model.object_colors[k]), **summary}

    def write_summary(self, complete: bool) -> None:
        """sa3d/summary.json: per object its prompt, counts and every view's status (objects kept
        from --pipeline.add-to as they were, with the run they come from)."""
        summary = {
            "complete": complete,
            "prompt_file": str(self.config.prompt),
            "add_to": str(self.config.add_to) if self.config.add_to else None,
            "segmenter": self.config.segmenter,
            "source_config": str(self.config.source_config),
            "nerfacto_config": str(self.config.nerfacto_config),
            "views_total": len(self.plan),
            "views_done": len(self.records),
            "cache": self.cache_summary(),
            "objects": self.kept + [self.object_summary(k) for k in self.active],
        }
        assert self.run is not None
        self.run.write_summary(summary)

    # ------------------------------------------------------------------ nerfstudio hooks
    def get_train_loss_dict(self, step: int):
        rec = self.sa3d_step(step)
        metrics = {"views_accepted": float(sum(r.get("status") in ("prompt", "accepted") for r in self.records))}
        if "iou" in rec:
            metrics["view_iou"] = float(rec["iou"])
        return {}, {}, metrics

    def get_eval_loss_dict(self, step: int):
        return {}, {}, {}

    def get_param_groups(self):
        return self.model.get_param_groups()


class NerfactoScene:
    """The loop's radiance field (``core.loop.Scene``): the pipeline's frozen nerfacto over the
    training views of its datamanager; a view's data from ``SA3DPipeline.view_data`` (rendered
    once, then read from the caches); the objects' 3D masks are the model's mask fields."""

    def __init__(self, pipeline: SA3DPipeline):
        self.pipeline = pipeline

    def image_names(self) -> list[str]:
        return self.pipeline.image_names

    def image_size(self, view: int) -> tuple[int, int]:
        cams = self.pipeline.train_dataset.cameras
        return int(cams.width[view]), int(cams.height[view])

    def camera_centres(self) -> tuple[np.ndarray, np.ndarray]:
        c2w = self.pipeline.train_dataset.cameras.camera_to_worlds.cpu().numpy()
        return c2w[:, :3, 3], -c2w[:, :3, 2]

    def view_data(self, view: int) -> ViewData:
        return self.pipeline.view_data(view)

    def segment_input(self, view: int, data: ViewData) -> np.ndarray:
        return self.pipeline.segment_input(view, data)

    def footprint_key(self, k: int, view: int, data: ViewData):
        return (view, *data["size"].tolist(), self.pipeline.model.field_of(k).layout())

    def mask_values(self, k: int, points: torch.Tensor) -> torch.Tensor:
        field, device = self.pipeline.model.field_of(k), self.pipeline.device
        return torch.cat([field(c.to(device)).cpu() for c in points.split(1 << 16)])

    def mask_threshold(self) -> float:
        return self.pipeline.model.config.mask_threshold

    def set_bounds(self, k: int, box: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        bounds = self.pipeline.model.object_bounds
        if box is None:
            bounds[k, 0], bounds[k, 1] = -torch.inf, torch.inf
        else:
            bounds[k, 0], bounds[k, 1] = box

    def flush(self) -> None:
        self.pipeline.flush_caches()


def free_memory(device) -> int:
    """Bytes free now on ``device``: GPU memory on CUDA, available RAM otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def view_memory_budget(megabytes: int | None, device) -> int:
    """Bytes for views' samples kept on the device: ``megabytes``, or by default a quarter of the
    GPU memory free now on CUDA and none on a CPU."""
    if megabytes is not None:
        return max(int(megabytes), 0) * 2**20
    return free_memory(device) // 4 if torch.device(device).type == "cuda" else 0


def footprint_budget(megabytes: int | None, device, touches: int = 0) -> int:
    """Bytes for the footprint cache: ``megabytes``, or by default a quarter of the memory free now
    on ``device``, at most 2048 MB, or ``touches`` (the bytes of one touch table per view) when
    that is more."""
    if megabytes is not None:
        return max(int(megabytes), 0) * 2**20
    return min(free_memory(device) // 4, max(2048 * 2**20, touches))


def load_kept_objects(model, add_to: Path, checkpoint: Path, count: int) -> list[dict]:
    """Load the mask fields of the first ``count`` objects from the sa3d run ``add_to`` (its
    config.yml) and return their summaries, marked with the run they come from."""
    state = load_checkpoint(checkpoint, "sa3d checkpoint of --pipeline.add-to")["pipeline"]
    for k in range(count):
        if isinstance(model.mask_fields[k], torch.nn.Parameter):  # (a splat's: one value per Gaussian)
            values = state.get(f"_model.{MASK_PREFIX}{k}")
            if values is None or values.shape != model.mask_fields[k].shape:
                raise SA3DError(
                    f"The mask of object {k} in {checkpoint} does not fit this run ({None if values is None else tuple(values.shape)} "
                    f"values, {len(model.mask_fields[k])} Gaussians): add objects to a run of the same splatfacto checkpoint."
                )
            model.mask_fields[k].data.copy_(values)
            continue
        prefix = f"_model.{MASK_PREFIX}{k}."
        part = {key[len(prefix) :]: v for key, v in state.items() if key.startswith(prefix)}
        result = model.mask_fields[k].load_state_dict(part, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SA3DError(
                f"The mask field of object {k} in {checkpoint} does not fit this run (missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}): add objects with the same --pipeline.model.mask-* settings "
                "and hash-grid implementation as the run in --pipeline.add-to."
            )
    if "_model.object_bounds" in state:
        model.object_bounds[:count] = state["_model.object_bounds"][:count]
    run = RunFolder.of(add_to)
    return [{"from_run": str(run.root), **o} for o in run.summary()["objects"][:count]]
