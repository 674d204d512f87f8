"""The user's source run (nerfacto or splatfacto): its config, its data and its latest checkpoint
(only ever read)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.models.splatfacto import SplatfactoModelConfig

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.nerf.checkpoints import latest_checkpoint

FLAG = "--pipeline.source-config"
SUPPORTED = (
    "the nerfacto family (ns-train nerfacto, nerfacto-big, nerfacto-huge, depth-nerfacto) and the splatfacto "
    "family (ns-train splatfacto, splatfacto-big)"
)


@dataclass
class SourceRun:
    config_path: Path
    config: TrainerConfig
    checkpoint: Path
    kind: str = "nerfacto"  # "nerfacto" or "splatfacto": which sa3d model segments it


def source_kind(model) -> str | None:
    """ "nerfacto" or "splatfacto" for a run's model config of a family sa3d segments, else None
    (an sa3d run's own config included)."""
    if type(model).__name__ in ("SA3DModelConfig", "SA3DSplatModelConfig"):
        return None
    if isinstance(model, NerfactoModelConfig):
        return "nerfacto"
    if isinstance(model, SplatfactoModelConfig):
        return "splatfacto"
    return None


def load_source_run(config_path: Path | None, flag: str = FLAG) -> SourceRun:
    if config_path is None:
        raise SA3DError(
            f"No source run given. Pass {FLAG} outputs/<scene>/<nerfacto or splatfacto>/<timestamp>/config.yml."
        )
    config_path = Path(config_path)
    if config_path.is_dir() and (config_path / "config.yml").is_file():
        config_path = config_path / "config.yml"
    if not config_path.is_file():
        raise SA3DError(
            f"{flag} {config_path}: file not found. Give the config.yml of a finished nerfacto or splatfacto run."
        )
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except Exception as err:  # noqa: BLE001
        raise SA3DError(
            f"{flag} {config_path}: not a readable nerfstudio config.yml ({type(err).__name__}: {str(err)[:200]})."
        ) from None
    if not isinstance(config, TrainerConfig):
        raise SA3DError(f"{flag} {config_path}: not a nerfstudio run config (got {type(config).__name__}).")
    kind = source_kind(getattr(config.pipeline, "model", None))
    if kind is None:
        raise SA3DError(
            f"{flag} {config_path}: this is a '{config.method_name}' run; sa3d segments runs of {SUPPORTED}, "
            "whose config.yml you pass here."
        )
    checkpoint = latest_checkpoint(config_path.parent / config.relative_model_dir)
    return SourceRun(config_path=config_path.resolve(), config=config, checkpoint=checkpoint.resolve(), kind=kind)


def copy_nerfacto_settings(source: NerfactoModelConfig, target: NerfactoModelConfig) -> None:
    """Give ``target`` every nerfacto hyper-parameter of ``source`` (so shapes and geometry match)."""
    for f in dataclasses.fields(NerfactoModelConfig):
        if f.name != "_target":
            setattr(target, f.name, copy.deepcopy(getattr(source, f.name)))


def copy_splatfacto_settings(source: SplatfactoModelConfig, target: SplatfactoModelConfig) -> None:
    """Give ``target`` every splatfacto hyper-parameter of ``source``."""
    for f in dataclasses.fields(SplatfactoModelConfig):
        if f.name != "_target":
            setattr(target, f.name, copy.deepcopy(getattr(source, f.name)))
