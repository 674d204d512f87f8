"""The viewer panel without a browser: its logic against a stand-in pipeline (the real one is in
test_e2e.py), and its widgets installed on a real viser server."""

import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.nerf.viewer_panel import (
    PanelLogic,
    SA3DPanel,
    draw_prompt,
    png_markdown,
    render_size,
    screen_to_pixel,
)
from sa3d_ns.segmenters.base import Segmentation


def test_screen_positions_and_render_sizes():
    assert screen_to_pixel((0.5, 0.25), 64, 32) == (31.5, 7.5)
    assert screen_to_pixel((1.2, -0.1), 10, 10) == (9.5, -0.5)
    assert render_size(2.0, 512) == (256, 512) and render_size(0.5, 512) == (512, 256)
    img = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    from sa3d_ns.core.prompts import Prompt

    vis = draw_prompt(
        img, mask, Prompt(view=0, points=np.array([[3.0, 4.0]]), labels=np.array([0]), box=np.array([1, 1, 9, 9]))
    )
    assert vis.shape[2] == 3 and vis.shape[0] >= 20 and vis.any()
    assert png_markdown(vis, "a caption").startswith("![a caption](data:image/png;base64,")


class FakeCamera:
    def __init__(self, shift=0.0, size=16):
        self.camera_to_worlds = torch.eye(4)[:3][None] + shift
        self.fx = torch.ones(1, 1)
        self.width = torch.tensor([[size]])
        self.height = torch.tensor([[size]])


class FakePipeline:
    """What the panel needs of the SA3D pipeline, with a disc as the segmenter's answer."""

    def __init__(self, step_seconds=0.0):
        self.model = SimpleNamespace(object_names=[], object_colors=[], config=SimpleNamespace(mask_threshold=0.0))
        self.model.object_index = self.model.object_names.index
        self.plan, self.records, self.started, self.last_view = [], [], [], None
        self.step_seconds = step_seconds
        self.renders = 0

    def camera_data(self, camera):
        self.renders += 1
        return {
            "rgb": torch.zeros(16, 16, 3, dtype=torch.uint8),
            "depth": torch.ones(16, 16),
            "size": torch.tensor([16, 16]),
        }

    def segment_camera(self, data, prompt):
        yy, xx = np.mgrid[:16, :16]
        x, y = (
            prompt.points[prompt.labels == 1][0]
            if (prompt.labels == 1).any()
            else (prompt.box[:2] + prompt.box[2:]) / 2
        )
        disc = (xx - x) ** 2 + (yy - y) ** 2 < 9
        return Segmentation(
            masks=np.stack([disc, disc & (xx < x), np.zeros_like(disc)]), scores=np.array([0.9, 0.5, 0.1])
        )

    def find_text(self, text, image, where):
        from sa3d_ns.segmenters.text import Detection

        if text == "nothing":
            raise SA3DError(f"Grounding DINO found no box for the text {text!r} in {where}")
        return Detection(box=np.array([2.0, 2.0, 10.0, 10.0]), score=0.8, label=text)

    def start_objects(self, prompts, first):
        self.started.append((first, prompts[0], None))
        self.plan, self.records = [(first, i) for i in range(5)], []

    def add_object(self, name):
        if name in self.model.object_names:
            raise SA3DError(f"An object named {name!r} exists already")
        self.model.object_names.append(name)
        self.model.object_colors.append((1.0, 0.0, 0.0))
        return len(self.model.object_names) - 1

    def start_object_from_camera(self, k, camera, data, mask, prompt):
        self.started.append((k, prompt, mask.sum()))
        self.plan, self.records = [(k, i) for i in range(5)], []

    def run_steps(self, stop=None, on_step=None):
        for i in range(len(self.records), len(self.plan)):
            if stop and stop():
                break
            time.sleep(self.step_seconds)
            rec = {"status": "accepted" if i % 2 else "rejected", "image": f"v{i}.png", "iou": 0.7}
            self.records.append(rec)
            on_step(rec)
        return self.records


