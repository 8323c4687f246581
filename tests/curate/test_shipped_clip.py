"""The shipped shapes-world CLIP, end to end on the session's shapes-world corpus.

Ground truth decides every assertion: which captions are noise, what each scene shows, which
videos are planted copies.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from curate.clip_score import ClipScorer
from curate.models import DEFAULT_MODEL, check_model_folder, recommended_threshold

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL / "model.safetensors").exists(),
    reason="models/shapes-clip not built (make train-clip)",
)

NOISE = ("mismatched", "boilerplate", "empty", "non_ascii")


def test_shipped_folder_is_complete_and_small():
    check_model_folder(DEFAULT_MODEL)
    size = sum(p.stat().st_size for p in DEFAULT_MODEL.iterdir())
    assert size < 10e6
    card = (DEFAULT_MODEL / "README.md").read_text()
    for needle in ("Training data", "Held-out evaluation", "seed", "AUROC"):
        assert needle in card
    threshold = recommended_threshold(DEFAULT_MODEL)
    assert threshold is not None and -1 < threshold < 1
    report = json.loads((DEFAULT_MODEL / "training_report.json").read_text())
    assert report["heldout"]["noise_auroc"] > 0.9
    assert report["settings"]["eval_seed"] != report["settings"]["seed"]


@pytest.fixture(scope="module")
def scorer():
    with ClipScorer() as s:
        yield s


def test_true_captions_beat_wrong_ones_on_unseen_frames(scorer):
    from curate.shapes import SceneFacts, random_facts, render_scene

    rng = np.random.default_rng(424242)
    wins, total = 0, 0
    for i in range(30):
        f = random_facts(rng)
        frames = render_scene(f, num_frames=2, width=212, height=120, seed=90_000 + i)
        emb = scorer.embed_images(frames)
        others = [
            SceneFacts(c, f.shape, f.motion, f.background).caption
            for c in ("red", "blue", "green", "yellow")
            if c != f.color
        ]
        sims = emb.mean(0) @ scorer.embed_texts([f.caption, *others]).T
        wins += int(np.argmax(sims) == 0)
        total += 1
    assert wins / total >= 0.85


def test_shapes_are_told_apart_on_unseen_frames(scorer):
    from curate.shapes import SHAPES, SceneFacts, random_facts, render_scene

    rng = np.random.default_rng(515151)
    wins = 0
    for i in range(30):
        f = random_facts(rng)
        frames = render_scene(f, num_frames=2, width=212, height=120, seed=91_000 + i)
        emb = scorer.embed_images(frames)
        texts = [SceneFacts(f.color, s, f.motion, f.background).caption for s in SHAPES]
        sims = emb.mean(0) @ scorer.embed_texts(texts).T
        wins += SHAPES[int(np.argmax(sims))] == f.shape
    assert wins / 30 >= 0.9


def test_motion_is_read_from_storyboards_not_single_frames(scorer):
    from curate.sampling import plan_indices
    from curate.shapes import MOTIONS, SceneFacts, random_facts, render_scene

    assert scorer.storyboard_grid == (2, 2)  # declared by the folder's scoring.json
    rng = np.random.default_rng(626262)
    board_wins = frame_wins = 0
    n = 28
    for i in range(n):
        # every motion four times, both directions of each axis
        f = SceneFacts(
            *(lambda g: (g.color, g.shape, MOTIONS[i % 7], g.background))(random_facts(rng))
        )
        video = render_scene(f, num_frames=60, width=284, height=160, seed=92_000 + i)
        frames = video[plan_indices(0, 60, 4)]
        texts = scorer.embed_texts(
            [SceneFacts(f.color, f.shape, m, f.background).caption for m in MOTIONS]
        )
        board = scorer.scene_embeddings([frames])[0]
        board_wins += MOTIONS[int(np.argmax(texts @ board))] == f.motion
        frame_wins += (
            MOTIONS[int(np.argmax(texts @ scorer.embed_images(frames[:1])[0]))] == f.motion
        )
    assert board_wins / n >= 0.9
    # one frame cannot show motion: about chance (1 in 7)
    assert frame_wins / n <= 0.5


@pytest.fixture(scope="module")
def scored(shapes_corpus, scorer):
    """Every ground-truth scene of the session corpus, sampled from the mp4s and scored."""
    from curate.captions import clean_caption
    from curate.filtering import CaptionFilter
    from curate.sampling import FrameSampler
    from curate.scoring import score_videos

    def clips_of(video):
        v = shapes_corpus.by_id(video["video_id"])
        cap = clean_caption(v.source_caption)
        return [
            {
                "clip_id": f"{v.video_id}:{i:04d}",
                "video_id": v.video_id,
                "scene_index": i,
                "uri": str(v.path),
                "start_frame": s.start_frame,
                "end_frame": s.end_frame,
                "fps": v.fps,
                "width": v.width,
                "height": v.height,
                "source_caption": cap.text or None,
                "status": "kept" if cap.ok else "dropped",
                "reason": cap.reason,
            }
            for i, s in enumerate(v.scenes)
        ]

    with FrameSampler(k=4, size=scorer.sample_size) as sampler:
        clips, failures = score_videos(
            [{"video_id": v.video_id, "uri": str(v.path)} for v in shapes_corpus],
            scorer=scorer,
            sampler=sampler,
            clips_of=clips_of,
            progress=False,
        )
    assert failures == []
    return list(CaptionFilter(threshold=recommended_threshold(DEFAULT_MODEL)).process_all(clips))


def test_filter_drops_noise_and_keeps_clean_captions(shapes_corpus, scored):
    by_video = defaultdict(list)
    for c in scored:
        by_video[c["video_id"]].append(c)
    kept_clean = total_clean = 0
    for v in shapes_corpus:
        rows = by_video[v.video_id]
        assert all(r["status"] in ("kept", "dropped") for r in rows)
        if v.caption_noise in NOISE:
            # no scene of a noise-captioned video keeps its caption
            assert all(r["status"] == "dropped" for r in rows), (v.video_id, v.caption_noise)
            reasons = {r["reason"] for r in rows}
            assert reasons <= {"low_caption_score", "empty_caption", "invalid_caption"}
            if v.caption_noise == "empty":
                assert reasons == {"empty_caption"}
        elif v.caption_noise == "clean":
            kept_clean += sum(r["status"] == "kept" for r in rows)
            total_clean += len(rows)
    assert total_clean and kept_clean / total_clean >= 0.9


def test_recaption_stories_match_the_scenes(shapes_corpus, scored, scorer):
    from curate.recaption import Recaptioner
    from curate.shapes import all_captions, parse_caption
    from schemas.stories import validate_story_row

    # a user-supplied bank: every caption of the grammar, so only the model decides
    bank = all_captions()
    groups = defaultdict(list)
    for c in scored:
        groups[c["video_id"]].append(c)
    bank_scenes = right = 0
    with Recaptioner(scorer=scorer, prompt_bank=bank) as rec:
        for vid, clips in groups.items():
            v = shapes_corpus.by_id(vid)
            rows, story = rec.recaption_video(clips)
            validate_story_row(story)
            assert story["story_id"] == vid and story["num_frames"] == v.num_frames
            for r, s in zip(rows, v.scenes):
                if v.caption_noise == "clean":
                    # the source caption's own fragment, motion included
                    assert r["recaption_source"] in ("source", "source_fragment")
                    assert r["recaption"] == s.caption
                elif v.caption_noise in NOISE:
                    assert r["recaption_source"] == "prompt_bank"
                    facts = parse_caption(r["recaption"])
                    bank_scenes += 1
                    right += facts == s.facts
    # colour, shape and background from the frames, motion from the storyboard
    assert bank_scenes and right / bank_scenes >= 0.9


def test_planted_duplicates_are_found_without_false_alarms(shapes_corpus, scored):
    from curate.dedup import Deduplicator

    out = list(Deduplicator().process_all(scored))
    group_of = {vid: i for i, g in enumerate(shapes_corpus.duplicate_groups) for vid in g}
    assert group_of, "the session corpus plants at least one duplicate"
    index = {r["clip_id"]: r for r in out}
    flagged = [r for r in out if r.get("duplicate_of")]
    for r in flagged:
        other = index[r["duplicate_of"]]
        assert group_of.get(r["video_id"]) is not None
        assert group_of.get(r["video_id"]) == group_of.get(other["video_id"])
        assert r["scene_index"] == other["scene_index"]
        assert r["reason"] == "duplicate" or r["status"] == "dropped"
    expected = sum(
        (len(g) - 1) * len(shapes_corpus.by_id(g[0]).scenes) for g in shapes_corpus.duplicate_groups
    )
    assert len(flagged) >= 0.9 * expected


@pytest.mark.slow
def test_calibrate_command_on_the_corpus_manifest(shapes_corpus, tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "cal.json"
    threshold = recommended_threshold(DEFAULT_MODEL)
    manifest = shapes_corpus.root / "manifest.jsonl"
    rc = main(
        [
            "calibrate",
            str(manifest),
            "--threshold",
            str(threshold),
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "<- cut" in printed and "threshold" in printed
    payload = json.loads(out.read_text())
    noise_videos = {v.video_id for v in shapes_corpus if v.caption_noise in NOISE}
    for clip_id, score in payload["scores"].items():
        vid = clip_id.rsplit(":", 1)[0]
        if vid in noise_videos and score is not None:
            assert score < threshold, clip_id
