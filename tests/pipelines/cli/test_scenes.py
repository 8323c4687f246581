"""``curate scenes`` from the command line."""

from __future__ import annotations

import json
from fractions import Fraction

from pipelines.cli import main


def test_cli_json_lists_cuts_and_reports_failures(shapes_corpus, tmp_path, capsys):

    v = max(shapes_corpus, key=lambda v: len(v.scenes))
    missing = tmp_path / "missing.mp4"
    rc = main(["scenes", str(v.path), str(missing), "--json"])
    assert rc == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2
    good, failed = lines
    assert good["ok"] and good["file"] == str(v.path)
    assert len(good["cuts"]) == len(v.scenes) - 1
    for got, t in zip(good["cuts"], v.scenes[1:], strict=True):
        assert abs(got - t.start_frame) <= 2
    assert good["transitions"] == [t.transition_in for t in v.scenes[1:]]
    assert good["cut_times"] == [
        round(float(c / Fraction(v.fps_fraction)), 6) for c in good["cuts"]
    ]
    assert not failed["ok"] and failed["error"] == "VideoOpenFailure"
    assert failed["file"] == str(missing)


def test_cli_table(shapes_corpus, capsys):

    v = shapes_corpus.videos[0]
    assert main(["scenes", str(v.path), "--detector", "adaptive"]) == 0
    out = capsys.readouterr().out
    assert str(v.path) in out and "scene(s)" in out and "start" in out
