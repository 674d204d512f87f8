"""Property-based tests (hypothesis) of the prompt-file parser: any JSON value, any type, huge and
negative numbers, NaN and infinity, unicode, path traversal in names, duplicate objects, any bytes
in the file. Each either parses into prompts a run can use or raises SA3DError (the CLI's
"sa3d error:" and exit 2); never another exception."""

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.objects import NAME_PATTERN
from sa3d_ns.core.prompts import load_prompts, parse_prompts

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # beyond any float
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1e39, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
names = st.one_of(
    st.text(max_size=45), st.sampled_from(["../../x", "..", "/etc/passwd", "a/b", "all", "ball", "x" * 41, "ball\n"])
)
near_valid = st.fixed_dictionaries(
    {"view": st.one_of(st.integers(min_value=-3, max_value=10**30), st.text(max_size=8), values)},
    optional={
        "points": st.one_of(st.lists(st.lists(numbers, min_size=2, max_size=2), max_size=4), values),
        "labels": st.one_of(st.lists(st.sampled_from([0, 1, 2, True, 1.0]), max_size=4), values),
        "box": st.one_of(st.lists(numbers, min_size=4, max_size=4), values),
        "text": st.one_of(st.text(max_size=300), values),
        "mask_choice": st.one_of(st.integers(min_value=-2, max_value=10**30), values),
        "name": st.one_of(names, values),
        "extra": values,
    },
)
files = st.one_of(
    values, near_valid, st.lists(near_valid, max_size=3).map(lambda objs: {"objects": objs}), st.fixed_dictionaries({"objects": values})
)  # fmt: skip


def check_usable(prompts) -> None:
    """What a parsed prompt promises the run: finite pixels, 0/1 labels (one per point), a valid
    name (never a path), something positive to segment, unique names."""
    assert prompts and len({p.name for p in prompts}) == len(prompts)
    for p in prompts:
        assert NAME_PATTERN.match(p.name) and "/" not in p.name and ".." not in p.name
        assert p.points.shape == (len(p.labels), 2) and set(p.labels.tolist()) <= {0, 1}
        assert np.isfinite(p.points).all() and (p.box is None or np.isfinite(p.box).all())
        assert p.box is not None or p.text is not None or (p.labels == 1).any()
        assert isinstance(p.view, (int, str)) and not isinstance(p.view, bool)
        assert p.mask_choice is None or p.mask_choice >= 0


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(files)
def test_any_json_prompt_parses_or_is_an_sa3d_error(data):
    try:
        prompts = parse_prompts(data, "prompt.json")
    except SA3DError as err:
        assert "prompt.json" in str(err) or "Object name" in str(err)
        return
    check_usable(prompts)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200), files.map(lambda d: json.dumps(d).encode())))
def test_any_prompt_file_loads_or_is_an_sa3d_error(tmp_path, raw):
    path = tmp_path / "prompt.json"
    path.write_bytes(raw)
    try:
        prompts = load_prompts(path)
    except SA3DError as err:
        assert str(path) in str(err) or "Object name" in str(err), err
        return
    check_usable(prompts)


def test_files_nobody_thought_of_are_sa3d_errors(tmp_path):
    cases = {
        "deep.json": b"[" * 100_000,  # json's recursion limit
        "latin1.json": '{"view": 0, "name": "caf\xe9"}'.encode("latin-1"),  # not UTF-8
        "huge_int.json": b'{"view": 0, "points": [[1' + b"0" * 400 + b', 2]]}',  # beyond any float
        "huge_box.json": b'{"view": 0, "box": [0, 0, 1' + b"0" * 400 + b", 5]}",
        "nan.json": b'{"view": 0, "points": [[NaN, 2]]}',
        "traversal.json": b'{"view": 0, "points": [[1, 2]], "name": "../../x"}',
        "dupes.json": b'{"objects": [{"view": 0, "points": [[1, 2]], "name": "a"}, {"view": 1, "points": [[1, 2]], "name": "a"}]}',
    }  # fmt: skip
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        try:
            load_prompts(tmp_path / name)
        except SA3DError as err:
            assert name in str(err) or "Object name" in str(err), (name, err)
        else:
            raise AssertionError(f"{name} was accepted")
    (tmp_path / "folder.json").mkdir()
    try:
        load_prompts(tmp_path / "folder.json")
    except SA3DError as err:
        assert "not found" in str(err)
