"""Re-captioning: fragment splitting, monotonic alignment, prompt bank, captioner, stories."""

from __future__ import annotations

import numpy as np
import pytest

from curate.captioner import Captioner
from curate.dedup import apply_duplicates
from curate.errors import ModelFolderError
from curate.recaption import Recaptioner, align_monotonic, with_clip_status
from schemas.stories import validate_story_row

# --- splitting ------------------------------------------------------------------------------


# --- alignment ------------------------------------------------------------------------------


def brute_force(sims):
    import itertools

    n_s, n_f = sims.shape
    best, arg = -np.inf, None
    for a in itertools.product(range(n_f), repeat=n_s):
        if all(x <= y for x, y in zip(a, a[1:])):
            total = sum(sims[s, f] for s, f in enumerate(a))
            if total > best:
                best, arg = total, list(a)
    return best, arg


@pytest.mark.parametrize("seed", range(12))
def test_alignment_is_optimal_and_monotonic(seed):
    rng = np.random.default_rng(seed)
    sims = rng.uniform(-1, 1, (int(rng.integers(1, 6)), int(rng.integers(1, 5))))
    got = align_monotonic(sims)
    assert all(x <= y for x, y in zip(got, got[1:]))
    best, _ = brute_force(sims)
    assert sum(sims[s, f] for s, f in enumerate(got)) == pytest.approx(best)


def test_alignment_respects_order_over_greedy():
    # scene 1 alone prefers fragment 0, but order forces it onto fragment 1 or later
    sims = np.array([[0.1, 0.9, 0.0], [0.8, 0.0, 0.7]])
    assert align_monotonic(sims) == [1, 2]


# --- the step, with a stub scorer whose embeddings are known ----------------------------------

AXES = {"red circle": 0, "blue square": 1, "green star": 2, "white ring": 3}


class StubScorer:
    """Texts embed on the axis of the shape they name; unknown texts on the last axis."""

    stage = "clip-score"
    embedding_dim = 5

    def setup(self):
        pass

    def teardown(self):
        pass

    def truncate_caption(self, text):
        return text, False

    def embed_texts(self, texts):
        out = np.zeros((len(texts), 5), np.float32)
        for i, t in enumerate(texts):
            hit = [a for k, a in AXES.items() if k in t]
            out[i, hit[0] if hit else 4] = 1.0
        return out


def scene(i, what, start, end, *, caption, status="kept", reason=None, frames=None):
    emb = np.zeros(5, np.float32)
    emb[AXES[what]] = 1.0
    return {
        "clip_id": f"v:{i:04d}",
        "video_id": "v",
        "scene_index": i,
        "uri": "v.mp4",
        "start_frame": start,
        "end_frame": end,
        "fps": 25.0,
        "source_caption": caption,
        "status": status,
        "reason": reason,
        "embedding": emb.tolist(),
        "frames": frames,
    }


def test_fragments_align_to_scenes_and_merge():
    cap = "a red circle, then a blue square; a green star"
    clips = [
        scene(0, "red circle", 0, 50, caption=cap),
        scene(1, "blue square", 50, 80, caption=cap),
        scene(2, "blue square", 80, 120, caption=cap),
        scene(3, "green star", 120, 200, caption=cap),
    ]
    with Recaptioner(scorer=StubScorer()) as step:
        out = next(iter(step.process(clips)))
    rows, story = out["clips"], out["story"]
    assert [r["recaption"] for r in rows] == [
        "a red circle",
        "a blue square",
        "a blue square",
        "a green star",
    ]
    assert {r["recaption_source"] for r in rows} == {"source_fragment"}
    assert [(s["start_frame"], s["end_frame"], s["prompt"]) for s in story["segments"]] == [
        (0, 50, "a red circle"),
        (50, 120, "a blue square"),
        (120, 200, "a green star"),
    ]
    assert story["segments"][1]["clip_id"] == "v:0001"
    assert story["segments"][1]["start_s"] == 2.0 and story["segments"][1]["end_s"] == 4.8
    assert (story["story_id"], story["num_frames"], story["duration_s"]) == ("v", 200, 8.0)
    validate_story_row(story)


