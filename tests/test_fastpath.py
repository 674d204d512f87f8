"""The default (fast) path against the faithful one: explicit hash-grid votes equal autograd votes,
pruned samples, the on-disk view cache and SAM's embedding cache."""

import json

import numpy as np
import pytest
import torch
from test_segmenters import disc_scene, tiny_sam

from sa3d_ns.core import hashgrid, lifting
from sa3d_ns.core.cache import CacheWriteError, ViewCache, file_identity, prune_samples, top_samples
from sa3d_ns.core.errors import SA3DError
from sa3d_ns.core.lifting import MaskLifter


def mask_field(log2=12):
    from nerfstudio.field_components.spatial_distortions import SceneContraction

    from sa3d_ns.nerf.mask_field import MaskField

    return MaskField(
        torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), SceneContraction(order=float("inf")), log2_hashmap_size=log2
    )


@pytest.mark.parametrize("log2", [12, 19])
def test_corners_reproduce_nerfstudio_hash_encoding(log2):
    field = mask_field(log2)
    with torch.no_grad():
        field.table.normal_()
    x = torch.randn(2000, 3) * 1.5
    x[0] = 0.0  # exactly on grid points
    x[1] = 5.0  # contracted far away
    idx, w = field.corners(x)
    assert idx.shape == w.shape == (16, 2000, 8) and (w >= 0).all()
    expected = field(x)
    got = (field.table.detach()[idx, 0] * w).sum((0, 2))
    assert torch.allclose(got, expected, atol=1e-6)


def random_views(rays: int):
    """Two views' worth of lifting input (seeded): positions R x 6 x 3, weights R x 6, two masks."""
    torch.manual_seed(0)
    pos = torch.randn(rays, 6, 3) * 0.6
    weights = torch.rand(rays, 6) * 0.3
    return pos, weights, [torch.rand(rays) > 0.5, torch.rand(rays) > 0.3]


@pytest.mark.parametrize("mode", ["vote", "sgd"])
def test_explicit_votes_equal_autograd_votes(mode):
    pos, weights, masks = random_views(300)
    fast_field, slow_field = mask_field(), mask_field()
    fast = MaskLifter(fast_field, fast_field.table, mode=mode, chunk_rays=128, corners=fast_field.corners)
    slow = MaskLifter(slow_field, slow_field.table, mode=mode, chunk_rays=128)
    for m, lam in zip(masks, (5.0, 1.0), strict=True):
        s_fast, s_slow = fast.score(pos, weights), slow.score(pos, weights)
        assert torch.allclose(s_fast, s_slow, atol=1e-6)
        fast.add_view(pos, weights, m, lam)
        slow.add_view(pos, weights, m, lam)
        assert torch.allclose(fast_field.table, slow_field.table, atol=1e-6)
    assert fast_field.table.abs().sum() > 0
    assert torch.allclose(fast.score(pos, weights), slow.score(pos, weights), atol=1e-6)


