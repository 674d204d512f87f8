"""Fill an sa3d run config from the user's source run (nerfacto or splatfacto) and check every
input up front."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import yaml

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.objects import check_unique
from sa3d_ns.core.prompts import check_inside, load_prompts, resolve_view
from sa3d_ns.core.views import passes_order
from sa3d_ns.data import camera_sizes, check_frames, check_poses
from sa3d_ns.nerf.checkpoints import latest_checkpoint
from sa3d_ns.nerf.source_run import SourceRun, copy_nerfacto_settings, copy_splatfacto_settings, load_source_run
from sa3d_ns.run_folder import RunFolder

if TYPE_CHECKING:
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.models.nerfacto import NerfactoModelConfig
    from nerfstudio.models.splatfacto import SplatfactoModelConfig

MASK_SETTINGS = ("mask_num_levels", "mask_min_res", "mask_max_res", "mask_log2_hashmap_size", "mask_implementation")


# Every numeric setting of ns-train sa3d: (where, name, kind, low, high, what it means at the bounds).
# where: "" for --pipeline.<name>, "model" for --pipeline.model.<name>; kind "int" or "float"; the
# range is inclusive; None values (the settings whose default is computed) are left alone.
NUMERIC_SETTINGS = [
    ("", "num_passes", "int", 1, 100, ""),
    ("", "pass_views", "float", 0.01, 1, "1 = every view"),
    ("", "restart_after", "int", 0, 100000, "0 = never"),
    ("", "render_downscale", "float", 1, 1024, "leave it out for the default"),
    ("", "segment_max_size", "int", 0, 65536, "0 = the training resolution"),
    ("", "sample_scale", "float", 0.01, 16, ""),
    ("", "cache_samples", "int", 0, 4096, "0 keeps all samples"),
    ("", "footprint_memory_mb", "int", 0, 2**30, "0 keeps no footprints; leave it out for the default"),
    ("", "view_memory_mb", "int", 0, 2**30, "0 keeps no views on the device; leave it out for the default"),
    ("", "num_prompts", "int", 1, 1000, ""),
    ("", "prompt_distance_weight", "float", 0, 1e6, ""),
    ("", "iou_threshold", "float", 0, 1, ""),
    ("", "neg_weight", "float", 0, 1e6, ""),
    ("", "neg_weight_first", "float", 0, 1e6, ""),
    ("", "vote_prior", "float", 0, 1e9, "0 = plain average"),
    ("", "sgd_lr", "float", 1e-9, 1e6, ""),
    ("", "noise_rate", "float", 0, 1, ""),
    ("", "noise_seed", "int", 0, 2**32 - 1, ""),
    ("", "text_box_threshold", "float", 0, 1, ""),
    ("", "text_threshold", "float", 0, 1, ""),
    ("model", "mask_num_levels", "int", 1, 64, ""),
    ("model", "mask_min_res", "int", 1, 2**20, ""),
    ("model", "mask_max_res", "int", 1, 2**24, ""),
    ("model", "mask_log2_hashmap_size", "int", 8, 26, ""),
    ("model", "mask_threshold", "float", -1e6, 1e6, ""),
    ("model", "overlay_alpha", "float", 0, 1, ""),
    ("model", "front_visibility", "float", 0, 1, "leave it out for the default; None turns it off"),
    ("model", "removal_margin", "float", 0, 1000, "0 turns it off"),
]


def check_settings(pipe) -> None:
    """The numeric settings of an SA3DPipelineConfig (NUMERIC_SETTINGS), each a clear error when it
    is not a finite number of its kind in its range (NaN, infinity, a huge or negative value)."""
    for where, name, kind, low, high, note in NUMERIC_SETTINGS:
        owner = pipe.model if where == "model" else pipe
        if not hasattr(owner, name) or getattr(owner, name) is None:
            continue
        value = getattr(owner, name)
        flag = f"--pipeline.{where + '.' if where else ''}{name.replace('_', '-')}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ok = False
        elif isinstance(value, float):
            ok = math.isfinite(value) and (kind == "float" or value.is_integer()) and low <= value <= high
        else:
            ok = low <= value <= high  # (a Python int of any size: never converted to a float)
        if not ok:
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)[:40]
            span = f"{low} and {high}" if kind == "int" else f"{low:g} and {high:g}"
            raise SA3DError(
                f"{flag} must be {'a whole number' if kind == 'int' else 'a number'} between {span}"
                + (f" ({note})" if note else "")
                + f", got {shown}."
            )
    model = pipe.model
    if getattr(model, "mask_max_res", None) is not None and model.mask_max_res < model.mask_min_res:
        raise SA3DError(
            "--pipeline.model.mask-max-res must be at least --pipeline.model.mask-min-res; got "
            f"{model.mask_max_res} and {model.mask_min_res}."
        )


# the path flags of ns-train sa3d (attribute of the trainer config, flag)
PATH_FLAGS = [
    ("pipeline.source_config", "--pipeline.source-config"),
    ("pipeline.nerfacto_config", "--pipeline.nerfacto-config"),
    ("pipeline.prompt", "--pipeline.prompt"),
    ("pipeline.add_to", "--pipeline.add-to"),
    ("pipeline.cache_dir", "--pipeline.cache-dir"),
    ("pipeline.sam_checkpoint", "--pipeline.sam-checkpoint"),
    ("pipeline.sam2_checkpoint", "--pipeline.sam2-checkpoint"),
    ("pipeline.sam_hq_checkpoint", "--pipeline.sam-hq-checkpoint"),
    ("pipeline.text_checkpoint", "--pipeline.text-checkpoint"),
    ("pipeline.datamanager.data", "--data"),
    ("output_dir", "--output-dir"),
]


def check_paths(config) -> None:
    """Each path flag given is one the system can look up: a name it refuses (too long, a NUL
    byte, a folder it may not enter, a loop of links) is a clear error naming the flag; a path
    that does not exist is left to the flag's own check (which says what to give)."""
    for attr, flag in PATH_FLAGS:
        value = config
        for part in attr.split("."):
            value = getattr(value, part, None)
        if value is None:
            continue
        try:
            os.stat(value)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise SA3DError(f"{flag} {str(value)[:200]}: {reason}. Give a path this machine can open.") from None