def test_dropped_caption_scenes_use_the_prompt_bank():
    cap = "a red circle"
    clips = [
        scene(0, "red circle", 0, 40, caption=cap),
        scene(1, "white ring", 40, 90, caption=cap, status="dropped", reason="low_caption_score"),
    ]
    bank = ["a green star on black", "a white ring on beige", "stock footage"]
    with Recaptioner(scorer=StubScorer(), prompt_bank=bank) as step:
        rows, story = step.recaption_video(clips)
    assert (rows[0]["recaption"], rows[0]["recaption_source"]) == ("a red circle", "source")
    assert (rows[1]["recaption"], rows[1]["recaption_source"]) == (
        "a white ring on beige",
        "prompt_bank",
    )
    assert rows[1]["recaption_score"] == pytest.approx(1.0)
    assert len(story["segments"]) == 2


def test_noise_caption_video_is_recaptioned_from_the_bank_only():
    clips = [
        scene(
            i,
            w,
            30 * i,
            30 * i + 30,
            caption="Stock footage 4K",
            status="dropped",
            reason="low_caption_score",
        )
        for i, w in enumerate(["blue square", "green star"])
    ]
    with Recaptioner(scorer=StubScorer(), prompt_bank=["a blue square", "a green star"]) as step:
        rows, story = step.recaption_video(clips)
    assert [r["recaption"] for r in rows] == ["a blue square", "a green star"]
    assert all(r["recaption_source"] == "prompt_bank" for r in rows)


def test_empty_caption_without_bank_leaves_gaps_not_bad_stories():
    clips = [scene(0, "red circle", 0, 40, caption=None, status="dropped", reason="empty_caption")]
    with Recaptioner(scorer=StubScorer()) as step:
        rows, story = step.recaption_video(clips)
    assert rows[0]["recaption"] is None and story["segments"] == []


def test_align_threshold_and_min_score():
    cap = "a red circle"
    clips = [
        scene(0, "red circle", 0, 40, caption=cap),
        scene(1, "green star", 40, 80, caption=cap),
    ]
    with Recaptioner(
        scorer=StubScorer(), align_threshold=0.5, prompt_bank=["a white ring"], min_score=0.5
    ) as step:
        rows, _ = step.recaption_video(clips)
    assert rows[0]["recaption"] == "a red circle"
    # scene 1: the fragment does not fit (0 < 0.5) and the bank's best scores 0 < min_score
    assert rows[1]["recaption"] is None


def test_duplicate_or_short_clips_keep_their_fragment():
    cap = "a red circle, then a green star"
    clips = [
        scene(0, "red circle", 0, 40, caption=cap, status="dropped", reason="duplicate"),
        scene(1, "green star", 40, 45, caption=cap, status="dropped", reason="too_short"),
    ]
    with Recaptioner(scorer=StubScorer()) as step:
        rows, _ = step.recaption_video(clips)
    assert [r["recaption"] for r in rows] == ["a red circle", "a green star"]


def test_segments_carry_their_clips_status_and_never_mix_two():
    cap = "a red circle, then a blue square"
    clips = [
        scene(0, "red circle", 0, 40, caption=cap),
        scene(1, "blue square", 40, 80, caption=cap),
        scene(2, "blue square", 80, 90, caption=cap, status="dropped", reason="too_short"),
        scene(3, "blue square", 90, 130, caption=cap),
        scene(4, "white ring", 130, 170, caption=cap, status="dropped", reason="low_caption_score"),
    ]
    with Recaptioner(scorer=StubScorer(), prompt_bank=["a white ring"]) as step:
        rows, story = step.recaption_video(clips)
    got = [
        (s["start_frame"], s["end_frame"], s["status"], s["reason"], s["prompt_source"])
        for s in story["segments"]
    ]
    # the short scene splits the blue square's segment instead of hiding inside a kept one
    assert got == [
        (0, 40, "kept", None, "source_fragment"),
        (40, 80, "kept", None, "source_fragment"),
        (80, 90, "dropped", "too_short", "source_fragment"),
        (90, 130, "kept", None, "source_fragment"),
        (130, 170, "dropped", "low_caption_score", "prompt_bank"),
    ]
    validate_story_row(story)

    # dedup, later, drops one scene of a merged segment: the segment splits there
    same = [scene(i, "red circle", 20 * i, 20 * i + 20, caption="a red circle") for i in range(3)]
    with Recaptioner(scorer=StubScorer()) as step:
        rows, merged = step.recaption_video(same)
    assert len(merged["segments"]) == 1 and merged["segments"][0]["status"] == "kept"
    final = apply_duplicates(rows, {"v:0002": "w:0000"})
    split = with_clip_status(merged, final)
    assert [
        (s["start_frame"], s["end_frame"], s["status"], s["reason"], s["clip_id"])
        for s in split["segments"]
    ] == [(0, 40, "kept", None, "v:0000"), (40, 60, "dropped", "duplicate", "v:0002")]
    validate_story_row(split)


