"""The SA3D panel in the nerfstudio viewer (viser): prompt, watch and correct the segmentation.

The pipeline carries two objects that nerfstudio's viewer picks up: :class:`SA3DPanel` (a viewer
element, installed in the Control tab) and :class:`SA3DViewerControl` (gives the panel the viewer:
the clients' cameras, the output dropdown, the run folder). All the panel's logic is in
:class:`PanelLogic`, which knows nothing of viser and is unit-tested directly; the viser part only
wires widgets to it.

A prompt is made in the viewer's current camera: clicks add positive or negative points, a
rectangle selection sets a box; the camera is rendered by the NeRF at the segmentation resolution
and the segmenter's candidate masks are shown with their scores. "Segment" lifts the chosen mask
from that camera and runs the cross-view loop over the training views in a background thread,
with progress; clicks meanwhile are refused with a message. "Save" writes the objects into the
run (a new checkpoint and the run's config.yml), so reopening the run shows them.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerElement

from sa3d_ns.core.drawing import enlarge, tint
from sa3d_ns.core.errors import SA3DError, write_failure
from sa3d_ns.core.prompts import Prompt
from sa3d_ns.core.regions import plausible_choice
from sa3d_ns.nerf.checkpoints import write_checkpoint
from sa3d_ns.run_folder import RunFolder

MAX_SIDE = 512  # the longest side a viewer camera is rendered at for segmentation


def png_markdown(image: np.ndarray, caption: str = "") -> str:
    """An image in viser's markdown (a data URL: viser's markdown shows no raw HTML)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    assert ok
    data = base64.b64encode(buf.tobytes()).decode()
    return f"![{caption or 'image'}](data:image/png;base64,{data})" + (f"\n\n{caption}" if caption else "")


def draw_prompt(rgb: np.ndarray, mask: np.ndarray | None, prompt: Prompt | None, color=(255, 60, 60)) -> np.ndarray:
    """The render with a mask tinted and the prompt's points (green +, red -) and box drawn."""
    vis, scale = enlarge(tint(rgb, mask, color), 240)
    if prompt is not None:
        if prompt.box is not None:
            x0, y0, x1, y1 = (int(round(v * scale)) for v in prompt.box)
            cv2.rectangle(vis, (x0, y0), (x1, y1), (255, 220, 0), 2)
        for (x, y), lab in zip(prompt.points, prompt.labels, strict=True):
            c = (int((x + 0.5) * scale), int((y + 0.5) * scale))
            cv2.circle(vis, c, 5, (0, 220, 0) if lab == 1 else (230, 0, 0), -1)
            cv2.circle(vis, c, 5, (255, 255, 255), 1)
    return vis


def screen_to_pixel(screen_pos, width: int, height: int) -> tuple[float, float]:
    """A normalised screen position (OpenCV convention, [0, 1]) -> pixel coordinates (pixel
    centres at integers, as prompts use)."""
    u, v = screen_pos
    return (float(np.clip(u, 0, 1)) * width - 0.5, float(np.clip(v, 0, 1)) * height - 0.5)


def render_size(aspect: float, max_side: int) -> tuple[int, int]:
    """(height, width) of a render with this aspect (width / height) whose longest side is max_side."""
    if aspect >= 1:
        return max(8, round(max_side / aspect)), max_side
    return max_side, max(8, round(max_side * aspect))


