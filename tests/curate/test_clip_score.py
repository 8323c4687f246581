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


# --- float8 needs bfloat16 -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("fp8", ["mlp", "all", True])
def test_fp8_with_a_dtype_other_than_bfloat16_is_refused(tiny_clip, dtype, fp8):
    with pytest.raises(ValueError, match=f"needs dtype 'bfloat16'.*got dtype '{dtype}'"):
        ClipScorer(model=tiny_clip, device="cuda", dtype=dtype, fp8=fp8)
    # bfloat16 (what "auto" is on CUDA) is accepted
    assert ClipScorer(model=tiny_clip, device="cuda", dtype="bfloat16", fp8=fp8).fp8 != "off"


def test_auto_fp8_turns_on_only_for_a_bfloat16_model(tiny_clip, monkeypatch):
    """compile="auto" turns the MLPs to float8 after COMPILE_AFTER_FRAMES frames where the
    GPU allows: only for a bfloat16 model (per-row float8 converts bfloat16 weights only), so a
    float32 scorer (``curate calibrate``'s default dtype) never starts converting."""
    import curate.float8

    monkeypatch.setattr(curate.float8, "fp8_unavailable", lambda device, torchao=True: None)
    assert ClipScorer(model=tiny_clip, device="cuda", dtype="bfloat16")._auto_fp8()
    for dtype in ("float32", "float16"):
        s = ClipScorer(model=tiny_clip, device="cuda", dtype=dtype)
        assert s.fp8 == "auto" and not s._fp8_available() and not s._auto_fp8()
    assert not ClipScorer(model=tiny_clip, device="cuda", fp8="off")._auto_fp8()
    monkeypatch.setattr(curate.float8, "fp8_unavailable", lambda device, torchao=True: "no")
    assert not ClipScorer(model=tiny_clip, device="cuda", dtype="bfloat16")._auto_fp8()


def test_a_failed_float8_conversion_names_the_model_and_is_not_retried(
    tiny_clip, tmp_path, monkeypatch
):
    import curate.compile_cache
    import curate.float8

    calls = []

    def broken(module, filter_fn=None):
        calls.append(module)
        raise AssertionError("PerRow quantization only works for bfloat16 precision input weight")

    monkeypatch.setattr(curate.float8, "fp8_unavailable", lambda device, torchao=True: None)
    monkeypatch.setattr(curate.float8, "linears_to_fp8", broken)
    monkeypatch.setattr(curate.compile_cache, "use_compile_cache", lambda: tmp_path)
    with ClipScorer(model=tiny_clip, compile="on") as s:
        s.device, s.dtype = "cuda", "bfloat16"  # as a CUDA scorer reaches _maybe_compile
        for _ in range(2):
            with pytest.raises(ModelFolderError, match="float8.*AssertionError") as err:
                s._maybe_compile()
            assert err.value.uri == str(tiny_clip) and err.value.stage == "load-model"
        assert len(calls) == 1 and s._image_fn is None and s.fp8_active == "off"


def test_fp8_unavailable_says_why_on_a_torch_without_cuda(monkeypatch):
    import torch

    from curate.float8 import fp8_unavailable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
        assert "CUDA GPU" in fp8_unavailable(device)


# --- one scorer, several threads -------------------------------------------------------------


def test_text_cache_survives_another_thread_evicting_it(tiny_clip, monkeypatch):
    """A thread that found some texts cached runs the model on the others; meanwhile another
    thread fills the cache and evicts them: the first still returns their embeddings."""
    import threading

    with ClipScorer(model=tiny_clip, text_cache_size=2) as s:
        want = s.embed_texts(["a red circle", "a green star"])
        s.embed_texts(["a red circle"])  # cached: "a green star", "a red circle"
        entered, release = threading.Event(), threading.Event()
        forward = s._model.get_text_features

        def slow_forward(*args, **kwargs):
            if threading.current_thread().name == "slow":
                entered.set()
                assert release.wait(30)
            return forward(*args, **kwargs)

        monkeypatch.setattr(s._model, "get_text_features", slow_forward)
        got: dict[str, object] = {}

        def slow() -> None:
            try:
                got["out"] = s.embed_texts(["a red circle", "a green star", "a blue square"])
            except Exception as exc:  # reported below
                got["out"] = exc

        thread = threading.Thread(target=slow, name="slow")
        thread.start()
        assert entered.wait(30)  # "a red circle" and "a green star" were found in the cache
        s.embed_texts(["spins", "moves left"])  # evicts both
        assert "a red circle" not in s._text_cache
        release.set()
        thread.join(30)
    out = got["out"]
    assert isinstance(out, np.ndarray), out
    np.testing.assert_allclose(out[:2], want, atol=1e-6)