def test_bad_inputs():
    with Recaptioner(scorer=StubScorer()) as step:
        with pytest.raises(ValueError, match="at least one"):
            step.recaption_video([])
        with pytest.raises(ValueError, match="no embedding"):
            step.recaption_video([{**scene(0, "red circle", 0, 9, caption="x"), "embedding": None}])
        a = scene(0, "red circle", 0, 9, caption="x")
        with pytest.raises(ValueError, match="one video"):
            step.recaption_video([a, {**a, "video_id": "w"}])
    with pytest.raises(ValueError, match="'nope'"):
        Recaptioner(fallback="nope")
    with pytest.raises(ValueError, match="captioner"):
        Recaptioner(fallback="captioner")
    with pytest.raises(ValueError, match="1.5"):
        Recaptioner(align_threshold=1.5)


# --- the real classes at toy size ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("blip")
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[DEC]",
        "a",
        "red",
        "circle",
        "blue",
        "square",
        "on",
        "background",
        "green",
        "star",
    ]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(
        vocab={w: i for i, w in enumerate(vocab)}, bos_token="[DEC]", model_max_length=32
    )
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=32,
            max_position_embeddings=32,
            bos_token_id=5,
            sep_token_id=3,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(cfg).eval().save_pretrained(folder)
    BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok
    ).save_pretrained(folder)
    return folder


def test_blip_captioner_code_path(tiny_blip):
    cap = Captioner(tiny_blip, max_new_tokens=6)
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    texts = cap.caption(frames)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    vocab = set((tiny_blip / "vocab.txt").read_text().split())
    assert all(set(t.split()) <= vocab for t in texts)  # random weights: words, but no meaning


def test_single_frame_captioner_takes_scenes_of_different_sizes(tiny_blip):
    """A captioner without captioning.json captions each scene's middle frame: a batch mixing
    videos of different resolutions is captioned as each scene would be alone."""
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (3, 32, 56, 3), dtype=np.uint8)
    narrow = rng.integers(0, 256, (3, 32, 42, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (2, 32, 56, 3), dtype=np.uint8)
    cap = Captioner(tiny_blip, max_new_tokens=4)
    alone = [cap.caption_scenes([s])[0] for s in (wide, narrow, other)]
    assert cap.storyboard_grid is None
    assert cap.caption_scenes([wide, narrow, other]) == alone


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"size": {"shortest_edge": 32}}, "size must be .*'shortest_edge': 32"),
        ({"image_mean": [0.5, 0.5]}, "image_mean must be three numbers"),
        ("[]", "cannot load captioner: AttributeError"),
    ],
)
def test_damaged_blip_folder_is_a_model_folder_error_naming_it(tiny_blip, tmp_path, change, match):
    import json
    import shutil

    broken = tmp_path / "blip"
    shutil.copytree(tiny_blip, broken)
    config = broken / "processor_config.json"
    if isinstance(change, str):
        config.write_text(change)
    else:
        data = json.loads(config.read_text())
        data["image_processor"].update(change)
        config.write_text(json.dumps(data))
    cap = Captioner(broken)
    with pytest.raises(ModelFolderError, match=match) as err:
        cap.setup()
    assert err.value.uri == str(broken) and err.value.stage == "load-model"
    assert cap._model is None


def test_captioner_on_cuda_without_cuda_is_a_model_folder_error(tiny_blip, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelFolderError, match="no CUDA device") as err:
        Captioner(tiny_blip, device="cuda").setup()
    assert err.value.uri == str(tiny_blip)


