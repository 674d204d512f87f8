"""Training cameras as the nerfacto run learned them."""

from __future__ import annotations

import torch
from nerfstudio.cameras.cameras import Cameras


@torch.no_grad()
def learned_camera(model, cameras: Cameras, index: int) -> Cameras:
    """Training camera ``index`` (a one-camera batch) at the pose the run's camera optimizer
    learned for it (nerfacto's default SO3xR3 refines every training pose; its renders only line
    up with the training images there), as nerfstudio's splatfacto and exporters apply it. The
    dataset's pose when the optimizer is off."""
    cam = cameras[index : index + 1]
    optimizer = getattr(model, "camera_optimizer", None)
    if optimizer is None or optimizer.config.mode == "off":
        return cam
    probe = Cameras(
        camera_to_worlds=cam.camera_to_worlds.to(optimizer.pose_adjustment.device),
        fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy, width=cam.width, height=cam.height,
        camera_type=cam.camera_type, metadata={"cam_idx": index},
    )  # fmt: skip
    cam.camera_to_worlds = optimizer.apply_to_camera(probe).to(cam.camera_to_worlds)
    return cam


def training_camera(pipeline, index: int, scale: float = 1.0) -> Cameras:
    """Training view ``index`` of ``pipeline`` as renders of it should see it, on the pipeline's
    device: at the learned pose (``learned_camera``) unless the run says
    --pipeline.match-training-views False (runs made before the setting existed: the learned
    pose), its resolution scaled by ``scale`` (the one place a view is rendered at another size:
    the segmentation resolution, an image file's or a ground-truth mask's)."""
    cameras = pipeline.datamanager.train_dataset.cameras
    if getattr(pipeline.config, "match_training_views", True):
        cam = learned_camera(pipeline.model, cameras, index)
    else:
        cam = cameras[index : index + 1]
    return rescaled(cam.to(pipeline.device), scale)


def rescaled(cam: Cameras, scale: float) -> Cameras:
    """``cam`` with its resolution scaled by ``scale`` (in place; 1: unchanged)."""
    if scale != 1.0:
        cam.rescale_output_resolution(scale)
    return cam
