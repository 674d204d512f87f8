"""Text prompts (Grounding DINO), SAM 2.1, HQ-SAM and the weights manager: the real architectures
at small random weights, offline; every missing-package and missing-weights path."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sa3d_ns import weights
from sa3d_ns.core.cache import ViewCache
from sa3d_ns.core.errors import SA3DError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "red", "ball", "yellow", "duck", "the", "crate"]


def make_tiny_grounding_dino(folder):
    """Grounding DINO (transformers' implementation) shrunk, random weights, with a BERT tokenizer
    built from a small vocabulary file: a model folder as from_pretrained reads it."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, out_features=["stage2", "stage3", "stage4"]
        ),
        text_config=BertConfig(
            vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64,
        ),
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20, max_text_len=32,
        encoder_n_points=2, decoder_n_points=2,
    )  # fmt: skip
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).eval().save_pretrained(folder)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192}),
        tokenizer=BertTokenizerFast(vocab_file=str(folder / "vocab.txt")),
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_gd(tmp_path_factory):
    return make_tiny_grounding_dino(tmp_path_factory.mktemp("gd") / "grounding-dino")


def image(h=48, w=64, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- text prompts
def test_text_detector_finds_boxes_in_the_image(tiny_gd):
    from sa3d_ns.segmenters.text import TextDetector, best_box, normalize_text, resolve_text_checkpoint

    assert normalize_text("  A Yellow  Duck ") == "a yellow duck."
    det = TextDetector(resolve_text_checkpoint("grounding-dino-tiny", tiny_gd))
    found = det.detect(image(), "a red ball", text_threshold=0.25)
    assert found and [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    best = best_box(found, "a red ball", 0.0, "view 0", 64, 48)
    x0, y0, x1, y1 = best.box
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48 and best.score == found[0].score
    # no box above the threshold: the message shows the best score found
    with pytest.raises(
        SA3DError, match=f"no box for the text 'a red ball' in view 0 .*best score was {found[0].score:.3f}"
    ):
        best_box(found, "a red ball", 1.01, "view 0", 64, 48)
    with pytest.raises(SA3DError, match="nothing was found at all"):
        best_box([], "a duck", 0.35, "view 0", 64, 48)


def test_text_checkpoint_errors(tmp_path, monkeypatch):
    from sa3d_ns.segmenters import text

    with pytest.raises(SA3DError, match="checkpoint not found: .* --pipeline.text-checkpoint"):
        text.resolve_text_checkpoint("grounding-dino-tiny", tmp_path / "missing")
    with pytest.raises(SA3DError, match="not a Hugging Face model folder"):
        text.resolve_text_checkpoint("grounding-dino-tiny", tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SA3DError, match="Could not load Grounding DINO from"):
        text.TextDetector(tmp_path)
    with pytest.raises(SA3DError, match="Unknown text model"):
        text.resolve_text_checkpoint("grounding-dino-huge", None)
    # no path, offline, nothing cached: names the flag and sa3d-weights
    monkeypatch.setenv("SA3D_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SA3D_OFFLINE", "1")
    with pytest.raises(
        SA3DError,
        match="not in the cache .*downloads are disabled.*--pipeline.text-checkpoint.*sa3d-weights download grounding-dino-tiny",
    ):
        text.resolve_text_checkpoint("grounding-dino-tiny", None)
    # transformers missing: names the extra
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    with pytest.raises(SA3DError, match=r"sa3d_ns\[text\]"):
        text.resolve_text_checkpoint("grounding-dino-tiny", tmp_path)


# ----------------------------------------------------------------------------- SAM 2.1 and HQ-SAM
def check_segmenter_and_cache(seg, tmp_path, shape=(64, 80), candidates=3):
    """Predictions have the interface's shapes; an embedding reused from the cache answers the same."""
    img = image(*shape)
    seg.embedding_cache = ViewCache(tmp_path / "emb", {"test": 1})
    seg.set_image(img, view_id=3)
    pts, lab = np.array([[30.0, 30.0], [60.0, 10.0]]), np.array([1, 0])
    out = seg.predict(pts[:1], lab[:1], multimask=True)
    assert out.masks.shape == (candidates, *shape) and out.masks.dtype == bool and out.scores.shape == (candidates,)
    one = seg.predict(pts, lab, box=np.array([5, 5, 50, 50]), multimask=False)
    assert one.masks.shape == (1, *shape)
    seg.embedding_cache.flush()
    assert len(list((tmp_path / "emb").rglob("*.pt"))) == 1
    seg.set_image(image(*shape, seed=1), view_id=4)  # another view in between
    seg.set_image(img, view_id=3)  # from the cache
    again = seg.predict(pts, lab, box=np.array([5, 5, 50, 50]), multimask=False)
    assert np.array_equal(again.masks, one.masks) and np.allclose(again.scores, one.scores, atol=1e-5)


def test_sam2_segmenter_real_architecture_random_weights(tmp_path):
    from sa3d_ns.segmenters.sam_variants import Sam2Segmenter, build_sam2_model

    torch.manual_seed(0)
    model = build_sam2_model("hiera_t", None)
    check_segmenter_and_cache(Sam2Segmenter(model), tmp_path)
    # a checkpoint in SAM 2's format loads strictly; one of another model is a clear error
    good = tmp_path / "sam2.pt"
    torch.save({"model": model.state_dict()}, good)
    assert build_sam2_model("hiera_t", good) is not None
    other = tmp_path / "other.pt"
    torch.save({"model": {"image_encoder.trunk.pos_embed": torch.zeros(1)}}, other)
    with pytest.raises(SA3DError, match="do not fit SAM 2.1 hiera_t.*--pipeline.sam2-variant"):
        build_sam2_model("hiera_t", other)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SA3DError, match="Could not read SAM 2.1 hiera_t weights .*--pipeline.sam2-checkpoint"):
        build_sam2_model("hiera_t", tmp_path / "junk.pt")


def tiny_sam_hq(img_size=64):
    """HQ-SAM's architecture (segment-anything-hq), shrunk, random weights."""
    from segment_anything_hq.modeling import ImageEncoderViT, MaskDecoderHQ, PromptEncoder, Sam, TwoWayTransformer

    dim, grid = 32, img_size // 16
    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=16, embed_dim=dim, depth=1, num_heads=2, out_chans=dim, use_rel_pos=True,
            window_size=0, global_attn_indexes=[0],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=4
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=32, vit_dim=dim,
        ),
    ).eval()  # fmt: skip