def check_cache_dir(pipe, src: SourceRun) -> None:
    """--pipeline.cache-dir names a folder that can be made and written, outside the source run."""
    if pipe.cache_dir is None:
        return
    path = Path(pipe.cache_dir).expanduser().absolute()
    flag = f"--pipeline.cache-dir {pipe.cache_dir}"
    if path.exists() and not path.is_dir():
        raise SA3DError(f"{flag}: that is a file, not a folder. Give a folder for the cache (it is made if missing).")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SA3DError(
            f"{flag}: cannot create or write it ({existing} is not a folder this user may write). Give another folder."
        )
    run = src.config_path.parent.resolve()
    if path.resolve() == run or run in path.resolve().parents:
        raise SA3DError(
            f"{flag}: that is inside the source run {run}; sa3d never writes into it. Give a folder outside it "
            "(or leave the flag out: the cache then goes beside the sa3d runs)."
        )


def check_device(machine) -> None:
    """The device ``--machine.device-type`` asks for is one torch can use here."""
    import torch

    kind = machine.device_type
    if kind == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise SA3DError(
            f"--machine.device-type is cuda (nerfstudio's default), but torch {torch.__version__} ({build}) finds no "
            "usable CUDA GPU here. Add --machine.device-type cpu to segment on the CPU (slower), or run on a machine "
            "with an NVIDIA GPU, its driver and a CUDA build of torch."
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SA3DError(
            "--machine.device-type is mps, but this torch finds no Apple GPU (MPS) here. "
            "Add --machine.device-type cpu to segment on the CPU."
        )


def resolve_config(config) -> None:
    """``config`` is an SA3DTrainerConfig; it is changed in place."""
    pipe = config.pipeline
    check_settings(pipe)
    check_paths(config)
    src = load_source_run(*source_flag(pipe))
    check_cache_dir(pipe, src)
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
    outputs = parse_data(dm)
    names = [str(p) for p in outputs.image_filenames]
    cams = outputs.cameras
    sizes = camera_sizes(cams)
    masks = None
    if pipe.segmenter in ("oracle", "oracle-noisy"):
        from sa3d_ns.data import instance_mask_paths

        masks = instance_mask_paths(dm.data, names)
    check_frames(dm.data, names, sizes, poses=cams.camera_to_worlds.numpy(), masks=masks)
    held_out = parse_data(dm, "val")  # (nerfstudio loads the held-out images too)
    check_frames(dm.data, held_out.image_filenames, camera_sizes(held_out.cameras))
    for prompt in prompts:
        view = resolve_view(prompt.view, names)
        check_inside(prompt, int(outputs.cameras.width[view]), int(outputs.cameras.height[view]))
    kept = resolve_add_to(pipe, src) if pipe.add_to is not None else []
    pipe.model.objects = kept + new_object_names(kept, prompts, str(pipe.prompt))
    config.max_num_iterations = len(passes_order(list(range(len(names))), pipe.num_passes, pipe.pass_views)) * len(
        prompts
    )

    if pipe.segmenter in ("oracle", "oracle-noisy"):
        if pipe.segmenter == "oracle-noisy":
            from sa3d_ns.segmenters.noisy import check_noise

            check_noise(pipe.noise_rate, pipe.noise_kinds)
    else:
        from sa3d_ns.segmenters.factory import resolve_segmenter_weights

        resolve_segmenter_weights(pipe)
    if any(p.text for p in prompts):
        from sa3d_ns.segmenters.text import resolve_text_checkpoint

        resolve_text_checkpoint(pipe.text_model, pipe.text_checkpoint)
    check_device(config.machine)  # (last: every input's own error comes first, whatever the device)


def parse_data(dm, split: str = "train"):
    """nerfstudio's dataparser outputs of ``split`` of ``dm``'s data folder; a folder it cannot
    parse (or whose poses are not finite) is a clear error naming the folder."""
    check_poses(dm.data)
    try:
        return dm.dataparser.setup().get_dataparser_outputs(split=split)
    except SA3DError:
        raise
    except Exception as err:  # noqa: BLE001 - the dataparser's own errors are asserts, KeyErrors, ...
        raise SA3DError(
            f"nerfstudio's dataparser could not read the data folder {dm.data} ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]}). Give the data folder the source run was trained on (--data)."
        ) from None


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
