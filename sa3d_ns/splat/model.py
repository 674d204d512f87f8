"""The sa3d model on a splat: a frozen splatfacto plus one mask value per Gaussian per object.

A pixel's mask score is gsplat's render of the Gaussians' mask values as a colour channel,
``S(p) = sum_i w_i(p) m_i`` (the blending weights the lifting used, :mod:`sa3d_ns.core.splats`).
The object alone is the splat with every other Gaussian's opacity set to 0, the scene without it
the splat with its Gaussians' opacities set to 0. Everything is rendered by ``gsplat.rasterization``
(looked up at each call), as splatfacto renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from torch import nn
from torch.nn import Parameter

from sa3d_ns.core.composite import overlay
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.objects import crop, exclusive
from sa3d_ns.nerf.host import lpips_disabled
from sa3d_ns.nerf.model import MASK_PREFIX, MaskObjects, unbounded
from sa3d_ns.splat.scene import Gaussians, viewmat_of


@dataclass
class SA3DSplatModelConfig(SplatfactoModelConfig):
    """A frozen splatfacto (its settings are copied from the source run) plus per-Gaussian masks."""

    _target: type = field(default_factory=lambda: SA3DSplatModel)
    objects: list[str] = field(default_factory=lambda: ["object"])
    """Names of the segmented objects, one mask value per Gaussian each (filled from the prompt file)."""
    mask_threshold: float = 0.0
    """A Gaussian (and a pixel, by its rendered score) belongs to the object where the mask exceeds this."""
    overlay_color: tuple[float, float, float] = (1.0, 0.2, 0.2)
    """Colour of the (first) object in the ``rgb_overlay`` output; further objects get distinct colours."""
    overlay_alpha: float = 0.5
    """Opacity of the colour in the ``rgb_overlay`` output."""
    crop_to_bounds: bool = True
    """Each object's mask is off for Gaussians whose centre lies outside a box around the surface its accepted 2D masks saw (grown by 15 %)."""
    object_background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour of the ``rgb_object`` output (the object alone)."""
    rgba_object: bool = True
    """The ``rgba`` render output (ns-render) is the object alone on a transparent background."""


class SA3DSplatModel(MaskObjects, SplatfactoModel):
    """Splatfacto, frozen (no densification, no optimisation), with a mask value per Gaussian for
    each object (``mask_fields[k]``, an N-vector)."""

    config: SA3DSplatModelConfig

    def __init__(self, *args, seed_points=None, **kwargs):
        # the Gaussians come from the source run's checkpoint: no seed points to build from
        super().__init__(*args, seed_points=None, **kwargs)

    def populate_modules(self):
        cfg = self.config
        saved = cfg.num_random
        cfg.num_random = 8  # (placeholders, resized when the source checkpoint is loaded)
        try:
            with lpips_disabled():
                super().populate_modules()
        finally:
            cfg.num_random = saved
        self.mask_fields = nn.ParameterList(self.new_mask_field() for _ in cfg.objects)
        self.register_buffer("object_bounds", unbounded(len(cfg.objects)))
        self._freeze()

    def _freeze(self) -> None:
        """Only the masks are parameters (lifted by the pipeline; the reference path's autograd
        differentiates renders in them): the Gaussians are frozen."""
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(MASK_PREFIX))

    def new_mask_field(self) -> Parameter:
        """An empty (zero) mask: one value per Gaussian."""
        return Parameter(torch.zeros(len(self.means), device=self.means.device))

    def field_of(self, k: int) -> Parameter:
        """Object ``k``'s mask values (one per Gaussian)."""
        return self.mask_fields[k]

    # ----------------------------------------------------------------- the frozen Gaussians
    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):  # type: ignore[override]
        """As splatfacto's (its Gaussians resized to the checkpoint's count), with the mask values
        resized in place too (the lifters hold them)."""
        state = dict(state_dict)
        n = (state["gauss_params.means"] if "gauss_params.means" in state else state["means"]).shape[0]
        for p in self.mask_fields:
            p.data = torch.zeros(n, device=p.device, dtype=p.dtype)
        super().load_state_dict(state, strict=strict, **kwargs)
        self._freeze()

    def load_source_state(self, pipeline_state: dict, source: Path) -> None:
        """Load the source run's splatfacto Gaussians; every splatfacto parameter must be found."""
        state = {k[len("_model.") :]: v for k, v in pipeline_state.items() if k.startswith("_model.")}
        if "gauss_params.means" not in state and "means" not in state:
            raise SA3DError(
                f"The checkpoint {source} holds no Gaussians (no gauss_params.means): is it a splatfacto run?"
            )
        ours = (MASK_PREFIX, "object_bounds")
        expected = set(self.state_dict())
        missing = sorted(k for k in expected - set(state) if not k.startswith(ours))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise SA3DError(
                f"The checkpoint {source} does not match a splatfacto model with the run's settings "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]}). Is it a splatfacto run?"
            )
        self.load_state_dict(state, strict=False)

    def own_colors(self) -> tuple[torch.Tensor, int | None]:
        """The Gaussians' colours as splatfacto renders them: (SH coefficients N x B x 3, degree)
        or (RGB N x 3, None) without SH."""
        if self.config.sh_degree > 0:
            colors = torch.cat((self.features_dc[:, None, :], self.features_rest), dim=1)
            return colors, min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        return torch.sigmoid(self.features_dc), None

    def gaussians(self) -> Gaussians:
        """The activated Gaussians (as gsplat takes them), detached."""
        colors, degree = self.own_colors()
        return Gaussians(
            self.means.detach(), self.quats.detach(), torch.exp(self.scales.detach()),
            torch.sigmoid(self.opacities.detach())[:, 0], colors.detach(), sh_degree=degree,
            antialiased=self.config.rasterize_mode == "antialiased",
        )  # fmt: skip

    @torch.no_grad()
    def object_values(self) -> torch.Tensor:
        """Every Gaussian's mask values N x K, one column per object, off outside each bounded
        object's box (by the Gaussian's centre) and exclusive: at most one object is on."""
        fields, bounds = list(self.mask_fields), self.object_bounds
        k = min(len(fields), len(bounds))  # (a render racing an object being added or removed)
        n = len(self.means)
        if k == 0 or any(len(f) != n for f in fields[:k]):
            return self.means.new_zeros((n, 0))
        values = torch.stack([f.detach() for f in fields[:k]], dim=-1)
        if self.config.crop_to_bounds:
            values = crop(values, self.means.detach(), bounds[:k], self.config.mask_threshold)
        return exclusive(values, self.config.mask_threshold)

    # ----------------------------------------------------------------- renders
    def _raster(self, camera: Cameras, colors, opacities, sh_degree, mode: Literal["RGB", "RGB+ED"] = "RGB"):
        """gsplat's render of the Gaussians with ``colors`` and ``opacities`` from ``camera``:
        (image 1 x H x W x C, alpha 1 x H x W x 1)."""
        import gsplat

        g = self
        Ks = camera.get_intrinsics_matrices().to(self.device)
        w, h = int(camera.width.item()), int(camera.height.item())
        viewmat = viewmat_of(camera.camera_to_worlds[0].to(self.device))[None]
        out, alpha, _ = gsplat.rasterization(
            means=g.means, quats=g.quats, scales=torch.exp(g.scales), opacities=opacities, colors=colors,
            viewmats=viewmat, Ks=Ks, width=w, height=h, packed=False, near_plane=0.01, far_plane=1e10,
            render_mode=mode, sh_degree=sh_degree, rasterize_mode=self.config.rasterize_mode,
        )  # fmt: skip
        return out, alpha

    def get_outputs(self, camera: Cameras) -> dict:
        """Splatfacto's render, and what the masks make of it: the mask, its score and the overlay;
        the objects alone and the scene without them (each object on its own too, when there are
        several)."""
        out = super().get_outputs(camera)
        if self.training or not isinstance(camera, Cameras) or "background" not in out:
            return out
        with torch.no_grad():
            self._mask_outputs(camera, out)
        return out

    def _mask_outputs(self, camera: Cameras, out: dict) -> None:
        cfg = self.config
        opacity = torch.sigmoid(self.opacities)[:, 0]
        if self.crop_box is not None:  # (the viewer's crop: as splatfacto's own render)
            opacity = opacity * self.crop_box.within(self.means).reshape(-1).to(opacity)
        values = self.object_values()
        k_all = values.shape[-1]
        rgb = out["rgb"]
        h, w = rgb.shape[:2]
        if k_all:
            render, _ = self._raster(camera, values, opacity, None)
            scores = render[0].reshape(h * w, k_all)
        else:
            scores = rgb.new_zeros((h * w, 0))
        colors = self.overlay_colors(k_all, rgb)
        mask, score, over = overlay(rgb.reshape(-1, 3), scores, cfg.mask_threshold, colors, cfg.overlay_alpha)
        out["mask"], out["mask_score"], out["rgb_overlay"] = (t.reshape(h, w, -1) for t in (mask, score, over))
        own, degree = self.own_colors()
        background = torch.tensor(cfg.object_background, device=rgb.device, dtype=rgb.dtype)
        rays = ray_lengths(camera, h, w).to(rgb.device)  # z-depth -> distance along the unit ray
        # each Gaussian wholly in one cut-out or the other (sharing the border's Gaussians by their
        # mask value was measured worse: ghost 6.8 -> 33.6 %, removal PSNR 21.98 -> 18.16 dB)
        share = (values > cfg.mask_threshold).to(opacity.dtype)  # N x K

        def alone_and_removed(on: torch.Tensor, suffix: str) -> None:
            render, alpha = self._raster(camera, own, opacity * on, degree, "RGB+ED")
            premultiplied, alpha = render[0, ..., :3], alpha[0]
            out["rgb_object" + suffix] = (premultiplied + (1 - alpha) * background).clamp(0, 1)
            out["rgb_object_premultiplied" + suffix] = premultiplied
            out["accumulation_object" + suffix] = alpha
            out["depth_object" + suffix] = render[0, ..., 3:4] * rays  # (gsplat's ED: the expected z-depth)
            render, alpha = self._raster(camera, own, opacity * (1 - on), degree)
            out["rgb_removed" + suffix] = (render[0, ..., :3] + (1 - alpha[0]) * out["background"]).clamp(0, 1)

        alone_and_removed(share.amax(-1) if k_all else opacity.new_zeros(len(opacity)), "")
        if k_all > 1:
            on = scores > cfg.mask_threshold
            for k, name in enumerate(cfg.objects[:k_all]):
                out[f"mask_{name}"] = on[:, k : k + 1].float().reshape(h, w, 1)
                out[f"mask_score_{name}"] = scores[:, k : k + 1].reshape(h, w, 1)
                alone_and_removed(share[:, k], f"_{name}")

    def get_rgba_image(self, outputs: dict, output_name: str = "rgb") -> torch.Tensor:
        """``ns-render --rendered-output-names rgba``: the object alone on a transparent background
        (``model.rgba-object False``: the whole scene, as nerfstudio does)."""
        if output_name == "rgb" and self.config.rgba_object and "accumulation_object" in outputs:
            acc = outputs["accumulation_object"]
            rgb = outputs["rgb_object_premultiplied"] / acc.clamp(min=1e-6)
            return torch.cat((rgb.clamp(0, 1), acc), dim=-1)
        return super().get_rgba_image(outputs, output_name)

    # ----------------------------------------------------------------- nerfstudio hooks (nothing is trained)
    def get_param_groups(self) -> dict[str, list[Parameter]]:
        return {"mask_field": list(self.mask_fields)} if len(self.mask_fields) else {}

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        return []

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict:
        return {}

    def get_metrics_dict(self, outputs, batch) -> dict:
        return {}

    def get_image_metrics_and_images(self, outputs, batch):
        return {}, {k: outputs[k] for k in ("mask", "rgb_overlay", "rgb_object") if k in outputs}


def ray_lengths(camera: Cameras, height: int, width: int) -> torch.Tensor:
    """H x W x 1: the length of each pixel's camera-space ray direction with unit depth (a
    z-depth times it is the distance along the unit ray, nerfstudio's depth)."""
    fx, fy, cx, cy = (float(getattr(camera, a).reshape(-1)[0]) for a in ("fx", "fy", "cx", "cy"))
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return torch.sqrt(((u - cx) / fx) ** 2 + ((v - cy) / fy) ** 2 + 1)[..., None]