def test_sam_hq_segmenter_real_architecture_small_weights(tmp_path):
    from sa3d_ns.segmenters.sam_variants import SamHQSegmenter, build_sam_hq

    # HQ-SAM answers one mask per prompt: SAM's best candidate refined by its HQ token
    check_segmenter_and_cache(SamHQSegmenter(tiny_sam_hq()), tmp_path, candidates=1)
    # the light vit_tiny (TinyViT) model loads a full checkpoint strictly; a partial one is an error
    from segment_anything_hq import sam_model_registry

    full = sam_model_registry["vit_tiny"](checkpoint=None).state_dict()
    path = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save(full, path)
    assert build_sam_hq("vit_tiny", path) is not None
    torch.save({k: v for k, v in full.items() if "hf_token" not in k}, path)
    with pytest.raises(SA3DError, match="do not fit HQ-SAM vit_tiny.*--pipeline.sam-hq-variant"):
        build_sam_hq("vit_tiny", path)


def segmenter_config(segmenter: str):
    """The pipeline settings resolve_segmenter_weights reads."""
    from types import SimpleNamespace

    return SimpleNamespace(
        segmenter=segmenter,
        sam2_variant="hiera_t",
        sam2_checkpoint=None,
        sam_hq_variant="vit_tiny",
        sam_hq_checkpoint=None,
    )


