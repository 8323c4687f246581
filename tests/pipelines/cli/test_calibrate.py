"""``curate calibrate`` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.cli import main
from schemas.io import rows_to_table, write_parquet


def test_calibrate_cli_on_a_clips_file(tmp_path, capsys):

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        rows.append(
            {
                "clip_id": f"v{i}:0000",
                "video_id": f"v{i}",
                "scene_index": 0,
                "uri": f"v{i}.mp4",
                "start_frame": 0,
                "end_frame": 50,
                "start_s": 0.0,
                "end_s": 2.0,
                "fps": 25.0,
                "width": 64,
                "height": 64,
                "source_caption": "a red circle" if i else None,
                "caption_score": float(rng.uniform(0, 1)) if i else None,
                "status": "kept",
            }
        )
    path = tmp_path / "clips.parquet"
    write_parquet(rows_to_table(rows, "clips"), path, "clips")
    out_json = tmp_path / "cal.json"
    assert main(["calibrate", str(path), "--percentile", "25", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "<- cut" in printed and "39 scored clips" in printed
    payload = json.loads(out_json.read_text())
    scores = [s for s in payload["scores"].values() if s is not None]
    assert payload["dropped"] == sum(s < payload["threshold"] for s in scores) <= 0.25 * 39
    assert payload["counts"]["empty_caption"] == 1


def test_calibrate_cli_reports_bad_input(tmp_path, capsys):

    assert main(["calibrate", str(tmp_path / "missing.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--bins", "0"],
        ["--threshold", "nan"],
        ["--threshold", "2"],
        ["--percentile", "inf"],
        ["--percentile", "100"],
        ["--k", "0"],
    ],
)
def test_bad_values_are_refused_by_the_parser(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", str(tmp_path), *args])
    assert exit_.value.code == 2
    assert repr(args[1]) in capsys.readouterr().err


def test_an_unwritable_json_target_is_refused_before_scoring(tmp_path, capsys, monkeypatch):
    from pipelines.cli import calibrate

    def no_scoring(*args, **kwargs):
        raise AssertionError("scoring started")

    monkeypatch.setattr(calibrate, "_measure", no_scoring)
    (tmp_path / "a-file").write_text("x")
    for target, message in [
        (tmp_path, "is a folder; give a file name"),
        (tmp_path / "a-file" / "cal.json", "a-file exists and is not a folder"),
    ]:
        assert main(["calibrate", str(tmp_path), "--json", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
