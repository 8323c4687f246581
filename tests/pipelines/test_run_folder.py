"""The run folder across runs: what a rerun redoes (changed rows, changed files, failed
inputs), whose files a run may touch, and one run at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate import shards
from curate.errors import OutputError
from pipelines.curate import run
from tests.pipelines.fakes import fake_components, write_fake_corpus

REPO = Path(__file__).resolve().parents[2]

SPECS = {
    "cat": ("scenes=2", "a cat jumps score 0.9"),
    "owl": ("scenes=1", "an owl sits score 0.6"),
    "fox": ("scenes=1", "a fox score 0.7"),
}


def _run(manifest: Path, out: Path, *extra: str):
    flags = [f"--input={manifest}", f"--output={out}", "--threshold=0.3", *extra]
    return run(flags, components=fake_components(), progress=False)


def _rows(out: Path, table: str) -> list[dict]:
    return shards.read_table(out, table).to_pylist()


def _rewrite(manifest: Path, video_id: str, **changes) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        if row["video_id"] == video_id:
            row.update(changes)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))


# --- what a rerun redoes --------------------------------------------------------------------


def test_a_changed_row_or_file_is_redone_and_the_new_values_published(tmp_path):
    manifest = write_fake_corpus(tmp_path / "in", SPECS)
    out = tmp_path / "out"
    _run(manifest, out)
    # a new caption for owl; fox now points at another file; cat's file changes in place
    _rewrite(manifest, "owl", caption="a snowy owl sits score 0.8")
    (tmp_path / "in" / "fox2.mp4").write_text("scenes=3")
    _rewrite(manifest, "fox", uri=str(tmp_path / "in" / "fox2.mp4"))
    cat = tmp_path / "in" / "cat.mp4"
    cat.write_text("scenes=1")
    os.utime(cat, ns=(time.time_ns(), time.time_ns() + 10**9))

    again = _run(manifest, out)
    assert again.counts["metric_decode_videos"] == 3
    clips = {c["clip_id"]: c for c in _rows(out, "clips")}
    assert clips["owl-000"]["source_caption"] == "a snowy owl sits score 0.8"
    assert clips["owl-000"]["caption_score"] == 0.8
    assert sorted(k for k in clips if k.startswith("fox")) == ["fox-000", "fox-001", "fox-002"]
    assert {c["uri"] for c in clips.values() if c["video_id"] == "fox"} == {
        str(tmp_path / "in" / "fox2.mp4")
    }
    assert sorted(k for k in clips if k.startswith("cat")) == ["cat-000"]
    assert again.invariant_ok, again.invariant

    # nothing changed: nothing redone
    third = _run(manifest, out)
    assert "per-video" not in third.phase_s


def test_changed_per_video_settings_redo_the_work(tmp_path):
    manifest = write_fake_corpus(tmp_path / "in", dict(list(SPECS.items())[:1]))
    out = tmp_path / "out"
    _run(manifest, out)
    again = _run(manifest, out, "--samples_per_scene=2")
    assert again.counts["metric_decode_videos"] == 1
    assert json.loads((out / "_manifest.json").read_text())["config"]["samples_per_scene"] == 2


def test_failed_inputs_are_retried_with_an_attempt_count(tmp_path):
    specs = {**SPECS, "late": (None, "a late file score 0.9"), "lost": (None, "never score 0.9")}
    manifest = write_fake_corpus(tmp_path / "in", specs)
    out = tmp_path / "out"
    first = _run(manifest, out)
    failures = {f["input_id"]: f for f in _rows(out, "failures")}
    assert {k: f["attempt"] for k, f in failures.items()} == {"late": 1, "lost": 1}

    (tmp_path / "in" / "late.mp4").write_text("scenes=2")  # the missing file is restored
    second = _run(manifest, out)
    assert second.counts["metric_decode_videos"] == 2  # both failed inputs tried again
    failures = {f["input_id"]: f for f in _rows(out, "failures")}
    assert {k: f["attempt"] for k, f in failures.items()} == {"lost": 2}
    assert {c["clip_id"] for c in _rows(out, "clips") if c["video_id"] == "late"} == {
        "late-000",
        "late-001",
    }
    assert first.invariant_ok and second.invariant_ok

    kept = _run(manifest, out, "--no_retry_failed")
    assert "per-video" not in kept.phase_s
    assert [(f["input_id"], f["attempt"]) for f in _rows(out, "failures")] == [("lost", 2)]


# --- whose files ---------------------------------------------------------------------------


def test_a_folder_holding_the_users_own_files_is_refused_and_kept(tmp_path):
    manifest = write_fake_corpus(tmp_path / "in", SPECS)
    out = tmp_path / "out"
    mine = {
        out / "clips" / "holiday.mp4": b"my video",
        out / "stories" / "notes.txt": b"my notes",
        out / "failures" / "mine.parquet": b"not storyloom's",
    }
    for path, data in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    with pytest.raises(OutputError, match=r"holds files storyloom did not write, e\.g\. .*"):
        _run(manifest, out)
    assert not (out / shards.WORK_DIR).exists()  # refused before any work
    assert all(p.read_bytes() == data for p, data in mine.items())

    # --overwrite writes beside them and deletes none of them
    summary = _run(manifest, out, "--overwrite")
    assert summary.invariant_ok
    assert all(p.read_bytes() == data for p, data in mine.items())
    assert len(_rows(out, "clips")) == 4
    # and a later run into the same folder, with or without --overwrite, keeps them too
    _run(manifest, out, "--overwrite")
    assert all(p.read_bytes() == data for p, data in mine.items())

    # a file of theirs under a name storyloom writes would be written over: always refused
    theirs = out / "clips" / "part-00000-of-00001.parquet"
    for path in (out / "clips").glob("part-*"):
        path.unlink()
    theirs.write_bytes(b"not storyloom's either")
    with pytest.raises(OutputError, match="which storyloom did not write but would write over"):
        _run(manifest, out, "--overwrite")
    assert theirs.read_bytes() == b"not storyloom's either"


# --- one run at a time ------------------------------------------------------------------------


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    specs = {f"v{i}": ("slow=0.3;scenes=1", f"clip {i} score 0.9") for i in range(8)}
    manifest = write_fake_corpus(tmp_path / "in", specs)
    out = tmp_path / "out"
    flags = [f"--input={manifest}", f"--output={out}", "--threshold=0.3", "--commit_every=1"]
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.pipelines.run_fake", *flags],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not shards.done_set(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shards.done_set(out), "the first run should have started"
        with pytest.raises(OutputError, match=rf"pid {first.pid} on .* is writing this folder"):
            run(flags, components=fake_components(), progress=False)
    finally:
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-2000:]
    assert "[ok]" in stdout
    assert len(_rows(out, "clips")) == len(specs)
    assert not list(out.glob(".*.old-*"))
