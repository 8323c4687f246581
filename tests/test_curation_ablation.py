"""The curation ablation's CPU dry run: synth, curate run, both exports, a few training steps
per arm, the probe and the table, end to end at toy size."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "curation_ablation", ROOT / "benchmarks" / "curation_ablation.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_of_probe_results(tmp_path):
    script = _script()
    facts = {"color": 0.9, "shape": 0.8, "background": 1.0, "motion": 0.5, "all": 0.7}
    result = {"a": {"hierarchical": facts, "ceiling": facts, "training": {"steps_done": 5}}}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(result))
    merged = script.main(["table", "--results", str(path), "--out", str(tmp_path / "t.json")])
    assert merged["a"]["hierarchical"]["all"] == 0.7
    assert "| a | 5 | 0.900 | 0.800 | 1.000 | 0.500 | 0.700 |" in script.format_table(merged)


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    script = _script()
    out = script.main(["dry-run", "--out", str(tmp_path / "abl")])
    prepared = out["prepare"]
    assert prepared["arms"]["raw"]["samples"] > 0 and prepared["arms"]["curated"]["samples"] > 0
    assert all(a["fits"] for a in prepared["arms"].values())
    assert set(out["results"]) == {"raw-s0", "curated-s0", "curated-s1", "truth-s0"}
    assert (tmp_path / "abl" / "results" / "sheet-curated-s0.png").is_file()
