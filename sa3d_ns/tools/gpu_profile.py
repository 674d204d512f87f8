"""Where one view's time goes on the default path, stage by stage, on a device.

    python -m sa3d_ns.tools.gpu_profile [--size 512] [--device cuda] [--out profile.json]

A nerfacto with random weights (its cost per ray does not depend on its weights: the sample counts
are fixed) renders one view of ``size`` x ``size`` rays as the default path does (sample scale 0.5,
16 samples kept), then the mask field scores and votes it, SAM's image encoder encodes one image,
and the cache writes and reads the view; each timed after a warm-up, with the alternatives that
decide the defaults: nerfstudio's hash-grid lookup or ours, float32 or bf16 autocast for the NeRF
and for SAM's encoder, the lifter's chunk size. It prints one line per measurement (median of
``--repeats`` runs, milliseconds) and writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")


def clocked(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Wall milliseconds of one fn() (the device's queued work finished before and after); its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - t), result


def timed(fn: Callable[[], T], device: torch.device, repeats: int) -> tuple[float, T]:
    """Median wall milliseconds of fn() over ``repeats`` runs after one warm-up; and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        ms, result = clocked(fn, device)
        times.append(ms)
    return statistics.median(times), result


def nerfacto(device: torch.device, fast: bool, small: bool):
    from nerfstudio.data.scene_box import SceneBox

    from sa3d_ns.nerf.model import SA3DModelConfig

    cfg = SA3DModelConfig(implementation="torch", fast_hash_grids=fast)
    if small:  # the CPU setting of the tests
        cfg.log2_hashmap_size, cfg.num_nerf_samples_per_ray, cfg.num_proposal_samples_per_ray = 15, 24, (48, 24)
    torch.manual_seed(0)
    model = cfg.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])), num_train_data=4, metadata={})
    return model.to(device).eval()


def camera(size: int, device: torch.device):
    from nerfstudio.cameras.cameras import Cameras

    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -3.0], [0, 1, 0, 0.5]])[None]  # looks along +y at the origin
    focal = 0.5 * size / 0.4663  # 50 degrees
    return Cameras(camera_to_worlds=c2w, fx=focal, fy=focal, cx=size / 2, cy=size / 2, width=size, height=size).to(
        device
    )


