"""User-facing errors."""

import shutil
from pathlib import Path


class SA3DError(Exception):
    """A problem with what the user gave us (a flag, a file, a prompt, weights).

    The message says what was wrong, what was given and how to fix it. Command-line entry points
    print it without a traceback and exit with status 2.
    """


def free_space(folder: Path) -> str:
    """How much disk space is free in ``folder``, as a message says it."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MB is free there"
    except OSError:
        return "the free space there is unknown"


def write_failure(path: Path, err: BaseException, need: int | None = None) -> str:
    """What to tell the user when ``path`` (about ``need`` bytes) could not be written."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0][:200]
    free = free_space(path.parent)
    return (
        f"Could not write {path} ({reason}): "
        + (f"it needs about {need / 2**20:.0f} MB and " if need is not None else "")
        + f"{free} (or a file-size limit, "
        "ulimit -f, stops it). Nothing half-written was kept; free some space (or write elsewhere: --output-dir, "
        "--output) and run the same command again."
    )
