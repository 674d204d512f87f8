"""The sa3d benchmark: the authors' way of running SA3D (the reference path) against ours.

    python scripts/benchmark.py [--workdir DIR] [--num-views 24] [--size 64] [--segmenters oracle weightfree sam sam2 sam-hq]

On a generated scene (made and trained once, then reused from ``--workdir``) it segments two objects
in the same scene with each segmenter along two paths, each in its own process (so that peak
memory is the path's own):

* ``reference``: the authors' method as they ran it. One pass over the training views; at each
  view the full view is rendered by the NeRF at the training resolution, the segmenter runs its
  full prediction on it (SAM's image encoder included), self-prompts are chosen and the mask field
  takes one SGD step.
* ``default``: the pipeline with this package's default settings (its NeRF lookups included).

For each it reports the wall time of each stage (NeRF rendering, 2D segmentation, lifting), the
time to the first object (model set-up included) and to a second object in the same scene, peak
memory, and mIoU / accuracy on the held-out views against the scene's instance masks. The last
line printed holds the speed ratios (reference time / default time) and each path's mIoU.

    python scripts/benchmark.py --scale-views 25 50 100 200 --scale-sizes 128 256 512

prints instead a scale table of the default path (oracle segmenter): for each number of views and
image size, a scene of its own (its nerfacto trained briefly: the timing does not depend on the
NeRF's quality), the time to the first and the second object, peak memory and the cache's size on
disk, and the exponents of a power law fitted to each column (time ~ views^a x pixels^b).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from sa3d_ns.tools.train_nerfacto import CPU_NERFACTO_FLAGS

if TYPE_CHECKING:
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    from sa3d_ns.nerf.pipeline import SA3DPipelineConfig

# Settings of each path; anything not named here keeps the pipeline's default.
PATHS: dict[str, dict] = {
    "reference": {
        "lifting": "sgd",
        "cache": False,
        "render_downscale": 1.0,
        "segment_image": "render",
        "num_passes": 1,
        "model.fast_hash_grids": False,  # nerfstudio's own hash-grid lookups
        "sam_bf16": False,  # SAM's encoder in float32
    },
    "default": {},
}


def log(msg: str) -> None:
    print(f"benchmark: {msg}", flush=True)


def bin_path(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


# --------------------------------------------------------------------------- scene and nerfacto
def prepare_scene(
    workdir: Path, num_views: int, size: int, steps: int, device: str, objects: str = "demo", texture: str = "plain"
) -> tuple[Path, Path]:
    """Generate the scene (object set ``objects``, ``texture``) and train nerfacto once per
    (objects, texture, views, size, steps, device); reuse them after."""
    tag = f"v{num_views}_s{size}_n{steps}_{device}" + ("" if objects == "demo" else f"_{objects}")
    tag += "" if texture == "plain" else f"_{texture}"
    scene = workdir / f"scene_{tag}"
    if not (scene / "transforms.json").is_file():
        log(f"generating the scene ({num_views} views, {size}x{size}, objects {objects}) in {scene}")
        subprocess.run(
            [bin_path("sa3d-make-scene"), "--output", str(scene), "--num-views", str(num_views),
             "--width", str(size), "--height", str(size), "--objects", objects, "--texture", texture],
            check=True)  # fmt: skip
    outputs = workdir / f"nerfacto_{tag}"
    configs = sorted(outputs.glob("*/nerfacto/*/config.yml"))
    done = [c for c in configs if list((c.parent / "nerfstudio_models").glob("*.ckpt"))]
    if not done:
        log(f"training nerfacto for {steps} steps on {device}")
        flags = CPU_NERFACTO_FLAGS if device == "cpu" else []
        subprocess.run(
            [bin_path("sa3d-train-nerfacto"), "nerfacto", "--data", str(scene), "--output-dir", str(outputs),
             "--max-num-iterations", str(steps), "--machine.device-type", device, "--vis", "tensorboard",
             "--viewer.quit-on-train-completion", "True", "--steps-per-save", "100000", *flags],
            check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        done = sorted(
            c for c in outputs.glob("*/nerfacto/*/config.yml") if list((c.parent / "nerfstudio_models").glob("*.ckpt"))
        )
    return scene, done[-1]


def object_prompt(
    scene: Path, train_names: list[str], name: str, prefer_view: int | None = None
) -> tuple[dict, int, int]:
    """A one-point prompt for the object ``name``, at its most interior pixel: in ``prefer_view``
    when the object shows there at least half as much as in its best view, else in the training
    view where it shows the most. Returns (prompt JSON, object id, view index)."""
    import cv2

    from sa3d_ns.data import instance_mask_paths
    from sa3d_ns.segmenters.oracle import read_instance_mask

    objects = json.loads((scene / "objects.json").read_text())["objects"]
    by_name = {o["name"]: o["id"] for o in objects}
    if name not in by_name:
        raise SystemExit(f"benchmark: unknown object {name!r}; the scene has {sorted(by_name)}")
    obj = by_name[name]
    paths = instance_mask_paths(scene, train_names)
    areas = [int((read_instance_mask(p) == obj).sum()) for p in paths]
    view = int(np.argmax(areas))
    if prefer_view is not None and areas[prefer_view] >= 0.5 * areas[view]:
        view = prefer_view
    mask = (read_instance_mask(paths[view]) == obj).astype(np.uint8)
    dist = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return {"view": Path(train_names[view]).name, "points": [[float(x), float(y)]], "labels": [1]}, obj, view


def scene_prompts(
    scene: Path, objects: list[str], workdir: Path, tag: str = ""
) -> tuple[list[str], list[str], list[int]]:
    """The scene's training image names, and a prompt file (written to ``workdir``) and instance id
    for each object: the second object prompted in the first one's view when it shows well there."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    outputs = NerfstudioDataParserConfig(data=scene).setup().get_dataparser_outputs("train")
    train_names = [str(p) for p in outputs.image_filenames]
    prompts, ids, first_view = [], [], None
    for name in objects:
        prompt, obj, view = object_prompt(scene, train_names, name, first_view)
        first_view = view if first_view is None else first_view
        path = workdir / f"prompt_{tag}{name}.json"
        path.write_text(json.dumps(prompt))
        prompts.append(str(path))
        ids.append(obj)
    return train_names, prompts, ids


