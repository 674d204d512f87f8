"""The sa3d trainer: resolves the nerfacto run before anything is written, runs one SA3D view per
iteration, and removes its own run folder when it stops on bad input."""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from contextlib import contextmanager
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
    from rich.markup import escape

    CONSOLE.print(f"[bold red]sa3d error:[/bold red] {escape(str(err))}")  # (a message may hold [brackets])
    sys.exit(2)


class Stopped(BaseException):
    """The run was told to stop by a signal (SIGTERM; Ctrl-C is Python's KeyboardInterrupt)."""

    def __init__(self, what: str, code: int):
        super().__init__(what)
        self.what, self.code = what, code


def raise_stopped(signum, frame) -> None:
    raise Stopped("SIGTERM", 128 + signal.SIGTERM)


@contextmanager
def sigterm_stops():
    """Within: SIGTERM raises :class:`Stopped`, so that it stops the run as Ctrl-C does (by
    default SIGTERM ends the process where it is, and nerfstudio's own handling of Ctrl-C prints a
    traceback and exits 0). Only the main thread may set a handler; elsewhere nothing changes."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_stopped) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def stopped_before_writing(what: str, code: int) -> None:
    CONSOLE.print(f"[bold yellow]sa3d: stopped by {what}[/bold yellow] while checking the inputs; nothing was written.")
    sys.exit(code)


@dataclass
class SA3DTrainerConfig(TrainerConfig):
    _target: type = field(default_factory=lambda: SA3DTrainer)

    def set_timestamp(self) -> None:
        # ns-train calls this first, before it writes config.yml: the place to take settings from
        # the nerfacto run and to check every input, so that bad input leaves nothing behind.
        if getattr(self.pipeline, "nerfacto_checkpoint", None) is None:
            from sa3d_ns.nerf.resolve import resolve_config

            with sigterm_stops():
                try:
                    resolve_config(self)
                except SA3DError as err:
                    report_and_exit(err)
                except OSError as err:  # (a file the checks above did not foresee: still said, never a traceback)
                    report_and_exit(
                        SA3DError(
                            f"Could not read {err.filename or 'a file'} while checking the inputs: {err.strerror or err}."
                        )
                    )
                except KeyboardInterrupt:
                    stopped_before_writing("Ctrl-C", 128 + signal.SIGINT)
                except Stopped as stop:
                    stopped_before_writing(stop.what, stop.code)
        super().set_timestamp()
        self.claim_run_folder()

    def claim_run_folder(self) -> None:
        """Create the run's folder, or if another run took it (ns-train sa3d started twice in the
        same second: nerfstudio's timestamps are to the second) the next free ``<timestamp>_2``,
        ``_3``...: two runs never write into one folder. (mkdir is atomic: one process wins.)"""
        stamp = self.timestamp
        for n in range(1, 1000):
            self.timestamp = stamp if n == 1 else f"{stamp}_{n}"
            base = self.get_base_dir()
            try:
                base.parent.mkdir(parents=True, exist_ok=True)
                base.mkdir()
                return
            except FileExistsError:
                continue
            except OSError as err:
                report_and_exit(
                    SA3DError(f"Cannot create the run folder {base} ({err.strerror}): choose another --output-dir.")
                )
        report_and_exit(
            SA3DError(f"{base.parent} holds runs {stamp} to {self.timestamp}: choose another --output-dir.")
        )


class SA3DTrainer(Trainer):
    config: SA3DTrainerConfig
    pipeline: SA3DPipeline

    def setup(self, test_mode="val") -> None:
        with sigterm_stops():
            try:
                super().setup(test_mode)
            except SA3DError as err:
                self._abort(err)
            except OSError as err:  # (a file of the data folder nerfstudio could not load: said, never a traceback)
                self._abort(SA3DError(f"Could not read {err.filename or 'a file'}: {err.strerror or err}."))
            except KeyboardInterrupt:
                self._stopped("Ctrl-C", 128 + signal.SIGINT)
            except Stopped as stop:
                self._stopped(stop.what, stop.code)
        self.pipeline.run = RunFolder(Path(self.base_dir))
        self.config.max_num_iterations = self.pipeline.num_steps()

    def train(self) -> None:
        with sigterm_stops():
            self._train()

    def _train(self) -> None:
        try:
            if self.config.max_num_iterations == 0 and getattr(self, "viewer_state", None) is not None:
                # no prompt file: the run waits in the viewer, where objects are prompted (SA3D panel)
                self.save_checkpoint(0)
                self._train_complete_viewer()
                return
            super().train()
        except SA3DError as err:
            self._abort(err)
        except KeyboardInterrupt:
            self._stopped("Ctrl-C", 128 + signal.SIGINT)
        except Stopped as stop:
            self._stopped(stop.what, stop.code)

    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written whole or not at all (``checkpoints.write_checkpoint``: a
        process killed while writing leaves no step-*.ckpt, nor any other file in the models
        folder, that a later command would take for the run's), and a write that fails (a full
        disk, a file-size limit) is a clear error naming the folder and the size needed."""
        from sa3d_ns.nerf.checkpoints import write_checkpoint

        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        state = {
            "step": step,
            "pipeline": self.pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        write_checkpoint(state, path)
        if self.config.save_only_latest_checkpoint:
            for f in self.checkpoint_dir.glob("*.ckpt"):
                if f != path:
                    f.unlink()

    def train_iteration(self, step: int):
        # The lifting is an exact per-view update done by the pipeline: no backward pass here.
        _, loss_dict, metrics_dict = self.pipeline.get_train_loss_dict(step=step)
        return torch.zeros(()), loss_dict, metrics_dict

    def _abort(self, err: SA3DError) -> None:
        """Stop on bad input and remove this run's own folder, so no half-written run remains."""
        self.shutdown()
        self._remove_unfinished()
        report_and_exit(err)

    def _remove_unfinished(self) -> None:
        if self.base_dir.is_dir() and not any(self.checkpoint_dir.glob("*.ckpt")):
            # nerfstudio's tensorboard writers flush from a thread of their own, reopening their event
            # file by path: one flushing during the removal re-created it and left the folder (a
            # fresh-clone SIGTERM test caught it). Closed first; the removal checked.
            from nerfstudio.utils import writer

            for w in writer.EVENT_WRITERS:
                tb = getattr(w, "tb_writer", None)
                if tb is not None:
                    tb.close()
            for _ in range(3):
                shutil.rmtree(self.base_dir, ignore_errors=True)
                if not self.base_dir.exists():
                    break
            CONSOLE.print(f"Removed the unfinished run folder {self.base_dir} (no checkpoint was written).")

    def _stopped(self, what: str, code: int) -> None:
        """Stopped by the user (Ctrl-C, SIGTERM): remove the unfinished run folder, say what was
        kept (the caches: whole entries only), exit 128 + the signal's number."""
        pipeline = getattr(self, "pipeline", None)
        done = len(pipeline.records) if pipeline is not None else 0
        total = pipeline.num_steps() if pipeline is not None else 0
        self.shutdown()
        # the viewer, kept open after the run: Ctrl-C quits it (nerfstudio says "completed" before it
        # writes the last checkpoint: a stop while it is written is a stop of the run)
        if getattr(self, "training_state", None) == "completed" and any(self.checkpoint_dir.glob("*.ckpt")):
            CONSOLE.print(f"sa3d: viewer closed ({what}); the run is saved in {self.base_dir}.")
            sys.exit(0)
        CONSOLE.print(f"[bold yellow]sa3d: stopped by {what}[/bold yellow] after {done} of {total} views.")
        self._remove_unfinished()
        cache = pipeline.view_cache if pipeline is not None else None
        if cache is not None:
            n = len(list(cache.dir.glob("view*.pt")))
            CONSOLE.print(
                f"Kept: {n} views' data (NeRF samples or Gaussian lists) in the cache {cache.dir}; the same command reuses "
                "them: run it again to finish."
            )
        else:
            CONSOLE.print("Nothing was cached; run the same command again to start over.")
        sys.exit(code)
