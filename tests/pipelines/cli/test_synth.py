"""``curate synth`` from the command line."""

from __future__ import annotations

import pytest

from curate.shapes import GroundTruth
from pipelines.cli import main


def test_cli_writes_a_corpus_and_summarises(tmp_path, capsys):

    rc = main(
        [
            "synth",
            "--out",
            str(tmp_path),
            "--videos",
            "3",
            "--seed",
            "2",
            "--resolutions",
            "128x96",
            "--max-scenes",
            "2",
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "3 videos" in out and "webvid.csv" in out
    gt = GroundTruth.load(tmp_path)
    assert len(gt) == 3 and all(v.path.exists() for v in gt)
    assert all(len(v.scenes) <= 2 for v in gt)


def test_cli_rejects_bad_rates(tmp_path, capsys):

    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path), "--noise-rate", "2"])
    assert "'2'" in capsys.readouterr().err


def test_encoder_processes_end_with_a_killed_synth(tmp_path):
    # a SIGKILLed `curate synth` leaves no encoder running (writing into its folder) behind it
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = "import sys; from pipelines.cli import main; sys.exit(main())"
    args = ["synth", "--out", str(tmp_path / "c"), "--videos", "40", "--workers", "2"]
    run = subprocess.Popen(
        [sys.executable, "-c", cmd, *args, "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        children: list[psutil.Process] = []
        while time.monotonic() < deadline and len(children) < 2:
            children = [
                c
                for c in psutil.Process(run.pid).children()
                if "spawn_main" in " ".join(c.cmdline())
            ]
            time.sleep(0.2)
        assert len(children) >= 2, "the encoder processes never started"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [c.pid for c in alive]
    finally:
        if run.poll() is None:
            run.kill()


def test_cli_refuses_an_unknown_preset_and_a_file_as_out(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "c"), "--preset", "bogus"])
    assert "'bogus'" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "corpus"):
        assert main(["synth", "--out", str(out), "--videos", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert (
            err.strip()
            == f"curate synth: --out {out}: {tmp_path / 'a-file'} exists and is not a folder"
        )
