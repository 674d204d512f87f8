"""Per-view data that does not change while segmenting, kept on disk and reused.

During segmentation the NeRF and the 2D segmenter's image encoder are frozen, so what they give
for a view (the NeRF's sample positions and volume weights, depth, the image the segmenter sees,
SAM's image embedding) is the same for every object and prompt in the scene. A ``ViewCache`` stores
those per view under ``root/<digest of key>/``; ``key`` names everything that produced them
(checkpoint, resolution, sample settings, segmenter weights). A different key is a different
folder: changing any setting rebuilds, nothing stale is ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from sa3d_ns.core.errors import SA3DError, free_space


def top_samples(weights: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (R x k) of each ray's ``k`` heaviest samples, in ray order (nearest first).

    Example: weights [[0.1, 0.6, 0.05, 0.25]] with k = 2 -> [[1, 3]].
    """
    k = min(k, weights.shape[1])
    idx = torch.topk(weights, k, dim=1).indices
    return torch.sort(idx, dim=1).values


def prune_samples(positions: torch.Tensor, weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Keep each ray's ``k`` heaviest samples: (positions R x k x 3, weights R x k, fraction of the
    total weight kept). ``k <= 0`` keeps all samples."""
    if k <= 0 or k >= weights.shape[1]:
        return positions, weights, 1.0
    idx = top_samples(weights, k)
    w = torch.gather(weights, 1, idx)
    p = torch.gather(positions, 1, idx[..., None].expand(-1, -1, 3))
    total = float(weights.sum())
    return p, w, (float(w.sum()) / total) if total > 0 else 1.0


def cache_dir(root: Path, key: dict) -> Path:
    """The folder of ``key``'s entries under ``root`` (a digest of the key)."""
    text = json.dumps(key, sort_keys=True, default=str)
    return Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]


def torch_line() -> str:
    """This torch's major.minor version: a cache's key names it, so that entries written by
    another torch are never read (torch.save's format and a render's exact values may differ)."""
    return ".".join(torch.__version__.split(".")[:2])


# a temporary file older than this in a cache folder is the half entry of a run killed while it
# wrote (an entry takes well under a minute to write; a run writing now has fresh ones)
STALE_TMP_S = 3600

# what in a cache's key names the code that wrote it, not the data
WRITER_FIELDS = {"version": "cache format", "torch": "torch"}


def superseded(root: Path, key: dict) -> list[tuple[Path, str]]:
    """Folders under ``root`` holding the same data as ``key``'s but written by another cache
    format or another torch (their key.json differs from ``key`` only in WRITER_FIELDS), each with
    what differs, e.g. "cache format 1 (this run writes 2)"."""
    mine = json.loads(json.dumps(key, default=str))
    rest = {k: v for k, v in mine.items() if k not in WRITER_FIELDS}
    found = []
    for meta in sorted(Path(root).glob("*/key.json")):
        if meta.parent == cache_dir(root, key):
            continue
        try:
            other = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(other, dict) or {k: v for k, v in other.items() if k not in WRITER_FIELDS} != rest:
            continue
        differs = [
            f"{name} {'not recorded' if other.get(k) is None else other.get(k)} "
            f"(this run {'writes' if k == 'version' else 'has'} {mine.get(k)})"
            for k, name in WRITER_FIELDS.items()
            if other.get(k) != mine.get(k)
        ]
        if differs:
            found.append((meta.parent, ", ".join(differs)))
    return found


class CacheWriteError(SA3DError):
    """A cache entry could not be written (a full disk, a quota, a file-size limit, no permission):
    nothing of it is left on the disk."""

    def __init__(self, path: Path, size: int, err: Exception):
        free = free_space(path.parent)
        reason = " ".join(str(err).split())[:200]
        super().__init__(
            f"Could not write the cache entry {path} ({size / 2**20:.1f} MB; {type(err).__name__}: {reason}); {free}. "
            f"Free some space in {path.parent.parent}, or put the cache elsewhere (--pipeline.cache-dir PATH) or turn it "
            "off (--pipeline.cache False). The entries already written are whole and are reused by the next run."
        )


