"""``sa3d-train-nerfacto``: ``ns-train`` that also works offline.

nerfacto builds LPIPS, whose AlexNet weights torchvision downloads on first use; without internet
``ns-train nerfacto`` stops before training. When those weights are not in torch's hub cache this
wrapper builds the model without LPIPS (nerfacto only uses it for an evaluation metric, then
reported as NaN) and otherwise runs ``ns-train`` unchanged, with the same arguments.

    sa3d-train-nerfacto nerfacto --data data/demo --machine.device-type cpu

``--time-limit SECONDS`` (before the method's name) stops training after that much wall time as if
``--max-num-iterations`` had been reached there: the checkpoint of the last step is saved.

    sa3d-train-nerfacto --time-limit 120 nerfacto --data data/demo --max-num-iterations 5000
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

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


def pop_time_limit(argv: list[str]) -> tuple[float | None, list[str]]:
    """``--time-limit S`` (or ``--time-limit=S``) taken out of ``argv``: (seconds or None, the rest)."""
    rest, seconds, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--time-limit" or arg.startswith("--time-limit="):
            value = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in arg else 2
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not seconds > 0:
                raise SystemExit(f"sa3d-train-nerfacto: --time-limit takes a number of seconds > 0, got {value!r}")
            continue
        rest.append(arg)
        i += 1
    return seconds, rest


@contextmanager
def time_limited_training(seconds: float | None):
    """nerfstudio's Trainer.train stops (and saves its checkpoint) once ``seconds`` have passed."""
    if seconds is None:
        yield
        return
    from nerfstudio.engine.trainer import Trainer

    train = Trainer.train

    def limited(self, *args, **kwargs):
        def stop():
            print(f"sa3d-train-nerfacto: --time-limit {seconds:g} s reached at step {self.step}", file=sys.stderr)
            self.stop_training = True

        timer = threading.Timer(seconds, stop)
        timer.daemon = True
        timer.start()
        try:
            return train(self, *args, **kwargs)
        finally:
            timer.cancel()
            timer.join()  # (a timer thread left to the interpreter's exit aborts it, with torch loaded)

    Trainer.train = limited
    try:
        yield
    finally:
        Trainer.train = train


def entrypoint() -> None:
    from nerfstudio.scripts import train

    from sa3d_ns.nerf.offline import alexnet_weights_cached, lpips_disabled

    seconds, sys.argv[1:] = pop_time_limit(sys.argv[1:])
    with time_limited_training(seconds):
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
