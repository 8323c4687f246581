"""Training the shapes-world CLIP: data, captions, targets, and a short real run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curate import shapes
from curate.shapes.read import read_frame
from curate.training.clip import ClipSettings, train_shapes_clip
from curate.training.data import (
    SLOTS,
    CaptionSampler,
    facts_codes,
    match_matrix,
    render_training_data,
)
from curate.training.evaluate import best_cut


@pytest.fixture(scope="module")
def data():
    return render_training_data(
        24, seed=5, frames_per_scene=2, image_size=64, keep_board_frames=True, progress=False
    )


def test_rendered_images_show_their_facts(data):
    assert data.frames.shape == (48, 64, 64, 3) and data.boards.shape == (24, 64, 64, 3)
    assert data.board_frames is not None and data.board_frames.shape == (24, 4, 64, 64, 3)
    vocab = (tuple(shapes.COLORS), shapes.SHAPES, shapes.MOTIONS, tuple(shapes.BACKGROUNDS))
    seen = 0
    for frame, code in zip(data.frames, data.frame_codes):
        facts = read_frame(frame)
        seen += (facts.color, facts.background) == (vocab[0][code[0]], vocab[3][code[3]])
    # the pixel reader recovers colour and background of (nearly) every squashed frame
    assert seen >= 0.9 * len(data.frames)
    # a storyboard's scene is a frame pair's scene: same codes, frames in time order
    assert (data.board_codes == data.frame_codes[::2]).all()
    for fs, code in zip(data.board_frames, data.board_codes):
        motion = vocab[2][code[2]]
        xs = [read_frame(f).centroid[0] for f in fs]
        if motion == "moving right":
            assert xs == sorted(xs)
        elif motion == "moving left":
            assert xs == sorted(xs, reverse=True)


def test_rendering_does_not_depend_on_the_number_of_workers(data):
    again = render_training_data(
        24, seed=5, frames_per_scene=2, image_size=64, workers=2, chunk=5, progress=False
    )
    assert (again.frames == data.frames).all() and (again.boards == data.boards).all()
    other = render_training_data(24, seed=6, frames_per_scene=2, image_size=64, progress=False)
    assert not (other.frames == data.frames).all()


def test_caption_codes_round_trip():
    cs = CaptionSampler(np.random.default_rng(0))
    captions = cs.all_captions()
    assert len(captions) == cs.n_captions == len(set(captions))
    codes = np.stack(np.unravel_index(np.arange(cs.n_captions), tuple(cs.sizes)), 1)
    assert (cs.index(codes) == np.arange(cs.n_captions)).all()
    for i in (0, 17, 999):
        facts = shapes.parse_caption(captions[i])
        assert facts is not None and facts_codes(facts) == tuple(codes[i])


def test_hard_negatives_change_exactly_one_slot():
    cs = CaptionSampler(np.random.default_rng(1))
    codes = np.array([[c % 8, c % 5, c % 7, c % 5] for c in range(70)])
    for board in (False, True):
        negs = cs.negatives(codes, 3, board=board).reshape(3, len(codes), 4)
        changed = negs != codes[None]
        assert (changed.sum(-1) == 1).all()
        slots = changed.argmax(-1)  # (negative, code)
        if board:
            # first the opposite motion, then another motion, then the shape
            assert (slots[0] == 2).all() and (slots[1] == 2).all() and (slots[2] == 1).all()
            motions = shapes.MOTIONS
            for code, neg in zip(codes, negs[0]):
                a, b = motions[code[2]], motions[neg[2]]
                if a != "still":
                    assert {a, b} in (
                        {"moving left", "moving right"},
                        {"moving up", "moving down"},
                        {"growing", "shrinking"},
                    )
        else:
            assert (slots[0] == 1).all() and set(slots[1:].ravel()) <= {0, 3}
        assert (negs[..., 0] < 8).all() and (negs[..., 2] < 7).all()


def test_truncated_captions_keep_the_shape():
    cs = CaptionSampler(np.random.default_rng(2))
    code = np.array([1, 3, 0, 2])
    full = cs.caption(code)
    for _ in range(20):
        t = cs.truncated(code)
        assert full.startswith(t) and len(t) < len(full) and shapes.SHAPES[3] in t


def test_match_matrix_wildcards():
    images = np.array([[1, 2, 3, 4], [1, 2, -1, 4]])  # a storyboard, a single frame
    texts = np.array(
        [
            [1, 2, 3, 4],  # its caption
            [1, 2, 5, 4],  # other motion: only the frame (motion unseen) matches
            [1, 2, -1, -1],  # truncated after the shape
            [1, 3, 3, 4],  # other shape
            [-2, -2, -2, -2],  # filler
        ]
    )
    m = match_matrix(images, texts)
    assert m.tolist() == [[True, False, True, False, False], [True, True, True, False, False]]


def test_best_cut_sits_in_the_middle_of_the_gap():
    assert best_cut([0.7, 0.8], [0.1, 0.3]) == pytest.approx(0.5)
    # overlapping scores: the cut still maximises TPR - FPR
    pos, neg = np.array([0.2, 0.5, 0.6, 0.9]), np.array([0.1, 0.3, 0.55])
    cut = best_cut(pos, neg)
    j = (pos >= cut).mean() - (neg >= cut).mean()
    grid = np.linspace(0, 1, 1001)
    assert j == pytest.approx(max((pos >= c).mean() - (neg >= c).mean() for c in grid))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="eval_seed"):
        ClipSettings(seed=3, eval_seed=3)
    with pytest.raises(ValueError, match="device"):
        ClipSettings(device="tpu")
    with pytest.raises(ValueError, match="workers"):
        ClipSettings(workers=0)


def test_a_short_run_writes_a_complete_folder(tmp_path):
    from curate.clip_score import ClipScorer
    from curate.models import check_model_folder
    from curate.training.clip import finish

    settings = ClipSettings(
        scenes=48,
        batch_size=16,
        epochs=1,
        image_size=32,
        patch_size=8,
        hidden=32,
        vision_layers=1,
        text_layers=1,
        projection_dim=16,
        threads=1,
        eval_scenes=12,
        time_budget_s=None,
        device="cpu",
    )
    out = tmp_path / "clip"
    report = train_shapes_clip(out, settings, progress=False)
    assert report["steps"] == 96 // 16 and report["train_storyboards"] == 48
    assert np.isfinite(report["final_loss"])
    metrics = finish(out, report, settings)
    check_model_folder(out)
    scoring = json.loads((out / "scoring.json").read_text())
    assert scoring["storyboard"] == {"grid": [2, 2]}
    assert scoring["caption_threshold"] == pytest.approx(metrics["recommended_threshold"], abs=1e-4)
    card = (out / "README.md").read_text()
    assert "Storyboards" in card and "| 1 | from scratch | cpu | 6 |" in card
    for slot in SLOTS:
        assert 0 <= metrics[f"scene_{slot}_acc"] <= 1
    with ClipScorer(model=out) as s:
        assert s.storyboard_grid == (2, 2) and s.input_size == (32, 32)