class ViewCache:
    """Tensors per view (``name``) on disk under ``root/<digest of key>``.

    With ``background`` (the pipeline's choice on CUDA), writes go to the disk in a background
    thread (the tensors are first copied, so later changes to them cannot reach the file), at most
    ``MAX_PENDING`` at a time: on a GPU a view's write (about 100 ms for 56 MB, measured on an H200
    machine) otherwise stalls the loop. A load of a name still being written waits for it;
    :meth:`flush` waits for all (and raises a write's error).

    An entry that cannot be read (cut short, not a tensor file, a pickle that would run code: the
    safe loader refuses it) or that the caller finds unfit (:meth:`drop`) is deleted, counted in
    ``dropped`` and said; the caller builds it again. The key names this torch (``torch_line``):
    a folder of the same data by another cache format or torch is never read, and is said when this
    key's folder is made.

    Args:
        root: the cache folder of a scene (e.g. ``outputs/<scene>/sa3d_cache``).
        key: JSON-serialisable description of what produced the data.
        background: write in a background thread (default: in the caller's).
        say: where to say what was found wrong (e.g. the console's log); default: nowhere.
    """

    MAX_PENDING = 4

    def __init__(
        self, root: Path, key: dict, background: bool = False, say: Callable[[str], None] | None = None
    ) -> None:
        self.key = {**key, "torch": torch_line()}
        self.dir = cache_dir(root, self.key)
        self.say = say or (lambda text: None)
        self.dropped = 0
        made = not self.dir.is_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self.key
        meta = self.dir / "key.json"
        if not meta.is_file():  # (atomically: another run may open the same cache at the same time)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix="key", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(key, indent=1, sort_keys=True, default=str))
                os.replace(tmp, meta)
            except OSError as err:
                Path(tmp).unlink(missing_ok=True)
                raise CacheWriteError(meta, 0, err) from None
        self.hits = 0
        self.misses = 0
        self.background = background
        stale = {}  # (half entries of runs killed while writing; a run writing now has fresh ones)
        for p in self.dir.glob("*.tmp"):
            try:
                st = p.stat()
            except FileNotFoundError:  # (moved into place or removed by another run meanwhile)
                continue
            if time.time() - st.st_mtime > STALE_TMP_S:
                stale[p] = st.st_size
        if stale:
            for p in stale:
                p.unlink(missing_ok=True)
            self.say(
                f"removed {len(stale)} half-written entries ({sum(stale.values()) / 2**20:.1f} MB) of runs stopped "
                f"while writing to {self.dir}."
            )
        for folder, differs in superseded(Path(root), self.key) if made else []:
            size = sum(p.stat().st_size for p in folder.glob("*.pt")) / 2**20
            self.say(
                f"the cache folder {folder} holds the same views written by another version ({differs}): it is not "
                f"read; this run writes its own in {self.dir}. Delete {folder} to free {size:.0f} MB."
            )
        self._writer: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future] = {}

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.pt"

    def load(self, name: str) -> dict[str, torch.Tensor] | None:
        pending = self._pending.pop(name, None)
        if pending is not None:
            pending.result()
        path = self.path(name)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged entry is rebuilt, never trusted
            self.drop(name, f"it cannot be read: {type(err).__name__}, {' '.join(str(err).split())[:120]}")
            self.misses += 1
            return None
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            self.drop(name, "it is not a mapping of tensors")
            self.misses += 1
            return None
        self.hits += 1
        return data

    def drop(self, name: str, why: str) -> None:
        """Delete entry ``name`` (unfit: ``why``) and say so; the caller builds it again."""
        path = self.path(name)
        path.unlink(missing_ok=True)
        self.dropped += 1
        self.say(f"the cache entry {path} is dropped ({why}): its view is built again.")

    def save(self, name: str, data: dict[str, torch.Tensor]) -> None:
        """Write atomically (a reader never sees half a file), in the background by default."""
        if not self.background:
            self._write(name, {k: v.detach().cpu() for k, v in data.items()})
            return
        cpu = {k: v.detach().to("cpu", copy=True) for k, v in data.items()}
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="sa3d-cache")
        while len(self._pending) >= self.MAX_PENDING:  # bound the copies waiting in memory
            self._pending.pop(next(iter(self._pending))).result()
        previous = self._pending.pop(name, None)
        if previous is not None:
            previous.result()
        self._pending[name] = self._writer.submit(self._write, name, cpu)

    def _write(self, name: str, data: dict[str, torch.Tensor]) -> None:
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=name, suffix=".tmp")
            os.close(fd)
            torch.save(data, tmp)
            os.replace(tmp, self.path(name))
        except (OSError, RuntimeError) as err:  # (torch.save on a full disk: RuntimeError "unexpected pos")
            raise CacheWriteError(self.path(name), tensor_bytes(data), err) from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def flush(self) -> None:
        """Wait for every write in flight; raises the first one's error."""
        pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.result()

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*.pt"))


def view_entry_problem(data: dict, height: int, width: int, samples: int, rgb: bool) -> str | None:
    """What makes a view's cache entry unfit for the run that reads it, or None: the tensors a view
    of ``height`` x ``width`` rays with ``samples`` samples each must hold (positions R x K x 3,
    weights R x K, depth H x W, size [H, W], rgb H x W x 3 uint8 when the segmenter sees the
    render), finite. (The folder's key already names what produced the entries; this catches an
    entry written wrong or changed since.)"""
    r = height * width
    expected = {"positions": (r, samples, 3), "weights": (r, samples), "depth": (height, width), "size": (2,)}
    if rgb:
        expected["rgb"] = (height, width, 3)
    for key, shape in expected.items():
        value = data.get(key)
        if not isinstance(value, torch.Tensor):
            return f"no {key!r} tensor"
        if tuple(value.shape) != shape:
            return f"{key!r} is {tuple(value.shape)}, expected {shape}"
    if data["size"].tolist() != [height, width]:
        return f"its size is {data['size'].tolist()}, expected {[height, width]}"
    if rgb and data["rgb"].dtype != torch.uint8:
        return f"'rgb' is {data['rgb'].dtype}, expected torch.uint8"
    for key in ("positions", "weights", "depth"):
        if not data[key].is_floating_point() or not torch.isfinite(data[key]).all():
            return f"{key!r} is not finite floating point"
    return None


def view_bytes(height: int, width: int, samples: int, rgb: bool) -> int:
    """Bytes one view takes in the cache: per ray ``samples`` positions (3 x float32) and weights
    (float16), a float32 depth and, when the segmenter sees the render, 3 bytes of colour."""
    return height * width * (samples * (3 * 4 + 2) + 4 + (3 if rgb else 0))


def tensor_bytes(data: object) -> int:
    """Bytes of the tensors in ``data``: a tensor, or a mapping, list or tuple of them (nested, as
    a checkpoint's state); anything else counts 0."""
    if isinstance(data, torch.Tensor):
        return data.numel() * data.element_size()
    if isinstance(data, Mapping):
        return sum(tensor_bytes(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return sum(tensor_bytes(v) for v in data)
    return 0


def file_identity(path: Path | None) -> dict | None:
    """What identifies a weights file cheaply: its resolved path, size and modification time."""
    if path is None:
        return None
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