@dataclass
class ViewerPrompt:
    """The prompt being made: the camera it is in, its render, points, box and the candidates."""

    camera: object  # nerfstudio Cameras (one camera)
    data: dict
    points: list[tuple[float, float, int]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    history: list[tuple] = field(default_factory=list)  # ("point",) / ("box", the box it replaced), for undo
    masks: np.ndarray | None = None
    scores: np.ndarray | None = None
    choice: int | None = None
    warnings: list[dict[str, str]] | None = None

    def prompt(self, name: str) -> Prompt:
        pts = np.array([p[:2] for p in self.points], np.float32).reshape(-1, 2)
        labels = np.array([p[2] for p in self.points], np.int64)
        box = None if self.box is None else np.asarray(self.box, np.float32)
        return Prompt(view="viewer camera", points=pts, labels=labels, box=box, name=name, named=True)

    @property
    def image(self) -> np.ndarray:
        return self.data["rgb"].cpu().numpy()


def same_camera(a, b, tol: float = 1e-4) -> bool:
    return (
        a is not None
        and b is not None
        and torch.allclose(a.camera_to_worlds.cpu(), b.camera_to_worlds.cpu(), atol=tol)
        and torch.allclose(a.fx.cpu(), b.fx.cpu(), atol=tol)
        and int(a.width) == int(b.width)
        and int(a.height) == int(b.height)
    )


class PanelLogic:
    """What the panel does, without viser. ``pipeline`` is the SA3D pipeline; ``notify(text)``
    shows a message; ``changed()`` is called when the display should be refreshed."""

    def __init__(self, pipeline, notify=None, changed=None):
        self.pipeline = pipeline
        self.notify = notify or (lambda text: None)
        self.changed = changed or (lambda: None)
        self.current: ViewerPrompt | None = None
        self.camera_prompts: dict[str, tuple] = {}  # name -> (camera, data, mask, prompt): re-run
        self.choices: dict[str, int | None] = {}  # name -> the candidate chosen
        self.run_dir: Path | None = None
        self.thread: threading.Thread | None = None
        self.stop_requested = False
        self.finished = True  # (set before the run's thread ends, so its last update reads "finished")
        self.progress: dict = {"done": 0, "total": 0, "accepted": 0, "rejected": 0, "last": None}
        # one action at a time: viser runs each browser event in a thread of its own, so two tabs
        # (or quick presses) could otherwise both pass the busy check and start two runs, or save
        # while a run starts (the panel's actions hold it; the run itself, in its thread, does not)
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        # (``finished`` alone: it turns False before the run's progress is published and True
        # only at its end, so no observer sees a fresh run's progress beside busy False, as one
        # did in the moment between the progress and the thread's start)
        return not self.finished

    def refuse_if_busy(self) -> bool:
        if self.busy:
            self.notify("Segmentation is running: wait for it to finish or press Stop; this action was not taken.")
            return True
        return False

    def next_name(self) -> str:
        names = set(self.pipeline.model.object_names)
        i = len(names) + 1
        while f"object{i}" in names:
            i += 1
        return f"object{i}"

    # ------------------------------------------------------------------ prompting
    def _prompt_in(self, camera) -> ViewerPrompt:
        if self.current is None or not same_camera(self.current.camera, camera):
            if self.current is not None and (self.current.points or self.current.box):
                self.notify("The camera moved: a new prompt is started in the current view.")
            self.current = ViewerPrompt(camera=camera, data=self.pipeline.camera_data(camera))
        return self.current

    def add_point(self, camera, screen_pos, label: int) -> None:
        if self.refuse_if_busy():
            return
        p = self._prompt_in(camera)
        h, w = (int(x) for x in p.data["size"])
        x, y = screen_to_pixel(screen_pos, w, h)
        p.points.append((x, y, int(label)))
        p.history.append(("point",))
        self.preview()

    def set_box(self, camera, min_pos, max_pos) -> None:
        if self.refuse_if_busy():
            return
        p = self._prompt_in(camera)
        h, w = (int(x) for x in p.data["size"])
        x0, y0 = screen_to_pixel(min_pos, w, h)
        x1, y1 = screen_to_pixel(max_pos, w, h)
        x0, x1 = sorted((max(x0 + 0.5, 0.0), min(x1 + 0.5, float(w))))
        y0, y1 = sorted((max(y0 + 0.5, 0.0), min(y1 + 0.5, float(h))))
        if x1 - x0 < 2 or y1 - y0 < 2:
            self.notify("The box is too small: drag a larger rectangle around the object.")
            return
        p.history.append(("box", p.box))
        p.box = (x0, y0, x1, y1)
        self.preview()

    def find_text(self, camera, text: str) -> None:
        """Grounding DINO's best box for ``text`` in the camera's render becomes the prompt's box."""
        if self.refuse_if_busy():
            return
        if not text.strip():
            self.notify("Type what to find, e.g. 'a red ball'.")
            return
        p = self._prompt_in(camera)
        det = self.pipeline.find_text(text.strip(), p.image, "the viewer's view")
        p.history.append(("box", p.box))
        x0, y0, x1, y1 = (float(v) for v in det.box)
        p.box = (x0, y0, x1, y1)
        self.notify(f"Found {det.label or text!r} (score {det.score:.2f}).")
        self.preview()

    def undo(self) -> None:
        if self.refuse_if_busy() or self.current is None or not self.current.history:
            return
        p = self.current
        last = p.history.pop()
        if last[0] == "box":
            p.box = last[1]  # the box before it (None for the first)
        else:
            p.points.pop()
        self.preview()

    def clear(self) -> None:
        if self.refuse_if_busy():
            return
        self.current = None
        self.changed()

    def preview(self) -> None:
        """The segmenter's candidates for the current prompt (none without a positive point or box)."""
        p = self.current
        has_input = p is not None and (p.box is not None or any(lab == 1 for *_, lab in p.points))
        if not has_input:
            if p is not None:
                p.masks = p.scores = p.choice = None
            self.changed()
            return
        assert p is not None
        result = self.pipeline.segment_camera(p.data, p.prompt("preview"))
        p.masks, p.scores = result.masks, result.scores
        p.warnings = result.warnings or [{} for _ in result.masks]
        p.choice = plausible_choice(result.scores, p.warnings)  # (the user may choose another)
        self.changed()

    def choose(self, choice: int) -> None:
        p = self.current
        if p is None or p.masks is None or not 0 <= choice < len(p.masks):
            self.notify("No such candidate mask: make a prompt first.")
            return
        p.choice = choice
        self.changed()

    # ------------------------------------------------------------------ segmenting
    def segment(self, name: str, wait: bool = False) -> bool:
        """Add object ``name`` from the chosen candidate and run the cross-view loop in the background."""
        if self.refuse_if_busy():
            return False
        p = self.current
        if p is None or p.masks is None or p.choice is None:
            self.notify("Make a prompt first: click on the object (or drag a box) in the view.")
            return False
        mask = p.masks[p.choice]
        if not mask.any():
            self.notify("The chosen mask is empty: add points on the object or pick another candidate.")
            return False
        try:
            k = self.pipeline.add_object(name)
        except SA3DError as err:
            self.notify(str(err))
            return False
        prompt = p.prompt(name)
        self.camera_prompts[name] = (p.camera, p.data, mask, prompt)
        self.choices[name] = p.choice
        self.current = None
        self._start(k, lambda: self.pipeline.start_object_from_camera(k, p.camera, p.data, mask, prompt), name, wait)
        return True

    def rerun(self, name: str, wait: bool = False) -> bool:
        """Segment object ``name`` again from its prompt (after changing settings, or a stopped run)."""
        if self.refuse_if_busy():
            return False
        if name not in self.pipeline.model.object_names:
            self.notify(f"No object named {name!r}.")
            return False
        k = self.pipeline.model.object_index(name)
        if name in self.camera_prompts:
            camera, data, mask, prompt = self.camera_prompts[name]
            if data is None or mask is None:  # a prompt saved with the run: render and segment it again
                data = self.pipeline.camera_data(camera)
                result = self.pipeline.segment_camera(data, prompt)
                choice = self.choices.get(name)
                mask = result.masks[
                    choice if choice is not None and choice < len(result.masks) else int(np.argmax(result.scores))
                ]
                self.camera_prompts[name] = (camera, data, mask, prompt)
            self._start(k, lambda: self.pipeline.start_object_from_camera(k, camera, data, mask, prompt), name, wait)
            return True
        prompt = self.pipeline.prompts[k] if k < len(self.pipeline.prompts) else None
        if prompt is None and self.run_dir is not None:  # a prompt file's object of a reopened run
            prompt = file_prompt(self.run_dir, name)
        if prompt is None:
            self.notify(f"No prompt of {name!r} is known; prompt it again and press Segment.")
            return False
        prompt.name = name
        self._start(k, lambda: self.pipeline.start_objects([prompt], k), name, wait)
        return True

    def _start(self, k, begin, name, wait) -> None:
        self.finished = False
        try:
            begin()
        except BaseException:
            self.finished = True
            raise
        total = len(self.pipeline.plan)
        self.progress = {"done": 0, "total": total, "accepted": 0, "rejected": 0, "last": None, "object": name}
        self.stop_requested = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="sa3d-segment")
        self.thread.start()
        self.changed()
        if wait:
            self.thread.join()

    def _run(self) -> None:
        def on_step(rec):
            pr = self.progress
            pr["done"] += 1
            pr["accepted"] += rec["status"] == "accepted"
            pr["rejected"] += rec["status"] == "rejected"
            pr["last"] = rec
            self.changed()

        try:
            self.pipeline.run_steps(stop=lambda: self.stop_requested, on_step=on_step)
            stopped = self.progress["done"] < self.progress["total"]
            name = self.progress["object"]
            warnings, loop = [], getattr(self.pipeline, "loop", None)
            if not stopped and loop is not None and name in self.pipeline.model.object_names:
                warnings = loop.object_summary(self.pipeline.model.object_index(name))["warnings"]
            self.notify(
                f"{name}: stopped after {self.progress['done']} views."
                if stopped
                else f"{name}: done, {self.progress['accepted'] + 1} masks lifted."
                + "".join(f" Warning: {w}" for w in warnings)
            )
        except Exception as err:  # noqa: BLE001 - shown in the panel; the viewer keeps running
            self.notify(f"Segmentation failed: {type(err).__name__}: {err}")
        finally:
            self.finished = True
            self.changed()

    def stop(self) -> None:
        self.stop_requested = True

    # ------------------------------------------------------------------ objects
    def rename(self, old: str, new: str) -> None:
        if self.refuse_if_busy():
            return
        model = self.pipeline.model
        try:
            model.rename_object(model.object_index(old), new)
        except SA3DError as err:
            self.notify(str(err))
            return
        if old in self.camera_prompts:
            self.camera_prompts[new] = self.camera_prompts.pop(old)
            self.choices[new] = self.choices.pop(old, None)
        self.changed()

    def delete(self, name: str) -> None:
        if self.refuse_if_busy():
            return
        try:
            self.pipeline.remove_object(self.pipeline.model.object_index(name))
        except SA3DError as err:
            self.notify(str(err))
            return
        self.camera_prompts.pop(name, None)
        self.choices.pop(name, None)
        self.changed()

    def save(self, run_dir: Path) -> Path:
        """Write the objects into the run: a new checkpoint (the older ones are kept) and the
        objects' names in config.yml. Returns the checkpoint written."""
        if self.busy:
            raise SA3DError("Segmentation is running: wait for it to finish or stop it before saving.")
        names = self.pipeline.model.object_names
        prompts = {
            name: {"camera": camera_to_json(c[0]), "prompt": c[3].to_json(), "mask_choice": self.choices.get(name)}
            for name, c in self.camera_prompts.items()
            if name in names
        }
        return save_objects(self.pipeline, Path(run_dir), prompts)

    def load_saved(self, run_dir: Path) -> None:
        """The viewer prompts saved with the run (sa3d/viewer_prompts.json), for Re-run."""
        self.run_dir = Path(run_dir)
        run = RunFolder(self.run_dir)
        path = run.viewer_prompts
        from sa3d_ns.core.prompts import parse_prompt

        for name, entry in run.read_viewer_prompts().items():
            if name in self.pipeline.model.object_names and name not in self.camera_prompts:
                prompt = parse_prompt(entry["prompt"], str(path))
                prompt.name = name
                self.camera_prompts[name] = (camera_from_json(entry["camera"]), None, None, prompt)
                self.choices[name] = entry.get("mask_choice")

    def status_markdown(self) -> str:
        model = self.pipeline.model
        lines = ["**Objects**"] if model.object_names else ["No objects yet: click on one in the view."]
        for name, color in zip(model.object_names, model.object_colors, strict=True):
            hexc = "#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in color))
            lines.append(f"- {name} `{hexc}`")  # (viser's markdown shows a colour chip for the code)
        for rec in self.pipeline.records:  # a prompt file's first mask that looks wrong
            if rec.get("warnings"):
                lines.append(
                    f"\n⚠ first mask of **{rec['object']}** (view {rec['image']}) may not be the clicked object: "
                    + "; ".join(rec["warnings"])
                    + ' (pick another with "mask_choice" in the prompt file, or prompt it here)'
                )
        pr = self.progress
        if pr["total"]:
            state = "running" if self.busy else "finished"
            lines.append(
                f"\n**{pr.get('object', '')}**: {state}, view {pr['done']}/{pr['total']}, "
                f"{pr['accepted']} accepted, {pr['rejected']} rejected"
            )
        return "\n".join(lines)


