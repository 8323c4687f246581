"""The run folder as storyloom's own: which files are its, clearing only those, one lock."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from curate import run_folder, shards
from curate.errors import OutputError
from curate.work import work_record
from schemas import RunManifest

REPO = Path(__file__).resolve().parents[2]


def _published(out) -> None:
    """A run folder as a run leaves it: work, the three tables, the manifest, the lock."""
    video = {"video_id": "a", "uri": "a.mp4", "fingerprint": "f", "attempt": 1}
    shards.commit_work(out, [work_record(video, [], [])])
    shards.begin_publish(out)
    shards.publish(out, RunManifest())
    with run_folder.RunLock(out):
        pass


def test_a_folder_a_run_wrote_holds_nothing_foreign(tmp_path):
    _published(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".storyloom.lock",
        "_manifest.json",
        "_work",
        "clips",
        "failures",
        "stories",
    ]
    assert run_folder.foreign_files(tmp_path) == []
    run_folder.check_ownership(tmp_path, overwrite=False)


def test_foreign_files_are_found_at_every_level_and_clear_run_keeps_them(tmp_path):
    _published(tmp_path)
    theirs = [
        tmp_path / "notes.txt",
        tmp_path / "clips" / "holiday.mp4",
        tmp_path / "clips" / "mine.parquet",
        tmp_path / "_work" / "todo.txt",
    ]
    for path in theirs:
        path.write_text("theirs")
    (tmp_path / "stories" / "drafts").mkdir()
    assert sorted(run_folder.foreign_files(tmp_path)) == sorted(
        [*theirs, tmp_path / "stories" / "drafts"]
    )
    with pytest.raises(OutputError, match=r"did not write, e\.g\. .*\(5 in all\)"):
        run_folder.check_ownership(tmp_path, overwrite=False)
    run_folder.check_ownership(tmp_path, overwrite=True)  # allowed, they are kept

    run_folder.clear_run(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == sorted(
        [
            ".storyloom.lock",
            "_work",
            "_work/todo.txt",
            "clips",
            "clips/holiday.mp4",
            "clips/mine.parquet",
            "notes.txt",
            "stories",
            "stories/drafts",
        ]
    )


def test_a_parquet_of_theirs_under_a_shard_name_is_not_taken_for_ours(tmp_path):
    (tmp_path / "clips").mkdir()
    fake = tmp_path / "clips" / "part-00000-of-00001.parquet"
    fake.write_bytes(b"PAR1 not really")
    assert run_folder.foreign_files(tmp_path) == [fake]
    with pytest.raises(OutputError, match="would write over"):
        run_folder.check_ownership(tmp_path, overwrite=True)


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with run_folder.RunLock(tmp_path):
        holder = json.loads((tmp_path / run_folder.LOCK_NAME).read_text())
        assert holder["host"] == socket.gethostname()
        with pytest.raises(OutputError, match=rf"pid {holder['pid']} on .* is writing this folder"):
            run_folder.RunLock(tmp_path).acquire()
    # released: the next run takes it without a word
    with run_folder.RunLock(tmp_path):
        pass


def test_a_lock_left_by_a_run_that_died_is_taken_over(tmp_path, caplog):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "earlier"}
    (tmp_path / run_folder.LOCK_NAME).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING), run_folder.RunLock(tmp_path):
        assert json.loads((tmp_path / run_folder.LOCK_NAME).read_text())["pid"] != stale["pid"]
    assert f"pid {stale['pid']}" in caplog.text and "taking it over" in caplog.text


def test_a_lock_held_by_another_process_is_refused(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from curate.run_folder import RunLock; "
            f"lock = RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
            "sys.stdin.read()",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"pid {holder.pid} on "):
            run_folder.RunLock(tmp_path).acquire()
    finally:
        holder.communicate("", timeout=30)
    # the holder ended without releasing: the lock is free all the same (the kernel's flock)
    with run_folder.RunLock(tmp_path):
        pass
