"""benchmarks/dedup_shared_shot.py: both ways find the same duplicates, and keeping each
clip's nearest neighbours hands on fewer pairs than every pair once the shared shot has more
copies than a clip keeps."""

from __future__ import annotations

import json

from benchmarks.dedup_shared_shot import main
from curate.dedup import MAX_NEIGHBOURS


def test_the_shared_shot_benchmark_finds_the_same_duplicates_with_fewer_pairs(tmp_path, capsys):
    out = tmp_path / "r.json"
    videos = 3 * MAX_NEIGHBOURS
    assert main(["--videos", str(videos), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["same_duplicates"] is True
    runs = {r["arm"]: r for r in result["runs"]}
    assert runs["all"]["pairs"] == videos * (videos - 1) // 2  # every pair of intros
    assert runs["nearest"]["pairs"] <= videos * MAX_NEIGHBOURS < runs["all"]["pairs"]
    assert runs["nearest"]["duplicates"] == runs["all"]["duplicates"] == videos - 1
    assert "| 96 (480) |" in capsys.readouterr().out
