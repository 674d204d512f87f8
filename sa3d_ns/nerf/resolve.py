"""Fill an sa3d run config from the user's nerfacto run and check every input up front."""

from __future__ import annotations

import copy
from pathlib import Path

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.prompts import check_inside, load_prompt, resolve_view
from sa3d_ns.nerf.source_run import copy_nerfacto_settings, load_source_run


def resolve_config(config) -> None:
    """``config`` is an SA3DTrainerConfig; it is changed in place."""
    pipe = config.pipeline
    src = load_source_run(pipe.nerfacto_config)
    src_dm = src.config.pipeline.datamanager
    dm = pipe.datamanager
    dm.dataparser = copy.deepcopy(src_dm.dataparser)
    data = dm.data or src_dm.data or src_dm.dataparser.data
    if data is None or not Path(data).exists():
        raise SA3DError(
            f"The nerfacto run's data {data} does not exist (relative paths are taken from the current folder). "
            "Run from the folder you trained nerfacto in, or pass --data PATH to the dataset."
        )
    dm.data = Path(data)
    dm.dataparser.data = Path(data)
    copy_nerfacto_settings(src.config.pipeline.model, pipe.model)
    pipe.nerfacto_checkpoint = src.checkpoint
    if config.experiment_name is None:
        config.experiment_name = src.config.experiment_name
    pipe.model.implementation = checkpoint_implementation(src.checkpoint)

    if pipe.prompt is None:
        raise SA3DError("No prompt given: pass --pipeline.prompt prompt.json (see configs/prompt_example.json).")
    prompt = load_prompt(pipe.prompt)
    outputs = dm.dataparser.setup().get_dataparser_outputs(split="train")
    names = [str(p) for p in outputs.image_filenames]
    view = resolve_view(prompt.view, names)
    check_inside(prompt, int(outputs.cameras.width[view]), int(outputs.cameras.height[view]))
    if pipe.num_passes < 1:
        raise SA3DError(f"--pipeline.num-passes must be >= 1, got {pipe.num_passes}.")
    if pipe.render_downscale < 1:
        raise SA3DError(f"--pipeline.render-downscale must be >= 1, got {pipe.render_downscale}.")
    if pipe.sample_scale <= 0:
        raise SA3DError(f"--pipeline.sample-scale must be > 0, got {pipe.sample_scale}.")
    if pipe.cache_samples < 0:
        raise SA3DError(f"--pipeline.cache-samples must be >= 0 (0 keeps all samples), got {pipe.cache_samples}.")
    config.max_num_iterations = len(names) * pipe.num_passes

    if pipe.segmenter == "oracle":
        from sa3d_ns.data import instance_mask_paths

        instance_mask_paths(dm.data, names)
    elif pipe.segmenter == "sam":
        from sa3d_ns.segmenters.sam import resolve_sam_checkpoint

        resolve_sam_checkpoint(pipe.sam_variant, pipe.sam_checkpoint)


def checkpoint_implementation(checkpoint: Path) -> str:
    """The implementation ("tcnn" or "torch") a nerfacto checkpoint was trained with, checked to be
    usable here: tcnn weights cannot be loaded into the torch implementation."""
    import torch
    from nerfstudio.utils.external import TCNN_EXISTS

    from sa3d_ns.nerf.checkpoints import allow_numpy_scalars

    allow_numpy_scalars()
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001
        raise SA3DError(
            f"Could not read the nerfacto checkpoint {checkpoint}: {type(err).__name__}: {str(err)[:300]}"
        ) from None
    keys = state.get("pipeline", {}).keys() if isinstance(state, dict) else []
    if not keys:
        raise SA3DError(f"{checkpoint} is not a nerfstudio checkpoint (no 'pipeline' entry).")
    if not any(k.endswith(".params") for k in keys):
        return "torch"
    if not TCNN_EXISTS:
        raise SA3DError(
            f"The nerfacto checkpoint {checkpoint} was trained with tiny-cuda-nn (tcnn), which is not installed here; its "
            "weights cannot be used by the torch implementation. Install tiny-cuda-nn (CUDA machine), or retrain nerfacto "
            "with --pipeline.model.implementation torch."
        )
    return "tcnn"
