"""Model weights: where each model's weights come from, the cache they are kept in, and checksums.

Every model sa3d_ns can use is listed in :data:`WEIGHTS` under a short name (``sam-vit_h``,
``sam2.1-hiera_l``, ``grounding-dino-tiny``, ...). Weights are read from a path the user gives
(each model has its own ``--pipeline.*-checkpoint`` flag), or fetched once into the cache directory
(``$SA3D_CACHE``, default ``~/.cache/sa3d_ns``) and verified:

* a file with a published MD5 (SAM's official checkpoints) is downloaded with a progress bar and
  checked against it;
* files of a Hugging Face repository are fetched with ``huggingface_hub`` into ``<cache>/hf`` and
  each is checked against the hash the Hub published for it (the name of its blob: SHA-256 for
  large files, the git blob SHA-1 for small ones).

``SA3D_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) forbids downloads: only the cache is used, and a
missing model is a clear error. ``sa3d-weights download NAME`` fetches ahead of time on a machine
with internet; copying the cache directory to another machine carries the weights with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sa3d_ns.core.errors import SA3DError


@dataclass(frozen=True)
class Weights:
    name: str
    """The name ``sa3d-weights`` uses."""
    model: str
    """What the weights are, for people."""
    flag: str
    """The flag that names a local copy instead."""
    url: str | None = None
    """A single file to download (with ``md5``)..."""
    md5: str | None = None
    repo: str | None = None
    """... or files of a Hugging Face model repository."""
    files: tuple[str, ...] = ()
    extra: str | None = None
    """The package extra that the model needs (``pip install 'sa3d_ns[EXTRA]'``)."""

    def fix_hint(self) -> str:
        return (
            f"Pass a local copy with {self.flag} PATH, or fetch it on a machine with internet with "
            f"`sa3d-weights download {self.name}` and copy the cache directory ({cache_dir()}, set by $SA3D_CACHE)."
        )


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_GD_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)
WEIGHTS: dict[str, Weights] = {
    w.name: w
    for w in [
        Weights("sam-vit_h", "SAM ViT-H", "--pipeline.sam-checkpoint", _SAM + "sam_vit_h_4b8939.pth", "4b8939a88964f0f4ff5f5b2642c598a6"),
        Weights("sam-vit_l", "SAM ViT-L", "--pipeline.sam-checkpoint", _SAM + "sam_vit_l_0b3195.pth", "0b3195507c641ddb6910d2bb5adee89c"),
        Weights("sam-vit_b", "SAM ViT-B", "--pipeline.sam-checkpoint", _SAM + "sam_vit_b_01ec64.pth", "01ec64d29a2fca3f0661936605ae66f8"),
        *[
            Weights(f"sam2.1-hiera_{v}", f"SAM 2.1 Hiera-{v.upper()}", "--pipeline.sam2-checkpoint",
                    repo=f"facebook/sam2.1-hiera-{long.replace('_', '-')}", files=(f"sam2.1_hiera_{long}.pt",), extra="sam2")
            for v, long in (("t", "tiny"), ("s", "small"), ("b+", "base_plus"), ("l", "large"))
        ],
        *[
            Weights(f"sam-hq-{v}", f"HQ-SAM {v}" + (" (light, TinyViT)" if v == "vit_tiny" else ""),
                    "--pipeline.sam-hq-checkpoint", repo="lkeab/hq-sam", files=(f"sam_hq_{v}.pth",), extra="hq")
            for v in ("vit_tiny", "vit_b", "vit_l", "vit_h")
        ],
        *[
            Weights(f"grounding-dino-{v}", f"Grounding DINO {v} (text prompts)", "--pipeline.text-checkpoint",
                    repo=f"IDEA-Research/grounding-dino-{v}", files=_GD_FILES, extra="text")
            for v in ("tiny", "base")
        ],
    ]
}  # fmt: skip


def cache_dir() -> Path:
    return Path(os.environ.get("SA3D_CACHE", Path.home() / ".cache" / "sa3d_ns"))


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("SA3D_OFFLINE", "HF_HUB_OFFLINE"))


def get(name: str) -> Weights:
    if name not in WEIGHTS:
        raise SA3DError(f"Unknown model weights {name!r}; known: {', '.join(WEIGHTS)} (see `sa3d-weights list`).")
    return WEIGHTS[name]


def md5sum(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def published_hash_matches(path: Path) -> bool | None:
    """Whether a Hugging Face cache file has the hash the Hub published for it (its blob's name:
    SHA-256 of the content for large files, git's blob SHA-1 for small ones); None when the name is
    not a hash."""
    blob = Path(os.path.realpath(path))
    name = blob.name
    if re.fullmatch(r"[0-9a-f]{64}", name):
        h = hashlib.sha256()
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        h = hashlib.sha1()
        h.update(b"blob %d\0" % blob.stat().st_size)
    else:
        return None
    with open(blob, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest() == name


# ----------------------------------------------------------------------------- single files (URL + MD5)
def download(url: str, dest: Path, expected_md5: str | None, hint: str) -> Path:
    """Download ``url`` to ``dest`` with a progress bar; verify the MD5; never leave a partial file."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            ) as bar:
                task = bar.add_task(f"Downloading {dest.name}", total=total)
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(task, advance=len(block))
        if expected_md5 and md5sum(tmp) != expected_md5:
            raise SA3DError(f"The download of {url} is corrupt (MD5 mismatch). Try again. {hint}")
        tmp.replace(dest)
        return dest
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise SA3DError(f"Could not download {url} ({err}). You may be offline. {hint}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _url_file(w: Weights, allow_download: bool, hint: str) -> Path:
    assert w.url is not None  # (single-file weights)
    path = cache_dir() / Path(w.url).name
    verified = path.with_suffix(path.suffix + ".md5ok")
    if path.is_file():
        if verified.is_file() and verified.read_text().strip() == f"{w.md5} {path.stat().st_size}":
            return path
        if md5sum(path) == w.md5:
            verified.write_text(f"{w.md5} {path.stat().st_size}")
            return path
        raise SA3DError(
            f"The cached {w.model} weights {path} are corrupt (MD5 mismatch). Delete the file to download it again. {hint}"
        )
    if not allow_download or offline():
        raise SA3DError(f"{w.model} weights are not in the cache ({path}) and downloads are disabled. {hint}")
    download(w.url, path, w.md5, hint)
    verified.write_text(f"{w.md5} {path.stat().st_size}")
    return path


# ----------------------------------------------------------------------------- Hugging Face repositories
def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise SA3DError(
            "huggingface_hub is not installed; it fetches this model's weights. Install it with: pip install huggingface_hub"
        ) from None
    return huggingface_hub


def _hf_files(w: Weights, allow_download: bool, hint: str) -> Path:
    """Fetch (or find in the cache) the repository's files; return the folder holding them."""
    assert w.repo is not None  # (weights without a url are a Hugging Face repository's)
    hub = _hub()
    local_only = not allow_download or offline()
    root = cache_dir() / "hf"
    paths = []
    for filename in w.files:
        try:
            p = Path(hub.hf_hub_download(w.repo, filename, cache_dir=root, local_files_only=local_only))
        except Exception as err:  # noqa: BLE001 - the hub raises many kinds; all mean "not here"
            if local_only:
                raise SA3DError(
                    f"{w.model} weights ({w.repo}/{filename}) are not in the cache ({root}) and downloads are disabled. {hint}"
                ) from None
            raise SA3DError(
                f"Could not fetch {w.model} weights {w.repo}/{filename} ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200] if str(err) else ''}). You may be offline. {hint}"
            ) from None
        if published_hash_matches(p) is False:
            raise SA3DError(
                f"The cached {w.model} file {p} is corrupt (its hash differs from the one the Hub published). "
                f"Delete {Path(os.path.realpath(p))} to fetch it again. {hint}"
            )
        paths.append(p)
    return paths[0].parent


def fetch(name: str, allow_download: bool = True, hint: str | None = None) -> Path:
    """The verified local path of the named weights: a file (single-file weights) or the folder of
    a Hugging Face repository's files, downloaded into the cache when missing."""
    w = get(name)
    hint = hint or w.fix_hint()
    if w.url:
        return _url_file(w, allow_download, hint)
    path = _hf_files(w, allow_download, hint)
    return path / w.files[0] if len(w.files) == 1 else path


def cached(name: str) -> Path | None:
    """Where the named weights are in the cache (not verified), or None."""
    w = get(name)
    if w.url:
        path = cache_dir() / Path(w.url).name
        return path if path.is_file() else None
    assert w.repo is not None  # (weights without a url are a Hugging Face repository's)
    snapshots = cache_dir() / "hf" / ("models--" + w.repo.replace("/", "--")) / "snapshots"
    for snap in sorted(snapshots.glob("*")) if snapshots.is_dir() else []:
        if all((snap / f).exists() for f in w.files):
            return snap / w.files[0] if len(w.files) == 1 else snap
    return None


def local_checkpoint(path: Path, w: Weights, kind: str = "file") -> Path:
    """A user-given local copy: it must exist (a file, or a folder for repositories)."""
    path = Path(path).expanduser()
    ok = path.is_dir() if kind == "folder" else path.is_file()
    if not ok:
        what = "folder" if kind == "folder" else "file"
        raise SA3DError(
            f"{w.model} checkpoint not found: {path} is not an existing {what} ({w.flag}). "
            f"Give the path of a local copy, or leave {w.flag} unset to use the cached or downloaded weights "
            f"(`sa3d-weights download {w.name}`)."
        )
    return path


# ----------------------------------------------------------------------------- sa3d-weights
def describe() -> list[dict]:
    """Every model: name, what it is, flag, extra, source and where it is cached (or None)."""
    rows = []
    for w in WEIGHTS.values():
        path = cached(w.name)
        size = None
        if path is not None:
            files = [path] if path.is_file() else [path / f for f in w.files]
            size = sum(Path(os.path.realpath(f)).stat().st_size for f in files if f.exists())
        rows.append(
            {
                "name": w.name,
                "model": w.model,
                "flag": w.flag,
                "extra": w.extra,
                "source": w.url or f"https://huggingface.co/{w.repo}",
                "cached": str(path) if path else None,
                "bytes": size,
            }
        )
    return rows


def entrypoint(argv: list[str] | None = None) -> None:
    """sa3d-weights list | download NAME... | download all: see and fetch model weights ahead of time."""
    import argparse
    import sys

    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(
        prog="sa3d-weights",
        description=f"Model weights of sa3d_ns, kept in {cache_dir()} (set $SA3D_CACHE to move it).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="every model, its source and whether it is in the cache")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    dl = sub.add_parser("download", help="fetch and verify weights now (on a machine with internet)")
    dl.add_argument("names", nargs="+", metavar="NAME", help=f"model names ({', '.join(WEIGHTS)}) or 'all'")
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.command == "list" and args.json:
            print(json.dumps(describe(), indent=1))
            return
        if args.command == "list":
            table = Table(title=f"sa3d_ns model weights (cache: {cache_dir()})")
            for col in ("name", "model", "flag", "extra", "cached"):
                table.add_column(col, no_wrap=col in ("name", "flag"))
            for r in describe():
                where = f"{r['cached']} ({r['bytes'] / 2**20:.0f} MiB)" if r["cached"] else "not downloaded"
                table.add_row(r["name"], r["model"], r["flag"], r["extra"] or "-", where)
            console.print(table)
            return
        names = list(WEIGHTS) if args.names == ["all"] else args.names
        for name in names:
            get(name)  # every name is checked before anything is fetched
        for name in names:
            path = fetch(name, allow_download=True)
            console.print(f"[green]{name}[/green]: {path}")
    except SA3DError as err:
        console.print(f"[bold red]sa3d-weights error:[/bold red] {err}")
        sys.exit(2)
