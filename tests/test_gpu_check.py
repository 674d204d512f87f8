"""scripts/gpu_check.sh in its CPU setting: every stage of the GPU check runs, so the script cannot
rot between GPU loans (on a GPU: scripts/gpu_check.sh, see the README)."""

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.extended]

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_stage_in_its_cpu_setting(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--setting", "cpu-tiny", "--out", str(out), "--deadline", "1500"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    stages = {row["stage"]: row["status"] for row in report["stages"]}
    assert list(stages) == [
        "environment", "gpu tests", "scene", "nerfacto", "benchmark", "ns-train sa3d", "sa3d-eval", "ns-render"
    ]  # fmt: skip
    assert set(stages.values()) == {"ok"}, stages
    assert report["nerfacto_steps_done"] == 20
    rows = {(r["segmenter"], r["path"]): len(r["objects"]) for r in report["bench"]["results"]}
    assert rows == {
        ("sam", "default"): 2,
        ("oracle", "default"): 2,
        ("oracle", "reference"): 1,
    }
    assert "miou" in json.dumps(report["cli_eval"]).lower() and report["renders"] > 0
    text = (out / "gpu_check.txt").read_text()
    assert "target: SAM first object" in text and "oracle reference / default, second object" in text
    assert "speed-up" in text
    # where ns-train sa3d's time went, per stage of its views (what a GPU run's table shows)
    views = report["cli_views"]
    # (sums of 18 views' figures, each rounded to 0.1 ms: allow the rounding)
    assert views["views"] == 18 and 0 < views["data_s"] + views["score_s"] <= views["render_s"] + 4e-3
    assert views["render_s"] <= views["total_s"]
    assert views["total_s"] < views["wall_s"] and "ns-train sa3d: 18 views, ms a view: data" in text
    # ns-train sa3d found the benchmark's oracle cache: the views the benchmark visited (3 per object
    # here) are not rendered again
    run = out / "work" / "runs" / "scene" / "sa3d" / "oracle"
    cache = json.loads((run / "sa3d" / "summary.json").read_text())["cache"]
    assert cache["views_built"] < 9 and cache["dir"].startswith(str(out / "work" / "bench"))  # 9 training views
    assert (out / "renders.png").is_file()
    # a second run never overwrites the first one's work
    again = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--setting", "cpu-tiny", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode != 0 and "exists" in again.stderr