# --------------------------------------------------------------------------- one path in one process
def parse_setting(current, value):
    """A --set value (a string) as the type of the setting it replaces."""
    if not isinstance(value, str):
        return value
    if current is None:  # an optional setting left at its default: read a number when it is one
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return None if value.lower() == "none" else value
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"benchmark: expected true or false, got {value!r}")
        return value.lower() in ("true", "1")
    if isinstance(current, tuple):  # e.g. noise_kinds=part,merge
        return tuple(v for v in value.split(",") if v)
    return type(current)(value) if isinstance(current, (int, float)) else value


def build_pipeline(spec: dict):
    import torch

    from sa3d_ns.config import sa3d_method
    from sa3d_ns.nerf.resolve import resolve_config

    config = copy.deepcopy(sa3d_method.config)
    pipe = cast("SA3DPipelineConfig", config.pipeline)
    pipe.source_config = Path(spec["source_config"])
    pipe.prompt = Path(spec["prompts"][0])
    pipe.segmenter = spec["segmenter"]
    pipe.sam_variant = spec.get("sam_variant", "vit_b")
    ckpt = Path(spec["checkpoint"]) if spec.get("checkpoint") else None
    pipe.sam_checkpoint = ckpt if spec["segmenter"] == "sam" else None
    pipe.sam2_variant = spec.get("sam2_variant", "hiera_t")
    pipe.sam2_checkpoint = ckpt if spec["segmenter"] == "sam2" else None
    pipe.sam_hq_variant = spec.get("sam_hq_variant", "vit_tiny")
    pipe.sam_hq_checkpoint = ckpt if spec["segmenter"] == "sam-hq" else None
    pipe.save_view_images = False
    pipe.cache_dir = Path(spec["cache_dir"])
    path_settings, given = PATHS[spec["path"]], spec.get("overrides", {})
    settings = {**path_settings, **given}
    for key, value in settings.items():
        if not key.startswith("model."):
            if not hasattr(pipe, key):
                raise SystemExit(f"benchmark: the pipeline has no setting {key!r}")
            setattr(pipe, key, parse_setting(getattr(pipe, key), value))
    config.machine.device_type = spec["device"]
    resolve_config(config)  # (a splatfacto source swaps in the splat pipeline's config)
    model = config.pipeline.model  # (the model's settings after the source run's are copied)
    for key, value in settings.items():
        if key.startswith("model."):
            name = key[len("model.") :]
            if not hasattr(model, name):
                if key in path_settings and key not in given:
                    continue  # (a path's setting of the other model, e.g. the NeRF's hash-grid lookups)
                raise SystemExit(f"benchmark: the {type(model).__name__} has no setting {key!r}")
            setattr(model, name, parse_setting(getattr(model, name), value))
    device = torch.device(spec["device"])
    return config.pipeline.setup(device=device, test_mode="val", world_size=1, local_rank=0)


