"""The user's prompt in one view: points, labels, an optional box and a mask choice.

File format (JSON)::

    {"view": 0, "points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1, y1], "mask_choice": null}

* ``view``: an index into the training images, or an image file name (``frame_00012.png``, or a
  path relative to the dataset such as ``images/frame_00012.png``).
* ``points``: N x 2 pixel coordinates (x = column, y = row) of that training image at its full
  resolution. Optional when a box is given.
* ``labels``: N values, 1 = positive (on the object), 0 = negative. Default: all positive.
* ``box``: optional [x0, y0, x1, y1] in the same pixel coordinates, x0 < x1, y0 < y1.
* ``text``: optional phrase ("a yellow duck") instead of a box: Grounding DINO finds its best box in
  the view (above the box threshold) and the segmenter segments that box (with any points given).
* ``mask_choice``: which of the segmenter's candidate masks to use (0, 1 or 2 for SAM's three
  candidates); null picks the highest-scoring one.
* ``name``: optional object name (letters, digits, ``_``, ``-``), used in render output names and
  export file names. Default ``object`` (``object1``, ``object2``, ... for several objects).

Several objects in one run: ``{"objects": [{"name": "ball", "view": 0, "points": ...}, ...]}``,
each entry a prompt as above (each in its own view if wanted).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.objects import check_name, check_unique

ALLOWED_KEYS = ("view", "points", "labels", "box", "text", "mask_choice", "name")
EXAMPLE = '{"view": 0, "points": [[120, 80]], "labels": [1]}'


@dataclass
class Prompt:
    """A validated prompt (coordinates still in the full-resolution pixels of ``view``)."""

    view: int | str
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    box: np.ndarray | None = None
    mask_choice: int | None = None
    text: str | None = None
    name: str = "object"
    named: bool = False  # the name was given in the file (not a default)

    def scaled(self, sx: float, sy: float) -> Prompt:
        """The same prompt in an image resized by (sx, sy) (pixel centres are preserved)."""
        pts = (self.points + 0.5) * np.array([sx, sy], dtype=np.float32) - 0.5
        box = None
        if self.box is not None:
            box = self.box * np.array([sx, sy, sx, sy], dtype=np.float32)
        return Prompt(
            view=self.view,
            points=pts.astype(np.float32),
            labels=self.labels.copy(),
            box=box,
            mask_choice=self.mask_choice,
            text=self.text,
            name=self.name,
            named=self.named,
        )

    def to_json(self) -> dict:
        return {
            "view": self.view,
            "points": self.points.tolist(),
            "labels": self.labels.tolist(),
            "box": None if self.box is None else self.box.tolist(),
            "text": self.text,
            "mask_choice": self.mask_choice,
            "name": self.name,
        }


def _fail(source: str, message: str) -> SA3DError:
    return SA3DError(f"Invalid prompt {source}: {message}. Example of a valid prompt: {EXAMPLE}")


def _is_number(v) -> bool:
    """A finite JSON number that a float32 holds (pixel coordinates are kept as float32)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v) and abs(float(v)) < 1e38
    except OverflowError:  # (an integer beyond any float)
        return False


def parse_prompt(data, source: str = "prompt") -> Prompt:
    """Validate a decoded JSON prompt; raise :class:`SA3DError` naming what is wrong."""
    if not isinstance(data, dict):
        raise _fail(source, f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(ALLOWED_KEYS))
    if unknown:
        raise _fail(source, f"unknown key(s) {unknown}; allowed keys are {list(ALLOWED_KEYS)}")
    if "view" not in data:
        raise _fail(source, 'missing "view" (a training image index or file name)')
    view = data["view"]
    if isinstance(view, bool) or not isinstance(view, (int, str)) or (isinstance(view, str) and not view.strip()):
        raise _fail(source, f'"view" must be an integer index or an image file name, got {view!r}')
    if isinstance(view, int) and view < 0:
        raise _fail(source, f'"view" must be >= 0, got {view}')

    points_raw = data.get("points") or []
    if not isinstance(points_raw, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(v) for v in p) for p in points_raw
    ):
        raise _fail(source, f'"points" must be a list of [x, y] pixel pairs, got {points_raw!r}')
    points = np.asarray(points_raw, dtype=np.float32).reshape(-1, 2)

    labels_raw = data.get("labels")
    if labels_raw is None:
        labels = np.ones(len(points), dtype=np.int64)
    else:
        if not isinstance(labels_raw, list) or not all(v in (0, 1) and not isinstance(v, float) for v in labels_raw):
            raise _fail(source, f'"labels" must be a list of 1 (positive) / 0 (negative), got {labels_raw!r}')
        if len(labels_raw) != len(points):
            raise _fail(
                source,
                f'"labels" has {len(labels_raw)} entries but "points" has {len(points)}; give one label per point',
            )
        labels = np.asarray(labels_raw, dtype=np.int64)

    box = None
    if data.get("box") is not None:
        b = data["box"]
        if not isinstance(b, list) or len(b) != 4 or not all(_is_number(v) for v in b):
            raise _fail(source, f'"box" must be [x0, y0, x1, y1], got {b!r}')
        if not (b[0] < b[2] and b[1] < b[3]):
            raise _fail(source, f'"box" must have x0 < x1 and y0 < y1, got {b!r}')
        box = np.asarray(b, dtype=np.float32)

    text = data.get("text")
    if text is not None:
        if not isinstance(text, str) or not text.strip() or len(text) > 256:
            raise _fail(source, f'"text" must be a non-empty phrase of at most 256 characters, got {text!r}')
        if box is not None:
            raise _fail(source, 'give a "box" or a "text" (which finds a box), not both')
        text = text.strip()

    if box is None and text is None and not bool((labels == 1).any()):
        raise _fail(source, "give at least one positive point (label 1), a box or a text")

    choice = data.get("mask_choice")
    if choice is not None and (isinstance(choice, bool) or not isinstance(choice, int) or choice < 0):
        raise _fail(source, f'"mask_choice" must be null or a candidate index >= 0, got {choice!r}')
    name = check_name(data["name"], source) if "name" in data else "object"
    return Prompt(
        view=view, points=points, labels=labels, box=box, mask_choice=choice, text=text, name=name, named="name" in data
    )