def test_a_scorer_pickles_without_its_locks(tiny_clip):
    import pickle

    s = pickle.loads(pickle.dumps(ClipScorer(model=tiny_clip, text_cache_size=2)))
    with s:
        assert s.embed_texts(["a red circle"]).shape == (1, s.embedding_dim)


# --- damaged model folders -------------------------------------------------------------------


def _damaged(tiny_clip: Path, tmp_path: Path, name: str, text: str | bytes) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_clip, folder)
    data = text.encode() if isinstance(text, str) else text
    (folder / name).write_bytes(data)
    return folder


def _preprocessor(tiny_clip: Path, **changes) -> str:
    import json

    cfg = json.loads((tiny_clip / "preprocessor_config.json").read_text())
    return json.dumps({**cfg, **changes})


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("model.safetensors", "half", "model.safetensors: tensor .* lies outside"),
        ("model.safetensors", "hello world, not weights at all", "not a safetensors file"),
        ("tokenizer.json", "{}", "cannot load CLIP model: KeyError"),
        ("preprocessor_config.json", "[]", "preprocessor_config.json is not a JSON object"),
        ("preprocessor_config.json", {"size": {"longest_edge": 32}}, "size must be"),
        ("preprocessor_config.json", {"crop_size": "abc"}, "crop_size must be .* got 'abc'"),
        ("preprocessor_config.json", {"image_std": [0.5, 0.5]}, "image_std must be three"),
        ("scoring.json", b"\xff\xfe\x00garbage", "scoring.json is not readable JSON"),
        ("scoring.json", '{"storyboard": {"grid": [0, 2]}}', "storyboard grid .* got \\[0, 2\\]"),
        ("scoring.json", '{"storyboard": {"grid": [2]}}', "storyboard grid must be"),
        ("scoring.json", '{"storyboard": "yes"}', "storyboard must be true, false or"),
    ],
)
def test_a_damaged_folder_is_a_model_folder_error_naming_it(
    tiny_clip, tmp_path, name, content, match
):
    if content == "half":
        data = (tiny_clip / name).read_bytes()
        content = data[: len(data) // 2]
    elif isinstance(content, dict):
        content = _preprocessor(tiny_clip, **content)
    folder = _damaged(tiny_clip, tmp_path, name, content)
    s = ClipScorer(model=folder)
    with pytest.raises(ModelFolderError, match=match) as err:
        s.setup()
    assert err.value.uri == str(folder) and err.value.stage == "load-model"
    assert str(folder) in str(err.value)
    assert s._model is None  # nothing half set up: a later setup() starts over


def test_calibrate_names_a_truncated_model_instead_of_a_traceback(tiny_clip, tmp_path, capsys):
    from pipelines.cli import main

    data = (tiny_clip / "model.safetensors").read_bytes()
    folder = _damaged(tiny_clip, tmp_path, "model.safetensors", data[: len(data) // 2])
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    assert main(["calibrate", str(manifest), "--model", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: load-model: {folder}: model.safetensors" in err


def test_a_mistyped_local_folder_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from curate.models import check_captioner_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for typo in ("models/shapes-clipp", "./shapes-clip", "../shapes-clip", "models/a/b"):
        with pytest.raises(ModelFolderError, match="model folder does not exist"):
            resolve_model(typo)
        with pytest.raises(ModelFolderError, match="captioner folder does not exist"):
            check_captioner_folder(typo)
    # an org/name whose org is no folder here is still a hub id
    assert resolve_model("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    assert check_captioner_folder("Salesforce/blip-image-captioning-base") is None


# --- storyboard settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "forced", "grid"),
    [
        ("false", None, None),
        ("false", True, (2, 2)),
        ("true", None, (2, 2)),
        ('{"grid": [1, 3]}', None, (1, 3)),
        ('{"grid": [1, 3]}', False, None),
        ("null", None, None),
    ],
)
def test_storyboard_setting_of_scoring_json(tiny_clip, tmp_path, declared, forced, grid):
    folder = _damaged(tiny_clip, tmp_path, "scoring.json", f'{{"storyboard": {declared}}}')
    with ClipScorer(model=folder, storyboard=forced) as s:
        assert s.storyboard_grid == grid


# --- teardown ----------------------------------------------------------------------------------


def test_teardown_drops_the_compiled_tower(tiny_clip, tmp_path, frames):
    """A compiled tower is bound to its model: after teardown() and setup() on another folder
    the scorer runs the new model, and starts counting frames (and float8) afresh."""
    other = make_tiny_clip(tmp_path / "other", texts=WORDS, seed=1)
    with ClipScorer(model=other, batch_size=4) as fresh:
        want = fresh.embed_images(frames)
    s = ClipScorer(model=tiny_clip, batch_size=4, compile="on")
    s.setup()
    s._image_fn = s._model.get_image_features  # what compiling leaves (bound to this model)
    s.frames_embedded, s.fp8_active = 60_000, "mlp"
    s.teardown()
    assert (s._image_fn, s.frames_embedded, s.fp8_active) == (None, 0, "off")
    s.model_path = str(other)
    with s:
        np.testing.assert_allclose(s.embed_images(frames), want, atol=1e-6)


# --- preprocessing as the HF processor does it --------------------------------------------------


def test_a_too_small_frame_is_padded_as_the_hf_processor_pads_it(tiny_clip, tmp_path):
    """Odd padding: CLIPImageProcessor puts the extra pixel on the top and the left."""
    from transformers import CLIPImageProcessorPil

    folder = _damaged(
        tiny_clip, tmp_path, "preprocessor_config.json", _preprocessor(tiny_clip, do_resize=False)
    )
    hf = CLIPImageProcessorPil.from_pretrained(folder)
    rng = np.random.default_rng(0)
    with ClipScorer(model=folder) as s:
        for h, w in ((29, 31), (30, 27), (29, 40), (40, 29)):
            img = rng.integers(0, 256, (1, h, w, 3), np.uint8)
            ref = hf(list(img), return_tensors="pt", input_data_format="channels_last")
            ours = s.preprocess(img).numpy()
            np.testing.assert_allclose(ours, ref["pixel_values"].numpy(), atol=1e-5)


@pytest.mark.parametrize(("h", "w"), [(90, 120), (120, 90), (48, 64), (33, 47), (3, 200)])
def test_shortest_edge_resize_sizes_the_long_side_as_hf_does(scorer, monkeypatch, h, w):
    """The long side is truncated (90x120 to shortest edge 32: 32x42, not 32x43), and the
    frame sampler decodes at the same size."""
    import torch.nn.functional as F
    from transformers.image_transforms import get_resize_output_image_size

    from curate.sampling import FrameSampler

    img = np.zeros((h, w, 3), np.uint8)
    want = get_resize_output_image_size(
        img, scorer.sample_size, default_to_square=False, input_data_format="channels_last"
    )
    sizes = []
    interpolate = F.interpolate

    def spy(x, size=None, **kwargs):
        sizes.append(tuple(size))
        return interpolate(x, size=size, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    scorer.preprocess(img[None])
    assert sizes == [tuple(want)]
    sampler = FrameSampler(size=scorer.sample_size)
    assert sampler._target_size({"width": w, "height": h}) == (want[1], want[0])


# --- records and frames ---------------------------------------------------------------------------


def test_process_all_goes_on_past_a_record_without_frames(scorer):
    rng = np.random.default_rng(1)

    def rec(i, n):
        frames = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) if n else None
        return {"clip_id": f"c{i}", "frames": frames, "source_caption": "a red circle"}

    rows = [rec(0, 2), rec(1, 0), rec(2, 2), rec(3, 9), rec(4, 1)]
    got = []
    with pytest.raises(ValueError, match="clip 'c1' has no sampled frames") as err:
        for row in scorer.process_all(rows):
            got.append(row)
    assert [r["clip_id"] for r in got] == ["c0", "c2", "c3", "c4"]
    for row in got:
        single = next(iter(scorer.process(rows[int(row["clip_id"][1:])])))
        assert row["caption_score"] == pytest.approx(single["caption_score"], abs=1e-5)
    # several: the first is raised, the others are noted on it
    with pytest.raises(ValueError, match="'c1'") as err:
        list(scorer.process_all([rec(0, 2), rec(1, 0), {**rec(5, 0), "clip_id": "c5"}]))
    assert "'c5'" in "".join(err.value.__notes__)


def test_frame_arrays_are_checked_before_they_are_split(scorer, frames):
    assert scorer.embed_images([]).shape == (0, scorer.embedding_dim)
    assert scorer.embed_images(np.array([])).shape == (0, scorer.embedding_dim)
    with pytest.raises(ValueError, match=r"got shape \(40, 56, 3\).*frames\[None\]"):
        scorer.embed_images(frames[0])
    with pytest.raises(ValueError, match="scene 1's frames must be uint8.*float32"):
        scorer.scene_embeddings([frames, frames.astype(np.float32) / 255])
    with pytest.raises(ValueError, match="scene 0 has no frames"):
        scorer.scene_embeddings([frames[:0]])
    assert scorer.scene_embeddings([frames[:1], frames]).shape == (2, scorer.embedding_dim)