@pytest.mark.parametrize(
    "segmenter, module, extra", [("sam2", "sam2", "sam2"), ("sam-hq", "segment_anything_hq", "hq")]
)
def test_missing_segmenter_package_names_the_extra(monkeypatch, segmenter, module, extra):
    from sa3d_ns.segmenters.factory import resolve_segmenter_weights

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    cfg = segmenter_config(segmenter)
    with pytest.raises(SA3DError, match=rf"pip install 'sa3d_ns\[{extra}\]'.*weightfree"):
        resolve_segmenter_weights(cfg)


@pytest.mark.parametrize("segmenter", ["sam2", "sam-hq"])
def test_missing_segmenter_weights_name_the_flag(tmp_path, monkeypatch, segmenter):
    from sa3d_ns.segmenters.factory import resolve_segmenter_weights

    cfg = segmenter_config(segmenter)
    flag = "--pipeline.sam2-checkpoint" if segmenter == "sam2" else "--pipeline.sam-hq-checkpoint"
    monkeypatch.setenv("SA3D_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SA3D_OFFLINE", "1")
    with pytest.raises(SA3DError, match=f"downloads are disabled.*{flag}.*sa3d-weights download"):
        resolve_segmenter_weights(cfg)
    setattr(cfg, "sam2_checkpoint" if segmenter == "sam2" else "sam_hq_checkpoint", tmp_path / "nope.pt")
    with pytest.raises(SA3DError, match=f"checkpoint not found: .*nope.pt.*{flag}"):
        resolve_segmenter_weights(cfg)
    cfg.sam2_variant = cfg.sam_hq_variant = "huge"
    with pytest.raises(SA3DError, match="Unknown .*variant 'huge'"):
        resolve_segmenter_weights(cfg)


# ----------------------------------------------------------------------------- weights and the cache
def fake_hub_cache(root, repo, files: dict[str, bytes], corrupt: str | None = None):
    """Files laid out as huggingface_hub caches them: blobs named by their published hash."""
    base = root / "hf" / ("models--" + repo.replace("/", "--"))
    rev = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    (base / "snapshots" / rev).mkdir(parents=True)
    (base / "blobs").mkdir()
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (base / "blobs" / digest).write_bytes(b"damaged" if name == corrupt else data)
        os.symlink(base / "blobs" / digest, base / "snapshots" / rev / name)
    return base / "snapshots" / rev


def test_weights_cache_verifies_what_the_hub_published(tmp_path, monkeypatch):
    monkeypatch.setenv("SA3D_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SA3D_OFFLINE", "1")
    w = weights.get("sam2.1-hiera_t")
    snap = fake_hub_cache(tmp_path / "cache", w.repo, {w.files[0]: b"weights of sam 2"})
    assert weights.fetch(w.name) == snap / w.files[0]
    assert weights.cached(w.name) == snap / w.files[0]
    # a small file's blob is named by git's SHA-1
    small = tmp_path / "blob"
    small.write_bytes(b"{}")
    named = tmp_path / hashlib.sha1(b"blob 2\0{}").hexdigest()
    small.rename(named)
    assert weights.published_hash_matches(named) is True
    assert weights.published_hash_matches(tmp_path / "cache") is None

    w = weights.get("sam-hq-vit_tiny")
    fake_hub_cache(tmp_path / "cache", w.repo, {w.files[0]: b"hq weights"}, corrupt=w.files[0])
    with pytest.raises(SA3DError, match="is corrupt .*differs from the one the Hub published.*Delete"):
        weights.fetch(w.name)
    with pytest.raises(SA3DError, match="Unknown model weights 'sam-vit_x'"):
        weights.get("sam-vit_x")