def render(model, cam, chunk: int, rgb: bool, precision: str) -> dict:
    """The default path's render of one view (sample scale 0.5), as SA3DPipeline.render_camera."""
    bundle = cam.generate_rays(camera_indices=0, keep_shape=True)
    h, w = bundle.shape[:2]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    ctx = torch.autocast(cam.device.type, dtype=dtype) if dtype is not None else nullcontext()
    parts: dict[str, list] = {}
    with torch.no_grad(), ctx:
        for start in range(0, h * w, chunk):
            out = model.sample_rays(
                bundle.get_row_major_sliced_ray_bundle(start, start + chunk), rgb=rgb, sample_scale=0.5
            )
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sam-variant", default="vit_h", choices=["vit_b", "vit_l", "vit_h", "none"])
    parser.add_argument("--out", type=Path, default=Path("profile.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    small = device.type == "cpu"
    rows: list[dict] = []

    def record(stage: str, variant: str, ms: float, note: str = "") -> None:
        rows.append({"stage": stage, "variant": variant, "ms": round(ms, 2), "note": note})
        print(f"{stage:<28}{variant:<34}{ms:>10.1f} ms  {note}", flush=True)
        args.out.write_text(json.dumps({"device": str(device), "size": args.size, "rows": rows}, indent=1))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_profile: one {args.size}x{args.size} view on {name}, torch {torch.__version__}", flush=True)
    cam = camera(args.size, device)
    chunk = 32768
    data = None
    from sa3d_ns.core import hashgrid

    variants = [(False, "embedding_bag"), (True, "embedding_bag"), (True, "gather")]
    for fast, bags in variants:
        hashgrid.BAG_SUM = bags
        model = nerfacto(device, fast, small)
        for rgb in (True, False):
            for precision in ("float32", "fp16", "bf16"):
                if precision != "float32" and device.type != "cuda":
                    continue
                try:
                    ms, out = timed(
                        lambda m=model, r=rgb, p=precision: render(m, cam, chunk, r, p), device, args.repeats
                    )
                except Exception as err:  # noqa: BLE001 - a variant that fails is reported, not fatal
                    record(
                        "render (sample scale 0.5)", f"{precision} failed", 0.0, f"{type(err).__name__}: {err}"[:200]
                    )
                    continue
                lookups = f"sa3d lookups ({bags})" if fast else "nerfstudio lookups"
                record("render (sample scale 0.5)", f"{lookups}, {'rgb' if rgb else 'no rgb'}, {precision}", ms,
                       f"{out['weights'].shape[1]} samples/ray")  # fmt: skip
                if fast and not rgb and precision == "float32" and bags == "embedding_bag":
                    data = out
    hashgrid.BAG_SUM = "auto"
    from sa3d_ns.core.cache import prune_samples

    assert data is not None, "the float32 render with sa3d lookups failed"
    positions, weights, _ = prune_samples(data["positions"], data["weights"], 16)
    weights = weights.float()
    record("samples kept", "16 per ray", 0.0, f"{positions.shape[0]} rays")

    # the mask field: score and vote one view, as the default path does (footprint streamed)
    from sa3d_ns.core.lifting import FootprintCache, MaskLifter

    field = model.new_mask_field().to(device)
    mask = torch.zeros(positions.shape[0], dtype=torch.bool, device=device)
    mask[: positions.shape[0] // 5] = True
    for chunk_rays, bags in ((16384, "embedding_bag"), (65536, "embedding_bag"), (16384, "gather")):
        hashgrid.BAG_SUM = bags
        lifter = MaskLifter(
            field, field.table, chunk_rays=chunk_rays, corners=field.corners, footprints=FootprintCache(0)
        )
        ms, _ = timed(lambda li=lifter: li.score(positions, weights, key=("v", 0)), device, args.repeats)
        record("score (mask field)", f"chunk {chunk_rays} rays, {bags}", ms)
        ms, _ = timed(lambda li=lifter: li.add_view(positions, weights, mask, 1.0, key=("v", 0)), device, args.repeats)
        record("vote (mask field)", f"chunk {chunk_rays} rays", ms)
        lifter.release()
    hashgrid.BAG_SUM = "auto"
    # as the pipeline runs them, room held for the view's touch: a footprint too large to keep has
    # its touch summed during the score, and the vote lists only the masked rays' entries
    table_bytes = field.table.numel() * 4
    times: dict[str, list[float]] = {"score": [], "vote": []}
    for _ in range(args.repeats + 1):  # (a fresh cache each time; the first is the warm-up)
        lifter = MaskLifter(
            field, field.table, corners=field.corners, footprints=FootprintCache(table_bytes, reserve=table_bytes)
        )
        for stage, fn in (
            ("score", lambda li=lifter: li.score(positions, weights, key=("v", 0))),
            ("vote", lambda li=lifter: li.add_view(positions, weights, mask, 1.0, key=("v", 0))),
        ):
            times[stage].append(clocked(fn, device)[0])
        lifter.release()
    for stage, ms_list in times.items():
        record(f"{stage} (mask field)", "the pipeline's: room for the touch", statistics.median(ms_list[1:]))

    # the view cache: what a view costs to keep and to read back
    with tempfile.TemporaryDirectory() as tmp:
        item = {"positions": positions.cpu(), "weights": weights.half().cpu()}
        path = Path(tmp) / "view.pt"
        ms, _ = timed(lambda: torch.save({k: v.cpu() for k, v in {"p": positions, "w": weights.half()}.items()}, path),
                      device, args.repeats)  # fmt: skip
        size_mb = path.stat().st_size / 2**20
        record("cache write (device -> disk)", f"{size_mb:.0f} MB", ms)
        ms, _ = timed(lambda: {k: v.to(device) for k, v in torch.load(path, weights_only=True).items()}, device,
                      args.repeats)  # fmt: skip
        record("cache read (disk -> device)", f"{size_mb:.0f} MB", ms)
        del item

    if args.sam_variant != "none":
        from segment_anything.modeling import ImageEncoderViT

        dims = {"vit_b": (768, 12, 12, (2, 5, 8, 11)), "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
                "vit_h": (1280, 32, 16, (7, 15, 23, 31))}[args.sam_variant]  # fmt: skip
        with torch.device(device):
            encoder = ImageEncoderViT(
                depth=dims[1], embed_dim=dims[0], img_size=1024, mlp_ratio=4,
                norm_layer=lambda c: torch.nn.LayerNorm(c, eps=1e-6), num_heads=dims[2], patch_size=16,  # pyright: ignore[reportArgumentType]  (typed as a class; SAM's builders pass a partial too)
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=dims[3], window_size=14, out_chans=256,
            ).eval()  # fmt: skip
        image = torch.randn(1, 3, 1024, 1024, device=device)
        for precision in ("float32", "bf16"):
            if precision == "bf16" and device.type != "cuda":
                continue
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

            def encode(c=ctx):
                with torch.no_grad(), c:
                    return encoder(image)

            ms, _ = timed(encode, device, args.repeats)
            record("SAM image encoder", f"{args.sam_variant}, {precision}", ms)
    if device.type == "cuda":
        record("peak GPU memory", "allocated", 0.0, f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
