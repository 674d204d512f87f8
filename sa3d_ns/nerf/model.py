"""The sa3d model: a frozen nerfacto plus a 3D mask field."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from torch import nn
from torch.nn import Parameter

from sa3d_ns.core.composite import (
    cut_out,
    fill_behind,
    front_of_boxes,
    mask_scores,
    overlay,
    probes_behind,
    resample_rays,
    volume_weights,
)
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.objects import check_name, crop, exclusive, in_boxes, palette
from sa3d_ns.nerf.host import fast_lookups, lpips_disabled
from sa3d_ns.nerf.mask_field import MaskField

MASK_PREFIX = "mask_fields."


def mask_implementation(requested: str) -> Literal["tcnn", "torch"]:
    """The hash encoding of the mask fields for a requested one ('auto', 'tcnn' or 'torch').

    'auto' is 'torch' on every device and for every NeRF (tcnn-trained nerfactos included): a mask
    field is one feature per level and no MLP, so tiny-cuda-nn's fused network has nothing to fuse,
    while the torch table's layout is what the fast votes list (MaskField.corners); a tcnn table
    would send every vote through autograd."""
    if requested not in ("auto", "tcnn", "torch"):
        raise ValueError(f"mask_implementation must be 'auto', 'tcnn' or 'torch', got {requested!r}")
    return "torch" if requested == "auto" else requested


def unbounded(n: int) -> torch.Tensor:
    """n object boxes that bound nothing: (min, max) = (-inf, +inf)."""
    return torch.tensor([[-torch.inf] * 3, [torch.inf] * 3]).repeat(n, 1, 1)


@dataclass
class SA3DModelConfig(NerfactoModelConfig):
    """A frozen nerfacto (its hyper-parameters are copied from the source run) plus a mask field."""

    _target: type = field(default_factory=lambda: SA3DModel)
    mask_num_levels: int = 16
    """Hash-grid levels of the mask field (authors: 16)."""
    mask_min_res: int = 128
    """Coarsest grid resolution of the mask field (authors: 128)."""
    mask_max_res: int = 2048
    """Finest grid resolution of the mask field (authors: 2048)."""
    mask_log2_hashmap_size: int = 19
    """log2 of the hash table size per level of the mask field (authors: 19)."""
    mask_implementation: Literal["auto", "tcnn", "torch"] = "auto"
    """Hash encoding of the mask fields. 'auto' is this package's torch layout on every device, whatever the frozen nerfacto uses: its lookups are what the lifting's votes list (one scatter-add per view); with 'tcnn' the table is tiny-cuda-nn's own, and votes go through autograd (the reference path's speed)."""
    objects: list[str] = field(default_factory=lambda: ["object"])
    """Names of the segmented objects, one mask field each (filled from the prompt file)."""
    mask_threshold: float = 0.0
    """A pixel belongs to the object where the rendered mask score exceeds this."""
    overlay_color: tuple[float, float, float] = (1.0, 0.2, 0.2)
    """Colour of the (first) object in the ``rgb_overlay`` output; further objects get distinct colours."""
    overlay_alpha: float = 0.5
    """Opacity of the colour in the ``rgb_overlay`` output."""
    crop_to_bounds: bool = True
    """Each object's 3D mask is off outside a box around the surface its accepted 2D masks saw (grown by 15 %): removes far-off floaters (hash collisions of the mask field)."""
    front_visibility: float | None = 0.1
    """A pixel's mask score leaves out what lies between the camera and the object's box (a NeRF's floaters or haze, voted out by the views that saw them against a background) where the box is at least this visible through it (the transmittance there); less visible, as behind an occluder, the whole score counts. Oracle, held-out mIoU, None -> 0.1 / 0.2 / 0.3: the clutter scene's five objects 0.705 -> 0.933 / 0.852 / 0.725 (its frame 46 looks through a haze: 0.00 -> 0.89 to 0.93 at 0.1), the touching scene's five 0.846 -> 0.846 / 0.847 / 0.849 (an occluder's soft rim lets the object behind show: its ball 0.947 -> 0.937 at 0.1); weight-free, the 128-px demo's four 0.872 -> 0.880. Needs crop-to-bounds; None: the whole score everywhere."""
    removal_resample: bool = True
    """``rgb_removed`` samples again the rays the removed object weighed on, with the object taken out of the proposal networks' densities too: nerfacto's proposal sampler puts its samples where the object's surface is, so what the object hid is otherwise rendered from the few coarse samples left behind it (a blurred ghost of the object). Measured on 9 objects of two scenes (oracle): removal PSNR up on all 9 (touching scene +2.3 to +4.5 dB), ghost lower on 8 (e.g. 19.2 -> 9.6 %, 47.6 -> 29.0 %). False: the removed render keeps the NeRF's samples (cheaper)."""
    removal_margin: float = 0.5
    """``rgb_removed`` (the scene without the object) also leaves out the samples within this distance of the object's 3D mask along an axis, in cells of the mask field's coarsest grid (4 / mask-min-res scene units inside the unit cube): the object's soft boundary density, which leaves a rim. Measured on 9 objects of two scenes: 0.5 lowers the ghost on 7 (e.g. 14.9 -> 13.0 %, 10.9 -> 8.6 %), removal PSNR -0.25 to +0.4 dB, pixels changed outside the object <= 0.01 %; 0 turns it off."""
    removal_fill: bool = True
    """``rgb_removed`` also leaves out the object's inside: the solid samples right behind its 3D mask along each ray, up to the first empty one, within its box grown by the removal margin, that have the object's 3D mask further along the ray (between its front and its back; ``core.composite.fill_behind``, ``probes_behind``). The 3D mask is lifted from the views' volume weights, on the object's visible surface; a solid NeRF object's inside never had a weight, and once its surface is removed it shows as a copy of the object in its own colours. What the object stands on or against is kept (no mask behind it). Measured (oracle, ghost % / removal dB, NeRF dB): demo ball (1800-step NeRF) 21.4 / 18.3 -> 10.8 / 20.8 (20.9); touching ball 5.3 / 22.8 -> 5.1 / 22.9; the crate, can, cube, mug, box, pole and tile unchanged. False: only the mask (and margin) is removed."""
    object_background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour of the ``rgb_object`` output (the object alone)."""
    rgba_object: bool = True
    """The ``rgba`` render output (ns-render) is the object alone on a transparent background."""
    fast_hash_grids: bool = True
    """Evaluate the frozen nerfacto's hash grids (torch implementation), and the mask fields' where no gradient is wanted (renders), by listing each point's corners and one fused gather, and the L-inf scene contraction with a max instead of linalg.norm: the same values to float rounding, the lookups 2 to 4x cheaper than nerfstudio's torch lookup on a CPU (False: nerfstudio's own)."""


class MaskObjects:
    """The objects of an sa3d model, whatever holds their 3D masks (``mask_fields``: one entry per
    object, a hash-grid mask field or a per-Gaussian table; ``object_bounds``: each one's box):
    names, colours, render output names; objects added, removed, renamed later (the viewer). The
    model provides ``new_mask_field()``."""

    config: Any  # (the model's config: objects, overlay_color)
    mask_fields: Any  # (an nn.ModuleList or nn.ParameterList)
    object_bounds: torch.Tensor

    def new_mask_field(self) -> Any:
        raise NotImplementedError

    @torch.no_grad()
    def add_object(self, name: str) -> int:
        """A new, empty object at the end; returns its index. The new field and box are built
        before they replace the old ones, so a render running meanwhile sees one or the other."""
        check_name(name, "the object name")
        if name in self.config.objects:
            raise SA3DError(f"An object named {name!r} exists already; its objects are {self.object_names}.")
        device = self.object_bounds.device
        field = self.new_mask_field().to(device)
        fields = type(self.mask_fields)([*self.mask_fields, field])
        bounds = torch.cat([self.object_bounds, unbounded(1).to(device)])
        self.mask_fields, self.object_bounds = fields, bounds
        self.config.objects = [*self.config.objects, name]
        return len(self.config.objects) - 1

    @torch.no_grad()
    def remove_object(self, k: int) -> None:
        keep = [i for i in range(len(self.config.objects)) if i != k]
        fields = type(self.mask_fields)([self.mask_fields[i] for i in keep])
        bounds = self.object_bounds[keep].clone()
        self.config.objects = [self.config.objects[i] for i in keep]
        self.mask_fields, self.object_bounds = fields, bounds

    def rename_object(self, k: int, name: str) -> None:
        check_name(name, "the object name")
        if name in self.config.objects and self.config.objects.index(name) != k:
            raise SA3DError(f"An object named {name!r} exists already; its objects are {self.object_names}.")
        self.config.objects = [name if i == k else n for i, n in enumerate(self.config.objects)]

    @property
    def object_names(self) -> list[str]:
        return list(self.config.objects)

    @property
    def object_colors(self) -> list[tuple[float, float, float]]:
        return self.colors_of(len(self.config.objects))

    def colors_of(self, k: int) -> list[tuple[float, float, float]]:
        """The overlay colours of the first ``k`` objects, by index: a render that runs while an
        object is being added (the viewer's render thread) has its mask before its name."""
        return [tuple(self.config.overlay_color), *palette(k)[1:]][:k]

    def overlay_colors(self, k: int, like: torch.Tensor) -> torch.Tensor:
        """``colors_of(k)`` as the (k, 3) tensor ``overlay`` takes, on ``like``'s device and dtype
        (one black row when there is no object)."""
        return torch.tensor(self.colors_of(k) or [(0.0, 0.0, 0.0)], device=like.device, dtype=like.dtype)

    def object_index(self, name: str) -> int:
        if name not in self.config.objects:
            raise SA3DError(f"No object named {name!r} in this run; its objects are {self.object_names}.")
        return self.config.objects.index(name)

    def output_name(self, base: str, k: int) -> str:
        """The render output of object ``k`` (``mask``, ``rgb_object``...): the plain name when the
        run has one object, ``<base>_<name>`` when it has several."""
        return base if len(self.config.objects) == 1 else f"{base}_{self.config.objects[k]}"


class SA3DModel(MaskObjects, NerfactoModel):
    """Nerfacto, frozen, with a mask field rendered by the NeRF's own volume weights."""

    config: SA3DModelConfig

    def populate_modules(self):
        with lpips_disabled():
            super().populate_modules()
        self._mask_impl: Literal["tcnn", "torch"] = mask_implementation(self.config.mask_implementation)
        self.mask_fields = nn.ModuleList(self.new_mask_field() for _ in self.config.objects)
        # per object (min, max) of the box its 3D mask lives in; unbounded until its segmentation ends
        self.register_buffer("object_bounds", unbounded(len(self.config.objects)))
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(MASK_PREFIX))
        if self.config.fast_hash_grids:
            fast_lookups([*self.field.modules(), *self.proposal_networks.modules()])

    def new_mask_field(self) -> MaskField:
        """An empty (zero) mask field with the run's settings."""
        field = MaskField(
            self.scene_box.aabb,
            self.field.spatial_distortion,
            num_levels=self.config.mask_num_levels,
            min_res=self.config.mask_min_res,
            max_res=self.config.mask_max_res,
            log2_hashmap_size=self.config.mask_log2_hashmap_size,
            implementation=self._mask_impl,
        )
        if self.config.fast_hash_grids:  # its renders (no gradient); lifting with autograd keeps nerfstudio's
            fast_lookups(field.modules())
        return field

    def field_of(self, k: int) -> MaskField:
        """Object ``k``'s mask field."""
        return cast(MaskField, self.mask_fields[k])

    @torch.no_grad()
    def object_values(self, positions: torch.Tensor) -> torch.Tensor:
        """positions N x 3 -> mask values N x K, one column per object, exclusive: at most one
        object is on (> mask-threshold) at any point."""
        fields, bounds = list(self.mask_fields), self.object_bounds
        k = min(len(fields), len(bounds))  # (a render racing an object being added or removed)
        if k == 0:
            return positions.new_zeros((len(positions), 0))
        values = torch.stack([f(positions) for f in fields[:k]], dim=-1)
        if self.config.crop_to_bounds:
            values = crop(values, positions, bounds[:k], self.config.mask_threshold)
        return exclusive(values, self.config.mask_threshold)

    @torch.no_grad()
    def front_samples(self, positions: torch.Tensor, rays: int, k: int) -> torch.Tensor | None:
        """positions R x S x 3 -> R x S x k: the samples between the camera and each of the first
        ``k`` objects' boxes (``core.composite.front_of_boxes``; ``k``: the objects ``object_values``
        gave values for, as a render can race an object being added); None when boxes do not crop
        or ``front_visibility`` is off."""
        if self.config.front_visibility is None or not self.config.crop_to_bounds or k == 0:
            return None
        return front_of_boxes(in_boxes(positions.reshape(rays, -1, 3), self.object_bounds[:k]))

    # ----------------------------------------------------------------- frozen nerfacto weights
    def load_source_state(self, pipeline_state: dict, source: Path) -> None:
        """Load the source run's nerfacto weights; every nerfacto parameter must be found."""
        state = {k[len("_model.") :]: v for k, v in pipeline_state.items() if k.startswith("_model.")}
        state.pop("device_indicator_param", None)
        result = self.load_state_dict(state, strict=False)
        ours = (MASK_PREFIX, "object_bounds", "device_indicator_param")
        missing = [k for k in result.missing_keys if not k.startswith(ours)]
        unexpected = list(result.unexpected_keys)
        if missing or unexpected:
            tcnn_in_ckpt = any(k.endswith(".params") for k in state)
            tcnn_here = any(k.endswith(".params") for k in self.state_dict())
            if tcnn_in_ckpt != tcnn_here:
                trained = "tiny-cuda-nn (tcnn)" if tcnn_in_ckpt else "the torch implementation"
                here = "tiny-cuda-nn" if tcnn_here else "the torch implementation (tiny-cuda-nn is not usable here)"
                raise SA3DError(
                    f"The nerfacto checkpoint {source} was trained with {trained}, but this machine builds nerfacto with {here}; "
                    "their weights are not interchangeable. Segment on a machine with the same implementation, or retrain "
                    "nerfacto with --pipeline.model.implementation " + ("tcnn" if tcnn_here else "torch") + "."
                )
            raise SA3DError(
                f"The checkpoint {source} does not match a nerfacto model with the run's settings "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]}). Is it a nerfacto run?"
            )

    # ----------------------------------------------------------------- nerfstudio hooks
    def get_param_groups(self) -> dict[str, list[Parameter]]:
        # (no objects yet, prompts to come from the viewer: no parameter group, no optimizer)
        return {"mask_field": [cast(MaskField, f).table for f in self.mask_fields]} if len(self.mask_fields) else {}

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        return []

    @torch.no_grad()
    def sample_rays(
        self,
        ray_bundle: RayBundle,
        rgb: bool = True,
        per_sample: bool = False,
        sample_scale: float = 1.0,
        own_appearance: bool = False,
        density_fns: list | None = None,
    ) -> dict:
        """The frozen NeRF on a flat bundle: sample positions R x S x 3, volume weights R x S,
        median depth, accumulation and (unless ``rgb`` is False: geometry only, no colour
        network) rgb. ``per_sample`` adds the samples, their densities and colours.
        ``sample_scale`` scales nerfacto's sample counts; ``own_appearance`` colours each ray
        with the appearance embedding of its ``camera_indices`` (a training image's own, as the
        run learned it; otherwise nerfacto's inference rule, the mean embedding). Both act on
        shallow copies of the sampler and field, so renders running meanwhile are not affected.
        ``density_fns`` replaces the proposal networks' densities the sampler follows."""
        if self.collider is not None and ray_bundle.nears is None:
            ray_bundle = self.collider(ray_bundle)
        sampler, field = self.proposal_sampler, self.field
        if sample_scale != 1.0:
            sampler = copy.copy(sampler)
            sampler.num_proposal_samples_per_ray = tuple(
                max(4, round(n * sample_scale)) for n in sampler.num_proposal_samples_per_ray
            )
            sampler.num_nerf_samples_per_ray = max(4, round(sampler.num_nerf_samples_per_ray * sample_scale))
        if own_appearance and rgb:
            field = copy.copy(field)
            field.training = True  # (NerfactoField embeds camera_indices' appearance only in training mode)
        ray_samples, _, _ = sampler(ray_bundle, density_fns=density_fns or self.density_fns)
        if rgb:
            field_outputs = field.forward(ray_samples)
            density = field_outputs[FieldHeadNames.DENSITY]
        else:
            density, _ = field.get_density(ray_samples)
        weights = ray_samples.get_weights(density)
        out = {
            "positions": ray_samples.frustums.get_positions(),
            "weights": weights[..., 0],
            "depth": self.renderer_depth(weights=weights, ray_samples=ray_samples),
            "accumulation": self.renderer_accumulation(weights=weights),
        }
        if rgb:
            out["rgb"] = self.renderer_rgb(rgb=field_outputs[FieldHeadNames.RGB], weights=weights)
        if per_sample:
            out["ray_samples"], out["density"] = ray_samples, density
            if rgb:
                out["sample_rgb"] = field_outputs[FieldHeadNames.RGB]
        return out

    def get_outputs(self, ray_bundle: RayBundle) -> dict[str, torch.Tensor]:
        """The frozen NeRF's render, and what the 3D masks make of it (core.composite): the mask, its
        score and the overlay; the objects alone and the scene without them (each object on its
        own too, when there are several)."""
        s = self.sample_rays(ray_bundle, per_sample=True)
        cfg = self.config
        out = {"rgb": s["rgb"], "accumulation": s["accumulation"], "depth": s["depth"]}
        with torch.no_grad():
            r, n = s["weights"].shape
            values = self.object_values(s["positions"].reshape(-1, 3)).reshape(r, n, -1)
            front = self.front_samples(s["positions"], r, values.shape[-1])
            scores = mask_scores(s["weights"], values, front, cfg.front_visibility or 0.0)
            samples, density, sample_rgb = s["ray_samples"], s["density"], s["sample_rgb"]
            background = torch.tensor(cfg.object_background, device=scores.device, dtype=sample_rgb.dtype)
            mids = (samples.frustums.starts + samples.frustums.ends) / 2

            def alone_and_removed(inside: torch.Tensor, gone: torch.Tensor, suffix: str, column: int | None) -> None:
                cut = cut_out(density, samples.deltas, mids, sample_rgb, inside, gone, background)
                out["rgb_object" + suffix] = cut.rgb
                out["accumulation_object" + suffix] = cut.accumulation
                out["rgb_object_premultiplied" + suffix] = cut.premultiplied
                out["depth_object" + suffix] = cut.depth
                removed = self.renderer_rgb(rgb=sample_rgb, weights=cut.rest_weights)
                if cfg.removal_resample:
                    again = resample_rays(s["weights"], gone[..., 0])
                    if len(again):
                        removed = removed.clone()
                        removed[again] = self.removed_resampled(ray_bundle[again], column)
                out["rgb_removed" + suffix] = removed

            # all objects together (the only ones with a single object)
            k_all = scores.shape[-1]
            colors = self.overlay_colors(k_all, s["rgb"])
            out["mask"], out["mask_score"], out["rgb_overlay"] = overlay(
                s["rgb"], scores, cfg.mask_threshold, colors, cfg.overlay_alpha
            )
            on = scores > cfg.mask_threshold
            inside = values > cfg.mask_threshold  # R x S x K
            opacity = 1 - torch.exp(-(density * samples.deltas)[..., 0])  # R x S
            gone = self.removed_samples(s["positions"], values, opacity)  # R x S x K
            alone_and_removed(inside.any(-1, keepdim=True), gone.any(-1, keepdim=True), "", None)
            if k_all > 1:  # and each object on its own
                for k, name in enumerate(cfg.objects[:k_all]):
                    out[f"mask_{name}"] = on[:, k : k + 1].float()
                    out[f"mask_score_{name}"] = scores[:, k : k + 1]
                    alone_and_removed(inside[..., k : k + 1], gone[..., k : k + 1], f"_{name}", k)
        return out

    @torch.no_grad()
    def removed_gone(self, positions: torch.Tensor, opacity: torch.Tensor, column: int | None) -> torch.Tensor:
        """positions ... x 3, opacities ... -> which of those points ``rgb_removed`` leaves out (...):
        those of object ``column`` (None: of any object), the removal margin included. With
        crop-to-bounds no object is on outside its box: only points in a box are looked up."""
        flat = positions.reshape(-1, 3)
        k = min(len(self.mask_fields), len(self.object_bounds))
        bounds = self.object_bounds[:k]
        if self.config.crop_to_bounds:
            boxed = in_boxes(flat, bounds).any(-1)
            values = flat.new_full((len(flat), k), self.config.mask_threshold)
            found = self.object_values(flat[boxed])
            if found.shape[-1] != k:  # (an object added or removed meanwhile, by the viewer)
                return positions.new_zeros(positions.shape[:-1], dtype=torch.bool)
            values[boxed] = found
        else:
            values = self.object_values(flat)
        values = values.reshape(*positions.shape[:-1], -1)
        gone = self.removed_samples(positions, values, opacity)
        return gone.any(-1) if column is None else gone[..., column]

    @torch.no_grad()
    def removed_resampled(self, ray_bundle: RayBundle, column: int | None) -> torch.Tensor:
        """The scene without object ``column`` (None: without all of them) along a flat bundle, rays
        sampled afresh (R x 3): the proposal networks' densities are taken out where the object is,
        so the samples land on what it hid, and the NeRF's density is taken out there as before."""

        def without(density_fn):
            def density(positions: torch.Tensor) -> torch.Tensor:
                d = density_fn(positions)
                # (no sample lengths here: the density stands in for the opacity, > 1e-3 is not empty)
                return d * ~self.removed_gone(positions, d[..., 0], column)[..., None]

            return density

        s = self.sample_rays(ray_bundle, per_sample=True, density_fns=[without(f) for f in self.density_fns])
        deltas = s["ray_samples"].deltas
        opacity = 1 - torch.exp(-(s["density"] * deltas)[..., 0])
        gone = self.removed_gone(s["positions"], opacity, column)
        weights = volume_weights(s["density"] * ~gone[..., None], deltas)
        return self.renderer_rgb(rgb=s["sample_rgb"], weights=weights)

    @torch.no_grad()
    def removed_samples(self, positions: torch.Tensor, values: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
        """positions R x S x 3, mask values R x S x K, sample opacities R x S -> which samples
        ``rgb_removed`` leaves out for each object: those in its 3D mask and, with
        ``removal-margin`` d, those within d of it along an axis (a 6-neighbour dilation). Only
        samples that are not empty space (opacity > 1e-3; their volume weight would not do: what
        the object hides has none until it is removed) and lie in a bounded object's box grown by
        d are looked up again. With ``removal-fill`` (R x S rays of samples only), also the solid
        samples right behind those along each ray, in that box, that have the object's mask further
        along the ray (its inside; ``core.composite.fill_behind``, ``mask_behind``)."""
        cfg = self.config
        gone = values > cfg.mask_threshold
        k = values.shape[-1]
        if k == 0 or (cfg.removal_margin <= 0 and not cfg.removal_fill):
            return gone
        step = max(cfg.removal_margin, 0.0) * 4.0 / cfg.mask_min_res
        bounds = self.object_bounds[:k]
        boxed = torch.isfinite(bounds).all(-1).all(-1)  # (an object not yet bounded gets no margin)
        near_each = in_boxes(positions, bounds, step) & boxed  # ... x K
        solid = opacity > 1e-3
        if step > 0:  # the margin: look the solid samples near an object up again, shifted by it
            todo = (near_each.any(-1) & solid & ~gone.all(-1)).nonzero(as_tuple=True)
            gone[todo] = self.grown_by_margin(positions[todo], gone[todo], step)
        if cfg.removal_fill and gone.dim() >= 3:  # (rays of samples: R x S x K)
            filled = fill_behind(gone, solid, near_each) & ~gone
            r, s, obj = filled.nonzero(as_tuple=True)
            if len(r):  # (only the object's inside: its mask further on, not the floor it stands on)
                filled[r, s, obj] = self.mask_behind(positions, r, s, obj, bounds, step)
            gone = gone | filled
        return gone

    @torch.no_grad()
    def mask_behind(
        self,
        positions: torch.Tensor,
        r: torch.Tensor,
        s: torch.Tensor,
        obj: torch.Tensor,
        bounds: torch.Tensor,
        step: float,
        n: int = 24,
    ) -> torch.Tensor:
        """positions R x S x 3 (rays of samples) and N samples (ray ``r``, sample ``s``, object
        ``obj``, each N) -> N bool: whether the object's 3D mask lies further along the ray within
        its box grown by ``step``, looked up at ``n`` probes from the sample to where the ray
        leaves the box (``core.composite.probes_behind``)."""
        ray = positions[r, -1] - positions[r, 0]  # (the candidates' rays only)
        dirs = ray / ray.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        lo, hi = bounds[obj, 0] - step, bounds[obj, 1] + step
        probes = probes_behind(positions[r, s], dirs, lo, hi, n)
        values = self.object_values(probes.reshape(-1, 3)).reshape(len(r), n, -1)
        if values.shape[-1] <= int(obj.max()):  # (an object removed meanwhile, by the viewer)
            return torch.zeros(len(r), dtype=torch.bool, device=positions.device)
        mine = values.gather(-1, obj.view(-1, 1, 1).expand(-1, n, 1))[..., 0]
        return (mine > self.config.mask_threshold).any(-1)

    @torch.no_grad()
    def grown_by_margin(self, flat: torch.Tensor, gone: torch.Tensor, step: float) -> torch.Tensor:
        """positions N x 3 and what is removed there (N x K) -> also removed where an object's 3D
        mask is within ``step`` along an axis (a 6-neighbour dilation)."""
        if not len(flat):
            return gone
        grown = gone.clone()
        for axis in range(3):
            for sign in (-1.0, 1.0):
                offset = torch.zeros(3, device=flat.device, dtype=flat.dtype)
                offset[axis] = sign * step
                shifted = self.object_values(flat + offset)
                if shifted.shape[-1] != gone.shape[-1]:  # (an object added or removed meanwhile, by the viewer)
                    return gone
                grown |= shifted > self.config.mask_threshold
        return grown

    def get_rgba_image(self, outputs: dict[str, torch.Tensor], output_name: str = "rgb") -> torch.Tensor:
        """``ns-render --rendered-output-names rgba`` of an sa3d run: the object alone on a
        transparent background (``model.rgba-object False``: the whole scene, as nerfstudio does)."""
        if output_name == "rgb" and self.config.rgba_object and "accumulation_object" in outputs:
            # all objects together; one object of several: --rendered-output-names rgb_object_<name>
            acc = outputs["accumulation_object"]
            rgb = outputs["rgb_object_premultiplied"] / acc.clamp(min=1e-6)
            return torch.cat((rgb.clamp(0, 1), acc), dim=-1)
        return super().get_rgba_image(outputs, output_name)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, torch.Tensor]:
        return {}

    def get_metrics_dict(self, outputs, batch) -> dict[str, torch.Tensor]:
        return {}

    def get_image_metrics_and_images(self, outputs, batch):
        return {}, {"mask": outputs["mask"], "rgb_overlay": outputs["rgb_overlay"], "rgb_object": outputs["rgb_object"]}