def test_incomplete_blip_folder_names_the_file(tiny_blip, tmp_path):
    import shutil

    broken = tmp_path / "blip"
    shutil.copytree(tiny_blip, broken)
    (broken / "processor_config.json").unlink()
    with pytest.raises(ModelFolderError, match="processor_config.json"):
        Captioner(broken).setup()
    with pytest.raises(ModelFolderError, match="does not exist"):
        Captioner(tmp_path / "none" / "x" / "y").setup()


def test_recaptioner_with_real_clip_and_blip(tiny_blip, tmp_path):
    from curate.training.clip import make_tiny_clip

    clip = make_tiny_clip(tmp_path / "clip", texts=["a red circle", "a blue square"])
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    clips = [
        scene(
            0,
            "red circle",
            0,
            30,
            caption="a red circle",
            status="dropped",
            reason="low_caption_score",
            frames=frames,
        ),
        scene(
            1,
            "blue square",
            30,
            60,
            caption="a red circle",
            status="dropped",
            reason="low_caption_score",
            frames=frames,
        ),
    ]
    from curate.clip_score import ClipScorer

    with ClipScorer(model=clip) as scorer:
        for c in clips:
            c["embedding"] = scorer.embed_images(frames).mean(0).tolist()
        with Recaptioner(
            scorer=scorer,
            captioner=tiny_blip,
            fallback="best",
            prompt_bank=["a green star", "a blue square"],
        ) as step:
            rows, story = step.recaption_video(clips)
    for r in rows:
        assert r["recaption_source"] in ("prompt_bank", "captioner")
        assert isinstance(r["recaption"], str) and r["recaption"]
        assert -1 <= r["recaption_score"] <= 1
    validate_story_row(story)


def test_committed_record_entry_merges_extras_and_loads_the_model_once(tmp_path, monkeypatch):
    import transformers

    from curate.recaption import Recaptioner
    from curate.training.clip import make_tiny_clip

    clip = make_tiny_clip(tmp_path / "clip", texts=["a red circle"])
    loads: list[str] = []
    load = transformers.CLIPModel.from_pretrained

    def counted(source, *args, **kwargs):
        loads.append(str(source))
        return load(source, *args, **kwargs)

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", staticmethod(counted))
    rng = np.random.default_rng(0)
    fe = rng.normal(size=(3, 16)).astype(np.float32)
    clips = [
        {
            "clip_id": "v:0000",
            "video_id": "v",
            "scene_index": 0,
            "start_frame": 0,
            "end_frame": 50,
            "fps": 25.0,
            "source_caption": "a red circle",
            "status": "kept",
            "reason": None,
            "embedding": None,
        }
    ]
    extras = [{"clip_id": "v:0000", "fragment": "a red circle", "frame_embeddings": fe.tolist()}]
    video = {"video_id": "v", "uri": "v.mp4"}
    with Recaptioner(model=clip) as step:
        rows, story = step.recaption_record(video, clips, extras)
        assert rows[0]["recaption"] == "a red circle" and rows[0]["recaption_source"] == "source"
        assert "frame_embeddings" not in rows[0] and "fragment" not in rows[0]
        assert np.linalg.norm(rows[0]["embedding"]) == pytest.approx(1.0, abs=1e-5)
        assert story["uri"] == "v.mp4" and story["segments"][0]["end_frame"] == 50
        dropped = [
            {**clips[0], "source_caption": None, "status": "dropped", "reason": "empty_caption"}
        ]
        rows, story = step.recaption_record(video, dropped, extras)
        assert story is None and rows[0]["recaption"] is None
        assert len(loads) == 1  # one model for every video the step sees
        assert step.recaption_record(video, [], []) == ([], None)


