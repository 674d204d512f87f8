"""Fill an sa3d run config from the user's source run (nerfacto or splatfacto) and check every
input up front."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import yaml

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.objects import check_unique
from sa3d_ns.core.prompts import check_inside, load_prompts, resolve_view
from sa3d_ns.nerf.checkpoints import latest_checkpoint
from sa3d_ns.nerf.source_run import SourceRun, copy_nerfacto_settings, copy_splatfacto_settings, load_source_run
from sa3d_ns.run_folder import RunFolder

if TYPE_CHECKING:
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.models.nerfacto import NerfactoModelConfig
    from nerfstudio.models.splatfacto import SplatfactoModelConfig

MASK_SETTINGS = ("mask_num_levels", "mask_min_res", "mask_max_res", "mask_log2_hashmap_size", "mask_implementation")


def check_settings(pipe) -> None:
    """The numeric settings of an SA3DPipelineConfig, each a clear error when out of range."""
    if pipe.num_passes < 1:
        raise SA3DError(f"--pipeline.num-passes must be >= 1, got {pipe.num_passes}.")
    if pipe.render_downscale is not None and pipe.render_downscale < 1:
        raise SA3DError(f"--pipeline.render-downscale must be >= 1, got {pipe.render_downscale}.")
    if pipe.sample_scale <= 0:
        raise SA3DError(f"--pipeline.sample-scale must be > 0, got {pipe.sample_scale}.")
    if pipe.footprint_memory_mb is not None and pipe.footprint_memory_mb < 0:
        raise SA3DError(
            f"--pipeline.footprint-memory-mb must be >= 0 (0 keeps no footprints; leave it out for the default), got {pipe.footprint_memory_mb}."
        )
    if pipe.view_memory_mb is not None and pipe.view_memory_mb < 0:
        raise SA3DError(
            f"--pipeline.view-memory-mb must be >= 0 (0 keeps no views on the device; leave it out for the default), got {pipe.view_memory_mb}."
        )
    if pipe.segment_max_size < 0:
        raise SA3DError(
            f"--pipeline.segment-max-size must be >= 0 (0 = the training resolution), got {pipe.segment_max_size}."
        )
    if pipe.cache_samples < 0:
        raise SA3DError(f"--pipeline.cache-samples must be >= 0 (0 keeps all samples), got {pipe.cache_samples}.")


def resolve_config(config) -> None:
    """``config`` is an SA3DTrainerConfig; it is changed in place."""
    pipe = config.pipeline
    check_settings(pipe)
    src = load_source_run(*source_flag(pipe))
    if src.kind == "splatfacto":
        config.pipeline = pipe = splat_pipeline(pipe)
    pipe.source_config = src.config_path
    src_dm = cast("VanillaDataManagerConfig", src.config.pipeline.datamanager)
    dm = pipe.datamanager
    dm.dataparser = copy.deepcopy(src_dm.dataparser)
    if dm.data is not None:
        if not Path(dm.data).exists():
            raise SA3DError(
                f"--data {dm.data}: no such folder or file. Give the dataset the nerfacto run was trained on."
            )
        data = Path(dm.data)
    else:
        data = find_data(src_dm.data or src_dm.dataparser.data, src)
    dm.data = Path(data)
    dm.dataparser.data = Path(data)
    if src.kind == "splatfacto":
        copy_splatfacto_settings(cast("SplatfactoModelConfig", src.config.pipeline.model), pipe.model)
    else:
        model = cast("NerfactoModelConfig", pipe.model)
        copy_nerfacto_settings(cast("NerfactoModelConfig", src.config.pipeline.model), model)
        model.implementation = checkpoint_implementation(src.checkpoint)
    pipe.nerfacto_checkpoint = src.checkpoint
    if config.experiment_name is None:
        config.experiment_name = src.config.experiment_name

    if pipe.prompt is None and "viewer" not in str(config.vis):
        raise SA3DError(
            "No prompt given: pass --pipeline.prompt prompt.json (see configs/prompt_example.json), "
            "or prompt in the viewer (--vis viewer, the default: the run then waits there for a prompt)."
        )
    prompts = load_prompts(pipe.prompt) if pipe.prompt is not None else []
    outputs = dm.dataparser.setup().get_dataparser_outputs(split="train")
    names = [str(p) for p in outputs.image_filenames]
    for prompt in prompts:
        view = resolve_view(prompt.view, names)
        check_inside(prompt, int(outputs.cameras.width[view]), int(outputs.cameras.height[view]))
    kept = resolve_add_to(pipe, src) if pipe.add_to is not None else []
    pipe.model.objects = kept + new_object_names(kept, prompts, str(pipe.prompt))
    config.max_num_iterations = len(names) * pipe.num_passes * len(prompts)

    if pipe.segmenter in ("oracle", "oracle-noisy"):
        from sa3d_ns.data import instance_mask_paths

        instance_mask_paths(dm.data, names)
        if pipe.segmenter == "oracle-noisy":
            from sa3d_ns.segmenters.noisy import check_noise

            check_noise(pipe.noise_rate, pipe.noise_kinds)
    else:
        from sa3d_ns.segmenters.factory import resolve_segmenter_weights

        resolve_segmenter_weights(pipe)
    if any(p.text for p in prompts):
        from sa3d_ns.segmenters.text import resolve_text_checkpoint

        for name in ("text_box_threshold", "text_threshold"):
            if not 0 <= getattr(pipe, name) <= 1:
                raise SA3DError(f"--pipeline.{name.replace('_', '-')} must be in [0, 1], got {getattr(pipe, name)}.")
        resolve_text_checkpoint(pipe.text_model, pipe.text_checkpoint)


def source_flag(pipe) -> tuple[Path | None, str]:
    """The source run's config.yml and the flag it came from (--pipeline.source-config, or
    --pipeline.nerfacto-config as before); both given must name the same file."""
    given = [(Path(p), f) for p, f in ((pipe.source_config, "--pipeline.source-config"),
                                        (pipe.nerfacto_config, "--pipeline.nerfacto-config")) if p is not None]  # fmt: skip
    if len(given) == 2 and given[0][0].resolve() != given[1][0].resolve():
        raise SA3DError(
            f"--pipeline.source-config {given[0][0]} and --pipeline.nerfacto-config {given[1][0]} name different runs: "
            "give one of them (--pipeline.source-config takes nerfacto and splatfacto runs)."
        )
    return given[0] if given else (None, "--pipeline.source-config")


def splat_pipeline(pipe):
    """The sa3d pipeline config for a splatfacto source: the same settings, the splat model."""
    import dataclasses

    from sa3d_ns.splat.pipeline import SA3DSplatPipelineConfig

    out = SA3DSplatPipelineConfig()
    for f in dataclasses.fields(pipe):
        if f.name not in ("_target", "model"):
            setattr(out, f.name, getattr(pipe, f.name))
    for name in ("objects", "mask_threshold", "overlay_color", "overlay_alpha", "crop_to_bounds",
                 "object_background", "rgba_object"):  # fmt: skip
        setattr(out.model, name, getattr(pipe.model, name))
    return out


def training_folder(src) -> Path | None:
    """The folder ``ns-train nerfacto`` ran in, inferred from where its run folder is
    (<folder>/<output-dir>/<experiment>/<method>/<timestamp>/config.yml); None when the output
    folder was absolute."""
    out = Path(src.config.output_dir)
    if out.is_absolute():
        return None
    up = 3 + len(out.parts)  # experiment, method, timestamp, then the output folder's own parts
    parents = src.config_path.parents
    return parents[up] if len(parents) > up else None


def find_data(data, src) -> Path:
    """The nerfacto run's dataset: as its config names it (relative paths from the current
    folder), else relative to the folder nerfacto was trained in (a project folder moved or
    copied whole, or sa3d run from another working directory)."""
    if data is not None and Path(data).exists():
        return Path(data)
    tried = [str(data)]
    home = training_folder(src)
    if data is not None and not Path(data).is_absolute() and home is not None:
        if (home / data).exists():
            return (home / data).resolve()
        tried.append(str(home / data))
    raise SA3DError(
        f"The nerfacto run's data {data} does not exist (tried {' and '.join(tried)}; relative paths are taken from the "
        "current folder, then from the folder the run was trained in). Pass --data PATH to the dataset (e.g. when the "
        "run was trained from another working directory or the data moved), or run from the folder you trained it in."
    )


def checkpoint_implementation(checkpoint: Path) -> Literal["tcnn", "torch"]:
    """The implementation ("tcnn" or "torch") a nerfacto checkpoint was trained with, checked to be
    usable here: tcnn weights cannot be loaded into the torch implementation."""
    from nerfstudio.utils.external import TCNN_EXISTS

    from sa3d_ns.nerf.checkpoints import load_checkpoint

    keys = load_checkpoint(checkpoint, "nerfacto checkpoint", mmap=True)["pipeline"].keys()
    if not any(k.endswith(".params") for k in keys):
        return "torch"
    if not TCNN_EXISTS:
        raise SA3DError(
            f"The nerfacto checkpoint {checkpoint} was trained with tiny-cuda-nn (tcnn), which is not installed here; its "
            "weights cannot be used by the torch implementation. Install tiny-cuda-nn (CUDA machine), or retrain nerfacto "
            "with --pipeline.model.implementation torch."
        )
    return "tcnn"


def resolve_add_to(pipe, src: SourceRun) -> list[str]:
    """Check the sa3d run of --pipeline.add-to (finished, same source checkpoint), take its mask
    field settings and latest checkpoint; return its object names."""
    nerfacto_checkpoint = src.checkpoint
    flag = f"--pipeline.add-to {pipe.add_to}"
    path = Path(pipe.add_to)
    if path.is_dir():
        path = path / "config.yml"
    if not path.is_file():
        raise SA3DError(f"{flag}: file not found. Give the config.yml of a finished sa3d run.")
    try:
        old = yaml.load(path.read_text(), Loader=yaml.Loader)
        old_pipe, old_model = old.pipeline, old.pipeline.model
        old_objects, old_ckpt = list(old_model.objects), old_pipe.nerfacto_checkpoint
    except Exception as err:  # noqa: BLE001
        raise SA3DError(
            f"{flag}: not the config.yml of an sa3d run ({type(err).__name__}: {str(err)[:200]})."
        ) from None
    run = RunFolder.of(path)
    if not run.is_complete() or not run.checkpoints():
        raise SA3DError(
            f"{flag}: that run did not finish (no complete {run.summary_path} or no checkpoint in {run.models}: it "
            "was stopped before its end); add objects to a finished run, or run ns-train sa3d again to finish it."
        )
    if old_ckpt is None or Path(old_ckpt).resolve() != Path(nerfacto_checkpoint).resolve():
        raise SA3DError(
            f"{flag}: that run segmented another NeRF ({old_ckpt}), not {nerfacto_checkpoint}. "
            "Objects can only be added to a run of the same nerfacto checkpoint."
        )
    for key in MASK_SETTINGS if src.kind == "nerfacto" else ():
        setattr(pipe.model, key, getattr(old_model, key))
    pipe.add_to = path.resolve()
    pipe.add_to_checkpoint = latest_checkpoint(path.parent / old.relative_model_dir).resolve()
    return old_objects


def new_object_names(kept: list[str], prompts: list, source: str) -> list[str]:
    """The prompts' object names after the kept ones: an unnamed object whose default name
    (object, object2, ...) is taken gets the next free objectN; a chosen name that is taken is an
    error."""
    out = []
    for p in prompts:
        name = p.name
        if name in kept + out:
            if p.named:
                raise SA3DError(
                    f'Object name "{name}" in {source} is already an object of the run in --pipeline.add-to '
                    f'({kept}); give the new object another "name".'
                )
            n = len(kept) + len(out) + 1  # the object's number in the run
            while f"object{n}" in kept + out + [q.name for q in prompts]:
                n += 1
            name = f"object{n}"
        out.append(name)
    check_unique(kept + out, source)
    return out
