"""The curate pipeline with the shipped shapes-world CLIP: stories against ground truth.

The storyboard embedding of each scene is computed in the per-video phase and committed with
the work; the corpus phase re-captions from it. Ground truth decides every assertion.
"""

from __future__ import annotations

import json

import pytest

from curate import shards
from curate.clip_score import DEFAULT_MODEL, recommended_threshold
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
    from curate.synth import all_captions

    root = tmp_path_factory.mktemp("shipped")
    bank = root / "prompts.txt"
    bank.write_text("# every caption of the shapes-world grammar\n" + "\n".join(all_captions()))
    out = root / "run"
    summary = run(
        [
            f"--input={shapes_corpus_path / 'manifest.jsonl'}",
            f"--output={out}",
            f"--prompt_bank={bank}",
        ],
        progress=False,
    )
    assert summary.invariant_ok
    return out


def test_threshold_auto_is_the_model_folders_cut_off(curated, tmp_path):
    from curate.clip_train import make_tiny_clip
    from pipelines.curate import auto_threshold

    # the default --threshold (auto) used the shipped model's recommended cut-off
    published = json.loads((curated / "_manifest.json").read_text())["config"]
    assert float(published["threshold"]) == pytest.approx(recommended_threshold(DEFAULT_MODEL))
    # a folder without scoring.json falls back to a corpus percentile
    assert auto_threshold(str(make_tiny_clip(tmp_path / "tiny"))) == "p20"


def test_stories_name_what_each_scene_shows(shapes_corpus, curated):
    from curate.synth import parse_caption

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