def test_truncated_last_fragment_is_completed_from_the_bank():
    cap = "a red circle on navy, then a blue square on bei"
    clips = [
        scene(0, "red circle", 0, 40, caption=cap),
        scene(1, "blue square", 40, 80, caption=cap),
    ]
    bank = ["a blue square on beige", "a blue square on black", "a green star on beige"]
    with Recaptioner(scorer=StubScorer(), prompt_bank=bank) as step:
        rows, _ = step.recaption_video(clips)
    assert rows[0]["recaption"] == "a red circle on navy"
    assert rows[1]["recaption"] in ("a blue square on beige", "a blue square on black")
    assert rows[1]["recaption_source"] == "prompt_bank"
    with Recaptioner(scorer=StubScorer(), prompt_bank=bank, complete_truncated=False) as step:
        rows, _ = step.recaption_video(clips)
    assert rows[1]["recaption"] == "a blue square on bei"


class TruncatingScorer(StubScorer):
    """Reads only the first ``keep`` words of a caption, as a model's token limit does."""

    def __init__(self, keep):
        self.keep = keep

    def truncate_caption(self, text):
        words = text.split()
        return " ".join(words[: self.keep]), len(words) > self.keep


class MixScorer(StubScorer):
    """Texts embed on every axis of the shapes they name, so a text naming two shapes is
    closest to a scene showing both."""

    def embed_texts(self, texts):
        out = np.zeros((len(texts), 5), np.float32)
        for i, t in enumerate(texts):
            hit = [a for k, a in AXES.items() if k in t] or [4]
            out[i, hit] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def recaptions(clips, scorer=None, **kwargs):
    with Recaptioner(scorer=scorer or StubScorer(), **kwargs) as step:
        rows, _ = step.recaption_video(clips)
    return [(r["recaption"], r["recaption_source"]) for r in rows]


def test_a_complete_caption_is_not_replaced_by_a_bank_prompt_that_starts_like_it():
    # neither cut at the token limit nor mid-word: the caption's words stay
    clips = [scene(0, "red circle", 0, 50, caption="a red circle")]
    bank = ["a red circles parade with a green star"]
    assert recaptions(clips, prompt_bank=bank) == [("a red circle", "source")]
    clips = [scene(0, "red circle", 0, 50, caption="a red circle moving left")]
    bank = ["a red circle moving left on a navy background", "a blue square moving left"]
    assert recaptions(clips, prompt_bank=bank) == [("a red circle moving left", "source")]


def test_a_caption_cut_at_the_token_limit_is_completed_word_for_word():
    cap = "a red circle moving left on a navy background"
    clips = [scene(0, "red circle", 0, 50, caption=cap)]
    bank = ["a red circle moving left on a beige background", "a red circle moving leftward"]
    # the model reads "a red circle moving left": the bank goes on from there
    assert recaptions(clips, TruncatingScorer(5), prompt_bank=bank) == [
        ("a red circle moving left on a beige background", "prompt_bank")
    ]
    # read whole, the same caption keeps its words
    assert recaptions(clips, TruncatingScorer(99), prompt_bank=bank) == [(cap, "source")]


def test_a_completion_of_a_whole_word_must_score_at_least_as_well():
    cap = "a red circle moving left on a navy background"
    clips = [scene(0, "red circle", 0, 50, caption=cap)]

    class Cut(MixScorer, TruncatingScorer):
        pass

    # read up to "left", the caption is a description already: a completion that adds a shape
    # the scene does not show scores under it
    bank = ["a red circle moving left beside a white ring"]
    assert recaptions(clips, Cut(5), prompt_bank=bank) == [("a red circle moving left", "source")]
    bank.append("a red circle moving left on a navy background")
    assert recaptions(clips, Cut(5), prompt_bank=bank) == [
        ("a red circle moving left on a navy background", "prompt_bank")
    ]
    # a word cut mid-word is broken text: the best completion finishes it
    clips = [scene(0, "red circle", 0, 50, caption="a red circle moving le")]
    assert recaptions(clips, MixScorer(), prompt_bank=bank[:1]) == [
        ("a red circle moving left beside a white ring", "prompt_bank")
    ]


def test_scenes_with_captions_of_their_own_keep_them():
    # timed captions gave each scene its own source caption
    red = "a red circle moving left on a navy background"
    blue = "a blue square growing on a beige background"
    clips = [
        scene(0, "red circle", 0, 40, caption=red),
        scene(1, "blue square", 40, 80, caption=blue),
        scene(2, "green star", 80, 120, caption=None, status="dropped", reason="empty_caption"),
    ]
    got = recaptions(clips, prompt_bank=["a green star on black"])
    assert got == [(red, "source"), (blue, "source"), ("a green star on black", "prompt_bank")]


