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


def test_sitting_continue_needs_the_arms_folders(tmp_path):
    script = _script()
    with pytest.raises(SystemExit, match=r"no trained folder .*'truth-s0'"):
        script.main(
            ["sitting", "--arm", "truth-s0=truth:none:0", "--out", str(tmp_path / "r")]
            + ["--models", str(tmp_path / "m"), "--continue", "--no-probe", "--device", "cpu"]
        )


def _continued_training(calls):
    """A stand-in for an arm's training process: records its command and leaves a folder
    whose training.json adds --steps to its --init folder's."""

    class Done:
        def __init__(self, cmd, **_):
            calls.append(cmd)
            out = Path(cmd[cmd.index("--out") + 1])
            init = Path(cmd[cmd.index("--init") + 1])
            before = json.loads((init / "training.json").read_text())["steps_done"]
            out.mkdir(parents=True)
            steps = int(cmd[cmd.index("--steps") + 1])
            (out / "training.json").write_text(json.dumps({"steps_done": before + steps}))

        def wait(self):
            return 0

    return Done


def test_sitting_continue_trains_each_arm_on_from_its_folder(tmp_path, monkeypatch):
    """A --continue call starts every arm from its folder (--init) into NAME.next, which
    replaces the folder once the arm has finished; --no-probe reports the steps only."""
    script = _script()
    models = tmp_path / "m"
    for name in ("raw-s0", "truth-s0"):
        (models / name).mkdir(parents=True)
        (models / name / "training.json").write_text(json.dumps({"steps_done": 100}))
    calls = []
    monkeypatch.setattr(script.subprocess, "Popen", _continued_training(calls))
    results = script.main(
        ["sitting", "--arm", "raw-s0=raw:shards/raw:0", "--arm", "truth-s0=truth:none:0"]
        + ["--out", str(tmp_path / "r"), "--models", str(models), "--steps", "7"]
        + ["--continue", "--no-probe", "--device", "cpu", "--workers", "4"]
    )
    assert results == {"raw-s0": {"steps_done": 107}, "truth-s0": {"steps_done": 107}}
    for cmd, name in zip(calls, ("raw-s0", "truth-s0"), strict=True):
        assert cmd[cmd.index("--init") + 1] == str(models / name)
        assert cmd[cmd.index("--out") + 1] == str(models / f"{name}.next")
        assert cmd[cmd.index("--workers") + 1] == "2"
    assert sorted(p.name for p in models.iterdir()) == ["raw-s0", "truth-s0"]
    assert json.loads((models / "raw-s0" / "training.json").read_text())["steps_done"] == 107


@pytest.mark.slow
def test_an_arm_continued_with_init_adds_a_run(tmp_path):
    """`train --init` on a micro arm: the continued folder holds both runs' steps."""
    script = _script()
    common = ["--arm", "truth", "--shards", "none", "--preset", "micro", "--device", "cpu"]
    common += ["--workers", "0", "--steps", "1"]
    script.main(["train", *common, "--out", str(tmp_path / "a")])
    report = script.main(
        ["train", *common, "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a")]
    )
    assert report["steps_done"] == 2
    assert [r["steps"] for r in report["runs"] if r["part"] == "unet"] == [1, 1]


def test_sitting_to_steps_evens_out_arms_a_time_cap_left_uneven(tmp_path, monkeypatch):
    """--to-steps gives each continued arm the steps it lacks to reach the same total, and
    skips an arm already there."""
    script = _script()
    models = tmp_path / "m"
    for name, done in (("raw-s0", 100), ("truth-s0", 90), ("curated-s0", 130)):
        (models / name).mkdir(parents=True)
        (models / name / "training.json").write_text(json.dumps({"steps_done": done}))
    calls = []
    monkeypatch.setattr(script.subprocess, "Popen", _continued_training(calls))
    arms = ["raw-s0=raw:shards/raw:0", "truth-s0=truth:none:0", "curated-s0=curated:c:0"]
    results = script.main(
        ["sitting", *[a for spec in arms for a in ("--arm", spec)]]
        + ["--out", str(tmp_path / "r"), "--models", str(models), "--to-steps", "120"]
        + ["--continue", "--no-probe", "--device", "cpu"]
    )
    assert [c[c.index("--steps") + 1] for c in calls] == ["20", "30"]
    assert results == {
        "raw-s0": {"steps_done": 120},
        "truth-s0": {"steps_done": 120},
        "curated-s0": {"steps_done": 130},
    }
    with pytest.raises(SystemExit, match="needs --continue"):
        script.main(
            ["sitting", "--arm", arms[0], "--out", str(tmp_path / "r2"), "--to-steps", "5"]
            + ["--models", str(models), "--device", "cpu"]
        )


def test_sitting_bundle_leaves_three_files_whatever_the_arm_count(tmp_path, monkeypatch):
    """A device call returns at most eight files: --bundle merges the per-arm logs, JSONs
    and sheets of four arms into sitting.json, train.log and sheets.png."""
    from PIL import Image

    script = _script()
    models, out = tmp_path / "m", tmp_path / "r"
    names = ["raw-s0", "truth-s0", "curated-s0", "curated-s1"]
    for name in names:
        (models / name).mkdir(parents=True)
        (models / name / "training.json").write_text(json.dumps({"steps_done": 10}))

    class Done:
        def __init__(self, cmd, stdout, **_):
            name = Path(cmd[cmd.index("--out") + 1]).name.removesuffix(".next")
            stdout.write(f"trained {name}\n")
            target = Path(cmd[cmd.index("--out") + 1])
            target.mkdir(parents=True)
            (target / "training.json").write_text(json.dumps({"steps_done": 15}))

        def wait(self):
            return 0

    def fake_probe(argv):
        name = argv[argv.index("--model") + 1].split("=")[0]
        colour = {"raw-s0": (200, 0, 0), "truth-s0": (0, 200, 0)}.get(name, (0, 0, 200))
        Image.new("RGB", (40, 10 + len(name)), colour).save(out / f"sheet-{name}.png")
        result = {name: {"hierarchical": {"all": 0.5}, "ceiling": {"all": 1.0}}}
        (out / f"{name}.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(script.subprocess, "Popen", Done)
    real_main = script.main
    monkeypatch.setattr(
        script, "main", lambda argv: fake_probe(argv) if argv[0] == "probe" else real_main(argv)
    )
    arms = ["raw-s0=raw:r:0", "truth-s0=truth:none:0", "curated-s0=curated:c:0"]
    arms.append("curated-s1=curated:c:1")
    real_main(
        ["sitting", *[a for spec in arms for a in ("--arm", spec)], "--bundle"]
        + ["--out", str(out), "--models", str(models), "--steps", "5", "--continue"]
        + ["--device", "cpu"]
    )
    assert sorted(p.name for p in out.iterdir()) == ["sheets.png", "sitting.json", "train.log"]
    merged = json.loads((out / "sitting.json").read_text())
    assert list(merged) == names
    assert all(merged[n]["sitting"]["arms"] == names for n in names)
    log = (out / "train.log").read_text()
    assert [line for line in log.splitlines() if line.startswith("trained")] == [
        f"trained {n}" for n in names
    ]
    sheet = Image.open(out / "sheets.png")
    assert sheet.size == (40, sum(10 + len(n) for n in names))
    # raw's sheet on top, then truth's
    assert sheet.getpixel((5, 2)) == (200, 0, 0)
    assert sheet.getpixel((5, 10 + len("raw-s0") + 2)) == (0, 200, 0)
    table = real_main(
        ["table", "--results", str(out / "sitting.json"), "--out", str(tmp_path / "t.json")]
    )
    assert set(table) == set(names)
