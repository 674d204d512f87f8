"""The folder of an sa3d run: the one place that knows its layout (plain Python, no nerfstudio).

    <run>/config.yml                      nerfstudio's config of the run (the objects' names in it)
    <run>/nerfstudio_models/step-*.ckpt   checkpoints: the frozen NeRF and every object's mask field
    <run>/sa3d/summary.json               per object its prompt, counts and each view's record;
                                          "complete" once every planned view was processed
    <run>/sa3d/views/                     each view's image with its 2D mask and prompt points
                                          (<step>_<object>_view<v>_<image>_<status>.png), and the
                                          candidates of a first mask that looks wrong
    <run>/sa3d/masks/                     each view's 2D mask (PNG, 0/255)
    <run>/sa3d/viewer_prompts.json        the prompts given in the viewer (its Save button)
    <run>/sa3d/export/                    sa3d-export's outputs
    <run>/sa3d/eval_<tag>/                sa3d-eval's outputs (tag: the split or the benchmark)

``ns-train sa3d``, ``sa3d-export``, ``sa3d-eval``, ``--pipeline.add-to`` and the viewer panel all
find these files through :class:`RunFolder`. Every JSON file is written to a temporary file first
and moved into place, so a reader never sees half of one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sa3d_ns.core.errors import SA3DError, write_failure


def write_json(path: Path, data) -> None:
    """``data`` as JSON at ``path``, whole or not at all (a temporary file moved into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(data, indent=1)
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SA3DError(write_failure(path, err, len(text.encode()))) from None


@dataclass(frozen=True)
class RunFolder:
    """An sa3d run's folder (the one holding its config.yml)."""

    root: Path

    @classmethod
    def of(cls, path: Path | str) -> RunFolder:
        """The run of a config.yml, or of the folder holding it."""
        path = Path(path)
        return cls(path.parent if path.suffix in (".yml", ".yaml") else path)

    @property
    def config(self) -> Path:
        return self.root / "config.yml"

    @property
    def models(self) -> Path:
        return self.root / "nerfstudio_models"

    @property
    def sa3d(self) -> Path:
        """What SA3D writes beside nerfstudio's files (``pipeline.output_dir``)."""
        return self.root / "sa3d"

    @property
    def summary_path(self) -> Path:
        return self.sa3d / "summary.json"

    @property
    def views(self) -> Path:
        return self.sa3d / "views"

    @property
    def masks(self) -> Path:
        return self.sa3d / "masks"

    @property
    def viewer_prompts(self) -> Path:
        return self.sa3d / "viewer_prompts.json"

    @property
    def export(self) -> Path:
        return self.sa3d / "export"

    def eval_dir(self, tag: str) -> Path:
        return self.sa3d / f"eval_{tag}"

    def has_summary(self) -> bool:
        return self.summary_path.is_file()

    def checkpoints(self) -> list[Path]:
        return sorted(self.models.glob("step-*.ckpt")) if self.models.is_dir() else []

    def check_finished(self) -> None:
        """A clear error unless this is a run that any command may open: its summary.json and a
        checkpoint (written when ns-train sa3d ends, or by the viewer's Save). A run stopped before
        its end has neither (ns-train sa3d removes it) or, killed outright, no checkpoint."""
        if not self.has_summary():
            raise SA3DError(f"{self.root} is not a finished sa3d run (no sa3d/summary.json).")
        if not self.checkpoints():
            raise SA3DError(
                f"{self.root} is not a finished sa3d run: it has no checkpoint in {self.models} (the run was stopped "
                "before its end). Run ns-train sa3d again with the same settings; its cache makes the rerun quick."
            )

    def summary(self) -> dict:
        """summary.json, or a clear error when there is none or it cannot be read."""
        path = self.summary_path
        if not path.is_file():
            raise SA3DError(f"{self.root} is not a finished sa3d run (no {path}).")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SA3DError(f"{path} cannot be read ({err}); is {self.root} an sa3d run?") from None
        if not isinstance(data, dict) or not isinstance(data.get("objects", []), list):
            raise SA3DError(f"{path} is not an sa3d run summary; is {self.root} an sa3d run?")
        return data

    def is_complete(self) -> bool:
        """Whether the run processed every view it planned (its summary says "complete")."""
        try:
            return bool(json.loads(self.summary_path.read_text()).get("complete", False))
        except (OSError, ValueError, AttributeError):
            return False

    def object_names(self) -> list[str]:
        """The objects the summary lists, in order."""
        try:
            return [o["name"] for o in self.summary()["objects"]]
        except (KeyError, TypeError):
            raise SA3DError(f"{self.summary_path} is not an sa3d run summary; is {self.root} an sa3d run?") from None

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)

    def write_viewer_prompts(self, prompts: dict) -> None:
        write_json(self.viewer_prompts, prompts)

    def read_viewer_prompts(self) -> dict:
        path = self.viewer_prompts
        return json.loads(path.read_text()) if path.is_file() else {}