def parse_prompts(data, source: str = "prompt") -> list[Prompt]:
    """One prompt, or ``{"objects": [prompt, ...]}``: a list of prompts with unique names."""
    if not (isinstance(data, dict) and "objects" in data):
        return [parse_prompt(data, source)]
    extra = sorted(set(data) - {"objects"})
    if extra:
        raise _fail(source, f'a file with "objects" has no other top-level keys, found {extra}')
    items = data["objects"]
    if not isinstance(items, list) or not items:
        raise _fail(source, '"objects" must be a non-empty list of prompts')
    prompts = []
    for k, item in enumerate(items):
        p = parse_prompt(item, f"{source} (objects[{k}])")
        if not p.named and len(items) > 1:
            p.name = f"object{k + 1}"
        prompts.append(p)
    check_unique([p.name for p in prompts], source)
    return prompts


def load_prompts(path: Path | str) -> list[Prompt]:
    """Read and validate a prompt JSON file: one prompt per object."""
    path = Path(path)
    return parse_prompts(_read_json(path), source=str(path))


def load_prompt(path: Path | str) -> Prompt:
    """Read and validate a prompt JSON file of one object."""
    path = Path(path)
    return parse_prompt(_read_json(path), source=str(path))


def _read_json(path: Path):
    path = Path(path)
    if not path.is_file():
        raise SA3DError(
            f"Prompt file not found: {path}. Pass an existing JSON file with --pipeline.prompt (example: {EXAMPLE})."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise _fail(str(path), f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise _fail(str(path), f"not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    except RecursionError:
        raise _fail(str(path), "nested too deeply to read") from None
    except OSError as err:
        raise SA3DError(f"Cannot read the prompt file {path}: {err.strerror or err}.") from None


def resolve_view(view: int | str, image_names: Sequence[str]) -> int:
    """Map a prompt's ``view`` (index or file name) to a training-image index.

    ``image_names`` are the training images' paths (relative or absolute). A name matches a path
    that ends with it (``frame_00012.png`` matches ``.../images/frame_00012.png``); a name without
    an extension matches the image with that stem.
    """
    n = len(image_names)
    if isinstance(view, int):
        if not 0 <= view < n:
            raise SA3DError(
                f'Prompt "view" {view} is out of range: the run has {n} training images (valid indices 0..{n - 1}).'
            )
        return view
    wanted = Path(view).as_posix().lstrip("./")
    matches = [
        i
        for i, name in enumerate(image_names)
        if Path(name).as_posix() == wanted or Path(name).as_posix().endswith("/" + wanted)
    ]
    if not matches and not Path(wanted).suffix:  # a bare stem (e.g. from NVOS) matches any extension
        matches = [i for i, name in enumerate(image_names) if Path(name).stem == wanted]
    if len(matches) == 1:
        return matches[0]
    examples = ", ".join(Path(x).name for x in list(image_names)[:3])
    if not matches:
        raise SA3DError(
            f'Prompt "view" {view!r} is not a training image of this run (it may be a held-out view). '
            f"Give an index 0..{n - 1} or a training image name such as {examples}."
        )
    raise SA3DError(f'Prompt "view" {view!r} matches {len(matches)} training images; give a longer path or an index.')


def check_inside(prompt: Prompt, width: int, height: int) -> None:
    """Every point and the box must lie inside a width x height image."""
    for k, (x, y) in enumerate(prompt.points):
        if not (0 <= x < width and 0 <= y < height):
            raise SA3DError(
                f"Prompt point {k} at (x={x:g}, y={y:g}) is outside view {prompt.view!r}, which is {width} x {height} pixels "
                f"(valid x in [0, {width}), y in [0, {height})). Coordinates are pixels of the full-resolution training image."
            )
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise SA3DError(
                f"Prompt box {prompt.box.tolist()} extends outside view {prompt.view!r}, which is {width} x {height} pixels."
            )