def camera_to_json(camera) -> dict:
    return {
        "camera_to_worlds": camera.camera_to_worlds.reshape(3, 4).tolist(),
        **{k: float(getattr(camera, k).reshape(-1)[0]) for k in ("fx", "fy", "cx", "cy")},
        "width": int(camera.width.reshape(-1)[0]),
        "height": int(camera.height.reshape(-1)[0]),
    }


def camera_from_json(d: dict):
    from nerfstudio.cameras.cameras import Cameras

    return Cameras(
        camera_to_worlds=torch.tensor(d["camera_to_worlds"], dtype=torch.float32)[None],
        fx=d["fx"], fy=d["fy"], cx=d["cx"], cy=d["cy"], width=d["width"], height=d["height"],
    )  # fmt: skip


def file_prompt(run_dir: Path, name: str) -> Prompt | None:
    """The prompt file's prompt of object ``name``, as the run's summary.json keeps it."""
    from sa3d_ns.core.prompts import parse_prompt

    run = RunFolder(Path(run_dir))
    path = run.summary_path
    if not run.has_summary():
        return None
    for obj in run.summary().get("objects", []):
        if obj.get("name") == name and obj.get("prompt"):
            data = {k: v for k, v in obj["prompt"].items() if v is not None}
            return parse_prompt(data, str(path))
    return None


