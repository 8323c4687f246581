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
