"""``make demo``'s program: it writes comparison.json and ends with the report's path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli.demo import main


@pytest.mark.slow  # a real curate run: ~1 minute on 2 cores
def test_demo_writes_the_comparison_and_ends_with_the_report(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--videos", "6", "--skip-render"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = Path(lines[-1])
    assert report == tmp_path / "curated" / "report.html" and report.stat().st_size > 10_000
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert comparison["clips"] > 0 and comparison["recaptions"] == comparison["clips"]
    assert 0 <= comparison["recaptions_right"] <= comparison["recaptions"]
