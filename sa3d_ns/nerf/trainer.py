"""The sa3d trainer: resolves the nerfacto run before anything is written, runs one SA3D view per
iteration, and removes its own run folder when it stops on bad input."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.run_folder import RunFolder

if TYPE_CHECKING:
    from sa3d_ns.nerf.pipeline import SA3DPipeline


def report_and_exit(err: SA3DError) -> None:
    CONSOLE.print(f"[bold red]sa3d error:[/bold red] {err}")
    sys.exit(2)


@dataclass
class SA3DTrainerConfig(TrainerConfig):
    _target: type = field(default_factory=lambda: SA3DTrainer)

    def set_timestamp(self) -> None:
        # ns-train calls this first, before it writes config.yml: the place to take settings from
        # the nerfacto run and to check every input, so that bad input leaves nothing behind.
        if getattr(self.pipeline, "nerfacto_checkpoint", None) is None:
            from sa3d_ns.nerf.resolve import resolve_config

            try:
                resolve_config(self)
            except SA3DError as err:
                report_and_exit(err)
        super().set_timestamp()


class SA3DTrainer(Trainer):
    config: SA3DTrainerConfig
    pipeline: SA3DPipeline

    def setup(self, test_mode="val") -> None:
        try:
            super().setup(test_mode)
        except SA3DError as err:
            self._abort(err)
        self.pipeline.run = RunFolder(Path(self.base_dir))
        self.config.max_num_iterations = self.pipeline.num_steps()

    def train(self) -> None:
        try:
            if self.config.max_num_iterations == 0 and getattr(self, "viewer_state", None) is not None:
                # no prompt file: the run waits in the viewer, where objects are prompted (SA3D panel)
                self.save_checkpoint(0)
                self._train_complete_viewer()
                return
            super().train()
        except SA3DError as err:
            self._abort(err)

    def train_iteration(self, step: int):
        # The lifting is an exact per-view update done by the pipeline: no backward pass here.
        _, loss_dict, metrics_dict = self.pipeline.get_train_loss_dict(step=step)
        return torch.zeros(()), loss_dict, metrics_dict

    def _abort(self, err: SA3DError) -> None:
        """Stop on bad input and remove this run's own folder, so no half-written run remains."""
        self.shutdown()
        if self.base_dir.is_dir() and not any(self.checkpoint_dir.glob("*.ckpt")):
            shutil.rmtree(self.base_dir, ignore_errors=True)
            CONSOLE.print(f"Removed the unfinished run folder {self.base_dir}.")
        report_and_exit(err)
