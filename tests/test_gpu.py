"""Where users run it: CUDA and tiny-cuda-nn.

The ``gpu``-marked tests run the CUDA branches (device placement, int32 corner lists, no CPU thread
pool, the memory budget from ``torch.cuda.mem_get_info``) against the CPU's results; without CUDA
they skip, saying so. ``scripts/gpu_check.sh`` runs them on a GPU machine. The others make the
tiny-cuda-nn branches explicit (tcnn cannot be installed without CUDA): which implementation the
mask fields get, and that no fast path touches a tcnn encoding.
"""

import numpy as np
import pytest
import torch
from test_fastpath import mask_field, random_views
from test_segmenters import disc_scene, tiny_sam

from sa3d_ns.core import hashgrid, lifting
from sa3d_ns.core.lifting import MaskLifter

CUDA = torch.cuda.is_available()
NO_CUDA = "needs a CUDA GPU (scripts/gpu_check.sh runs these there)"


# --------------------------------------------------------------------------- tiny-cuda-nn branches
def test_mask_fields_use_the_listed_layout_whatever_the_nerf_uses():
    from sa3d_ns.nerf.model import SA3DModelConfig, mask_implementation

    assert mask_implementation("auto") == "torch"  # on every device, for tcnn-trained nerfactos too
    assert mask_implementation("tcnn") == "tcnn" and mask_implementation("torch") == "torch"
    with pytest.raises(ValueError, match="mask_implementation"):
        mask_implementation("cuda")
    from nerfstudio.data.scene_box import SceneBox

    # a nerfacto whose config says tcnn (here it falls back to torch: tcnn is not installed)
    cfg = SA3DModelConfig(implementation="tcnn", log2_hashmap_size=12)
    model = cfg.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])), num_train_data=2, metadata={})
    assert model._mask_impl == "torch" and all(f.explicit for f in model.mask_fields)


def test_fast_paths_leave_tcnn_encodings_alone():
    """A HashEncoding backed by tiny-cuda-nn (``tcnn_encoding`` set) keeps its own forward, and a
    mask field on it is not 'explicit': its votes go through autograd, not the listed corners."""
    from torch import nn

    from sa3d_ns.nerf.host import fast_lookups

    field = mask_field()
    enc = field.encoding
    enc.tcnn_encoding = nn.Linear(3, 16)  # stands in for tcnn's module: only its presence is looked at
    enc.tcnn_encoding.params = nn.Parameter(torch.zeros(8))
    fast_lookups([enc])
    assert "forward" not in vars(enc)
    assert not field.explicit and field.table is enc.tcnn_encoding.params


