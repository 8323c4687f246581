"""``curate export`` from the command line: bad arguments refused before anything is written."""

from __future__ import annotations

import pytest

from pipelines.cli import main


@pytest.mark.parametrize("fps", ["inf", "nan", "0", "-8"])
def test_a_bad_fps_is_refused_before_anything_is_written(tmp_path, capsys, fps):
    out = tmp_path / "shards"
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(tmp_path / "run"), "--out", str(out), "--fps", fps])
    assert exit_.value.code == 2
    assert "argument --fps: expected a positive" in capsys.readouterr().err
    assert not out.exists()


def test_a_file_as_out_is_one_line(tmp_path, capfd):
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "shards"):
        assert main(["export", str(tmp_path / "run"), "--out", str(out), "--no-progress"]) == 2
        captured = capfd.readouterr()
        where = "" if out == tmp_path / "a-file" else f"{out}: "
        assert captured.err.strip() == (
            f"curate export: {where}{tmp_path / 'a-file'} exists and is not a folder"
        )
