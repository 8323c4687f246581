"""Batch rendering's edges: no stories, a story id on two rows, and what is refused before
any model loads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.storygen import RESULTS_SCHEMA, main, video_name
from schemas import read_parquet, rows_to_table, write_parquet
from tests.pipelines.test_storygen_batch import PROMPTS, _flags, _story, model_dir  # noqa: F401

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shapes-storygen"


def _write(path: Path, stories: list[dict]) -> Path:
    write_parquet(rows_to_table(stories, "stories", validate=False), path, "stories")
    return path


def _argv(tmp_path: Path, stories: list[dict], *extra: str) -> list[str]:
    return [
        f"--stories={_write(tmp_path / 'stories.parquet', stories)}",
        f"--render_output={tmp_path / 'out'}",
        f"--render_model={SHIPPED}",
        "--render_steps=1",
        "--render_frames_per_call=4",
        *extra,
    ]


def test_no_stories_writes_empty_tables_not_a_stale_one(tmp_path, capsys):
    out = tmp_path / "out"
    stale = out / "results" / "part-00000-of-00001.parquet"
    stale.parent.mkdir(parents=True)
    old = {f.name: None for f in RESULTS_SCHEMA} | {"story_id": "old", "status": "ok"}
    pq.write_table(pa.Table.from_pylist([old], schema=RESULTS_SCHEMA), stale)

    assert main(_argv(tmp_path, [])) == 0
    assert capsys.readouterr().out.splitlines()[0] == "stories 0: nothing to render"
    assert pq.read_table(out / "results").num_rows == 0
    assert read_parquet(out / "failures", "failures").num_rows == 0

    # into a new folder too
    argv = [a.replace(str(out), str(tmp_path / "new")) for a in _argv(tmp_path, [])]
    assert main(argv) == 0
    assert pq.read_table(tmp_path / "new" / "results").num_rows == 0


def test_a_story_id_on_two_rows_fails_each_row_without_rendering(tmp_path, capsys):
    stories = [
        _story("same", [(0.0, 1.0, PROMPTS[0])]),
        _story("same", [(0.0, 1.0, PROMPTS[1])]),
    ]
    assert main(_argv(tmp_path, stories)) == 1
    results = pq.read_table(tmp_path / "out" / "results").to_pylist()
    assert [r["status"] for r in results] == ["failed", "failed"]
    assert all("story_id 'same' is on 2 rows" in r["error"] for r in results)
    failures = read_parquet(tmp_path / "out" / "failures", "failures").to_pylist()
    assert [(f["input_id"], f["stage"]) for f in failures] == [("same", "render")] * 2
    assert not (tmp_path / "out" / "videos").exists()
    assert (
        "stories 2: rendered 0, skipped 0 (already rendered), failed 2" in capsys.readouterr().out
    )


def test_only_unique_story_ids_are_rendered(tmp_path, model_dir):  # noqa: F811
    stories = [
        _story("same", [(0.0, 1.0, PROMPTS[0])]),
        _story("solo", [(0.0, 1.0, PROMPTS[1])]),
        _story("same", [(0.0, 1.0, PROMPTS[1])]),
    ]
    assert main([*_flags(tmp_path, model_dir, stories), "--render_micro_batch=4"]) == 1
    results = pq.read_table(tmp_path / "out" / "results").to_pylist()
    assert [(r["story_id"], r["status"]) for r in results] == [
        ("same", "failed"),
        ("same", "failed"),
        ("solo", "ok"),
    ]
    assert os.listdir(tmp_path / "out" / "videos") == [video_name("solo", "mp4")]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--render_max_stories=-1"], "--render_max_stories must be >= 0"),
        (["--render_steps=0"], "--render_steps must be >= 1, got 0"),
        (["--render_fps=-1"], "--render_fps must be from 0.1 to 240, got -1"),
        (["--render_frames_per_call=0"], "--render_frames_per_call must be from 3 to 256"),
        (["--render_guidance=nan"], "--render_guidance must be a finite number >= 0, got nan"),
        (["--render_max_frames=0"], "--render_max_frames must be >= 1, got 0"),
        (["--render_stepz", "1"], "unknown flag --render_stepz (did you mean --render_steps?)"),
        (["--render_step=1"], "unknown flag --render_step (did you mean --render_steps?)"),
        (["--stories_dir=x"], "unknown flag --stories_dir (did you mean --stories?)"),
        ([f"--render_model={SHIPPED / 'unet'}"], "model_index.json is missing"),
        ([f"--render_model={SHIPPED / 'nothing'}"], "does not exist"),
    ],
)
def test_bad_values_are_refused_before_any_model_loads(tmp_path, flags, message, capsys):
    argv = _argv(tmp_path, [_story("s", [(0.0, 1.0, PROMPTS[0])])])
    start = time.perf_counter()
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - start < 30  # no Beam job, no worker loading the model


def test_an_unwritable_output_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = _argv(tmp_path, [_story("s", [(0.0, 1.0, PROMPTS[0])])])
    argv = [a for a in argv if not a.startswith("--render_output")]
    assert main([*argv, f"--render_output={tmp_path / 'file' / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and len(err.strip().splitlines()) == 1, err


def test_a_story_over_the_frame_limit_names_the_batch_flag(tmp_path, model_dir):  # noqa: F811
    stories = [_story("long", [(0.0, 2.0, PROMPTS[0])])]  # 16 frames at 8 fps
    flags = [*_flags(tmp_path, model_dir, stories), "--render_max_frames=10"]
    assert main(flags) == 1
    [row] = pq.read_table(tmp_path / "out" / "results").to_pylist()
    assert row["status"] == "failed"
    assert "more than the limit of 10 frames" in row["error"]
    assert "--render_max_frames" in row["error"] and "--max-frames" not in row["error"]


def test_render_progress_counts_this_runs_videos_only(tmp_path):
    from pipelines.progress import RenderProgress

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "other-1.mp4").write_bytes(b"x")  # another story's video
    mine = [video_name(s, "mp4") for s in ("a", "b")]
    (videos / mine[0]).write_bytes(b"x")
    progress = RenderProgress(videos, total=2, enabled=False, names=mine)
    assert progress.snapshot() == (1, 0, 0)

    # overwriting: a video from before the run is not done yet
    since = time.time()
    os.utime(videos / mine[0], (since - 60, since - 60))
    progress = RenderProgress(videos, total=2, enabled=False, names=mine, since=since)
    assert progress.snapshot() == (0, 0, 0)
    (videos / mine[1]).write_bytes(b"x")
    assert progress.snapshot() == (1, 0, 0)
