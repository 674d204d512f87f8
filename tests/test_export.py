"""sa3d-export's answers to bad flags: a clear message, exit code 2, nothing written."""

import json
import subprocess
import sys

import pytest


def export(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "sa3d_ns.export", *map(str, args)], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["pointcloud", "--num-points", "0"], "--num-points must be >= 1"),
        (["pointcloud", "--output", "object.obj"], "written as .ply"),
        (["mesh", "--resolution", "4"], "--resolution must be >= 8"),
        (["mesh", "--level", "-1"], "--level must be a positive density"),
        (["mesh", "--output", "object.stl"], "written as .ply or .obj"),
        (["masks", "--load-config", "missing/config.yml"], "file not found"),
        (["mesh", "--bbox-min", "0", "0", "0"], "Give both --bbox-min"),
        (["pointcloud", "--bbox-min", "1", "0", "0", "--bbox-max", "0", "1", "1"], "must be below --bbox-max"),
        (["pointcloud", "--object", "lamp"], "the run's objects are ['object']"),
    ],
)
def test_export_bad_flags(tmp_path, args, message):
    run = tmp_path / "run"
    (run / "sa3d").mkdir(parents=True)
    (run / "config.yml").write_text("not a real config\n")
    (run / "sa3d" / "summary.json").write_text(json.dumps({"objects": [{"name": "object"}]}))
    (run / "nerfstudio_models").mkdir()
    (run / "nerfstudio_models" / "step-000000022.ckpt").write_bytes(b"")  # (flags are checked before it is read)
    if "--load-config" not in args:
        args = [args[0], "--load-config", run / "config.yml", *args[1:]]
    r = export(args, tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    written = sorted(p.name for p in run.rglob("*"))
    assert written == ["config.yml", "nerfstudio_models", "sa3d", "step-000000022.ckpt", "summary.json"]  # nothing new
    assert not (tmp_path / "object.obj").exists() and not (tmp_path / "object.stl").exists()


def test_export_refuses_a_run_that_is_not_finished(tmp_path):
    (tmp_path / "config.yml").write_text("not a real config\n")
    r = export(["mesh", "--load-config", tmp_path / "config.yml"], tmp_path)
    assert r.returncode == 2 and "not a finished sa3d run" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yml"]
    # a run killed before its end (SIGKILL: nothing could clean up): a summary, no checkpoint
    (tmp_path / "sa3d").mkdir()
    (tmp_path / "sa3d" / "summary.json").write_text(json.dumps({"complete": False, "objects": [{"name": "object"}]}))
    for cmd in (["mesh"], ["pointcloud"], ["masks"]):
        r = export([*cmd, "--load-config", tmp_path / "config.yml"], tmp_path)
        flat = " ".join(r.stderr.split())
        assert r.returncode == 2 and "not a finished sa3d run: it has no checkpoint" in flat, r.stderr[-2000:]
        assert "Run ns-train sa3d again" in flat
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.yml", "sa3d", "summary.json"]
