"""The user's nerfacto run: its config, its data and its latest checkpoint (only ever read)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.nerfacto import NerfactoModelConfig

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.nerf.checkpoints import latest_checkpoint

FLAG = "--pipeline.nerfacto-config"


@dataclass
class SourceRun:
    config_path: Path
    config: TrainerConfig
    checkpoint: Path


def load_source_run(config_path: Path | None) -> SourceRun:
    if config_path is None:
        raise SA3DError(f"No nerfacto run given. Pass {FLAG} outputs/<scene>/nerfacto/<timestamp>/config.yml.")
    config_path = Path(config_path)
    if config_path.is_dir() and (config_path / "config.yml").is_file():
        config_path = config_path / "config.yml"
    if not config_path.is_file():
        raise SA3DError(f"{FLAG} {config_path}: file not found. Give the config.yml of a finished nerfacto run.")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except Exception as err:  # noqa: BLE001
        raise SA3DError(
            f"{FLAG} {config_path}: not a readable nerfstudio config.yml ({type(err).__name__}: {str(err)[:200]})."
        ) from None
    if not isinstance(config, TrainerConfig):
        raise SA3DError(f"{FLAG} {config_path}: not a nerfstudio run config (got {type(config).__name__}).")
    model = getattr(config.pipeline, "model", None)
    if not isinstance(model, NerfactoModelConfig) or type(model).__name__ == "SA3DModelConfig":
        raise SA3DError(
            f"{FLAG} {config_path}: this is a '{config.method_name}' run; sa3d segments runs of the nerfacto family "
            "(ns-train nerfacto, nerfacto-big, nerfacto-huge or depth-nerfacto), whose config.yml you pass here."
        )
    checkpoint = latest_checkpoint(config_path.parent / config.relative_model_dir)
    return SourceRun(config_path=config_path.resolve(), config=config, checkpoint=checkpoint.resolve())


def copy_nerfacto_settings(source: NerfactoModelConfig, target: NerfactoModelConfig) -> None:
    """Give ``target`` every nerfacto hyper-parameter of ``source`` (so shapes and geometry match)."""
    for f in dataclasses.fields(NerfactoModelConfig):
        if f.name != "_target":
            setattr(target, f.name, copy.deepcopy(getattr(source, f.name)))