def test_a_one_scene_caption_competes_whole_with_its_fragments():
    # one scene showing both shapes, the caption naming both across a comma
    clip = scene(0, "red circle", 0, 50, caption="a red circle, a blue square beside it")
    clip["embedding"] = (np.array([1, 1, 0, 0, 0], np.float32) / np.sqrt(2)).tolist()
    assert recaptions([clip], MixScorer()) == [("a red circle, a blue square beside it", "source")]
    # over two scenes the fragments are what aligns
    two = [scene(0, "red circle", 0, 40, caption=clip["source_caption"])]
    two.append(scene(1, "blue square", 40, 80, caption=clip["source_caption"]))
    assert [t for t, _ in recaptions(two, MixScorer())] == [
        "a red circle",
        "a blue square beside it",
    ]


# --- bank hygiene and precomputed captions -----------------------------------------------------


def test_precomputed_captions_compete_without_loading_the_model(tiny_blip):
    clips = [
        scene(0, "red circle", 0, 40, caption="a red circle"),
        # dropped captions, each scene captioned upstream (as the pipeline does)
        scene(1, "blue square", 40, 80, caption="x", status="dropped", reason="low_caption_score"),
        scene(2, "green star", 80, 120, caption="x", status="dropped", reason="low_caption_score"),
    ]
    clips[1]["generated_caption"] = "a blue square"  # right: beats the bank's prompt
    clips[2]["generated_caption"] = "a white ring"  # wrong: the bank's prompt wins
    with Recaptioner(
        scorer=StubScorer(), captioner=tiny_blip, fallback="best", prompt_bank=["a green star"]
    ) as step:
        rows, story = step.recaption_video(clips)
        assert step._captioner._model is None  # the folder was checked, never loaded
    got = [(r["recaption"], r["recaption_source"]) for r in rows]
    assert got == [
        ("a red circle", "source"),
        ("a blue square", "captioner"),
        ("a green star", "prompt_bank"),
    ]
    validate_story_row(story)
    # a scene that needs the captioner but has neither a caption nor frames is an error
    clips[1].pop("generated_caption")
    step = Recaptioner(scorer=StubScorer(), captioner=tiny_blip, fallback="captioner")
    with step, pytest.raises(ValueError, match="v:0001.*no frames"):
        step.recaption_video(clips)


def test_corpus_bank_comes_first_and_joins_the_given_prompts():
    cap = "a red circle"
    clips = [
        scene(0, "red circle", 0, 40, caption=cap),
        scene(1, "white ring", 40, 90, caption=cap, status="dropped", reason="low_caption_score"),
    ]
    with Recaptioner(scorer=StubScorer(), prompt_bank=["a green star on black"]) as step:
        step.use_corpus_bank([])
        rows, _ = step.recaption_video(clips)
        assert rows[1]["recaption"] == "a green star on black"  # the given bank only
        step.use_corpus_bank(["a white ring on beige", "a green star on black"])
        rows, _ = step.recaption_video(clips)
        assert rows[1]["recaption"] == "a white ring on beige"
    with Recaptioner(scorer=StubScorer()) as step:
        step.use_corpus_bank([])  # no bank at all: scenes without a caption stay gaps
        rows, story = step.recaption_video(clips)
        assert rows[1]["recaption"] is None and len(story["segments"]) == 1


def test_a_near_tie_is_decided_by_source_not_by_float_noise():
    # a resumed run batches CLIP differently: scores move by ~1e-7, the choice must not
    from curate.recaption import _best_candidate

    for eps in (1e-7, -1e-7, 5e-5):
        cands = [(0.75, "a red circle", "prompt_bank"), (0.75 + eps, "a red circle", "captioner")]
        assert _best_candidate(cands) == (0.75 + eps, "a red circle", "captioner")
        assert _best_candidate(cands[::-1]) == (0.75 + eps, "a red circle", "captioner")
    # a real margin still wins
    assert _best_candidate([(0.80, "x", "prompt_bank"), (0.75, "y", "captioner")])[2] == (
        "prompt_bank"
    )
