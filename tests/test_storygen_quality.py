"""benchmarks/storygen_quality.py: stories rendered side by side in worker processes read
exactly as when rendered one after another, and the per-length story counts parse."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    # importable by name, so that spawned worker processes find its functions
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import storygen_quality

        yield storygen_quality
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_length_story_counts(script):
    assert script.parse_length_stories("4", [16, 226]) == {16: 4, 226: 4}
    assert script.parse_length_stories("16:32,3376:8", [16, 3376]) == {16: 32, 3376: 8}
    with pytest.raises(SystemExit, match=r"\[226\]"):
        script.parse_length_stories("16:32", [16, 226])


def test_pooled_stories_read_as_rendered_one_by_one(script, tmp_path):
    from storygen.presets import new_model
    from storygen.training.probe import MODES, evaluate, held_out_stories

    stories = held_out_stories(3, num_frames=24)
    texts = sorted({p for s in stories for p in s.prompts()})
    folder = new_model(tmp_path / "m", preset="micro", mode="masked", texts=texts)
    settings = {
        "num_inference_steps": 2,
        "guidance_scale": 2.0,
        "frames_per_call": 8,
        "micro_batch": 4,
        "height": 32,
        "width": 32,
    }
    pipe = script.load(str(folder), "cpu", None)
    alone = evaluate(pipe, stories, settings=settings, modes=MODES, seed=5)
    pool = script.PoolRenderer(str(folder), "cpu", None, processes=2)
    try:
        pooled = evaluate(pipe, stories, settings=settings, modes=MODES, seed=5, renderer=pool)
    finally:
        pool.close()
    timing = {"wall_time_s", "story_render_s"}
    for mode in MODES:
        want = {k: v for k, v in alone[mode].items() if k not in timing}
        got = {k: v for k, v in pooled[mode].items() if k not in timing}
        assert got == want
    assert alone["ceiling"] == pooled["ceiling"]
    # the two modes are not the same render (the autoregressive plan has 3 rounds of windows)
    assert alone["hierarchical"]["flicker"] != alone["autoregressive"]["flicker"]


def test_length_runs_split_over_calls_merge_into_one_experiment(script, tmp_path):
    import json

    def reading(all_right):
        return {
            "all": all_right,
            "quarters_all": [all_right] * 4,
            "tenths_all": [all_right] * 10,
            "wall_time_s": 1.0,
        }

    ceiling = {"all": 0.99}
    first = {
        "lengths": {
            "16": {
                "ceiling": ceiling,
                "hierarchical": reading(0.8),
                "autoregressive": reading(0.8),
            },
            "3376": {"ceiling": ceiling, "hierarchical": reading(0.85)},
        }
    }
    second = {"lengths": {"3376": {"ceiling": ceiling, "autoregressive": reading(0.82)}}}
    merged = script.merge_lengths([first, second])
    assert list(merged) == ["16", "3376"]
    assert merged["3376"]["hierarchical"]["all"] == 0.85
    assert merged["3376"]["autoregressive"]["all"] == 0.82
    other = {"lengths": {"3376": {"ceiling": {"all": 0.9}, "autoregressive": reading(0.8)}}}
    with pytest.raises(SystemExit, match="other stories of length 3376"):
        script.merge_lengths([first, other])
    with pytest.raises(SystemExit, match="no length experiment"):
        script.merge_lengths([{}])
    files = []
    for i, r in enumerate((first, second)):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(r))
    out, png = tmp_path / "merged.json", tmp_path / "drift.png"
    assert (
        script.main(["--merge-lengths", *map(str, files), "--out", str(out), "--plot", str(png)])
        == 0
    )
    assert json.loads(out.read_text())["lengths"] == merged
    assert png.stat().st_size > 1000
