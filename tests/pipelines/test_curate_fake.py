"""The curate pipeline's plumbing with fake decode / score steps: dead letters, invariant,
resume after SIGKILL, overwrite, failure-rate stop, corpus-phase reruns, output formats."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate import shards
from curate.errors import OutputError
from curate.run_folder import foreign_files
from pipelines.curate import run
from pipelines.options import runner_flags
from tests.pipelines.fakes import fake_components, write_fake_corpus

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    "cat": ("scenes=3", "a cat jumps score 0.9"),
    "dog": ("scenes=2", "a dog runs score 0.2"),
    "owl": ("scenes=1", "an owl sits score 0.6"),
    "cat2": ("scenes=3;look=cat", "the same cat score 0.8"),  # duplicate frames of "cat"
    "fox": ("scenes=2", "a fox score 0.4"),
}
BAD = {
    "segv": ("crash", "never decodes score 0.5"),
    "broken": ("broken", "bad container score 0.5"),
    "missing": (None, "no file score 0.5"),
    "empty_caption": ("scenes=2", ""),
    "score_fails": ("scenes=1", "explode score 0.5"),
    "recaption_fails": ("scenes=1", "recaption-fails score 0.7"),
}


def _flags(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [f"--input={manifest}", f"--output={out}", "--threshold=0.3", *extra]


def _rows(out: Path, table: str) -> list[dict]:
    rows = shards.read_table(out, table).to_pylist()
    key = {"clips": "clip_id", "stories": "story_id", "failures": "input_id"}[table]
    return sorted(rows, key=lambda r: (r[key], r.get("stage") or ""))


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    manifest = write_fake_corpus(root / "in", {**GOOD, **BAD})
    # a manifest row with a missing field and a duplicate id, as the manifest reader sees them
    with open(manifest, "a") as fh:
        fh.write(json.dumps({"video_id": "nouri", "caption": "x"}) + "\n")
        fh.write(json.dumps({"video_id": "cat", "uri": "cat.mp4", "caption": "again"}) + "\n")
    summary = run(_flags(manifest, root / "out"), components=fake_components(), progress=False)
    return root, manifest, summary


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    manifest = write_fake_corpus(root / "in", GOOD)
    summary = run(_flags(manifest, root / "out"), components=fake_components(), progress=False)
    return root, manifest, summary


def test_every_bad_input_is_a_failures_row_with_stage_and_reason(mixed_run):
    root, _, summary = mixed_run
    failures = {f["input_id"]: f for f in _rows(root / "out", "failures")}
    assert failures["segv"]["stage"] == "decode"
    assert failures["segv"]["error_type"] == "DecoderCrash"
    assert "signal 11 (SIGSEGV)" in failures["segv"]["message"]
    assert failures["broken"]["error_type"] == "VideoOpenFailure"
    assert "moov atom not found" in failures["broken"]["message"]
    assert failures["missing"]["message"].endswith("missing.mp4: no such file")
    assert failures["score_fails"]["stage"] == "clip-score"
    assert failures["recaption_fails"]["stage"] == "recaption"
    rejected = [f for f in failures.values() if f["stage"] == "read-manifest"]
    assert sorted(f["source_line"] for f in rejected) == [12, 13]
    assert any("missing field uri" in f["message"] for f in rejected)
    assert any("duplicate video_id 'cat'" in f["message"] for f in rejected)
    for f in failures.values():  # each names its input
        assert f["uri"] is None or f["stage"] == "read-manifest" or f["uri"] in f["message"]
    # an unusable caption is a clip status, not a failure
    clips = [c for c in _rows(root / "out", "clips") if c["video_id"] == "empty_caption"]
    assert [(c["status"], c["reason"]) for c in clips] == [("dropped", "empty_caption")] * 2
    assert summary.counts["inputs"] == len(GOOD) + len(BAD) + 2


def test_invariant_holds_and_no_video_is_in_both_tables(mixed_run):
    root, _, summary = mixed_run
    assert summary.invariant_ok, summary.invariant
    clip_videos = {c["video_id"] for c in _rows(root / "out", "clips")}
    failed = {f["input_id"] for f in _rows(root / "out", "failures")}
    assert clip_videos == set(GOOD) | {"empty_caption"}
    assert not clip_videos & failed
    # the recaption failure withdrew that video's clips (documented choice)
    assert "recaption_fails" not in clip_videos


def test_good_videos_come_out_as_without_the_bad_ones(mixed_run, clean_run):
    mixed, clean = mixed_run[0] / "out", clean_run[0] / "out"

    def good(rows: list[dict]) -> list[dict]:
        out = []
        for r in rows:
            if (r.get("video_id") or r.get("input_id")) in GOOD:
                r = {k: v for k, v in r.items() if k != "uri"}
                out.append(r)
        return out

    assert good(_rows(mixed, "clips")) == good(_rows(clean, "clips"))
    assert good(_rows(mixed, "stories")) == [
        {k: v for k, v in s.items() if k != "uri"} for s in _rows(clean, "stories")
    ]


def test_threshold_and_dedup_decide_statuses(clean_run):
    root = clean_run[0]
    clips = {c["clip_id"]: c for c in _rows(root / "out", "clips")}
    assert all(clips[f"dog-{i:03d}"]["reason"] == "low_caption_score" for i in range(2))
    assert all(clips[f"cat-{i:03d}"]["status"] == "kept" for i in range(3))
    # cat2 shows the same frames as cat: its clips are duplicates of cat's
    for i in range(3):
        dup = clips[f"cat2-{i:03d}"]
        assert (dup["status"], dup["reason"], dup["duplicate_of"]) == (
            "dropped",
            "duplicate",
            f"cat-{i:03d}",
        )
    manifest = json.loads((root / "out" / "_manifest.json").read_text())
    assert manifest["counts"]["clips_kept"] == 3 + 1 + 2
    listed = {s["path"]: s["rows"] for s in manifest["shards"]}
    for path, rows in listed.items():
        assert pq.read_metadata(root / "out" / path).num_rows == rows


def test_outputs_open_with_pyarrow_pandas_duckdb_and_datasets(clean_run):
    out = clean_run[0] / "out"
    glob = str(out / "clips" / "*.parquet")
    n = sum(1 for _ in _rows(out, "clips"))
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    assert ds.dataset(str(out / "clips"), format="parquet").count_rows() == n
    assert len(pd.read_parquet(out / "clips")) == n
    kept = duckdb.sql(f"select count(*) from read_parquet('{glob}') where status = 'kept'")
    assert kept.fetchall() == [(6,)]
    stories = duckdb.sql(
        f"select story_id, len(segments) from read_parquet('{out}/stories/*.parquet') "
        "order by story_id"
    ).fetchall()
    assert stories == [("cat", 3), ("fox", 2), ("owl", 1)]
    from datasets import load_dataset

    loaded = load_dataset("parquet", data_files=glob, split="train")
    assert loaded.num_rows == n and "caption_score" in loaded.column_names


def test_threshold_change_reruns_only_the_corpus_phase(tmp_path):
    manifest = write_fake_corpus(tmp_path / "in", GOOD)
    out = tmp_path / "out"
    run(_flags(manifest, out), components=fake_components(), progress=False)
    work_before = {f.name: f.stat().st_mtime_ns for f in shards.work_files(out)}
    again = run(
        [f"--input={manifest}", f"--output={out}", "--threshold=p50"],
        components=fake_components(),
        progress=False,
    )
    assert {f.name: f.stat().st_mtime_ns for f in shards.work_files(out)} == work_before
    assert "per-video" not in again.phase_s  # nothing decoded
    clips = _rows(out, "clips")
    scores = sorted(c["caption_score"] for c in clips)
    cutoff = json.loads((out / "_manifest.json").read_text())["config"]["cutoff"]
    assert scores[0] <= cutoff <= scores[-1]
    assert all(c["reason"] == "low_caption_score" for c in clips if c["caption_score"] < cutoff)
    # the output holds one run's rows, never two
    assert len({c["clip_id"] for c in clips}) == len(clips) == 11


def test_resume_after_sigkill_gives_the_uninterrupted_rows(tmp_path):
    specs = {
        f"v{i:02d}": (f"slow=0.15;scenes={1 + i % 3}", f"clip {i} score 0.{i % 9 + 1}")
        for i in range(16)
    }
    specs["crashy"] = ("crash", "x")
    manifest = write_fake_corpus(tmp_path / "in", specs)
    flags = ["--commit_every=1", "--inference_batch_videos=1", "--threshold=p25"]

    reference = tmp_path / "reference"
    run(_flags(manifest, reference, *flags), components=fake_components(), progress=False)

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pipelines.run_fake", *_flags(manifest, out, *flags)],
        cwd=REPO,
        start_new_session=True,  # so the kill takes the decoder child with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(shards.done_set(out)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = shards.done_set(out)
    assert 4 <= len(done) < len(specs), "the kill should land mid-run"
    assert not (out / "_manifest.json").exists()

    resumed = run(_flags(manifest, out, *flags), components=fake_components(), progress=False)
    assert resumed.counts["metric_decode_videos"] == len(specs) - len(done)
    for table in ("clips", "stories", "failures"):
        assert _rows(out, table) == _rows(reference, table), table
    assert resumed.invariant_ok


@pytest.mark.slow
def test_overwrite_redoes_everything(tmp_path):
    manifest = write_fake_corpus(tmp_path / "in", dict(list(GOOD.items())[:2]))
    out = tmp_path / "out"
    run(_flags(manifest, out), components=fake_components(), progress=False)
    again = run(_flags(manifest, out, "--overwrite"), components=fake_components(), progress=False)
    assert again.counts["metric_decode_videos"] == 2
    assert len(_rows(out, "clips")) == 5


@pytest.mark.allow_error_logs  # the run logs why it stopped
def test_failure_rate_stops_the_run_and_publishes_what_is_done(tmp_path, caplog):
    specs = {f"bad{i}": ("broken", "x") for i in range(6)}
    specs.update({f"ok{i}": ("scenes=1", "fine score 0.9") for i in range(2)})
    manifest = write_fake_corpus(tmp_path / "in", specs)
    out = tmp_path / "out"
    summary = run(
        _flags(
            manifest,
            out,
            "--max_failure_rate=0.5",
            "--failure_rate_min_inputs=4",
            "--commit_every=1",
        ),
        components=fake_components(),
        progress=False,
    )
    assert summary.stopped and summary.stopped.endswith(
        "above --max-failure-rate 50%; stopped. Finished videos are committed under "
        f"{out}; see the failures table, fix the inputs, and rerun to resume"
    )
    manifest_json = json.loads((out / "_manifest.json").read_text())
    assert manifest_json["config"]["stopped"] == summary.stopped
    done = shards.done_set(out)
    assert 4 <= len(done) < len(specs)
    assert summary.counts["pending"] == len(specs) - len(done)
    assert summary.invariant_ok, summary.invariant
    # one line says why; Beam's traceback of the stopping exception is not shown
    assert not [r for r in caplog.records if r.name.startswith("apache_beam")]
    assert [r.getMessage() for r in caplog.records if r.levelno >= 40] == [summary.stopped]


@pytest.mark.allow_error_logs  # the run logs why it stopped
def test_failure_rate_counts_the_videos_of_every_worker_process(tmp_path, caplog):
    """With two worker processes each sees about half of the videos: the rate and the
    inputs it waits for are the whole run's, not each process' own."""
    specs = {f"bad{i}": ("broken", "x") for i in range(6)}
    specs.update({f"ok{i}": ("scenes=1", "fine score 0.9") for i in range(2)})
    manifest = write_fake_corpus(tmp_path / "in", specs)
    out = tmp_path / "out"
    flags = ["--max_failure_rate=0.5", "--failure_rate_min_inputs=6", "--commit_every=1"]
    summary = run(
        [*runner_flags("local", workers=2), *_flags(manifest, out, *flags)],
        components=fake_components(),
        progress=False,
    )
    assert summary.stopped, "8 videos, 6 of them failed: above 50% once 6 were seen"
    counted = re.match(r"(\d+) of (\d+) videos failed", summary.stopped)
    assert counted, summary.stopped
    failed, seen = map(int, counted.groups())
    assert 6 <= seen <= len(specs) and failed / seen > 0.5
    assert summary.invariant_ok, summary.invariant
    assert [r.getMessage() for r in caplog.records if r.levelno >= 40] == [summary.stopped]
    # the counts the processes shared are gone, and the folder holds only the run's own files
    assert foreign_files(out) == [] and not list((out / "_work").glob("_rate*"))


def test_unwritable_output_fails_before_any_work(tmp_path):
    manifest = write_fake_corpus(tmp_path / "in", dict(list(GOOD.items())[:1]))
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="file.txt exists and is not a folder"):
        run(_flags(manifest, blocker / "out"), components=fake_components(), progress=False)


@pytest.mark.slow
def test_centroid_dedup_finds_the_exact_duplicates(tmp_path):
    manifest = write_fake_corpus(tmp_path / "in", GOOD)
    out = tmp_path / "out"
    summary = run(
        _flags(manifest, out, "--dedup_exact_limit=1"),
        components=fake_components(),
        progress=False,
    )
    assert summary.counts["dedup_exact"] == 0  # the centroid path ran
    dups = {c["clip_id"]: c["duplicate_of"] for c in _rows(out, "clips") if c["duplicate_of"]}
    assert dups == {f"cat2-{i:03d}": f"cat-{i:03d}" for i in range(3)}


def test_a_video_whose_rows_cannot_be_written_is_a_failure_not_a_stopped_run(tmp_path):
    """A value no table accepts (a NaN score from a model) fails that video alone."""
    specs = {**dict(list(GOOD.items())[:2]), "nan": ("scenes=2", "odd frames score nan")}
    manifest = write_fake_corpus(tmp_path / "in", specs)
    out = tmp_path / "out"
    summary = run(_flags(manifest, out), components=fake_components(), progress=False)
    assert summary.invariant_ok, summary.invariant
    (failure,) = _rows(out, "failures")
    assert (failure["input_id"], failure["stage"]) == ("nan", "validate")
    assert "caption_score must be a number, got NaN" in failure["message"]
    assert {c["video_id"] for c in _rows(out, "clips")} == set(list(GOOD)[:2])