# --------------------------------------------------------------------------- CUDA branches
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("mode", ["vote", "sgd"])
def test_votes_on_cuda_equal_the_cpu_votes(mode):
    pos, weights, masks = random_views(400)
    tables = {}
    for device, listed in (("cpu", True), ("cuda", True), ("cuda", False)):
        field = mask_field().to(device)
        corners = field.corners if listed else None
        lifter = MaskLifter(field, field.table, mode=mode, chunk_rays=128, corners=corners)
        for m, lam in zip(masks, (5.0, 1.0), strict=True):
            lifter.add_view(pos.to(device), weights.to(device), m.to(device), lam)
        tables[device, listed] = field.table.detach().cpu()
        score = lifter.score(pos.to(device), weights.to(device))
        assert score.device.type == device
    idx, w = mask_field().cuda().corners(pos.reshape(-1, 3).cuda())
    assert idx.dtype == torch.int32 and idx.is_cuda and w.is_cuda
    assert tables["cpu", True].abs().sum() > 0
    assert torch.allclose(tables["cuda", True], tables["cpu", True], atol=1e-5)
    assert torch.allclose(tables["cuda", False], tables["cpu", True], atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_scatter_on_cuda_equals_the_threaded_cpu_scatter():
    torch.manual_seed(0)
    idx = torch.randint(0, 5000, (16, 20000), dtype=torch.int32)
    values = torch.rand(16, 20000)
    cpu = torch.zeros(5000 * 16)
    lifting.scatter_add(cpu, idx + torch.arange(16, dtype=torch.int32)[:, None] * 5000, values, alpha=0.5)
    gpu_table = torch.zeros(5000 * 16, device="cuda")
    lifting.scatter_add(
        gpu_table, (idx + torch.arange(16, dtype=torch.int32)[:, None] * 5000).cuda(), values.cuda(), 0.5
    )
    assert torch.allclose(gpu_table.cpu(), cpu, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_frozen_hash_grid_lookup_on_cuda_equals_nerfstudios():
    from nerfstudio.field_components.encodings import HashEncoding

    from sa3d_ns.nerf.host import frozen_hash_forward

    torch.manual_seed(0)
    enc = HashEncoding(16, log2_hashmap_size=15, features_per_level=2, implementation="torch").cuda()
    x = torch.rand(4, 5000, 3, device="cuda")
    with torch.no_grad():
        expected = enc(x)
        got = frozen_hash_forward(enc, x)
        cpu = frozen_hash_forward(enc.cpu(), x.cpu())
    assert got.is_cuda and torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.cpu(), cpu, atol=1e-5)
    assert hashgrid.grid_corners(x[0].cpu(), enc.scalings, enc.hash_offset, enc.hash_table_size)[0].dtype == torch.int32


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_memory_budget_reads_the_gpu():
    from sa3d_ns.nerf.pipeline import footprint_budget, free_memory

    free, total = torch.cuda.mem_get_info()
    got = free_memory(torch.device("cuda"))
    assert 0 < got <= total and abs(got - free) < 512 * 2**20
    assert (
        footprint_budget(None, "cuda") == min(got // 4, 2048 * 2**20)
        or abs(footprint_budget(None, "cuda") - min(free // 4, 2048 * 2**20)) < 256 * 2**20
    )
    assert footprint_budget(100, "cuda") == 100 * 2**20


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_sam_on_cuda_caches_embeddings_and_predicts_as_on_cpu(tmp_path):
    from sa3d_ns.core.cache import ViewCache
    from sa3d_ns.segmenters.sam import SamSegmenter

    img, depth, _ = disc_scene()
    pts, labels = np.array([[30.0, 30.0]]), np.array([1])
    results = {}
    for device in ("cpu", "cuda"):
        seg = SamSegmenter(tiny_sam().to(device), identity={"sam": "tiny"})
        seg.bf16_encoder = False  # float32 on both (bf16 against float32: the next test)
        seg.embedding_cache = ViewCache(tmp_path / device, {"segmenter": seg.identity})
        seg.set_image(img, depth, view_id=3)
        results[device] = seg.predict(pts, labels)
        seg.embedding_cache.flush()
        again = SamSegmenter(tiny_sam().to(device), identity={"sam": "tiny"})  # reads the cached embedding
        again.bf16_encoder = False
        again.embedding_cache = ViewCache(tmp_path / device, {"segmenter": seg.identity})
        again.set_image(img, depth, view_id=3)
        assert np.array_equal(again.predict(pts, labels).masks, results[device].masks)
    assert np.allclose(results["cuda"].scores, results["cpu"].scores, atol=1e-3)
    agree = (results["cuda"].masks == results["cpu"].masks).mean()
    assert agree > 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_sam_encoder_in_bf16_on_cuda_gives_the_float32_masks():
    from sa3d_ns.segmenters.sam import SamSegmenter

    img, depth, _ = disc_scene()
    pts, labels = np.array([[30.0, 30.0]]), np.array([1])
    masks = {}
    for bf16 in (True, False):
        seg = SamSegmenter(tiny_sam().cuda())
        seg.bf16_encoder = bf16
        seg.set_image(img, depth)
        assert seg.predictor.features.dtype == torch.float32
        masks[bf16] = seg.predict(pts, labels).masks
    assert (masks[True] == masks[False]).mean() > 0.98