@pytest.mark.parametrize("mode, prior", [("vote", 0.0), ("vote", 16.0), ("sgd", 0.0)])
@pytest.mark.parametrize("explicit", [True, False])
def test_a_withdrawn_vote_is_as_if_the_view_had_never_been_lifted(mode, prior, explicit):
    """A later pass replaces a view's mask (``pass_votes`` "replace"): its earlier vote withdrawn,
    the new one lifted, the table is that of a lifter that only ever saw the new one; entries that
    only the withdrawn vote touched count as untouched again (the prior's count of entries)."""
    torch.manual_seed(1)
    pos, weights, (m1, m2) = random_views(300)
    other_pos = torch.randn(200, 6, 3) * 0.6  # a view of its own rays (entries the others never touch)
    other_w, other_m = torch.rand(200, 6) * 0.3, torch.rand(200) > 0.4
    fields = [mask_field(), mask_field()]
    lifters = [
        MaskLifter(
            f, f.table, mode=mode, lr=0.1, chunk_rays=128, vote_prior=prior, corners=f.corners if explicit else None
        )
        for f in fields
    ]
    replaced, fresh = lifters
    replaced.add_view(pos, weights, m1, 5.0)  # the first view's mask, then another view
    replaced.add_view(other_pos, other_w, other_m, 1.0)
    replaced.add_view(pos, weights, m1, 5.0, withdraw=True)  # the later pass: the first view's mask replaced
    replaced.add_view(pos, weights, m2, 1.0)
    fresh.add_view(other_pos, other_w, other_m, 1.0)
    fresh.add_view(pos, weights, m2, 1.0)
    assert torch.allclose(fields[0].table, fields[1].table, atol=1e-5)
    assert fields[0].table.abs().sum() > 0
    if mode == "vote":
        assert replaced._touch_sum == pytest.approx(fresh._touch_sum, rel=1e-5)
        assert torch.equal(replaced.touch > 0, fresh.touch > 0)  # (the prior counts the touched entries)
        # a lifter's only view withdrawn: every entry untouched, the table 0 (not rounding residues)
        fresh.reset()
        fresh.add_view(other_pos, other_w, other_m, 1.0)
        fresh.add_view(other_pos, other_w, other_m, 1.0, withdraw=True)
        assert not (fresh.touch > 0).any() and fields[1].table.abs().max() == 0


def test_a_vote_cannot_be_withdrawn_from_released_sums():
    field = mask_field()
    lifter = MaskLifter(field, field.table, corners=field.corners)
    pos, w, (m, _) = random_views(20)
    with pytest.raises(RuntimeError, match="no votes to withdraw"):
        lifter.add_view(pos, w, m, 1.0, withdraw=True)


def test_score_memo_never_serves_another_view():
    field = mask_field()
    lifter = MaskLifter(field, field.table, corners=field.corners)
    pos = torch.randn(50, 4, 3) * 0.5
    w = torch.rand(50, 4)
    lifter.add_view(pos, w, torch.ones(50, dtype=torch.bool), 1.0)
    a = lifter.score(pos, w)
    other = pos.flip(0).clone()
    assert torch.allclose(lifter.score(other, w.flip(0)), a.flip(0), atol=1e-6)
    assert torch.allclose(
        lifter.score(other, w.flip(0)), MaskLifter(field, field.table).score(other, w.flip(0)), atol=1e-6
    )


def test_top_samples_and_pruning():
    w = torch.tensor([[0.1, 0.6, 0.05, 0.25]])
    assert top_samples(w, 2).tolist() == [[1, 3]]
    pos = torch.arange(12, dtype=torch.float32).view(1, 4, 3)
    p, wk, kept = prune_samples(pos, w, 2)
    assert wk[0].tolist() == pytest.approx([0.6, 0.25]) and p[0, :, 0].tolist() == [3.0, 9.0]
    assert kept == pytest.approx(0.85)
    assert prune_samples(pos, w, 0)[2] == 1.0 and prune_samples(pos, w, 8)[1] is w


def test_view_cache_roundtrip_key_and_damage(tmp_path):
    cache = ViewCache(tmp_path, {"checkpoint": "a", "samples": 8})
    assert cache.load("view00000") is None
    cache.save("view00000", {"weights": torch.ones(3, 2).half(), "size": torch.tensor([4, 5])})
    assert cache.load("view00000")["size"].tolist() == [4, 5]  # (a write in flight is waited for)
    cache.flush()  # what a run does when an object is done: its writes are on the disk
    again = ViewCache(tmp_path, {"samples": 8, "checkpoint": "a"})  # same key, any order: same folder
    assert again.dir == cache.dir and again.load("view00000")["size"].tolist() == [4, 5]
    other = ViewCache(tmp_path, {"checkpoint": "b", "samples": 8})
    assert other.dir != cache.dir and other.load("view00000") is None  # a new key never reads old data
    said = []
    cache = ViewCache(tmp_path, {"checkpoint": "a", "samples": 8}, say=said.append)
    cache.path("view00000").write_bytes(b"garbage")
    assert cache.load("view00000") is None and not cache.path("view00000").exists()
    assert not list(cache.dir.glob("*.tmp")) and (cache.dir / "key.json").is_file()
    assert len(said) == 1 and str(cache.path("view00000")) in said[0] and "cannot be read" in said[0]
    assert cache.dropped == 1 and cache.key["torch"] == ".".join(torch.__version__.split(".")[:2])


