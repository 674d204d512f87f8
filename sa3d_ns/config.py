"""The ``sa3d`` method specification (the nerfstudio.method_configs entry point).

Import-light on purpose: nerfstudio imports this module for every ns-* command.
"""

from __future__ import annotations

from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from sa3d_ns.nerf.checkpoints import allow_numpy_scalars
from sa3d_ns.nerf.model import SA3DModelConfig
from sa3d_ns.nerf.pipeline import SA3DPipelineConfig
from sa3d_ns.nerf.trainer import SA3DTrainerConfig

# nerfstudio 1.1.5 cannot load nerfacto checkpoints under torch >= 2.6 without this (see checkpoints.py).
allow_numpy_scalars()

sa3d_method = MethodSpecification(
    config=SA3DTrainerConfig(
        method_name="sa3d",
        max_num_iterations=1,  # replaced by the number of views of the pass
        steps_per_save=1_000_000,  # the checkpoint is written when the pass ends
        steps_per_eval_batch=0,
        steps_per_eval_image=0,
        steps_per_eval_all_images=0,
        mixed_precision=False,
        pipeline=SA3DPipelineConfig(
            datamanager=VanillaDataManagerConfig(dataparser=NerfstudioDataParserConfig()),
            model=SA3DModelConfig(),
        ),
        optimizers={"mask_field": {"optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15), "scheduler": None}},
        vis="viewer",
    ),
    description="SA3D: segment an object in 3D from a prompt (points or box) in one view of a trained nerfacto.",
)
