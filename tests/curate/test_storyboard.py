"""Scene storyboards: the sampled frames of a scene tiled in time order, embedded by CLIP."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from curate.clip_score import ClipScorer
from curate.errors import ModelFolderError
from curate.storyboard import scene_similarity, storyboard
from curate.training.clip import make_tiny_clip

WORDS = ["a red circle moving left on a blue background", "a green square growing"]


def solid(*values: int, hw: tuple[int, int] = (30, 50)) -> np.ndarray:
    """Frames of one flat grey level each."""
    return np.stack([np.full((*hw, 3), v, np.uint8) for v in values])


def tile_values(board: np.ndarray, grid: tuple[int, int]) -> list[int]:
    rows, cols = grid
    h, w = board.shape[0] // rows, board.shape[1] // cols
    return [int(board[r * h + h // 2, c * w + w // 2, 0]) for r in range(rows) for c in range(cols)]


def test_tiles_follow_time_row_by_row():
    board = storyboard(solid(10, 20, 30, 40), (64, 64))
    assert board.shape == (64, 64, 3) and board.dtype == np.uint8
    assert tile_values(board, (2, 2)) == [10, 20, 30, 40]
    # each tile is exactly its frame: flat, with no bleed across tile borders
    assert (board[:32, :32] == 10).all() and (board[32:, 32:] == 40).all()


def test_frames_are_picked_evenly_or_repeated():
    # eight frames, four tiles: first, last and two evenly between
    assert tile_values(storyboard(solid(*range(0, 80, 10)), (64, 64)), (2, 2)) == [0, 20, 50, 70]
    # two frames stretch over four tiles in order
    assert tile_values(storyboard(solid(5, 9), (64, 64)), (2, 2)) == [5, 5, 9, 9]
    assert tile_values(storyboard(solid(7), (64, 64)), (2, 2)) == [7, 7, 7, 7]


def test_other_grids_and_odd_sizes():
    board = storyboard(solid(1, 2, 3), (45, 97), grid=(1, 3))
    assert board.shape == (45, 97, 3)
    assert tile_values(board, (1, 3)) == [1, 2, 3]


@pytest.mark.parametrize(
    "frames, size, grid",
    [
        (np.zeros((0, 8, 8, 3), np.uint8), (16, 16), (2, 2)),
        (np.zeros((2, 8, 8), np.uint8), (16, 16), (2, 2)),
        (solid(1, 2), (1, 16), (2, 2)),
        (solid(1, 2), (16, 16), (0, 2)),
    ],
)
def test_bad_input_is_rejected(frames, size, grid):
    with pytest.raises(ValueError):
        storyboard(frames, size, grid)


def test_scene_similarity_averages_the_two_cosines():
    rng = np.random.default_rng(1)
    emb, board, txt = (rng.normal(size=(n, 6)).astype(np.float32) for n in (3, 3, 5))
    assert np.allclose(scene_similarity(emb, None, txt), emb @ txt.T)
    assert np.allclose(scene_similarity(emb, board, txt), (emb @ txt.T + board @ txt.T) / 2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny random CLIP without scoring.json, and a copy that declares a storyboard grid."""
    root = tmp_path_factory.mktemp("clips")
    plain = make_tiny_clip(root / "plain", texts=WORDS, image_size=32, squash=True)
    boards = root / "boards"
    shutil.copytree(plain, boards)
    (boards / "scoring.json").write_text(json.dumps({"storyboard": {"grid": [2, 2]}}))
    return plain, boards


def record(i: int, frames: np.ndarray) -> dict:
    return {"clip_id": f"v:{i}", "video_id": "v", "source_caption": WORDS[0], "frames": frames}


def test_scorer_embeds_storyboards_when_the_folder_declares_them(folders):
    plain, boards = folders
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    with ClipScorer(model=plain) as s:
        assert s.storyboard_grid is None
        assert all("scene_embedding" not in r for r in s.process_all([record(0, frames[0])]))
    with ClipScorer(model=plain, storyboard=True) as s:
        assert s.storyboard_grid == (2, 2)
    with ClipScorer(model=boards, storyboard=False) as s:
        assert s.storyboard_grid is None
    with ClipScorer(model=boards, batch_size=4) as s:
        assert s.storyboard_grid == (2, 2)
        out = list(s.process_all([record(i, f) for i, f in enumerate(frames)]))
        expected = s.embed_images(np.stack([storyboard(f, s.input_size) for f in frames]))
        for r, e in zip(out, expected):
            # batched across records, the same as one storyboard at a time
            assert np.allclose(r["scene_embedding"], e, atol=1e-5)
            assert np.isclose(np.linalg.norm(r["scene_embedding"]), 1.0, atol=1e-5)
        # the frame embeddings (caption scoring, dedup) are untouched by storyboards
        with ClipScorer(model=plain) as p:
            ref = list(p.process_all([record(i, f) for i, f in enumerate(frames)]))
        assert all(np.allclose(a["embedding"], b["embedding"], atol=1e-5) for a, b in zip(out, ref))


def test_bad_storyboard_declaration_names_the_file(folders, tmp_path):
    _, boards = folders
    bad = tmp_path / "bad"
    shutil.copytree(boards, bad)
    (bad / "scoring.json").write_text(json.dumps({"storyboard": {"grid": "two by two"}}))
    with pytest.raises(ModelFolderError, match="scoring.json storyboard grid"):
        ClipScorer(model=bad).setup()
    (bad / "scoring.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="scoring.json is not readable JSON"):
        ClipScorer(model=bad).setup()


def test_prompt_bank_search_with_storyboards_ranks_by_the_mean_cosine():
    from curate.prompt_bank import PromptBank

    rng = np.random.default_rng(3)

    def unit(n):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    prompts, emb, board = unit(20), unit(4), unit(4)
    bank = PromptBank([f"p{i}" for i in range(20)], prompts)
    scores, idx = bank.search(emb, 3, board)
    full = scene_similarity(emb, board, prompts)
    assert (idx == np.argsort(-full, axis=1)[:, :3]).all()
    assert np.allclose(scores, np.take_along_axis(full, idx, 1), atol=1e-5)
