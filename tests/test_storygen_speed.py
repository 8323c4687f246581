"""benchmarks/storygen_speed.py: repeated renders and the median run the ratios compare."""

from __future__ import annotations

import json

from benchmarks import storygen_speed


def test_median_run_is_the_middle_wall_time():
    runs = [{"wall_time_s": w, "k": i} for i, w in enumerate([3.0, 1.0, 2.0])]
    assert storygen_speed.median_run(runs)["k"] == 2
    assert storygen_speed.median_run(runs[:2])["k"] == 1  # of two, the faster
    assert storygen_speed.median_run(runs[:1])["k"] == 0


def test_repeats_render_each_mode_that_often_and_compare_the_medians(tmp_path):
    out = tmp_path / "speed.json"
    argv = ["--lengths", "16", "--repeats", "2", "--steps", "1", "--out", str(out)]
    assert storygen_speed.main(argv) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["mode"], r["repeat"]) for r in rows] == [
        ("hierarchical", 0),
        ("hierarchical", 1),
        ("autoregressive", 0),
        ("autoregressive", 1),
    ]
    medians = result["medians"]["16"]
    for mode in ("hierarchical", "autoregressive"):
        walls = [r["wall_time_s"] for r in rows if r["mode"] == mode]
        assert medians[mode]["runs"] == 2
        assert medians[mode]["all_wall_times_s"] == walls
        assert medians[mode]["wall_time_s"] == min(walls)
    ratio = result["ratios"]["16"]["wall_time_autoregressive_over_hierarchical"]
    want = medians["autoregressive"]["wall_time_s"] / medians["hierarchical"]["wall_time_s"]
    assert abs(ratio - want) < 1e-12
