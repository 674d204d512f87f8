"""Makes a process stall at a chosen file operation, so that a test can stop it (Ctrl-C, SIGTERM,
SIGKILL) exactly there. Entered by every Python process started with this folder on PYTHONPATH,
and only when ``SA3D_TEST_STALL`` is set:

    SA3D_TEST_STALL=load:.ckpt          before torch.load of a file whose name ends with ".ckpt"
    SA3D_TEST_STALL=load:.ckpt#2        the same, at the second such load
    SA3D_TEST_STALL=save:.ckpt.partial  in torch.save of such a file, after half of its bytes are written
    SA3D_TEST_STALL=write:summary.json.tmp#3  in the third Path.write_text of such a file, after half of its text

The process prints ``sa3d-test: stalled at <op> <path>`` (unbuffered) and sleeps up to 10 minutes;
nothing else is changed (torch.save writes to memory first, then the file is written in two halves)."""

import os

STALL = os.environ.get("SA3D_TEST_STALL", "")

if STALL:
    import io
    import sys
    import time

    import torch

    op, _, suffix = STALL.partition(":")
    suffix, _, nth = suffix.partition("#")
    seen = {"n": 0}

    def chosen(path) -> bool:
        if not str(path).endswith(suffix):
            return False
        seen["n"] += 1
        return seen["n"] == int(nth or 1)

    real_load, real_save = torch.load, torch.save

    def stall(what, path):
        print(f"sa3d-test: stalled at {what} {path}", flush=True)
        sys.stdout.flush()
        time.sleep(600)

    def write_in_halves(path, data, mode: str, what: str) -> None:
        """``data`` written to ``path``: half of it, flushed to the disk, the stall, the rest."""
        with open(path, mode) as out:
            out.write(data[: len(data) // 2])
            out.flush()
            os.fsync(out.fileno())
            stall(what, path)
            out.write(data[len(data) // 2 :])

    def load(f, *args, **kwargs):
        if op == "load" and chosen(f):
            stall("load", f)
        return real_load(f, *args, **kwargs)

    def save(obj, f, *args, **kwargs):
        if op == "save" and chosen(f):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            write_in_halves(f, buf.getvalue(), "wb", "save")
            return None
        return real_save(obj, f, *args, **kwargs)

    torch.load, torch.save = load, save

    import pathlib

    real_write_text = pathlib.Path.write_text

    def write_text(self, data, *args, **kwargs):
        if op == "write" and chosen(self):
            write_in_halves(self, data, "w", "write")
            return len(data)
        return real_write_text(self, data, *args, **kwargs)

    pathlib.Path.write_text = write_text