def run_path(spec: dict) -> dict:
    """Segment every object of ``spec`` along one path; return the figures."""
    import torch

    from sa3d_ns.core.prompts import load_prompt, resolve_view
    from sa3d_ns.evaluate import CUTOUT_KEYS, evaluate_views, instance_ground_truth

    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pipeline = build_pipeline(spec)
    setup_s = time.perf_counter() - t0
    data = Path(pipeline.datamanager.dataparser.config.data)
    objects = []
    names = spec.get("object_names") or [str(i) for i in spec["object_ids"]]
    for i, (prompt_file, obj_id) in enumerate(zip(spec["prompts"], spec["object_ids"], strict=True)):
        t = time.perf_counter()
        if i > 0:
            pipeline.start_object(load_prompt(Path(prompt_file)))
        if spec.get("max_views"):
            # every object visits the same views (every object's prompt view among them, its own
            # first), as full passes would
            if i == 0:
                starts = [resolve_view(load_prompt(Path(f)).view, pipeline.image_names) for f in spec["prompts"]]
                starts = list(dict.fromkeys(starts))
                rest = [v for v in pipeline.order if v not in starts]
                subset = set(starts + rest[: max(spec["max_views"] - len(starts), 0)])
            obj = pipeline.objects[pipeline.active[0]]
            start = obj.order[0]
            obj.order = ([start] + [v for v in obj.order if v in subset and v != start])[: spec["max_views"]]
        records = pipeline.segment_all()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t + (setup_s if i == 0 else 0.0)
        rows = evaluate_views(pipeline, instance_ground_truth(pipeline.datamanager, data, "test", obj_id))
        export = export_figures(pipeline, data, obj_id, spec["export_check"]) if spec.get("export_check") else {}
        objects.append(
            {
                "name": names[i],
                **{key: float(np.nanmean([r[key] for r in rows])) for key in CUTOUT_KEYS if key in rows[0]},
                "seconds": seconds,
                "views": len(records),
                "accepted": sum(r["status"] in ("prompt", "accepted") for r in records),
                "render_s": sum(r.get("render_s", 0.0) for r in records),
                "segment_s": sum(r.get("segment_s", 0.0) for r in records),
                "lift_s": sum(r.get("lift_s", 0.0) for r in records),
                "miou": float(np.mean([r["iou"] for r in rows])),
                "macc": float(np.mean([r["accuracy"] for r in rows])),
                **export,
            }
        )
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "setup_s": setup_s,
        "objects": objects,
        "peak_mb": peak,
        "peak_kind": "cuda allocated" if cuda else "RSS",
        "cache": pipeline.cache_summary(),
    }


def export_figures(pipeline, data: Path, obj_id: int, every: int) -> dict:
    """What ``sa3d-export pointcloud`` would write for the pipeline's object 0 (its surface points
    from every ``every``-th training view, dataset frame), scored against the object's true box
    (``objects.json``): the share of points beyond it grown by 5 % of its largest side."""
    from sa3d_ns.core.metrics import outside_box
    from sa3d_ns.export import object_points, original_frame

    box = next(o for o in json.loads((data / "objects.json").read_text())["objects"] if o["id"] == obj_id)
    points = original_frame(pipeline, object_points(pipeline, [0], every=every)[0][0])
    return {"export_points": len(points), "export_outside": outside_box(points, box["bounds_min"], box["bounds_max"])}


def path_tag(source: str, segmenter: str, path: str, tag: str | None = None) -> str:
    """The name of one benchmark row's files in the workdir (its cache is ``cache_<this>``)."""
    return f"{source}_{segmenter}_{path}" + (f"_{tag}" if tag else "")


