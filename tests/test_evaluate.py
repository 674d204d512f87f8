"""sa3d-eval's scoring glue: several objects are scored from one render of each view."""

from pathlib import Path

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras

from sa3d_ns.evaluate import GroundTruth, evaluate_objects, evaluate_views


class CountingModel:
    """A model whose renders are known: object k's mask in view i covers its first i + 2 + k
    columns, the colours are constants. It counts its renders."""

    def __init__(self, objects: int) -> None:
        self.objects, self.renders = objects, 0

    def eval(self) -> None:
        pass

    def output_name(self, kind: str, k: int) -> str:
        return f"{kind}_{k}"

    def get_outputs_for_camera(self, cam: Cameras) -> dict:
        self.renders += 1
        h, w = int(cam.height[0, 0]), int(cam.width[0, 0])
        view = int(cam.cx[0, 0])  # (the test's cameras carry their index in cx)
        out = {"rgb": torch.full((h, w, 3), 0.5)}
        for k in range(self.objects):
            mask = torch.zeros((h, w, 1))
            mask[:, : view + 2 + k] = 1.0
            out[f"mask_{k}"] = mask
            out[f"rgb_removed_{k}"] = torch.full((h, w, 3), 0.25)
            out[f"rgb_object_{k}"] = torch.full((h, w, 3), 0.75)
            out[f"accumulation_object_{k}"] = mask.clone()
        return out


class Pipeline:
    def __init__(self, views: int, objects: int) -> None:
        self.model = CountingModel(objects)
        self.device = torch.device("cpu")
        cams = Cameras(
            camera_to_worlds=torch.eye(4)[:3].expand(views, 3, 4),
            fx=10.0,
            fy=10.0,
            cx=torch.arange(views, dtype=torch.float32)[:, None],
            cy=4.0,
            width=8,
            height=6,
        )
        self.datamanager = type("DM", (), {"eval_dataset": type("DS", (), {"cameras": cams})()})()


def truths(views: int, k: int) -> list[GroundTruth]:
    out = []
    for i in range(views):
        mask = np.zeros((6, 8), bool)
        mask[:, : 3 + k] = True
        out.append(GroundTruth(f"frame_{i}.png", "eval", i, mask, source=Path(f"instances/frame_{i}.png")))
    return out


def test_several_objects_are_scored_from_one_render_per_view():
    views, objects = 3, 3
    jobs = [(truths(views, k), k) for k in range(objects)]
    joint = Pipeline(views, objects)
    together = evaluate_objects(joint, jobs)
    assert joint.model.renders == views  # (one object at a time rendered each view 3 times: 9)
    alone = Pipeline(views, objects)
    for (gts, k), rows in zip(jobs, together, strict=True):
        expected = evaluate_views(alone, gts, k)
        assert [r["image"] for r in rows] == [f"frame_{i}.png" for i in range(views)]
        for got, want in zip(rows, expected, strict=True):
            assert got["iou"] == want["iou"] and np.array_equal(got["_pred"], want["_pred"])
            assert got["specks"] == want["specks"] and got["outside_psnr"] == want["outside_psnr"]
    assert alone.model.renders == views * objects
    # each object is scored against its own mask in its own view: its prediction covers i + 2 + k
    # columns of view i, its truth 3 + k
    ious = np.array([[r["iou"] for r in rows] for rows in together])
    expected = np.array([[min(i + 2 + k, 3 + k) / max(i + 2 + k, 3 + k) for i in range(views)] for k in range(objects)])
    assert np.allclose(ious, expected)
