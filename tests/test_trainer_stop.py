"""SA3DTrainer._stopped (Ctrl-C, SIGTERM) on its own: what it says, what it removes, its exit code.
(The real processes are stopped in tests/test_e2e.py.)"""

from types import SimpleNamespace

import pytest
import torch

from sa3d_ns.core.cache import ViewCache
from sa3d_ns.nerf.trainer import SA3DTrainer


def trainer(tmp_path, done: int, total: int, cache=None, state="training", checkpoint=False) -> SA3DTrainer:
    t = object.__new__(SA3DTrainer)  # (no nerfstudio set-up: the attributes _stopped reads)
    t.base_dir = tmp_path / "run"
    t.checkpoint_dir = t.base_dir / "nerfstudio_models"
    t.checkpoint_dir.mkdir(parents=True)
    (t.base_dir / "config.yml").write_text("x")
    if checkpoint:
        (t.checkpoint_dir / "step-000000001.ckpt").write_bytes(b"x")
    records = [{}] * done
    t.pipeline = SimpleNamespace(records=records, num_steps=lambda: total, view_cache=cache)
    t.training_state = state
    t.shutdown = lambda: None
    return t


def test_stopped_mid_loop_removes_the_run_and_says_what_the_cache_kept(tmp_path, capsys):
    cache = ViewCache(tmp_path / "cache", {"k": 1})
    for v in range(3):
        cache.save(f"view{v:05d}", {"x": torch.zeros(2)})
    t = trainer(tmp_path, done=3, total=22, cache=cache)
    with pytest.raises(SystemExit) as stop:
        t._stopped("Ctrl-C", 130)
    out = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 130 and not t.base_dir.exists()
    assert "stopped by Ctrl-C after 3 of 22 views" in out and "Removed the unfinished run folder" in out
    said = " ".join(out.split())
    assert (
        "Kept: 3 views' data (NeRF samples or Gaussian lists) in the cache" in said and "run it again to finish" in said
    )


def test_ctrl_c_that_closes_the_viewer_after_the_run_keeps_it_and_exits_0(tmp_path, capsys):
    t = trainer(tmp_path, done=22, total=22, state="completed", checkpoint=True)
    with pytest.raises(SystemExit) as stop:
        t._stopped("Ctrl-C", 130)
    out = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0 and t.base_dir.is_dir() and "viewer closed" in out and "stopped" not in out


def test_stopped_run_with_a_saved_checkpoint_is_kept(tmp_path, capsys):
    """(a run prompted in the viewer, saved, then stopped while segmenting again)"""
    t = trainer(tmp_path, done=2, total=9, checkpoint=True)
    with pytest.raises(SystemExit) as stop:
        t._stopped("SIGTERM", 143)
    out = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 143 and t.base_dir.is_dir() and "Removed" not in out
    assert "Nothing was cached" in out


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    """nerfstudio names a run's folder by its start time, to the second: the second of two runs
    started together takes <timestamp>_2 (created atomically), never the first one's folder."""
    from sa3d_ns.nerf.trainer import SA3DTrainerConfig

    made = []
    for _ in range(3):
        config = SA3DTrainerConfig(method_name="sa3d", experiment_name="scene", output_dir=tmp_path, timestamp="T")
        config.claim_run_folder()
        made.append(config.get_base_dir())
    assert [d.name for d in made] == ["T", "T_2", "T_3"] and all(d.is_dir() for d in made)


def test_a_run_folder_that_cannot_be_made_is_a_clear_error(tmp_path, capsys):
    from sa3d_ns.nerf.trainer import SA3DTrainerConfig

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = SA3DTrainerConfig(method_name="sa3d", experiment_name="scene", output_dir=blocker, timestamp="T")
    with pytest.raises(SystemExit) as exit_info:
        config.claim_run_folder()
    assert exit_info.value.code == 2 and "Cannot create the run folder" in capsys.readouterr().out