def test_panel_logic_prompt_segment_refuse_and_stop():
    pipe, messages = FakePipeline(step_seconds=0.05), []
    logic = PanelLogic(pipe, notify=messages.append)
    cam = FakeCamera()
    with_nothing = logic.segment("a")
    assert not with_nothing and "Make a prompt first" in messages[-1]
    logic.add_point(cam, (0.5, 0.5), 0)  # a negative point alone: no candidates yet
    assert logic.current.masks is None and pipe.renders == 1
    logic.add_point(cam, (0.25, 0.25), 1)
    assert pipe.renders == 1 and logic.current.choice == 0 and len(logic.current.masks) == 3
    logic.choose(2)
    assert not logic.segment("a") and "empty" in messages[-1]  # the third candidate is empty
    logic.choose(7)
    assert "No such candidate" in messages[-1]
    logic.choose(0)
    logic.undo()  # removes the positive point: back to no candidates
    assert logic.current.masks is None
    logic.set_box(cam, (0.1, 0.1), (0.6, 0.6))
    assert logic.current.box == (1.6, 1.6, 9.6, 9.6) and logic.current.masks is not None
    logic.set_box(cam, (0.1, 0.1), (0.12, 0.12))
    assert "too small" in messages[-1]
    logic.find_text(cam, "a red ball")
    assert logic.current.box == (2.0, 2.0, 10.0, 10.0) and "score 0.80" in messages[-1]
    logic.undo()  # back to the dragged box the text's box replaced
    assert logic.current.box == (1.6, 1.6, 9.6, 9.6) and logic.current.masks is not None
    logic.undo()
    assert logic.current.box is None
    logic.find_text(cam, "  ")
    assert "Type what to find" in messages[-1]
    with pytest.raises(SA3DError, match="no box"):
        logic.find_text(cam, "nothing")  # (the panel shows the message: see _guard)
    # the camera moved: a new prompt in the new view
    logic.add_point(FakeCamera(shift=0.5), (0.5, 0.5), 1)
    assert "camera moved" in messages[-1] and logic.current.box is None and pipe.renders == 2

    assert logic.segment("a")
    assert logic.busy and pipe.model.object_names == ["a"] and logic.current is None
    logic.add_point(cam, (0.5, 0.5), 1)  # refused while running, with a message
    assert logic.current is None and "Segmentation is running" in messages[-1]
    with pytest.raises(SA3DError, match="running"):
        logic.save("unused")
    logic.stop()
    logic.thread.join()
    assert logic.progress["done"] < 5 and "stopped after" in messages[-1]
    assert logic.rerun("a", wait=True) and logic.progress["done"] == 5 and "done" in messages[-1]
    assert logic.progress["accepted"] == 2 and logic.progress["rejected"] == 3
    assert "view 5/5, 2 accepted, 3 rejected" in logic.status_markdown()
    assert not logic.rerun("b") and "No object named 'b'" in messages[-1]
    logic.add_point(cam, (0.5, 0.5), 1)
    assert not logic.segment("a") and "exists already" in messages[-1]  # names are unique
    assert logic.next_name() == "object2"


def test_panel_is_busy_from_the_moment_a_run_starts():
    """An observer (the viewer's thread, a test polling for the end) never sees a run's progress
    published while the panel says it is not busy: from begin() to the last step it is busy, and a
    begin() that fails leaves it idle."""
    pipe, seen = FakePipeline(step_seconds=0.02), []
    logic = PanelLogic(pipe, notify=lambda text: None)
    logic.changed = lambda: seen.append((logic.busy, logic.progress["total"], logic.progress["done"]))
    start = pipe.start_object_from_camera

    def begin(*args):
        seen.append((logic.busy, "begin"))
        start(*args)

    pipe.start_object_from_camera = begin
    logic.add_point(FakeCamera(), (0.25, 0.25), 1)
    seen.clear()
    assert logic.segment("a", wait=True) and logic.progress["done"] == 5
    assert seen[0] == (True, "begin")
    assert all(busy for busy, total, done in seen[1:-1]) and seen[-1] == (False, 5, 5), seen

    def failing(*args):
        raise SA3DError("cannot start")

    pipe.start_object_from_camera = failing
    logic.add_point(FakeCamera(), (0.25, 0.25), 1)
    with pytest.raises(SA3DError, match="cannot start"):
        logic.segment("b")
    assert not logic.busy