def view_stem(rec: dict) -> str:
    """The file name (without suffix) of a view record's mask and image."""
    return f"{rec['step']:04d}_{rec['object']}_view{rec['view']:04d}_{Path(rec['image']).stem}"


def candidate_name(rec: dict, i: int, chosen: bool) -> str:
    """The file name of candidate ``i`` of a first mask (views/)."""
    return f"{rec['step']:04d}_{rec['object']}_candidate{i}{'_chosen' if chosen else ''}.png"


STATUS_COLORS = {
    "prompt": (60, 140, 255),
    "accepted": (40, 200, 40),
    "rejected": (230, 40, 40),
    "skipped": (150, 150, 150),
}


def save_view_images(run: RunFolder, rec: dict, image, mask, points, labels) -> None:
    """A processed view's 2D mask (masks/, PNG 0/255) and its image with the mask tinted, the
    prompt points (green +, red -), a text prompt's box and a frame in the status's colour (views/)."""
    import cv2

    from sa3d_ns.core.drawing import enlarge, tint

    stem = view_stem(rec)
    run.masks.mkdir(parents=True, exist_ok=True)
    run.views.mkdir(parents=True, exist_ok=True)
    if mask is not None:
        cv2.imwrite(str(run.masks / f"{stem}.png"), mask.astype("uint8") * 255)
    vis, scale = enlarge(tint(image, mask), 256)
    if "text" in rec:  # the box Grounding DINO found for the text prompt
        x0, y0, x1, y1 = (int(round(v * scale)) for v in rec["text"]["box"])
        cv2.rectangle(vis, (x0, y0), (x1, y1), (255, 220, 0), max(1, scale // 2))
    for (x, y), lab in zip(points, labels, strict=False):
        c = (int((x + 0.5) * scale), int((y + 0.5) * scale))
        cv2.circle(vis, c, max(3, scale * 2), (0, 255, 0) if lab == 1 else (255, 0, 0), -1)
        cv2.circle(vis, c, max(3, scale * 2), (255, 255, 255), 1)
    cv2.rectangle(vis, (0, 0), (vis.shape[1] - 1, vis.shape[0] - 1), STATUS_COLORS[rec["status"]], max(2, scale))
    cv2.imwrite(str(run.views / f"{stem}_{rec['status']}.png"), cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))


def save_candidates(run: RunFolder, rec: dict, image, masks, choice: int) -> list[Path]:
    """Each candidate of a first mask that looks wrong, as an overlay to pick from
    (views/<step>_<object>_candidate<i>.png; the chosen one's name ends in _chosen)."""
    import cv2

    from sa3d_ns.core.drawing import tint

    run.views.mkdir(parents=True, exist_ok=True)
    written = []
    for i, mask in enumerate(masks):
        path = run.views / candidate_name(rec, i, i == choice)
        cv2.imwrite(str(path), cv2.cvtColor(tint(image, mask), cv2.COLOR_RGB2BGR))
        written.append(path)
    return written