def save_objects(pipeline, run_dir: Path, viewer_prompts: dict | None = None) -> Path:
    """A new checkpoint of the pipeline in ``run_dir/nerfstudio_models``, the objects in
    ``run_dir/config.yml`` and the viewer's prompts in ``run_dir/sa3d/viewer_prompts.json`` (each
    written to a temporary file first, then moved into place)."""
    import yaml

    run = RunFolder(Path(run_dir))
    config_path, models = run.config, run.models
    if not config_path.is_file() or not models.is_dir():
        raise SA3DError(f"{run_dir} is not an sa3d run folder (no config.yml or nerfstudio_models/); cannot save.")
    steps = [int(p.stem.split("-")[1]) for p in models.glob("step-*.ckpt") if p.stem.split("-")[1].isdigit()]
    step = max(steps, default=0) + 1
    ckpt = models / f"step-{step:09d}.ckpt"
    text = config_path.read_text()
    config = yaml.load(text, Loader=yaml.Loader)
    config.pipeline.model.objects = list(pipeline.model.object_names)
    cfg_tmp = config_path.with_suffix(".yml.tmp")
    try:
        cfg_tmp.write_text(yaml.dump(config))
    except OSError as err:
        cfg_tmp.unlink(missing_ok=True)
        raise SA3DError(write_failure(config_path, err)) from None
    try:
        write_checkpoint({"step": step, "pipeline": pipeline.state_dict(), "optimizers": {}, "scalers": {}}, ckpt)
    except SA3DError:
        cfg_tmp.unlink(missing_ok=True)
        raise
    cfg_tmp.replace(config_path)
    if viewer_prompts is not None:
        run.write_viewer_prompts(viewer_prompts)
    return ckpt


