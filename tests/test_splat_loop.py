"""SA3D's loop on Gaussians (issue 16's core): a splatfacto run trained on the CPU (tests/splat_cpu.py)
on a generated scene, each pixel's Gaussians listed through gsplat's pair functions (their CPU twins
here), the oracle segmenter and one click on the ball; the 3D mask is one value per Gaussian."""

from pathlib import Path

import numpy as np
import pytest
import torch
from splat_cpu import patched

from sa3d_ns.core.loop import LoopSettings, SA3DLoop
from sa3d_ns.core.metrics import iou
from sa3d_ns.core.prompts import Prompt
from sa3d_ns.core.records import ObjectState
from sa3d_ns.core.splats import gaussian_lifter
from sa3d_ns.scene.generate import OBJECTS
from sa3d_ns.segmenters.oracle import OracleSegmenter, read_instance_mask
from sa3d_ns.splat.scene import Gaussians, GaussianScene, View

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # (test_splat_e2e covers the loop in the README's suite)


def test_the_loop_segments_the_ball_on_a_trained_splat(cpu_splat):
    root, config = cpu_splat
    data = root / "scene"
    with patched():
        from nerfstudio.utils.eval_utils import eval_setup

        _, pipeline, _, _ = eval_setup(config, test_mode="test")
        m = pipeline.model
        gaussians = Gaussians(
            m.means.detach(), m.quats.detach(), torch.exp(m.scales.detach()), torch.sigmoid(m.opacities.detach())[:, 0],
            torch.cat([m.features_dc[:, None], m.features_rest], 1).detach(), sh_degree=m.config.sh_degree,
        )  # fmt: skip

        def views(dataset) -> tuple[list[View], list[str]]:
            cams, Ks = dataset.cameras, dataset.cameras.get_intrinsics_matrices()
            out = [
                View(cams.camera_to_worlds[i], Ks[i], int(cams.width[i]), int(cams.height[i])) for i in range(len(cams))
            ]
            return out, [Path(p).name for p in dataset.image_filenames]

        train, train_names = views(pipeline.datamanager.train_dataset)
        held_out, held_out_names = views(pipeline.datamanager.eval_dataset)
        table = torch.nn.Parameter(torch.zeros(len(gaussians)), requires_grad=False)
        scene = GaussianScene(gaussians, train, train_names, [table])

        def instances(view: int, size) -> np.ndarray:
            return read_instance_mask(data / "instances" / train_names[view], size)

        loop = SA3DLoop(scene, LoopSettings(save_view_images=False), [ObjectState(gaussian_lifter(table))],
                        lambda: ["ball"], lambda: OracleSegmenter(instances), log=lambda msg: None)  # fmt: skip
        ys, xs = np.nonzero(instances(0, (48, 48)) == 1)  # the red ball
        click = np.array([[xs.mean(), ys.mean()]], np.float32)
        loop.start_objects([Prompt(view=0, points=click, labels=np.ones(1, np.int64), name="ball")])
        records = loop.run_steps()
        # every view processed; nearly all accepted (their masks agree with the 3D mask)
        assert records[0]["status"] == "prompt" and len(records) == len(train)
        assert sum(r["status"] == "accepted" for r in records) >= len(train) - 2, [r["status"] for r in records]
        # the 3D mask: on for Gaussians in the ball, off for those away from it
        values = scene.object_values(0)
        centre = pipeline.datamanager.train_dataparser_outputs
        scale, transform = centre.dataparser_scale, centre.dataparser_transform
        world = ((gaussians.means / scale) - transform[:, 3]) @ transform[:, :3]  # (the scene's own frame)
        dist = (world - torch.tensor(OBJECTS[0].centre)).norm(dim=-1)
        radius = OBJECTS[0].size[0]
        assert (values[dist < radius - 0.05] > 0).float().mean() > 0.9
        assert (values[dist > radius + 0.2] > 0).float().mean() < 0.01
        # held-out views: the rendered mask (sum of weight x value > 0) against the true instance mask
        scores = []
        for view, name in zip(held_out, held_out_names, strict=True):
            score, _ = scene.render(view, colors=values[:, None])
            scores.append(iou(score[..., 0].numpy() > 0, read_instance_mask(data / "instances" / name) == 1))
    assert np.mean(scores) > 0.8, scores
