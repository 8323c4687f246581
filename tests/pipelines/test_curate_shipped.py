"""The curate pipeline with the shipped shapes-world CLIP: stories against ground truth.

The storyboard embedding of each scene is computed in the per-video phase and committed with
the work; the corpus phase re-captions from it. Ground truth decides every assertion.
"""

from __future__ import annotations

import json

import pytest

from curate import shards
from curate.models import DEFAULT_MODEL, recommended_threshold
from pipelines.curate import run

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL / "model.safetensors").exists(),
    reason="models/shapes-clip not built (make train-clip)",
)


def scene_of(video, clip: dict):
    """The ground-truth scene covering most of a detected clip."""
    return max(
        video.scenes,
        key=lambda s: min(s.end_frame, clip["end_frame"]) - max(s.start_frame, clip["start_frame"]),
    )


@pytest.fixture(scope="module")
def curated(shapes_corpus, shapes_corpus_path, tmp_path_factory):
    from curate.shapes import all_captions

    root = tmp_path_factory.mktemp("shipped")
    bank = root / "prompts.txt"
    bank.write_text("# every caption of the shapes-world grammar\n" + "\n".join(all_captions()))
    out = root / "run"
    # the WebVid CSV: one caption a video, no timed captions, so the scenes whose caption fails
    # are left to the bank and the captioner, which is what these tests read
    summary = run(
        [
            f"--input={shapes_corpus_path / 'webvid.csv'}",
            f"--output={out}",
            f"--prompt_bank={bank}",
            "--captioner=none",
        ],
        progress=False,
    )
    assert summary.invariant_ok
    return out


@pytest.fixture(scope="module")
def curated_default(shapes_corpus_path, tmp_path_factory):
    """The defaults: the corpus' own prompt bank and (auto) the shipped captioner."""
    out = tmp_path_factory.mktemp("shipped-default") / "run"
    summary = run(
        [f"--input={shapes_corpus_path / 'webvid.csv'}", f"--output={out}"], progress=False
    )
    assert summary.invariant_ok
    return out


def right_facts(shapes_corpus, clip: dict) -> bool:
    from curate.shapes import parse_caption

    truth = scene_of(shapes_corpus.by_id(clip["video_id"]), clip)
    facts = parse_caption(clip["recaption"])
    return facts is not None and (facts.color, facts.shape, facts.motion) == (
        truth.color,
        truth.shape,
        truth.motion,
    )


def test_threshold_auto_is_the_model_folders_cut_off(curated, tmp_path):
    from curate.threshold import auto_threshold
    from curate.training.clip import make_tiny_clip

    # the default --threshold (auto) used the shipped model's recommended cut-off
    published = json.loads((curated / "_manifest.json").read_text())["config"]
    assert float(published["threshold"]) == pytest.approx(recommended_threshold(DEFAULT_MODEL))
    # a folder without scoring.json falls back to a corpus percentile
    assert auto_threshold(str(make_tiny_clip(tmp_path / "tiny"))) == "p20"


def test_stories_name_what_each_scene_shows(shapes_corpus, curated):
    from curate.shapes import parse_caption

    clips = shards.read_table(curated, "clips").to_pylist()
    assert {c["video_id"] for c in clips} == {v.video_id for v in shapes_corpus}
    bank_scenes = bank_right = own = own_right = 0
    for c in clips:
        v = shapes_corpus.by_id(c["video_id"])
        truth = scene_of(v, c)
        facts = parse_caption(c["recaption"])
        right = facts is not None and (facts.color, facts.shape, facts.motion) == (
            truth.color,
            truth.shape,
            truth.motion,
        )
        if c["recaption_source"] == "prompt_bank":
            # no usable caption: the bank prompt the frames and the storyboard chose
            bank_scenes += 1
            bank_right += right
        elif c["recaption_source"] in ("source", "source_fragment"):
            own += 1
            own_right += right
    assert "captioner" not in {c["recaption_source"] for c in clips}  # --captioner=none
    assert bank_scenes >= 4, "the corpus should have noise-captioned videos"
    assert bank_right / bank_scenes >= 0.9
    assert own and own_right / own >= 0.9
    # every video with a kept clip has its story (a planted copy whose clips are all
    # duplicates has none)
    stories = {s["video_id"] for s in shards.read_table(curated, "stories").to_pylist()}
    kept = {c["video_id"] for c in clips if c["status"] == "kept"}
    assert kept and kept <= stories


def test_missing_prompt_bank_fails_before_any_work(shapes_corpus_path, tmp_path):
    from curate.errors import CaptionError

    with pytest.raises(CaptionError, match="cannot read prompt bank"):
        run(
            [
                f"--input={shapes_corpus_path / 'manifest.jsonl'}",
                f"--output={tmp_path / 'out'}",
                f"--prompt_bank={tmp_path / 'nope.txt'}",
            ],
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_default_run_captions_scenes_the_bank_cannot_name(shapes_corpus, curated_default):
    from curate.models import DEFAULT_CAPTIONER

    published = json.loads((curated_default / "_manifest.json").read_text())["config"]
    assert published["captioner"] == str(DEFAULT_CAPTIONER)
    clips = shards.read_table(curated_default, "clips").to_pylist()
    filled = [c for c in clips if c["recaption_source"] in ("captioner", "prompt_bank")]
    assert sum(c["recaption_source"] == "captioner" for c in filled) >= 4
    assert sum(right_facts(shapes_corpus, c) for c in filled) / len(filled) >= 0.9
    # the target, over every scene of the corpus
    assert sum(right_facts(shapes_corpus, c) for c in clips) / len(clips) >= 0.9
    # the captioner's caption is not a column: the clips table keeps its schema
    assert "generated_caption" not in clips[0]


def test_captioner_auto_pairs_with_the_shipped_clip_only(tmp_path):
    from curate.models import DEFAULT_CAPTIONER, resolve_captioner
    from curate.training.clip import make_tiny_clip

    assert resolve_captioner(None, "auto") == str(DEFAULT_CAPTIONER)
    assert resolve_captioner(str(DEFAULT_MODEL), "auto") == str(DEFAULT_CAPTIONER)
    assert resolve_captioner(str(make_tiny_clip(tmp_path / "tiny")), "auto") is None
    assert resolve_captioner(None, "none") is None
    assert resolve_captioner(None, "/some/blip") == "/some/blip"


def test_incomplete_captioner_folder_fails_before_any_work(shapes_corpus_path, tmp_path):
    import shutil

    from curate.errors import ModelFolderError
    from curate.models import DEFAULT_CAPTIONER

    broken = tmp_path / "blip"
    shutil.copytree(DEFAULT_CAPTIONER, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="tokenizer.json"):
        run(
            [
                f"--input={shapes_corpus_path / 'manifest.jsonl'}",
                f"--output={tmp_path / 'out'}",
                f"--captioner={broken}",
            ],
            progress=False,
        )
    assert not (tmp_path / "out").exists()
