"""The real nerfstudio viewer driven from headless Chromium (Debian's chromium, through
Playwright), for the browser tests of nerfacto and splatfacto runs: open a run in the viewer as
ns-viewer does, look through a training camera, click on an object and press Segment, and read the
canvas's own pixels as each Display shows the result."""

import io
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

BROWSER_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def wait_for(condition, timeout: float, what: str, panel=None) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            said = f"; the panel says: {panel.message!r}" if panel is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{said}")
        time.sleep(0.5)


def open_viewer(run_dir: Path):
    """The real nerfstudio viewer (viser, on a free localhost port) on the run ``run_dir``, as
    ns-viewer opens it: (viewer, pipeline, port, chromium's path)."""
    import socket
    import threading

    from nerfstudio.configs.base_config import ViewerConfig
    from nerfstudio.utils.eval_utils import eval_setup
    from nerfstudio.viewer.viewer import Viewer

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed: scripts/test.sh installs it (apt-get install chromium)"
    _, pipeline, _, step = eval_setup(run_dir / "config.yml", test_mode="test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    viewer = Viewer(
        ViewerConfig(websocket_port=port, websocket_host="127.0.0.1"),
        log_filename=run_dir / "viewer_log_filename.txt",
        datapath=pipeline.datamanager.get_datapath(),
        pipeline=pipeline,
        train_lock=threading.Lock(),
    )
    ds = pipeline.datamanager.train_dataset
    viewer.init_scene(train_dataset=ds, train_state="completed", eval_dataset=pipeline.datamanager.eval_dataset)
    viewer.control_panel._max_res.value = 64  # the viewer's own renders stay cheap on a CPU
    viewer.update_scene(step=step)
    return viewer, pipeline, port, chromium


def look_through(client, cam) -> None:
    """The browser's camera on the (nerfstudio) camera ``cam``."""
    import viser.transforms as vtf
    from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

    c2w = cam.camera_to_worlds[0].numpy()
    client.camera.position = c2w[:, 3] * VISER_NERFSTUDIO_SCALE_RATIO
    client.camera.wxyz = (vtf.SO3.from_matrix(c2w[:, :3]) @ vtf.SO3.from_x_radians(np.pi)).wxyz
    client.camera.fov = 2 * np.arctan(float(cam.height[0, 0]) / 2 / float(cam.fy[0, 0]))


def look_through_until_seen(viewer, client, cam, timeout: float = 60) -> None:
    """``look_through``, again until the viewer's camera for ``client`` is ``cam``'s: a browser
    that has just connected may still send its own first camera after ours."""
    import torch

    deadline = time.time() + timeout
    while True:
        look_through(client, cam)
        time.sleep(1.0)
        c2w = viewer.get_camera_state(client).c2w.float()
        if torch.allclose(c2w, cam.camera_to_worlds[0].float(), atol=1e-3):
            return
        assert time.time() < deadline, f"the browser's camera stays at {c2w.tolist()}"