def spawn_path(spec: dict, workdir: Path) -> dict:
    import shutil

    tag = path_tag(spec.get("source", "nerfacto"), spec["segmenter"], spec["path"], spec.get("tag"))
    spec["cache_dir"] = str(workdir / f"cache_{tag}")
    shutil.rmtree(spec["cache_dir"], ignore_errors=True)  # the first object pays for building the caches
    spec_file = workdir / f"spec_{tag}.json"
    out_file = spec_file.with_name(spec_file.name.replace("spec_", "result_"))
    spec_file.write_text(json.dumps(spec))
    out_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "sa3d_ns.bench", "--worker", str(spec_file), "--worker-out", str(out_file)], env=env
    )
    if proc.returncode != 0 or not out_file.is_file():
        raise SystemExit(
            f"benchmark: the {spec['path']} path with {spec['segmenter']} failed (exit {proc.returncode})."
        )
    return json.loads(out_file.read_text())


def random_checkpoint(workdir: Path, segmenter: str, variant: str) -> Path:
    """A SAM-family model's real architecture with random weights (for timing only), saved once in
    the format its checkpoints have."""
    import torch

    path = workdir / f"{segmenter}_{variant}_random.pth"
    if path.is_file():
        return path
    torch.manual_seed(0)
    if segmenter == "sam":
        from segment_anything import sam_model_registry

        state = sam_model_registry[variant]().state_dict()
    elif segmenter == "sam-hq":
        from segment_anything_hq import sam_model_registry

        state = sam_model_registry[variant](checkpoint=None).state_dict()
    else:
        from sa3d_ns.segmenters.sam_variants import build_sam2_model

        state = {"model": build_sam2_model(variant, None).state_dict()}
    torch.save(state, path)
    return path


# --------------------------------------------------------------------------- scale table
def fit_power_law(views: list[int], pixels: list[int], values: list[float]) -> tuple[float, float]:
    """Exponents (a, b) of values ~ c * views^a * pixels^b, least squares in log space (a or b is
    nan when views or pixels do not vary).

    Example: values = views * pixels (an exact product) -> (1.0, 1.0).
    """
    v, p, y = (np.log(np.asarray(x, dtype=np.float64)) for x in (views, pixels, values))
    cols = [np.ones_like(y)]
    vary_v, vary_p = np.ptp(v) > 0, np.ptp(p) > 0
    if vary_v:
        cols.append(v)
    if vary_p:
        cols.append(p)
    coef = np.linalg.lstsq(np.stack(cols, 1), y, rcond=None)[0]
    a = coef[1] if vary_v else float("nan")
    b = coef[-1] if vary_p else float("nan")
    return float(a), float(b)


