"""``sa3d-train-nerfacto``: ``ns-train`` that also works offline.

nerfacto builds LPIPS, whose AlexNet weights torchvision downloads on first use; without internet
``ns-train nerfacto`` stops before training. When those weights are not in torch's hub cache this
wrapper builds the model without LPIPS (nerfacto only uses it for an evaluation metric, then
reported as NaN) and otherwise runs ``ns-train`` unchanged, with the same arguments.

    sa3d-train-nerfacto nerfacto --data data/demo --machine.device-type cpu
"""

from __future__ import annotations

import sys

# nerfacto sized for a CPU (~0.3 s per step at 64 x 64): fewer samples per ray (nerfacto: 48 +
# 256/96), smaller hash tables (nerfacto: 2^19), torch implementation; nerfacto's own pose
# refinement (SO3xR3) and appearance embeddings stay on, as users train it.
CPU_NERFACTO_FLAGS = [
    "--pipeline.model.implementation", "torch",
    "--pipeline.model.num-nerf-samples-per-ray", "24",
    "--pipeline.model.num-proposal-samples-per-ray", "48", "24",
    "--pipeline.model.log2-hashmap-size", "15",
    "--pipeline.datamanager.train-num-rays-per-batch", "1024",
]  # fmt: skip


def entrypoint() -> None:
    from nerfstudio.scripts import train

    from sa3d_ns.nerf.offline import alexnet_weights_cached, lpips_disabled

    if alexnet_weights_cached():
        train.entrypoint()
        return
    print(
        "sa3d-train-nerfacto: LPIPS weights (AlexNet) are not cached; LPIPS is reported as nan.",
        file=sys.stderr,
    )
    with lpips_disabled():
        train.entrypoint()


if __name__ == "__main__":
    entrypoint()