def test_panel_prefers_a_plausible_candidate_and_shows_warnings():
    """Candidates reviewed by the pipeline (a warning per candidate): the first without an
    implausible warning is preselected, every warning is in its caption's data, and a prompt
    file's first mask that looks wrong is named in the status."""

    class Warned(FakePipeline):
        def segment_camera(self, data, prompt):
            result = super().segment_camera(data, prompt)
            result.warnings = [{"depth_layer": "it is 3.0 times the clicked surface's depth layer"}, {}, {}]
            return result

    pipe = Warned()
    logic = PanelLogic(pipe, notify=lambda _: None)
    logic.add_point(FakeCamera(), (0.25, 0.25), 1)
    assert logic.current.choice == 1 and "depth_layer" in logic.current.warnings[0]
    pipe.records = [{"object": "mug", "image": "frame_00010.png", "status": "prompt", "warnings": ["x is wrong"]}]
    assert "first mask of **mug** (view frame_00010.png) may not be the clicked object: x is wrong" in (
        logic.status_markdown()
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_panel_widgets_on_a_real_viser_server():
    import viser

    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    try:
        pipe = FakePipeline()
        pipe.datamanager = SimpleNamespace(train_dataset=SimpleNamespace(cameras=FakeCamera()))
        pipe.downscale = 1.0
        panel = SA3DPanel(pipe)
        panel.install(server)
        h = panel.handles
        for key in ("status", "name", "click", "box", "text", "find", "undo", "clear", "prompt", "choice", "segment", "stop", "progress",
                    "display", "threshold", "object", "rename", "delete", "rerun", "save"):  # fmt: skip
            assert key in h, key
        assert h["name"].value == "object1" and "No objects yet" in h["status"].content
        panel._guard(lambda: (_ for _ in ()).throw(SA3DError("a clear message")))
        assert h["message"].content == "a clear message"
        panel._set_click_mode("positive")  # registers the click callback; no client needed
        panel._set_click_mode("off")
        assert panel.camera_for() is None  # no browser connected
        # a prompt made through the logic shows its candidates in the panel
        panel.logic.add_point(FakeCamera(), (0.25, 0.25), 1)
        assert (
            h["prompt"].content.count("](data:image/png;base64,") == 3 and "score 0.900 (chosen)" in h["prompt"].content
        )
        assert tuple(h["choice"].options) == ("1", "2", "3") and h["choice"].value == "1"
        panel.logic.choose(1)  # the dropdown follows the logic's choice (e.g. a plausible one preselected)
        assert h["choice"].value == "2" and "score 0.500 (chosen)" in h["prompt"].content
        panel.logic.choose(0)
        panel.logic.segment(h["name"].value, wait=True)
        assert h["progress"].value == 100.0 and "object1" in h["status"].content and h["name"].value == "object2"
        assert tuple(h["object"].options) == ("object1",)
        panel._set_threshold(0.3)
        assert pipe.model.config.mask_threshold == pytest.approx(0.3)
        panel._guard(panel._save)
        assert "not ready" in h["message"].content
    finally:
        server.stop()
    assert threading.active_count() >= 1


def test_viewer_prompts_are_kept_with_the_run_and_re_run_after_reopening(tmp_path, monkeypatch):
    import json

    from nerfstudio.cameras.cameras import Cameras

    from sa3d_ns.nerf import viewer_panel as vp

    cam = Cameras(camera_to_worlds=torch.eye(4)[:3][None], fx=20.0, fy=20.0, cx=8.0, cy=8.0, width=16, height=16)
    pipe = FakePipeline()
    pipe.prompts = []
    logic = PanelLogic(pipe)
    logic.add_point(cam, (0.25, 0.25), 1)
    logic.choose(1)
    chosen = logic.current.masks[1].copy()
    assert logic.segment("a", wait=True)
    monkeypatch.setattr(
        vp, "save_objects", lambda pipeline, run_dir, prompts: vp.write_viewer_prompts(run_dir, prompts)
    )
    logic.save(tmp_path)
    saved = json.loads((tmp_path / "sa3d" / "viewer_prompts.json").read_text())
    assert set(saved) == {"a"} and saved["a"]["mask_choice"] == 1 and saved["a"]["camera"]["width"] == 16

    # the run reopened: Re-run renders the saved camera, segments the saved prompt, takes the saved choice
    (tmp_path / "sa3d" / "summary.json").write_text(
        json.dumps(
            {"objects": [{"name": "b", "prompt": {"view": 3, "points": [[5.0, 6.0]], "labels": [1], "box": None}}]}
        )
    )
    again = FakePipeline()
    again.prompts = [None, None]
    again.add_object("a")
    again.add_object("b")
    logic2 = PanelLogic(again)
    logic2.load_saved(tmp_path)
    assert torch.equal(logic2.camera_prompts["a"][0].camera_to_worlds, cam.camera_to_worlds)
    assert logic2.rerun("a", wait=True) and again.renders == 1
    k, prompt, mask_pixels = again.started[-1]
    assert k == 0 and prompt.points.tolist() == [[3.5, 3.5]] and mask_pixels == chosen.sum()
    # an object of the prompt file is re-run from the prompt summary.json keeps
    assert logic2.rerun("b", wait=True)
    k, prompt, _ = again.started[-1]
    assert k == 1 and prompt.view == 3 and prompt.name == "b" and logic2.progress["done"] == 5