def artifacts_dir() -> Path:
    """Where tests keep pictures for people to look at (SA3D_TEST_ARTIFACTS, or test-artifacts/)."""
    artifacts = Path(os.environ.get("SA3D_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts


def click_segment_and_look(
    viewer, pipeline, port: int, chromium: str, inst: np.ndarray, prefix: str
) -> tuple[str, np.ndarray]:
    """In headless Chromium on ``viewer``: look through training view 0, delete the run's
    objects with the panel, click on instance 1 of ``inst`` (view 0's instance
    image), press Segment, and check the canvas shows the new object as each Display says:
    rgb_overlay (tinted with the object's colour (1, 0.2, 0.2) at half opacity: green drops), the
    object alone on white, the scene without it; the rest of the canvas unchanged. Screenshots go
    to the test artifacts as ``<prefix>_*.png``. Returns the new object's name and its mask in view 0."""
    from playwright.sync_api import sync_playwright

    ds = pipeline.datamanager.train_dataset
    logic = pipeline.sa3d_panel.logic
    panel = pipeline.sa3d_panel
    cam = ds.cameras[0:1]
    views = len(ds)
    artifacts = artifacts_dir()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 720, "height": 480})  # (software WebGL: small is cheap)
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_text("SA3D: segment objects").wait_for(timeout=120_000)
            wait_for(lambda: len(viewer.viser_server.get_clients()) == 1, 60, "the browser to connect")
            client = next(iter(viewer.viser_server.get_clients().values()))
            look_through_until_seen(viewer, client, cam)  # (training view 0)
            h, w = int(cam.height[0, 0]), int(cam.width[0, 0])

            # (a user looking through a training camera hides the training cameras: their frustums
            # show the training image itself right in front of the render)
            page.get_by_role("button", name="Hide Train Cams").click()
            for left in reversed(range(len(pipeline.model.object_names))):  # (Delete removes the chosen one)
                page.get_by_role("button", name="Delete").click()
                wait_for(
                    lambda n=left: len(pipeline.model.object_names) == n, 60, "the Delete button to remove an object"
                )
            page.get_by_role("button", name="positive").click()
            ys, xs = np.nonzero(inst == 1)
            canvas = page.locator('canvas[data-engine^="three.js"]').first
            page.wait_for_timeout(3000)  # (the layout settles once the panel is built)
            bb = canvas.bounding_box()
            assert bb is not None
            x = bb["width"] / 2 + (np.median(xs) + 0.5 - w / 2) * bb["height"] / h
            y = (np.median(ys) + 0.5) * bb["height"] / h
            canvas.click(position={"x": float(x), "y": float(y)})
            wait_for(lambda: logic.current is not None and logic.current.masks is not None, 180, "candidates", panel)
            page.get_by_text("mask 1: score").first.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(artifacts / f"{prefix}_candidates.png"))
            # the canvas's own pixels where the object is, and far from it (the render is drawn
            # centred, its height filling the canvas)
            scale = bb["height"] / h

            def grown(region, size):
                return cv2.dilate(region.astype(np.uint8), np.ones((size, size), np.uint8)) > 0

            def shrunk(region):
                return cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0

            def canvas_shot():
                return np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), np.float32) / 255

            def pixels(shot, region):
                ys, xs = np.nonzero(region)
                cols = (bb["width"] / 2 + (xs + 0.5 - w / 2) * scale).astype(int)
                rows = ((ys + 0.5) * scale).astype(int)
                return shot[rows.clip(0, shot.shape[0] - 1), cols.clip(0, shot.shape[1] - 1)]

            plain = canvas_shot()
            Image.fromarray((plain * 255).astype(np.uint8)).save(artifacts / f"{prefix}_canvas_rgb.png")
            page.get_by_role("button", name="Segment").click()
            wait_for(lambda: logic.progress["total"] > 0 and not logic.busy, 600, "the segmentation to finish")
            assert len(pipeline.model.object_names) == 1 and logic.progress["done"] == views, (
                logic.progress,
                panel.message,
            )
            # where the object is and its mask is on (what each Display changes, whatever the
            # segmenter's quality), and far from both (what no Display may change)
            with viewer.train_lock:  # (the viewer's renders take it too)
                shown = pipeline.model.get_outputs_for_camera(cam)["mask"][..., 0].cpu().numpy() > 0.5
            ball, far = shrunk((inst == 1) & shown), ~grown((inst == 1) | shown, 9)
            assert ball.sum() >= 10, f"the new object's mask covers {ball.sum()} pixels of it in view 0"
            plain_ball, plain_far = pixels(plain, ball), pixels(plain, far)
            name = pipeline.model.object_names[0]
            wait_for(lambda: f"{name}: done" in panel.message, 30, "the panel's message", panel)
            page.get_by_text(f"{name}: done").first.wait_for(timeout=60_000)  # (shown in the page)
            page.get_by_text(f"{name}: finished, view {views}/{views}").first.wait_for(timeout=30_000)  # its status
            page.screenshot(path=str(artifacts / f"{prefix}_panel.png"), full_page=True)

            # the finished run is shown as the panel's Display says (rgb_overlay): the object
            # tinted with its colour (1, 0.2, 0.2) at half opacity (the ball's yellow stripes turn
            # orange: green drops), the rest as it was; then the object alone on white, and removed
            def shows(display, check, what):
                if display != panel.handles["display"].value:
                    panel.handles["display"].value = display
                wait_for(
                    lambda: viewer.control_panel._output_render.value == display, 30, f"the viewer to show {display}"
                )
                deadline = time.time() + 120
                while True:
                    shot = canvas_shot()
                    b, f = pixels(shot, ball), pixels(shot, far)
                    figures = {
                        "ball green drop": float((plain_ball[:, 1] - b[:, 1]).mean()),
                        "ball change": float(np.abs(b - plain_ball).mean()),
                        "far change": float(np.abs(f - plain_far).mean()),
                        "far mean": float(f.mean()),
                    }
                    if check(figures) or time.time() > deadline:
                        break
                    time.sleep(1)
                Image.fromarray((shot * 255).astype(np.uint8)).save(artifacts / f"{prefix}_canvas_{display}.png")
                assert check(figures), f"{display}: expected {what}; measured {figures}"

            shows("rgb_overlay", lambda m: m["ball green drop"] > 0.03 and m["far change"] < 0.03,
                  "the object tinted, the rest unchanged")  # fmt: skip
            shows("rgb_object", lambda m: m["far mean"] > 0.9 and m["ball change"] < 0.15, "the object alone on white")
            shows("rgb_removed", lambda m: m["ball change"] > 0.1 and m["far change"] < 0.03,
                  "the scene without the object")  # fmt: skip
            browser.close()
    finally:
        # (nerfstudio's render threads stopped and waited for before the caller's patches, e.g. the
        # CPU rasterizer of a splat run, are lifted: one more render after them is an error)
        # (a closed tab's machine has already left render_statemachines, so the threads themselves)
        import threading

        from nerfstudio.viewer.render_state_machine import RenderStateMachine

        machines = [t for t in threading.enumerate() if isinstance(t, RenderStateMachine)]
        for machine in machines:
            machine.running = False
        for machine in machines:
            machine.join(timeout=120)
        viewer.viser_server.stop()
    return name, shown
