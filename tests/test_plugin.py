"""The method is registered with nerfstudio and its command line answers --help."""

import re
from pathlib import Path

import pytest
from helpers import run
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins import registry


def test_entry_point_registers_sa3d():
    methods, descriptions = registry.discover_methods()
    assert "sa3d" in methods and isinstance(methods["sa3d"], TrainerConfig)
    assert methods["sa3d"].pipeline.segmenter == "sam"
    assert "SA3D" in descriptions["sa3d"]


def test_ns_train_help_lists_sa3d_and_its_flags(tmp_path):
    r = run(["ns-train", "--help"], tmp_path)
    assert r.returncode == 0 and "sa3d" in r.stdout
    r = run(["ns-train", "sa3d", "--help"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ("--pipeline.nerfacto-config", "--pipeline.prompt", "--pipeline.segmenter", "--pipeline.sam-checkpoint",
                 "--pipeline.num-prompts", "--pipeline.iou-threshold", "--pipeline.neg-weight", "--pipeline.view-order",
                 "--pipeline.pass-votes", "--pipeline.pass-views"):  # fmt: skip
        assert flag in r.stdout, flag


def test_a_bad_choice_of_a_flag_is_refused_naming_the_flag_and_its_choices(tmp_path):
    r = run(["ns-train", "sa3d", "--pipeline.pass-votes", "both"], tmp_path)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "pass-votes" in out and "add" in out and "replace" in out, out[-2000:]


def test_method_config_imports_nothing_heavy(tmp_path):
    """nerfstudio imports sa3d_ns.config for every ns-* command: no SAM import there."""
    code = "import sys, sa3d_ns.config; print('segment_anything' in sys.modules)"
    r = run(["python", "-c", code], tmp_path)
    assert r.returncode == 0 and r.stdout.split() == ["False"], r.stdout + r.stderr[-2000:]


def test_lpips_stub_reports_nan_instead_of_downloading():
    import math

    import torch

    from sa3d_ns.nerf.offline import lpips_disabled

    with lpips_disabled():
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(normalize=True)
    assert math.isnan(float(metric(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))))
    from torchmetrics.image import lpip

    assert lpip.LearnedPerceptualImagePatchSimilarity is not type(metric)  # restored afterwards


@pytest.mark.parametrize(
    "setting, value, match",
    [
        ("num_passes", 0, "--pipeline.num-passes must be a whole number between 1 and 100, got 0"),
        ("render_downscale", 0.5, "--pipeline.render-downscale must be a number between 1 and 1024 (leave it out"),
        ("sample_scale", 0.0, "--pipeline.sample-scale must be a number between 0.01 and 16, got 0"),
        ("footprint_memory_mb", -1, "--pipeline.footprint-memory-mb must be a whole number between 0 and"),
        ("view_memory_mb", -1, "--pipeline.view-memory-mb must be a whole number between 0 and"),
        ("cache_samples", -2, "--pipeline.cache-samples must be a whole number between 0 and 4096 (0 keeps all"),
        ("iou_threshold", float("nan"), "--pipeline.iou-threshold must be a number between 0 and 1, got nan"),
        ("vote_prior", float("inf"), "--pipeline.vote-prior must be a number between 0 and 1e+09"),
        ("num_prompts", 10**400, "--pipeline.num-prompts must be a whole number between 1 and 1000, got 1000000"),
        ("model.mask_log2_hashmap_size", 40, "--pipeline.model.mask-log2-hashmap-size must be a whole number between 8 and 26"),
        ("model.mask_max_res", 64, "--pipeline.model.mask-max-res must be at least --pipeline.model.mask-min-res; got 64 and 128"),
    ],
)  # fmt: skip
def test_out_of_range_settings_are_named(setting, value, match):
    import copy

    from sa3d_ns.config import sa3d_method
    from sa3d_ns.core.errors import SA3DError
    from sa3d_ns.nerf.resolve import check_settings

    pipe = copy.deepcopy(sa3d_method.config.pipeline)
    check_settings(pipe)  # the defaults pass
    owner, _, name = setting.rpartition(".")
    setattr(pipe.model if owner else pipe, name, value)
    with pytest.raises(SA3DError, match=re.escape(match)):
        check_settings(pipe)


def test_footprint_budget_defaults_to_a_bounded_share_of_free_memory(monkeypatch):
    from sa3d_ns.nerf import pipeline
    from sa3d_ns.nerf.pipeline import footprint_budget

    assert 0 < footprint_budget(None, "cpu") <= 2048 * 2**20
    mb = 2**20
    monkeypatch.setattr(pipeline, "free_memory", lambda device: 20000 * mb)
    assert footprint_budget(None, "cpu") == 2048 * mb  # a quarter of 20 GB, capped
    # the cap makes room for one touch table per view, within a quarter of the free memory
    assert footprint_budget(None, "cpu", touches=3000 * mb) == 3000 * mb
    assert footprint_budget(None, "cpu", touches=9000 * mb) == 5000 * mb
    monkeypatch.setattr(pipeline, "free_memory", lambda device: 1000 * mb)
    assert footprint_budget(None, "cpu", touches=3000 * mb) == 250 * mb
    assert footprint_budget(0, "cpu") == 0 and footprint_budget(3, "cpu") == 3 * mb


def test_a_runs_data_is_found_from_where_it_was_trained(tmp_path, monkeypatch):
    """A nerfacto run names its data relative to the folder it was trained in; run from another
    folder (or with the project folder moved whole), the data is found from the run's location, and
    a message names --data when it is nowhere."""
    from types import SimpleNamespace

    from sa3d_ns.core.errors import SA3DError
    from sa3d_ns.nerf.resolve import find_data, training_folder

    project = tmp_path / "moved" / "project"
    (project / "data" / "scene").mkdir(parents=True)
    config_path = project / "outputs" / "scene" / "nerfacto" / "2026-01-01_000000" / "config.yml"
    src = SimpleNamespace(config=SimpleNamespace(output_dir=Path("outputs")), config_path=config_path)
    assert training_folder(src) == project
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert find_data(Path("data/scene"), src) == (project / "data" / "scene").resolve()
    monkeypatch.chdir(project)
    assert find_data(Path("data/scene"), src) == Path("data/scene")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(SA3DError, match="Pass --data PATH"):
        find_data(Path("data/other"), src)
    absolute = SimpleNamespace(config=SimpleNamespace(output_dir=tmp_path / "abs"), config_path=config_path)
    assert training_folder(absolute) is None


def test_any_value_of_any_numeric_setting_is_taken_sane_or_refused_by_name():
    """hypothesis: every numeric setting of ns-train sa3d (NUMERIC_SETTINGS) given any int (of
    any size) or float (NaN, infinity, subnormal, negative): check_settings either refuses it with
    an SA3DError naming the flag and the value, or takes a finite value of the setting's kind
    that no setting documents as invalid (non-negative but for the mask threshold, below 2**32)."""
    import copy
    import math

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sa3d_ns.config import sa3d_method
    from sa3d_ns.core.errors import SA3DError
    from sa3d_ns.nerf.resolve import NUMERIC_SETTINGS, check_settings

    base = sa3d_method.config.pipeline
    values = st.one_of(
        st.integers(),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0, 1, -1, 0.5, 2**31, 2**32, 1e-320]),
    )

    @settings(max_examples=300, deadline=None, database=None)
    @given(setting=st.sampled_from(NUMERIC_SETTINGS), value=values)
    def check(setting, value):
        where, name, kind, *_ = setting
        pipe = copy.deepcopy(base)
        setattr(pipe.model if where else pipe, name, value)
        flag = f"--pipeline.{where + '.' if where else ''}{name.replace('_', '-')}"
        try:
            check_settings(pipe)
        except SA3DError as err:
            assert flag in str(err) and "got" in str(err), str(err)
            return
        assert isinstance(value, int) or math.isfinite(value)
        assert kind == "float" or float(value).is_integer()
        assert abs(value) < 2**32 and (value >= 0 or name == "mask_threshold")

    check()