def scale_table(args, device: str, workdir: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    steps = args.nerfacto_steps or (30 if device == "cpu" else 300)
    rows = []
    for size in args.scale_sizes:
        for views in args.scale_views:
            scene, nerfacto_config = prepare_scene(workdir, views, size, steps, device)
            train_names, prompts, ids = scene_prompts(scene, args.objects, workdir, f"v{views}_s{size}_")
            log(f"scale: {len(train_names)} training views of {size}x{size} ...")
            spec = {
                "path": "default", "segmenter": "oracle", "device": device, "source_config": str(nerfacto_config),
                "prompts": prompts, "object_ids": ids, "checkpoint": None, "max_views": None,
                "overrides": {"segment_max_size": "0"}, "tag": f"v{views}_s{size}",
            }  # fmt: skip
            r = spawn_path(spec, workdir)
            rows.append(
                {
                    "views": len(train_names),
                    "size": size,
                    "first_s": r["objects"][0]["seconds"],
                    "second_s": r["objects"][1]["seconds"] if len(r["objects"]) > 1 else float("nan"),
                    "peak_mb": r["peak_mb"],
                    "cache_mb": r["cache"].get("disk_bytes", 0) / 2**20,
                    "miou": float(np.mean([o["miou"] for o in r["objects"]])),
                }
            )
    table = Table(
        title=f"sa3d default path on {device}: scale (oracle segmenter, objects {' then '.join(args.objects)})"
    )
    cols = {"views": "views", "size": "image", "first_s": "1st object s", "second_s": "2nd object s",
            "peak_mb": "peak MB", "cache_mb": "cache MB", "miou": "mIoU"}  # fmt: skip
    for title in cols.values():
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(
            str(r["views"]), f"{r['size']}x{r['size']}", f"{r['first_s']:.1f}", f"{r['second_s']:.1f}",
            f"{r['peak_mb']:.0f}", f"{r['cache_mb']:.0f}", f"{r['miou']:.3f}",
        )  # fmt: skip
    Console(width=160).print(table)
    fits = {}
    for key in ("first_s", "second_s", "peak_mb", "cache_mb"):
        ok = [r for r in rows if np.isfinite(r[key]) and r[key] > 0]
        if len(ok) >= 2:
            fits[key] = fit_power_law([r["views"] for r in ok], [r["size"] ** 2 for r in ok], [r[key] for r in ok])
    growth = "; ".join(f"{cols[k]} ~ views^{a:.2f} x pixels^{b:.2f}" for k, (a, b) in fits.items())
    print(f"growth (power-law fit): {growth}")
    (workdir / "scale.json").write_text(json.dumps({"device": device, "rows": rows, "fits": fits}, indent=1))
    print(f"(figures in {workdir / 'scale.json'}; peak memory is RSS on CPU, allocated GPU memory on CUDA)")
    return 0


# --------------------------------------------------------------------------- report
def report(results: list[dict], device: str, header: str) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sa3d benchmark on {device}: {header}")
    for col in ("source", "segmenter", "path", "views", "render s", "segment s", "lift s", "1st object s",
                "2nd object s", "peak MB", "mIoU 1st", "mIoU 2nd", "acc 1st"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("source", "segmenter", "path") else "right")
    for r in results:
        o1 = r["objects"][0]
        o2 = r["objects"][1] if len(r["objects"]) > 1 else None
        table.add_row(
            r["source"], r["segmenter"], r["path"], str(o1["views"]), f"{o1['render_s']:.1f}", f"{o1['segment_s']:.1f}",
            f"{o1['lift_s']:.2f}", f"{o1['seconds']:.1f}", f"{o2['seconds']:.1f}" if o2 else "-", f"{r['peak_mb']:.0f}",
            f"{o1['miou']:.4f}", f"{o2['miou']:.4f}" if o2 else "-", f"{o1['macc']:.4f}",
        )  # fmt: skip
    Console(width=160).print(table)
    cut = Table(title="cut-outs per object, held-out views (sa3d-eval's figures)")
    for col in ("source", "segmenter", "path", "object", "mIoU", "specks %", "ghost %", "removal PSNR", "NeRF PSNR",
                "unseen %", "outside changed %", "export outside %"):  # fmt: skip
        cut.add_column(col, justify="left" if col in ("source", "segmenter", "path", "object") else "right")
    for r in results:
        for o in r["objects"]:
            if "specks" in o:
                cut.add_row(
                    r["source"], r["segmenter"], r["path"], o.get("name", "?"), f"{o['miou']:.4f}", f"{100 * o['specks']:.3f}",
                    f"{100 * o.get('ghost', float('nan')):.1f}", f"{o.get('removal_psnr', float('nan')):.2f}",
                    f"{o.get('nerf_psnr', float('nan')):.2f}", f"{100 * o.get('unseen', float('nan')):.1f}",
                    f"{100 * o['outside_changed']:.3f}",
                    f"{100 * o['export_outside']:.2f}" if "export_outside" in o else "-",
                )  # fmt: skip
    Console(width=160).print(cut)
    parts = []
    sources = list(dict.fromkeys(r["source"] for r in results))
    for source, seg in ((src, seg) for src in sources for seg in dict.fromkeys(r["segmenter"] for r in results)):
        mine = [r for r in results if r["source"] == source and r["segmenter"] == seg]
        ref = next((r for r in mine if r["path"] == "reference"), None)
        dft = next((r for r in mine if r["path"] == "default"), None)
        if ref is None or dft is None:
            continue
        first = ref["objects"][0]["seconds"] / max(dft["objects"][0]["seconds"], 1e-9)
        text = (
            f"{seg}: first object {first:.2f}x" if len(sources) == 1 else f"{source} {seg}: first object {first:.2f}x"
        )
        if len(ref["objects"]) > 1:
            second = ref["objects"][1]["seconds"] / max(dft["objects"][1]["seconds"], 1e-9)
            text += f", second object {second:.2f}x"
        elif len(dft["objects"]) > 1:
            # the reference path caches nothing: a second object costs what its first did, set-up aside
            second = (ref["objects"][0]["seconds"] - ref["setup_s"]) / max(dft["objects"][1]["seconds"], 1e-9)
            text += f", second object {second:.2f}x (against the reference's one object without its set-up)"
        miou = lambda r: np.mean([o["miou"] for o in r["objects"]])  # noqa: E731
        text += f", mIoU reference {miou(ref):.4f} default {miou(dft):.4f}"
        parts.append(text)
    line = "speed-up (reference time / default time): " + "; ".join(parts)
    if len(sources) > 1:  # the same scene, objects and segmenter on each source: held-out mIoU of the default path
        both = []
        for seg in dict.fromkeys(r["segmenter"] for r in results):
            row = {r["source"]: r for r in results if r["segmenter"] == seg and r["path"] == "default"}
            if len(row) == len(sources):
                both.append(f"{seg} " + ", ".join(
                    f"{src} {np.mean([o['miou'] for o in row[src]['objects']]):.4f}" for src in sources))  # fmt: skip
        line += "\nheld-out mIoU, default path, by source: " + "; ".join(both)
    return line


def main(argv: list[str] | None = None) -> int:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_out"), help="scene, nerfacto run and results")
    parser.add_argument("--num-views", type=int, default=24, help="views of the generated scene")
    parser.add_argument("--size", type=int, default=64, help="image width and height of the generated scene")
    parser.add_argument("--nerfacto-steps", type=int, default=None, help="default: 300 on CPU, 3000 on CUDA")
    parser.add_argument("--nerfacto-config", type=Path, default=None, help="use this nerfacto run of a generated scene")
    parser.add_argument(
        "--splatfacto-config",
        type=Path,
        default=None,
        help="also (or with no --nerfacto-config: only) segment this splatfacto run of the same generated scene "
        "(on a CPU: with PYTHONPATH=tests/cpu_gsplat, the tests' CPU rasterizer)",
    )
    parser.add_argument(
        "--segmenters",
        nargs="+",
        default=["oracle", "weightfree"],
        choices=["oracle", "oracle-noisy", "weightfree", "sam", "sam2", "sam-hq"],
        help="the SAM family runs its real architecture with random weights (true timing)",
    )
    parser.add_argument("--sam-variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--sam2-variant", default="hiera_t", choices=["hiera_t", "hiera_s", "hiera_b+", "hiera_l"])
    parser.add_argument("--sam-hq-variant", default="vit_tiny", choices=["vit_tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument(
        "--objects", nargs="+", default=["red_ball", "blue_crate"], help="objects, in turn (all: every object)"
    )
    parser.add_argument(
        "--scene-objects",
        default="demo",
        choices=["demo", "touching", "clutter", "models"],
        help="the generated scene's object set",
    )
    parser.add_argument(
        "--scene-texture",
        default="plain",
        choices=["plain", "rich", "wood"],
        help="the generated scene's support and sky",
    )
    parser.add_argument("--paths", nargs="+", default=["reference", "default"], choices=list(PATHS))
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="PATH.KEY=VALUE",
        help="change a pipeline setting of one path, e.g. default.cache_samples=16",
    )
    parser.add_argument("--max-views", type=int, default=None, help="process only this many views per object")
    parser.add_argument(
        "--export-check",
        type=int,
        default=0,
        metavar="EVERY",
        help="also score the exported point cloud (from every EVERY-th training view) against each object's true box: "
        "the share of points beyond it grown by 5 %% (0: off; renders training views)",
    )
    parser.add_argument(
        "--reference-segmenters",
        nargs="+",
        default=None,
        help="run the reference path only with these segmenters (default: all of --segmenters)",
    )
    parser.add_argument(
        "--reference-objects",
        type=int,
        default=None,
        help="the reference path segments only the first N objects (it caches nothing: each object costs the same)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--scale-views", type=int, nargs="+", help="scale table: numbers of views (e.g. 25 50 100 200)")
    parser.add_argument("--scale-sizes", type=int, nargs="+", help="scale table: image sizes (e.g. 128 256 512)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = run_path(json.loads(args.worker.read_text()))
        args.worker_out.write_text(json.dumps(result))
        return 0

    if args.export_check < 0:
        raise SystemExit(
            f"benchmark: --export-check takes 0 (off) or every how many training views, got {args.export_check}."
        )
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark: --device cuda but CUDA is not available here.")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.scale_views or args.scale_sizes:
        args.scale_views, args.scale_sizes = args.scale_views or [args.num_views], args.scale_sizes or [args.size]
        return scale_table(args, device, workdir)
    steps = args.nerfacto_steps or (300 if device == "cpu" else 3000)
    sources: list[tuple[str, Path]] = []
    scene: Path | None = None
    for flag, given in (("--nerfacto-config", args.nerfacto_config), ("--splatfacto-config", args.splatfacto_config)):
        if given is None:
            continue
        from sa3d_ns.core.errors import SA3DError
        from sa3d_ns.nerf.source_run import load_source_run

        try:
            src = load_source_run(given.resolve(), flag)
        except SA3DError as err:  # (a bad run: its message, no traceback)
            raise SystemExit(f"benchmark: {err}") from None
        dm = cast("VanillaDataManagerConfig", src.config.pipeline.datamanager)
        data = Path(dm.data or dm.dataparser.data).resolve()
        if scene is not None and data != scene:
            raise SystemExit(f"benchmark: {flag} was trained on {data}, not on {scene}: compare runs of one scene.")
        scene = data
        sources.append((src.kind, src.config_path))
    if not sources:
        scene, nerfacto_config = prepare_scene(
            workdir, args.num_views, args.size, steps, device, args.scene_objects, args.scene_texture
        )
        sources.append(("nerfacto", nerfacto_config))
    if args.objects == ["all"]:
        args.objects = [o["name"] for o in json.loads((scene / "objects.json").read_text())["objects"]]
    if not (scene / "objects.json").is_file():
        raise SystemExit(
            f"benchmark: {scene} has no objects.json; the benchmark runs on a generated scene (sa3d-make-scene)."
        )

    train_names, prompts, ids = scene_prompts(scene, args.objects, workdir)

    overrides: dict[str, dict] = {}
    for item in args.set:
        target, _, value = item.partition("=")
        path, _, key = target.partition(".")
        if path not in PATHS or not key or not value:
            raise SystemExit(f"benchmark: --set {item!r}: expected PATH.KEY=VALUE with PATH in {list(PATHS)}")
        overrides.setdefault(path, {})[key] = value
    results = []
    for (source, source_config), seg in ((s, seg) for s in sources for seg in args.segmenters):
        variant = {"sam": args.sam_variant, "sam2": args.sam2_variant, "sam-hq": args.sam_hq_variant}.get(seg)
        ckpt = str(random_checkpoint(workdir, seg, variant)) if variant else None
        for path in args.paths:
            if path == "reference" and args.reference_segmenters is not None and seg not in args.reference_segmenters:
                continue
            n = len(args.objects)
            if path == "reference" and args.reference_objects:
                n = max(1, min(n, args.reference_objects))
            log(f"{source}, {seg}, {path} path: {n} object(s) ...")
            spec = {
                "path": path, "segmenter": seg, "device": device, "source": source, "source_config": str(source_config),
                "prompts": prompts[:n], "object_ids": ids[:n], "object_names": args.objects[:n], "sam_variant": args.sam_variant, "checkpoint": ckpt,
                "sam2_variant": args.sam2_variant, "sam_hq_variant": args.sam_hq_variant,
                "max_views": args.max_views, "overrides": overrides.get(path, {}), "export_check": args.export_check,
            }  # fmt: skip
            results.append({"source": source, "segmenter": seg, "path": path, **spawn_path(spec, workdir)})
    header = f"{len(train_names)} training views of {args.size}x{args.size}, objects {' then '.join(args.objects)}"
    if args.max_views:
        header += f", first {args.max_views} views per object"
    last = report(results, device, header)
    (workdir / "benchmark.json").write_text(
        json.dumps(
            {
                "device": device,
                "scene": str(scene),
                "sources": {kind: str(path) for kind, path in sources},
                "objects": args.objects,
                "results": results,
                "summary": last,
            },
            indent=1,
        )  # fmt: skip
    )
    print(f"(figures in {workdir / 'benchmark.json'}; peak memory is RSS on CPU, allocated GPU memory on CUDA)")
    print(last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