def write_viewer_prompts(run_dir: Path, viewer_prompts: dict) -> None:
    RunFolder(Path(run_dir)).write_viewer_prompts(viewer_prompts)


# ----------------------------------------------------------------------------- viser wiring
def remove_pointer_callback(scene) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (viser warns when there is none)
        scene.remove_pointer_callback()


class SA3DViewerControl(ViewerControl):
    """Gives the panel the viewer once nerfstudio has set it up."""

    def __init__(self, panel: SA3DPanel):
        self.panel = panel

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        self.panel.attach(viewer, self)


class SA3DPanel(ViewerElement):
    """The SA3D folder of the Control tab (one composite element)."""

    def __init__(self, pipeline):
        super().__init__(name="SA3D")
        self.logic = PanelLogic(pipeline, notify=self._notify, changed=self._changed)
        self.viewer = None
        self.control = None
        self.server = None
        self.handles: dict = {}
        self.click_mode = "off"
        self.message = ""
        self._was_busy = False

    # nerfstudio calls install() inside the Control tab
    def _create_gui_handle(self, viser_server) -> None:
        self.install(viser_server)

    def install(self, viser_server) -> None:
        self.server = viser_server
        gui, h = viser_server.gui, self.handles
        folder = gui.add_folder("SA3D: segment objects")
        # (ViewerElement types its handle as an input; a folder is what this element shows and hides)
        self.gui_handle = folder  # pyright: ignore[reportAttributeAccessIssue]
        with folder:
            h["status"] = gui.add_markdown(self.logic.status_markdown())
            h["name"] = gui.add_text("Object name", initial_value=self.logic.next_name())
            # (the first option is the group's initial value: "off", as the click mode starts)
            h["click"] = gui.add_button_group("Clicks add", ("off", "positive", "negative"))
            h["box"] = gui.add_button("Drag a box")
            h["text"] = gui.add_text("Text prompt", initial_value="")
            h["find"] = gui.add_button("Find the text (Grounding DINO)")
            h["undo"] = gui.add_button("Undo")
            h["clear"] = gui.add_button("Clear prompt")
            # (images are data URLs; image_root only keeps viser from warning about relative paths)
            h["prompt"] = gui.add_markdown(
                "Click on an object in the view (choose 'positive' above).", image_root=Path(__file__).parent
            )
            h["choice"] = gui.add_dropdown("Mask", ("1",), initial_value="1")
            h["segment"] = gui.add_button("Segment")
            h["stop"] = gui.add_button("Stop")
            h["progress"] = gui.add_progress_bar(0.0, animated=False)
            h["message"] = gui.add_markdown("")
            h["display"] = gui.add_dropdown(
                "Display", ("rgb_overlay", "rgb_object", "rgb_removed", "mask_score", "mask", "rgb")
            )
            h["threshold"] = gui.add_slider(
                "Mask threshold", 0.0, 1.0, 0.01, self.logic.pipeline.model.config.mask_threshold
            )
            h["object"] = gui.add_dropdown("Object", tuple(self.logic.pipeline.model.object_names) or ("(none)",))
            h["rename_to"] = gui.add_text("Rename to", initial_value="")
            h["rename"] = gui.add_button("Rename")
            h["delete"] = gui.add_button("Delete")
            h["rerun"] = gui.add_button("Re-run")
            h["save"] = gui.add_button("Save objects to the run")
        h["click"].on_click(lambda _: self._set_click_mode(h["click"].value))
        h["box"].on_click(lambda _: self._arm_box())
        h["find"].on_click(lambda _: self._guard(lambda: self.logic.find_text(self.camera_for(), h["text"].value)))
        h["undo"].on_click(lambda _: self._guard(self.logic.undo))
        h["clear"].on_click(lambda _: self._guard(self.logic.clear))
        h["choice"].on_update(lambda _: self._guard(lambda: self.logic.choose(int(h["choice"].value) - 1)))
        h["segment"].on_click(lambda _: self._guard(lambda: self.logic.segment(h["name"].value.strip())))
        h["stop"].on_click(lambda _: self.logic.stop())
        h["display"].on_update(lambda _: self._show_output(h["display"].value))
        h["threshold"].on_update(lambda _: self._set_threshold(h["threshold"].value))
        h["rename"].on_click(
            lambda _: self._guard(lambda: self.logic.rename(self._chosen_object(), h["rename_to"].value.strip()))
        )
        h["delete"].on_click(lambda _: self._guard(lambda: self.logic.delete(self._chosen_object())))
        h["rerun"].on_click(lambda _: self._guard(lambda: self.logic.rerun(self._chosen_object())))
        h["save"].on_click(lambda _: self._guard(self._save))

    def attach(self, viewer, control: SA3DViewerControl) -> None:
        self.viewer, self.control = viewer, control
        self._guard(lambda: self.logic.load_saved(Path(viewer.log_filename).parent))

    # ------------------------------------------------------------------ callbacks
    def _guard(self, action) -> None:
        """Run a panel action, one at a time (``PanelLogic.lock``); a user error is shown in the
        panel, never raised into viser."""
        try:
            with self.logic.lock:
                action()
        except SA3DError as err:
            self._notify(str(err))
        except Exception as err:  # noqa: BLE001 - the viewer must keep running
            self._notify(f"{type(err).__name__}: {err}")

    def _chosen_object(self) -> str:
        """The object chosen in the panel's Object list (an error while there is none)."""
        if not self.logic.pipeline.model.object_names:
            raise SA3DError("There is no object yet: click on one in the view and press Segment.")
        return self.handles["object"].value

    def camera_for(self, client_id=None):
        assert self.server is not None, "the panel is not installed in a viewer"
        clients = self.server.get_clients()
        if not clients:
            return None
        assert self.control is not None, "the panel is not attached to a viewer"
        client = (clients.get(client_id) if client_id is not None else None) or next(iter(clients.values()))
        cams = self.logic.pipeline.datamanager.train_dataset.cameras
        side = min(MAX_SIDE, int(max(cams.width.max(), cams.height.max()) / self.logic.pipeline.downscale))
        height, width = render_size(float(client.camera.aspect), side)
        return self.control.get_camera(height, width, client_id=client.client_id)

    def _set_click_mode(self, mode: str) -> None:
        assert self.server is not None, "the panel is not installed in a viewer"
        self.click_mode = mode
        scene = self.server.scene
        remove_pointer_callback(scene)
        if mode == "off":
            return

        @scene.on_pointer_event(event_type="click")
        def _(event) -> None:
            label = 1 if self.click_mode == "positive" else 0
            self._guard(lambda: self.logic.add_point(self.camera_for(event.client_id), event.screen_pos[0], label))

    def _arm_box(self) -> None:
        assert self.server is not None, "the panel is not installed in a viewer"
        scene = self.server.scene
        remove_pointer_callback(scene)

        @scene.on_pointer_event(event_type="rect-select")
        def _(event) -> None:
            self._guard(
                lambda: self.logic.set_box(self.camera_for(event.client_id), event.screen_pos[0], event.screen_pos[1])
            )
            self._set_click_mode(self.click_mode)

    def _show_output(self, name: str, wait_s: float = 0.0) -> None:
        """Show ``name`` in the viewer's Output dropdown. The viewer lists a new output only after
        a render that made it (the first object of a run, or the first after all were deleted):
        with ``wait_s`` the choice waits for it in a thread of its own, up to that long."""
        if self.viewer is None:
            return
        viewer, panel = self.viewer, self.viewer.control_panel

        def listed() -> bool:
            options = getattr(panel._output_render, "options", None)
            return options is None or name in options

        def show() -> None:
            deadline = time.monotonic() + wait_s
            while not listed() and time.monotonic() < deadline:
                viewer._trigger_rerender()
                time.sleep(0.1)
            if not listed():
                self._notify(f"The output {name!r} is not available yet.")
                return
            panel._output_render.value = name
            viewer._trigger_rerender()

        if wait_s > 0 and not listed():
            threading.Thread(target=show, daemon=True, name="sa3d-show-output").start()
        else:
            show()

    def _set_threshold(self, value: float) -> None:
        self.logic.pipeline.model.config.mask_threshold = float(value)
        if self.viewer is not None:
            self.viewer._trigger_rerender()

    def _save(self) -> None:
        if self.viewer is None:
            raise SA3DError("The viewer is not ready yet.")
        ckpt = self.logic.save(Path(self.viewer.log_filename).parent)
        self._notify(f"Saved the objects to {ckpt}.")

    # ------------------------------------------------------------------ display
    def _notify(self, text: str) -> None:
        self.message = text
        if "message" in self.handles:
            self.handles["message"].content = text

    def _changed(self) -> None:
        h = self.handles
        if not h:
            return
        logic = self.logic
        h["status"].content = logic.status_markdown()
        names = tuple(logic.pipeline.model.object_names) or ("(none)",)
        if tuple(h["object"].options) != names:
            h["object"].options = names
        if h["name"].value.strip() in logic.pipeline.model.object_names:
            h["name"].value = logic.next_name()
        pr = logic.progress
        h["progress"].value = 100.0 * pr["done"] / pr["total"] if pr["total"] else 0.0
        p = logic.current
        last = logic.pipeline.last_view
        if logic.busy and last is not None:  # the view being segmented: its 2D mask and self-prompts
            rec = pr["last"] or {}
            shown = Prompt(
                view=0, points=np.asarray(last["points"], np.float32).reshape(-1, 2), labels=np.asarray(last["labels"])
            )
            caption = f"view {rec.get('image', '')}: {rec.get('status', '')}" + (
                f", IoU {rec['iou']:.2f}" if "iou" in rec else ""
            )
            h["prompt"].content = png_markdown(draw_prompt(last["image"], last["mask"], shown), caption)
        elif p is None:
            h["prompt"].content = "Click on an object in the view (choose 'positive' above)."
        elif p.masks is None:
            h["prompt"].content = png_markdown(
                draw_prompt(p.image, None, p.prompt("preview")), "Add a positive point or a box."
            )
        else:
            assert p.scores is not None
            cells = [
                png_markdown(
                    draw_prompt(p.image, m, p.prompt("preview")),
                    f"mask {i + 1}: score {s:.3f}"
                    + (" (chosen)" if i == p.choice else "")
                    + ("".join(f"; ⚠ {text}" for text in w.values()) if w else ""),
                )
                for i, (m, s, w) in enumerate(zip(p.masks, p.scores, p.warnings or [{}] * len(p.masks), strict=True))
            ]
            h["prompt"].content = "\n\n".join(cells)
            options = tuple(str(i + 1) for i in range(len(p.masks)))
            if tuple(h["choice"].options) != options:
                h["choice"].options = options
            if p.choice is not None and h["choice"].value != str(p.choice + 1):  # (the preselected candidate)
                h["choice"].value = str(p.choice + 1)
        if self._was_busy and not logic.busy and logic.pipeline.model.object_names:
            # a run just ended: show its result as the Display dropdown says (the viewer's own
            # output dropdown still shows what it showed before, usually the plain rgb)
            self._show_output(h["display"].value, wait_s=30.0)
        self._was_busy = logic.busy
        if self.viewer is not None:
            self.viewer._trigger_rerender()