def test_half_entries_of_killed_runs_are_removed_when_stale(tmp_path):
    """A cache folder's temporary files older than an hour (a run killed while writing an entry)
    are removed, and said, when the cache is opened; fresh ones (a run writing now) are kept."""
    import os
    import time

    cache = ViewCache(tmp_path, {"checkpoint": "a"})
    old, fresh = cache.dir / "view00003abc.tmp", cache.dir / "view00004def.tmp"
    old.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    said = []
    ViewCache(tmp_path, {"checkpoint": "a"}, say=said.append)
    assert not old.exists() and fresh.exists()
    assert len(said) == 1 and "removed 1 half-written entries" in said[0]


def test_a_cache_of_another_format_or_torch_is_never_read_and_is_said(tmp_path):
    """The same views cached by another version of the cache's format or another torch: a folder
    of its own (never read), named when a new folder is made for this run, with its size."""
    old = ViewCache(tmp_path, {"version": 1, "checkpoint": "a"})
    old.save("view00000", {"size": torch.tensor([4, 5])})
    meta = json.loads((old.dir / "key.json").read_text())
    older = tmp_path / "0123456789abcdef"
    older.mkdir()
    (older / "key.json").write_text(json.dumps({**meta, "torch": "1.13"}))  # (as another torch wrote it)
    before = tmp_path / "fedcba9876543210"
    before.mkdir()  # (as the code before keys named torch wrote it)
    (before / "key.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "torch"}))
    (tmp_path / "not_a_cache").mkdir()  # (other folders are left alone)
    said = []
    new = ViewCache(tmp_path, {"version": 2, "checkpoint": "a"}, say=said.append)
    assert new.dir not in (old.dir, older) and new.load("view00000") is None
    assert len(said) == 3, said
    text = " ".join(said)
    assert str(old.dir) in text and "cache format 1 (this run writes 2)" in text and "Delete" in text
    assert str(older) in text and "torch 1.13" in text
    assert "torch not recorded" in text  # (the old folder's key names no torch: written before the key did)
    said.clear()
    ViewCache(tmp_path, {"version": 2, "checkpoint": "a"}, say=said.append)  # (said once: when the folder is made)
    ViewCache(
        tmp_path, {"version": 2, "checkpoint": "b"}, say=said.append
    )  # (another checkpoint's: not the same views)
    assert said == []


def test_file_identity_changes_with_the_file(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"12")
    a = file_identity(f)
    f.write_bytes(b"123")
    assert file_identity(f) != a and file_identity(None) is None


def test_sam_embeddings_are_computed_once_per_view(tmp_path):
    from sa3d_ns.segmenters.sam import SamSegmenter

    img, depth, _ = disc_scene()
    model = tiny_sam()
    calls = []
    original = model.image_encoder.forward
    model.image_encoder.forward = lambda x: calls.append(1) or original(x)
    seg = SamSegmenter(model, identity={"sam": "tiny"})
    seg.embedding_cache = ViewCache(tmp_path, {"segmenter": seg.identity})
    pts, labels = np.array([[30.0, 30.0]]), np.array([1])
    seg.set_image(img, depth, view_id=3)
    first = seg.predict(pts, labels)
    seg.embedding_cache.flush()
    seg2 = SamSegmenter(model, identity={"sam": "tiny"})  # e.g. a later run in the same scene
    seg2.embedding_cache = ViewCache(tmp_path, {"segmenter": seg.identity})
    seg2.set_image(img, depth, view_id=3)
    second = seg2.predict(pts, labels)
    assert len(calls) == 1
    assert np.array_equal(first.masks, second.masks) and np.allclose(first.scores, second.scores)
    seg2.set_image(img, depth, view_id=None)  # not a training view: always encoded
    assert len(calls) == 2


@pytest.mark.parametrize("mode", ["vote", "sgd"])
def test_votes_match_their_definition_across_lambdas_and_cached_footprints(mode, monkeypatch):
    """The table after views with different lambdas equals the loss's definition computed
    independently (autograd sums, divided or stepped by hand), with and without the footprint
    cache (whose touch tables replace scatters), and a cache too small to hold a view."""
    from sa3d_ns.core.lifting import FootprintCache, render_mask_score, vote_targets

    torch.manual_seed(1)
    views = [(torch.randn(200, 5, 3) * 0.6, torch.rand(200, 5) * 0.3, torch.rand(200) > 0.6) for _ in range(3)]
    lams = (5.0, 1.0, 0.3)
    ref = mask_field()
    table_bytes = ref.table.numel() * 4
    signed_sum = torch.zeros_like(ref.table, dtype=torch.float32)
    touch_sum = torch.zeros_like(signed_sum)
    tables = {}
    configurations = [
        ("none", None),
        ("big", FootprintCache(1 << 30)),
        ("tiny", FootprintCache(1000)),
        ("stream", None),
        # touches kept, footprints not (all the room is reserved for touches): votes recompute
        # only the masked rays' footprint
        ("touches", FootprintCache(3 * table_bytes, reserve=3 * table_bytes)),
    ]
    built = []
    original_build = MaskLifter._build
    monkeypatch.setattr(MaskLifter, "_build", lambda self, p, w: built.append(len(w)) or original_build(self, p, w))
    for name, cache in configurations:
        if name == "stream":  # a view too large to hold is recomputed chunk by chunk (stays so below)
            monkeypatch.setattr(lifting, "MEMO_BYTES", 0)
        if name == "big":  # corners computed in many blocks of points from here on
            monkeypatch.setattr(hashgrid, "BLOCK_PAIRS", 1000)
        built.clear()
        field = mask_field()
        lifter = MaskLifter(
            field, field.table, mode=mode, lr=0.1, chunk_rays=64, corners=field.corners, footprints=cache
        )
        for _ in range(2):  # the second pass reads the cache
            lifter.reset()
            for v, ((pos, w, m), lam) in enumerate(zip(views, lams, strict=True)):
                lifter.score(pos, w, key=v if cache else None)
                lifter.add_view(pos, w, m, lam, key=v if cache else None)
        tables[name] = field.table.detach().clone()
        if name == "big":
            assert cache.hits >= 12 and any(k[1] == "touch" for k in cache.items)
        if name == "tiny":
            assert not cache.items
        if name == "touches":
            assert {k[1] for k in cache.items} == {"touch"} and len(cache.items) == 3
            # each view's score computes all 200 rays (and sums its touch alongside: the footprint
            # is not kept), its vote only the masked ones, in the first pass as in the second
            assert built == [n for _, _, m in views for n in (200, int(m.sum()))] * 2
    for (pos, w, m), lam in zip(views, lams, strict=True):
        score = render_mask_score(ref, pos, w)
        g_signed = torch.autograd.grad((score * vote_targets(m, lam)).sum(), ref.table, retain_graph=True)[0]
        g_touch = torch.autograd.grad(score.sum(), ref.table)[0]
        if mode == "sgd":
            with torch.no_grad():
                ref.table.add_(g_signed, alpha=0.1 / len(w))
        signed_sum += g_signed
        touch_sum += g_touch
    expected = ref.table.detach() if mode == "sgd" else signed_sum / touch_sum.clamp_min(1e-12)
    for name, table in tables.items():
        assert torch.allclose(table, expected, atol=1e-5), name
    assert expected.abs().sum() > 0


@pytest.mark.parametrize("levels, log2, features, max_res", [(16, 15, 2, 2048), (5, 17, 1, 128), (3, 12, 4, 64)])
@pytest.mark.parametrize("block_pairs", [hashgrid.BLOCK_PAIRS, 500])
def test_frozen_hash_grid_lookup_equals_nerfstudios(levels, log2, features, max_res, block_pairs, monkeypatch):
    """The frozen NeRF's hash grids evaluated by sa3d's corner lookup give nerfstudio's values
    (in one block of points, and in many blocks with a short last one)."""
    from nerfstudio.field_components.encodings import HashEncoding

    from sa3d_ns.nerf.host import frozen_hash_forward

    monkeypatch.setattr(hashgrid, "BLOCK_PAIRS", block_pairs)
    monkeypatch.setattr(hashgrid, "LOOKUP_BLOCK_PAIRS", block_pairs * 3)
    torch.manual_seed(0)
    enc = HashEncoding(
        levels, log2_hashmap_size=log2, features_per_level=features, max_res=max_res, implementation="torch"
    )
    x = torch.rand(3, 700, 3)
    x[0, 0] = 0.0  # on grid points
    x[0, 1] = 1.0
    with torch.no_grad():
        expected = enc(x)
        got = frozen_hash_forward(enc, x)
    assert got.shape == expected.shape == (3, 700, levels * features)
    assert torch.allclose(got, expected, atol=1e-6)
    # where a gradient is wanted (a trainable table), nerfstudio's own forward runs
    assert frozen_hash_forward(enc, x).requires_grad


def test_sa3d_model_uses_the_fast_lookups_where_no_gradient_is_wanted():
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.field_components.encodings import HashEncoding
    from nerfstudio.field_components.spatial_distortions import SceneContraction

    from sa3d_ns.nerf.model import SA3DModelConfig

    box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    for fast in (True, False):
        cfg = SA3DModelConfig(implementation="torch", fast_hash_grids=fast, log2_hashmap_size=12)
        model = cfg.setup(scene_box=box, num_train_data=2, metadata={})
        nerf = [m for m in [*model.field.modules(), *model.proposal_networks.modules()] if isinstance(m, HashEncoding)]
        mask = [m for m in model.mask_fields.modules() if isinstance(m, HashEncoding)]
        assert nerf and mask
        assert all(("forward" in vars(m)) == fast for m in nerf + mask)
        # the mask field's lookup: sa3d's in renders, nerfstudio's where lifting needs a gradient
        field, x = model.mask_fields[0], torch.rand(300, 3) * 2 - 1
        with torch.no_grad():
            field.table.normal_()
            fast_values = field(x)
        with torch.enable_grad():
            values = field(x)
            assert values.requires_grad
        assert torch.allclose(fast_values, values, atol=1e-6)
        k = model.add_object("more")  # (fields added later get them too)
        assert ("forward" in vars(model.mask_fields[k].encoding)) == fast
        contraction = model.field.spatial_distortion
        assert ("forward" in vars(contraction)) == fast and model.mask_fields[0].spatial_distortion is contraction
        x = torch.randn(50, 4, 3) * 3
        x[0, 0] = torch.tensor([1.0, 0.5, -0.2])  # on the unit cube's surface
        assert torch.equal(contraction(x), SceneContraction.forward(contraction, x))  # the same numbers
        # the change undone (sa3d_ns.nerf.host.plain_lookups): nerfstudio's own forward on every module
        from sa3d_ns.nerf.host import plain_lookups

        plain_lookups([*model.modules()])
        assert not any("forward" in vars(m) for m in [*nerf, *mask, contraction])


def test_contraction_equals_nerfstudios():
    from nerfstudio.field_components.spatial_distortions import SceneContraction

    from sa3d_ns.core.hashgrid import contract_inf

    x = torch.randn(2000, 3) * 2
    x[:3] = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    assert torch.equal(contract_inf(x), SceneContraction(order=float("inf"))(x))
    assert contract_inf(x).abs().max() < 2


def test_footprint_cache_holds_room_for_touches_first():
    """Footprints only use the room beyond what is reserved for touches; touches use it all."""
    from sa3d_ns.core.lifting import FootprintCache

    chunk = (slice(0, 4), torch.zeros(2, 4, 8, dtype=torch.int32), torch.zeros(2, 4, 8))  # 512 bytes
    touch = (torch.zeros(100), 1.0)  # 400 bytes
    cache = FootprintCache(1000, reserve=800)
    assert cache.room("footprint") == 200 and cache.room("touch") == 1000
    cache.put((0, "footprint"), [chunk])
    assert not cache.items  # it would eat into the touches' room
    cache.put((0, "touch"), touch)
    assert cache.room("footprint") == 200  # the reserve shrinks as touches come in
    cache.put((1, "touch"), touch)
    assert cache.room("footprint") == 200 and cache.room("touch") == 200
    roomy = FootprintCache(2000, reserve=800)
    roomy.put((0, "footprint"), [chunk])
    assert (0, "footprint") in roomy.items and roomy.room("footprint") == 2000 - 800 - 512


def test_removal_margin_grows_what_rgb_removed_leaves_out():
    """rgb_removed leaves out the samples in the object's 3D mask and, with removal-margin d (in
    coarsest cells: d x 4 / mask-min-res scene units), those within d of it along an axis, where
    the NeRF has density; never empty space, never beyond d."""
    from nerfstudio.data.scene_box import SceneBox

    from sa3d_ns.nerf.model import SA3DModelConfig

    box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    model = SA3DModelConfig(implementation="torch", log2_hashmap_size=12).setup(
        scene_box=box, num_train_data=2, metadata={}
    )
    model.object_values = lambda x: (0.2 - x.norm(dim=-1, keepdim=True))  # a ball of radius 0.2 (threshold 0)
    model.object_bounds[0, 0], model.object_bounds[0, 1] = torch.full((3,), -0.25), torch.full((3,), 0.25)
    step = 0.5 * 4 / model.config.mask_min_res  # 0.015625
    xs = torch.tensor([0.1, 0.2 + step / 2, 0.2 + step / 2, 0.2 + 1.5 * step, 0.5])
    positions = torch.zeros(1, 5, 3)
    positions[0, :, 0] = xs
    alpha = torch.tensor([[0.9, 0.5, 0.0, 0.5, 0.5]])  # the third sample is empty space
    values = model.object_values(positions.reshape(-1, 3)).reshape(1, 5, 1)
    model.config.removal_margin = 0.0
    assert model.removed_samples(positions, values, alpha)[0, :, 0].tolist() == [True, False, False, False, False]
    model.config.removal_margin = 0.5
    assert model.removed_samples(positions, values, alpha)[0, :, 0].tolist() == [True, True, False, False, False]
    model.object_bounds[0, 0], model.object_bounds[0, 1] = -torch.inf, torch.inf  # an object not yet bounded
    assert model.removed_samples(positions, values, alpha)[0, :, 0].tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("mode", ["embedding_bag", "gather"])
def test_both_ways_of_summing_corner_lists_agree(mode, monkeypatch):
    """hashgrid.bag_sum's two kernels (embedding_bag on a CPU, gather on CUDA by default) give the
    same frozen-grid values and mask scores."""
    from nerfstudio.field_components.encodings import HashEncoding

    from sa3d_ns.nerf.host import frozen_hash_forward

    monkeypatch.setattr(hashgrid, "BAG_SUM", mode)
    torch.manual_seed(0)
    enc = HashEncoding(8, log2_hashmap_size=12, features_per_level=2, implementation="torch")
    x = torch.rand(500, 3)
    with torch.no_grad():
        assert torch.allclose(frozen_hash_forward(enc, x), enc(x), atol=1e-6)
    field = mask_field()
    with torch.no_grad():
        field.table.normal_()
    pos, w = torch.randn(200, 5, 3) * 0.5, torch.rand(200, 5)
    fast = MaskLifter(field, field.table, corners=field.corners).score(pos, w)
    assert torch.allclose(fast, MaskLifter(field, field.table).score(pos, w), atol=1e-5)


def test_view_cache_writes_in_the_background_and_flush_reports_errors(tmp_path, monkeypatch):
    cache = ViewCache(tmp_path, {"k": 1}, background=True)
    for i in range(10):  # more than MAX_PENDING: the oldest are waited for
        cache.save(f"view{i:05d}", {"x": torch.full((100,), float(i))})
        assert len(cache._pending) <= ViewCache.MAX_PENDING
    x = torch.ones(4)
    cache.save("view00099", {"x": x})
    x.fill_(7.0)  # changed while its write may be in flight: the file keeps what was saved
    cache.flush()
    assert cache.load("view00099")["x"].tolist() == [1.0] * 4
    cache.path("view00099").unlink()
    assert sorted(p.name for p in cache.dir.glob("*.pt")) == [f"view{i:05d}.pt" for i in range(10)]
    assert not list(cache.dir.glob("*.tmp")) and ViewCache(tmp_path, {"k": 1}).load("view00007")["x"][0] == 7.0

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    cache.save("view00010", {"x": torch.zeros(3)})
    with pytest.raises(CacheWriteError, match="view00010.pt .*No space left on device.* MB is free there"):
        cache.flush()
    assert not list(cache.dir.glob("*.tmp"))


def test_a_cache_write_that_fails_says_where_and_leaves_nothing(tmp_path, monkeypatch):
    """torch.save on a full disk (RuntimeError, as torch reports a short write): a clear error naming
    the entry, its size and the free space, and what to do; no partial file, earlier entries kept."""
    cache = ViewCache(tmp_path, {"k": 2})
    cache.save("view00000", {"x": torch.zeros(1000)})
    real_save = torch.save

    def short_write(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:  # half of it on the disk, as a full disk leaves it
            f.truncate(f.seek(0, 2) // 2)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 960 vs 854")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(SA3DError, match=r"Could not write the cache entry .*view00001\.pt .*unexpected pos") as err:
        cache.save("view00001", {"x": torch.zeros(1000)})
    assert "--pipeline.cache-dir" in str(err.value) and "--pipeline.cache False" in str(err.value)
    assert sorted(p.name for p in cache.dir.iterdir()) == ["key.json", "view00000.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    assert ViewCache(tmp_path, {"k": 2}).load("view00000")["x"].shape == (1000,)


def ball_before_a_wall(wall: float = 0.6):
    """An analytic scene: an opaque red ball of radius 0.2 (the object) in front of a thin blue wall
    from x = ``wall`` to ``wall`` + 0.04 (0.2: flush against the ball), green empty space; an sa3d
    model of it (its 3D mask: the ball) and 64 rays along x through the ball."""
    from nerfstudio.cameras.rays import RayBundle
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.field_components.field_heads import FieldHeadNames

    from sa3d_ns.nerf.model import SA3DModelConfig

    def density_at(x):
        ball = x.norm(dim=-1, keepdim=True) < 0.2
        wall_here = (x[..., :1] > wall) & (x[..., :1] < wall + 0.04)
        return (ball | wall_here).float() * 300.0

    class Analytic(torch.nn.Module):
        def colours(self, x):
            rgb = torch.zeros((*x.shape[:-1], 3))
            rgb[..., 1] = 1.0  # green empty space
            ball = x.norm(dim=-1) < 0.2
            wall_here = (x[..., 0] > wall) & (x[..., 0] < wall + 0.04)
            rgb[ball] = torch.tensor([1.0, 0.0, 0.0])
            rgb[wall_here] = torch.tensor([0.0, 0.0, 1.0])
            return rgb

        def forward(self, ray_samples, compute_normals=False):
            x = ray_samples.frustums.get_positions()
            return {FieldHeadNames.DENSITY: density_at(x), FieldHeadNames.RGB: self.colours(x)}

        def get_density(self, ray_samples):
            return density_at(ray_samples.frustums.get_positions()), None

    box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    model = SA3DModelConfig(implementation="torch", log2_hashmap_size=12, background_color="last_sample").setup(
        scene_box=box, num_train_data=2, metadata={}
    )
    model.eval()
    model.field = Analytic()
    model.density_fns = [density_at, density_at]
    model.object_values = lambda x: (0.2 - x.norm(dim=-1, keepdim=True))  # the ball is the object
    model.object_bounds[0, 0], model.object_bounds[0, 1] = torch.full((3,), -0.25), torch.full((3,), 0.25)
    n = 64
    origins = torch.zeros(n, 3)
    origins[:, 0] = -1.0
    origins[:, 1] = torch.linspace(-0.1, 0.1, n)
    directions = torch.zeros(n, 3)
    directions[:, 0] = 1.0
    rays = RayBundle(origins=origins, directions=directions, pixel_area=torch.full((n, 1), 1e-4),
                     camera_indices=torch.zeros(n, 1, dtype=torch.long))  # fmt: skip
    return model, rays


def test_rgb_removed_samples_again_what_the_object_hid():
    """nerfacto's proposal sampler puts a ray's samples where its first surface is; once the object
    is removed, what it hid would be rendered from the few samples left behind it. With
    removal-resample the rays the object weighed on are sampled again with the object taken out of
    the proposal densities, so a thin wall behind the object shows in rgb_removed. An analytic
    scene: an opaque red ball (the object) in front of a thin blue wall, green empty space."""
    model, rays = ball_before_a_wall()
    blue = torch.tensor([0.0, 0.0, 1.0])

    removed = {}
    for resample in (False, True):
        model.config.removal_resample = resample
        out = model.get_outputs(rays)
        assert (out["rgb"] - torch.tensor([1.0, 0.0, 0.0])).abs().max() < 0.05  # the ball in front
        assert (out["rgb_object"] - torch.tensor([1.0, 0.0, 0.0])).abs().max() < 0.05
        removed[resample] = out["rgb_removed"]
    assert (removed[True] - blue).abs().max(-1).values.max() < 0.05  # the wall, on every ray
    green = torch.tensor([0.0, 1.0, 0.0])
    assert (removed[False] - green).abs().max() < 0.05  # (without: every sample missed the wall)


def test_rgb_removed_leaves_out_the_inside_behind_the_3d_mask():
    """A 3D mask lifted from views' volume weights covers the object's visible surface, not its
    solid inside; once the surface is removed the inside shows (a copy of the object in its own
    colours). With removal-fill the solid samples right behind the mask go too, up to the first
    empty one: the wall behind the ball, past empty space, is kept."""
    model, rays = ball_before_a_wall()
    model.object_values = lambda x: 0.03 - (x.norm(dim=-1, keepdim=True) - 0.18).abs()  # a shell, 0.15 to 0.21
    blue, red = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])
    model.config.removal_margin = 0.0
    removed = {}
    for fill in (False, True):
        model.config.removal_fill = fill
        out = model.get_outputs(rays)
        assert (out["rgb"] - red).abs().max() < 0.05
        removed[fill] = out["rgb_removed"]
    assert (removed[False] - red).abs().max() < 0.1  # the inside shows, on every ray
    assert (removed[True] - blue).abs().max() < 0.05  # the wall


def test_removal_fill_keeps_what_the_object_stands_against():
    """An object flush against what supports it (a box on a floor, a ball against a wall): the
    solid run behind its 3D mask goes on into the support without an empty gap. removal-fill takes
    only the solid samples that have the object's mask behind them too (its inside, between its
    front and its back), so the wall flush behind the ball stays in rgb_removed, and so does the
    ball's inside where the mask holds only its front (nothing behind it says where the object
    ends)."""
    model, rays = ball_before_a_wall(wall=0.2)
    shell = lambda x: 0.03 - (x.norm(dim=-1, keepdim=True) - 0.18).abs()  # noqa: E731  (front and back, 0.15 to 0.21)
    blue, red = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])
    model.config.removal_margin, model.config.removal_fill = 0.0, True
    model.object_values = shell
    out = model.get_outputs(rays)
    assert (out["rgb"] - red).abs().max() < 0.05
    assert (out["rgb_removed"] - blue).abs().max() < 0.05  # the inside gone, the wall kept
    model.object_values = lambda x: torch.where(x[..., :1] < 0, shell(x), -1.0)  # the front half only
    out = model.get_outputs(rays)
    assert (out["rgb_removed"] - red).abs().max() < 0.1  # the inside shows: nothing is filled