def test_sa3d_weights_command(tmp_path):
    w = weights.get("grounding-dino-tiny")
    fake_hub_cache(tmp_path, w.repo, {f: f.encode() for f in w.files})
    env = {**os.environ, "SA3D_CACHE": str(tmp_path), "SA3D_OFFLINE": "1", "COLUMNS": "250"}
    exe = os.path.join(os.path.dirname(sys.executable), "sa3d-weights")
    r = subprocess.run([exe, "list"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "grounding-dino-tiny" in r.stdout and "not downloaded" in r.stdout
    r = subprocess.run([exe, "list", "--json"], env=env, capture_output=True, text=True)
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(weights.WEIGHTS)
    assert "models--IDEA-Research--grounding-dino-tiny" in rows["grounding-dino-tiny"]["cached"]
    assert rows["grounding-dino-tiny"]["bytes"] == sum(len(f) for f in w.files)
    assert rows["sam-vit_h"]["cached"] is None and rows["grounding-dino-base"]["cached"] is None
    r = subprocess.run([exe, "download", "grounding-dino-tiny"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "grounding-dino-tiny" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([exe, "download", "sam-vit_b", "grounding-dino-large"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "Unknown model weights 'grounding-dino-large'" in r.stdout
    r = subprocess.run([exe, "download", "sam-vit_b"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "downloads are disabled" in r.stdout
    assert not list(tmp_path.glob("*.pth*"))  # nothing half-written


def test_a_render_mid_add_has_a_colour_for_every_mask():
    """The viewer's render thread can run while an object is being added: its mask is there, its
    name not yet. The overlay's colours are taken by index, one per mask (it raised IndexError in
    the splat run's headless-Chromium test), and agree with the named objects' colours."""
    from types import SimpleNamespace

    from sa3d_ns.nerf.model import MaskObjects

    model = SimpleNamespace(config=SimpleNamespace(overlay_color=(1.0, 0.0, 0.0), objects=["ball"]))
    model.colors_of = lambda k: MaskObjects.colors_of(model, k)  # pyright: ignore[reportArgumentType]
    named = MaskObjects.object_colors.fget(model)  # pyright: ignore[reportOptionalCall]
    two = MaskObjects.colors_of(model, 2)  # pyright: ignore[reportArgumentType]
    assert named == [(1.0, 0.0, 0.0)] and len(two) == 2 and two[0] == named[0] and two[1] != two[0]


def test_the_samples_in_front_of_each_objects_box():
    """SA3DModel.front_samples: per object, the samples of a ray before it enters the object's box
    (what mask_scores may leave out: a haze between the camera and the object); none for an object
    still unbounded (being segmented), and None when the setting or the boxes are off."""
    from types import SimpleNamespace

    import torch

    from sa3d_ns.nerf.model import SA3DModel

    inf = float("inf")
    bounds = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [[-inf] * 3, [inf] * 3]])
    config = SimpleNamespace(front_visibility=0.1, crop_to_bounds=True)
    model = SimpleNamespace(config=config, object_bounds=bounds)
    xs = torch.tensor([-1.5, -0.5, 0.5, 1.5])
    positions = torch.stack([xs, torch.full_like(xs, 0.5), torch.full_like(xs, 0.5)], -1)[None]  # 1 ray, 4 samples
    front = SA3DModel.front_samples(model, positions, 1, 2)  # pyright: ignore[reportArgumentType]
    assert front is not None and front.shape == (1, 4, 2)
    assert front[0, :, 0].tolist() == [True, True, False, False] and not front[..., 1].any()
    first = SA3DModel.front_samples(model, positions, 1, 1)  # pyright: ignore[reportArgumentType]
    assert first is not None and first.shape == (1, 4, 1)  # (the objects a render has values for)
    config.front_visibility = None
    assert SA3DModel.front_samples(model, positions, 1, 2) is None  # pyright: ignore[reportArgumentType]
    config.front_visibility, config.crop_to_bounds = 0.1, False
    assert SA3DModel.front_samples(model, positions, 1, 2) is None  # pyright: ignore[reportArgumentType]
