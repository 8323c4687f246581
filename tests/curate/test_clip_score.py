"""CLIP scoring through the real transformers classes, with a tiny random CLIP folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from curate.clip_score import ClipScorer
from curate.errors import ModelFolderError
from curate.models import DEFAULT_MODEL, check_model_folder, resolve_model
from curate.training.clip import make_tiny_clip

WORDS = ["a red circle moves left over a blue background", "then a green square spins"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", texts=WORDS)


@pytest.fixture(scope="module")
def scorer(tiny_clip):
    with ClipScorer(model=tiny_clip, batch_size=4) as s:
        yield s


@pytest.fixture
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (7, 40, 56, 3), dtype=np.uint8)


def test_default_model_is_the_repository_folder():
    assert Path(__file__).resolve().parents[2] / "models" / "shapes-clip" == DEFAULT_MODEL


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist") as err:
        ClipScorer(model=tmp_path / "nope").setup()
    assert err.value.uri == str(tmp_path / "nope") and err.value.stage == "load-model"


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("config.json", "config.json"),
        ("model.safetensors", "model.safetensors"),
        ("tokenizer.json", "tokenizer.json"),
        ("preprocessor_config.json", "preprocessor_config.json"),
    ],
)
def test_incomplete_folder_names_the_missing_file(tiny_clip, tmp_path, remove, named):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_clip, broken)
    (broken / remove).unlink()
    with pytest.raises(ModelFolderError) as err:
        ClipScorer(model=broken).setup()
    assert named in str(err.value) and str(broken) in str(err.value)


def test_non_clip_config_is_rejected(tiny_clip, tmp_path):
    broken = tmp_path / "other"
    shutil.copytree(tiny_clip, broken)
    (broken / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelFolderError, match="not a CLIP config"):
        check_model_folder(broken)


def test_weights_that_cannot_be_loaded_are_named_before_loading(tiny_clip, tmp_path):
    from curate.models import DEFAULT_CAPTIONER, check_captioner_folder, check_clip_model

    assert check_clip_model(tiny_clip) == str(tiny_clip)
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_clip, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFolderError, match="model.safetensors: tensor .* lies outside"):
        check_clip_model(truncated)
    (truncated / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFolderError, match="not a safetensors file"):
        check_clip_model(truncated)
    # a captioner folder of another class
    other = tmp_path / "other"
    shutil.copytree(DEFAULT_CAPTIONER, other)
    config = (other / "config.json").read_text().replace('"blip"', '"vit"')
    (other / "config.json").write_text(config)
    with pytest.raises(ModelFolderError, match="model_type 'vit'; a BLIP-class captioner"):
        check_captioner_folder(other)


def test_hub_ids_pass_through_and_paths_are_checked(tiny_clip):
    assert resolve_model("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    assert resolve_model(tiny_clip) == str(tiny_clip)
    with pytest.raises(ModelFolderError):
        resolve_model("./models/missing")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": "float16"},
        {"dtype": "int8"},
        {"device": "tpu"},
        {"batch_size": 0},
        {"aggregate": "sum"},
        {"caption_mode": "all"},
        {"text_cache_size": -1},
    ],
)
def test_settings_are_validated(kwargs):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=repr(value)):
        ClipScorer(**kwargs)


def test_use_before_setup_is_an_error(tiny_clip, frames):
    with pytest.raises(RuntimeError, match="setup"):
        ClipScorer(model=tiny_clip).embed_images(frames)


def test_image_embeddings_are_unit_norm_and_batch_invariant(tiny_clip, scorer, frames):
    emb = scorer.embed_images(frames)
    assert emb.shape == (7, scorer.embedding_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with ClipScorer(model=tiny_clip, batch_size=64) as big:
        np.testing.assert_allclose(big.embed_images(frames), emb, atol=1e-5)
    assert scorer.embed_images(frames[:0]).shape == (0, scorer.embedding_dim)
    # different frames give different embeddings
    assert not np.allclose(emb[0], emb[1])


def test_bad_frame_arrays_are_rejected(scorer, frames):
    with pytest.raises(ValueError, match="uint8"):
        scorer.embed_images(frames.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        scorer.embed_images(frames[..., 0])


def test_preprocessing_matches_the_hf_image_processor(tiny_clip, scorer):
    from transformers import CLIPImageProcessorPil

    hf = CLIPImageProcessorPil.from_pretrained(tiny_clip)
    yy, xx = np.mgrid[0:32, 0:32]
    native = np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).clip(0, 255).astype(np.uint8)[None]
    ref = hf(list(native), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(scorer.preprocess(native).numpy(), ref.numpy(), atol=1e-5)
    # resized + cropped: bicubic implementations differ slightly between PIL and torch
    yy, xx = np.mgrid[0:90, 0:120]
    big = np.stack([xx * 2, yy * 2, xx + yy], -1).clip(0, 255).astype(np.uint8)[None]
    ref = hf(list(big), return_tensors="pt")["pixel_values"].numpy()
    ours = scorer.preprocess(big).numpy()
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    assert np.abs(ours - ref).mean() < 0.05


def test_text_embeddings_cache_is_lru(tiny_clip):
    with ClipScorer(model=tiny_clip, text_cache_size=2) as s:
        first = s.embed_texts(["a red circle", "a blue square", "a red circle"])
        assert first.shape == (3, s.embedding_dim)
        np.testing.assert_allclose(first[0], first[2])
        np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
        assert (s.cache_misses, s.cache_hits) == (2, 1)
        s.embed_texts(["a green star"])  # evicts "a red circle"
        s.embed_texts(["a blue square"])
        assert (s.cache_misses, s.cache_hits) == (3, 2)
        again = s.embed_texts(["a red circle"])
        assert s.cache_misses == 4
        np.testing.assert_allclose(again[0], first[0], atol=1e-6)


def test_caption_score_is_the_aggregated_cosine(tiny_clip, frames):
    caption = "a red circle moves left"
    for how, fn in (("mean", np.mean), ("min", np.min), ("max", np.max)):
        with ClipScorer(model=tiny_clip, aggregate=how, caption_mode="whole") as s:
            row = s.score_record({"clip_id": "c1", "frames": frames, "source_caption": caption})
            expected = s.embed_images(frames) @ s.embed_texts([caption])[0]
            np.testing.assert_allclose(row["frame_scores"], expected, atol=1e-5)
            assert row["caption_score"] == pytest.approx(float(fn(expected)), abs=1e-5)
            emb = np.asarray(row["embedding"])
            assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)


def test_best_fragment_scores_at_least_the_whole_caption(tiny_clip, frames):
    caption = "a red circle moves left, then a green square spins; after that a blue star"
    rec = {"clip_id": "c", "frames": frames, "source_caption": caption}
    with ClipScorer(model=tiny_clip, caption_mode="whole") as s:
        whole = s.score_record(rec)["caption_score"]
    with ClipScorer(model=tiny_clip) as s:
        row = s.score_record(rec)
    assert row["caption_score"] >= whole - 1e-6
    assert row["fragment"] in (
        caption,
        "a red circle moves left",
        "a green square spins",
        "a blue star",
    )


def test_long_caption_is_truncated_with_a_note(scorer, frames):
    caption = "a red circle moves left " * 420  # ~10000 characters
    assert len(caption) > 10000 - 100
    row = scorer.score_record({"clip_id": "c", "frames": frames, "source_caption": caption})
    assert isinstance(row["caption_score"], float)
    assert "truncated" in row["caption_note"] and "77 tokens" in row["caption_note"]


def test_other_script_is_scored(scorer, frames):
    row = scorer.score_record(
        {"clip_id": "c", "frames": frames, "source_caption": "赤い円が左に動く"}
    )
    assert isinstance(row["caption_score"], float) and -1.0 <= row["caption_score"] <= 1.0


@pytest.mark.parametrize("caption", ["", "   ", None, b"\xff\xfe"])
def test_unusable_captions_get_embedding_but_no_score(scorer, frames, caption):
    row = scorer.score_record(
        {"clip_id": "c", "frames": frames, "source_caption": caption, "status": "kept"}
    )
    assert row["caption_score"] is None and row["frame_scores"] is None
    assert len(row["embedding"]) == scorer.embedding_dim


def test_record_without_frames_is_an_error(scorer):
    with pytest.raises(ValueError, match="'c9'"):
        scorer.score_record({"clip_id": "c9", "frames": np.zeros((0, 8, 8, 3), np.uint8)})


def test_process_all_batches_across_records(scorer):
    rng = np.random.default_rng(1)
    rows = [
        {
            "clip_id": f"c{i}",
            "frames": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "source_caption": "a red circle",
        }
        for i, n in enumerate([1, 3, 2, 5])
    ]
    batched = list(scorer.process_all(rows))
    single = [next(iter(scorer.process(r))) for r in rows]
    assert [r["clip_id"] for r in batched] == ["c0", "c1", "c2", "c3"]
    for a, b in zip(batched, single):
        assert a["caption_score"] == pytest.approx(b["caption_score"], abs=1e-5)
        assert len(a["frame_scores"]) == len(b["frame_scores"])


def test_speed_settings_resolve_per_device(tiny_clip):
    s = ClipScorer(model=tiny_clip)
    assert (s.dtype, s.batch_size, s.compile) == ("float32", 64, "auto")
    assert ClipScorer(model=tiny_clip, device="cuda").dtype == "bfloat16"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        ClipScorer(model=tiny_clip, dtype="bfloat16")
    with pytest.raises(ValueError, match="fp8 needs a CUDA device"):
        ClipScorer(model=tiny_clip, fp8=True)
    with pytest.raises(ValueError, match="fp8 needs a CUDA device"):
        ClipScorer(model=tiny_clip, fp8="mlp")
    with pytest.raises(ValueError, match="fp8 must be one of"):
        ClipScorer(model=tiny_clip, device="cuda", fp8="half")
    # the default: float8 MLPs on CUDA once compiled, nothing on the CPU
    assert (s.fp8, s.fp8_active) == ("auto", "off")
    assert ClipScorer(model=tiny_clip, device="cuda", fp8=False).fp8 == "off"
    assert ClipScorer(model=tiny_clip, device="cuda", fp8="mlp").fp8_active == "mlp"
    with pytest.raises(ValueError, match="compile"):
        ClipScorer(model=tiny_clip, compile="always")


def test_compile_on_the_cpu_stays_eager_and_embeddings_match(tiny_clip, frames):
    """compile is a CUDA speed-up: asked for on the CPU it changes nothing."""
    with ClipScorer(model=tiny_clip, batch_size=4) as plain:
        want = plain.embed_images(frames)
    with ClipScorer(model=tiny_clip, batch_size=4, compile="on") as s:
        got = s.embed_images(frames)
        assert s._image_fn is None and s.frames_embedded == len(frames)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_compiled_and_fp8_image_towers_hold_the_embeddings_on_cuda(
    tiny_clip, tmp_path, monkeypatch
):
    """Compiled (static shapes, a padded last batch) and float8 towers against eager bf16:
    cosine >= 0.999 per frame (fp8 needs compute capability 8.9 and torchao)."""
    import torch

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    x = np.random.default_rng(1).integers(0, 256, (13, 40, 56, 3), dtype=np.uint8)
    with ClipScorer(model=tiny_clip, device="cuda", batch_size=8, compile="off") as s:
        want = s.embed_images(x)
    with ClipScorer(model=tiny_clip, device="cuda", batch_size=8, compile="on", fp8="off") as s:
        got = s.embed_images(x)
        assert s._image_fn is not None and s.fp8_active == "off"
    assert (got * want).sum(axis=1).min() >= 0.999
    if torch.cuda.get_device_capability() >= (8, 9):
        pytest.importorskip("torchao")
        with ClipScorer(model=tiny_clip, device="cuda", batch_size=8, fp8=True) as s:
            fp8 = s.embed_images(x)
        assert (fp8 * want).sum(axis=1).min() >= 0.99
        # the default: the MLPs turn float8 when the tower is compiled
        with ClipScorer(model=tiny_clip, device="cuda", batch_size=8, compile="on") as s:
            mlp = s.embed_images(x)
            assert s.fp8_active == "mlp"
        assert (mlp * want).sum(axis=1).min() >= 0.99
