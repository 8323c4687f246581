"""benchmarks/storygen_speed.py: repeated renders and the median run the ratios compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import storygen_speed

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_median_run_is_the_middle_wall_time():
    runs = [{"wall_time_s": w, "k": i} for i, w in enumerate([3.0, 1.0, 2.0])]
    assert storygen_speed.median_run(runs)["k"] == 2
    assert storygen_speed.median_run(runs[:2])["k"] == 1  # of two, the faster
    assert storygen_speed.median_run(runs[:1])["k"] == 0


def test_a_later_run_that_compiled_is_named(capsys):
    """The H200 case: the second of three renders chose a larger batch and compiled for it,
    so the median of the three is no warm render."""
    result = json.loads(
        (RESULTS / "storygen_speed_h200_5steps_hierarchical_3runs_c.json").read_text()
    )
    rows = result["rows"]
    summary = storygen_speed.summarise(rows, [3376])["medians"]["3376"]["hierarchical"]
    assert summary["compiled_again"] == [
        {
            "run": 2,
            "compile_s": rows[1]["compile_s"],
            "largest_batch_rows": 226,
            "first_run_largest_batch_rows": 114,
        }
    ]
    assert rows[1]["compile_s"] > 60 and rows[2]["compile_s"] == 0
    # a compiling first run and two warm ones: nothing named
    again = storygen_speed.summarise([rows[0], rows[2], rows[2]], [3376])["medians"]["3376"]
    assert again["hierarchical"]["compiled_again"] == []
    storygen_speed.print_table({**result, **storygen_speed.summarise(rows, [3376])})
    out = capsys.readouterr().out
    assert "run 2 compiled again (98.8 s; largest batch 226 rows, run 1's 114)" in out


def test_largest_batch_rows_reads_padded_and_eager_buckets():
    buckets = {"2x16": [[1, 0.1]], "30x16": [[15, 1.0]], "114x16 compiled": [[57, 9.0]]}
    assert storygen_speed.largest_rows(buckets) == 114
    assert storygen_speed.largest_rows({"4x11": [[2, 0.1]]}) == 4
    assert storygen_speed.largest_rows({}) == 0


def test_batched_level_rate_counts_its_calls_after_the_compiling_batch():
    buckets = {
        "2x16": [[1, 0.5]],
        "114x16 compiled": [[57, 100.0], [56, 4.0], [56, 4.0]],
        "30x16": [[15, 2.0]],
    }
    rate = storygen_speed.largest_bucket_rate(buckets, flops_per_call_pass=1e12, passes=5)
    assert rate["bucket"] == "114x16 compiled"
    assert (rate["batches"], rate["calls"], rate["seconds"]) == (2, 112, 8.0)
    # 112 calls of 1 TFLOP a pass, 5 passes each, in 8 s; the padding rows are not counted
    assert rate["tflops_per_s"] == 112 * 5 / 8.0
    # a bucket of one batch is all there is to count
    only = storygen_speed.largest_bucket_rate({"4x11": [[2, 1.0]]}, 1e12, 2)
    assert (only["batches"], only["tflops_per_s"]) == (1, 4.0)
    assert storygen_speed.largest_bucket_rate({}, 1e12, 2) is None


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
    # a CPU renders eager by default: nothing compiled, no compile phases
    assert all(r["compile_s"] == 0 and r["compile_phases_s"] == {} for r in rows)
    # 16 frames are one call, and the CPU's default guidance 1 runs one branch: one row
    assert [r["largest_batch_rows"] for r in rows] == [1, 1, 1, 1]
    # one batch of one call: the batched level is that batch, at the run's own FLOP count
    for r in rows:
        level = r["batched_level"]
        assert (level["batches"], level["calls"]) == (1, 1)
        flops = result["unet_tflop_per_call_forward"] * 1e12  # one step, one branch
        assert abs(level["tflops_per_s"] - flops / level["seconds"] / 1e12) < 1e-9
    medians = result["medians"]["16"]
    for mode in ("hierarchical", "autoregressive"):
        walls = [r["wall_time_s"] for r in rows if r["mode"] == mode]
        assert medians[mode]["runs"] == 2
        assert medians[mode]["all_wall_times_s"] == walls
        assert medians[mode]["wall_time_s"] == min(walls)
    ratio = result["ratios"]["16"]["wall_time_autoregressive_over_hierarchical"]
    want = medians["autoregressive"]["wall_time_s"] / medians["hierarchical"]["wall_time_s"]
    assert abs(ratio - want) < 1e-12


def test_each_render_is_written_as_it_finishes(tmp_path, monkeypatch):
    """A run cut short (a time limit) keeps the renders it finished: the JSON is rewritten
    after every render, marked incomplete until the last."""
    out = tmp_path / "speed.json"
    seen = []
    real = storygen_speed.run

    def spy(args, on_run=None):
        def record(partial):
            on_run(partial)
            seen.append(json.loads(out.read_text()))

        return real(args, on_run=record)

    monkeypatch.setattr(storygen_speed, "run", spy)
    argv = ["--lengths", "16", "--steps", "1", "--out", str(out)]
    assert storygen_speed.main(argv) == 0
    assert [len(s["rows"]) for s in seen] == [1, 2]
    assert [s["complete"] for s in seen] == [False, False]
    assert "autoregressive" not in seen[0]["medians"]["16"]
    assert seen[1]["ratios"]["16"]["wall_time_autoregressive_over_hierarchical"] > 0
    final = json.loads(out.read_text())
    assert final["complete"] is True and final["rows"] == seen[1]["rows"]


def test_decode_speed_counts_the_decoders_work():
    """The VAE decode timed alone: a latent model's decoder does work per frame, a pixel-space
    model's decode is only a clamp."""
    import argparse

    def pipe_of(preset):
        args = argparse.Namespace(device="cpu", dtype="float32", model=None, preset=preset)
        args.mode = "masked"
        return storygen_speed.load(args)[0]

    latent, pixels = pipe_of("micro-latent"), pipe_of("micro")
    assert storygen_speed.decode_flops(latent) > 0
    assert storygen_speed.decode_rate(latent, "cpu", frames=32) > 0
    assert storygen_speed.decode_flops(pixels) == 0


def test_runs_of_separate_calls_merge_into_one_comparison(tmp_path, capsys):
    """One mode per call (a device's time limit), merged: the medians and ratio of a run of
    both; runs made with other settings are refused, naming the setting."""
    common = ["--lengths", "16", "--steps", "1"]
    hier, auto = tmp_path / "hier.json", tmp_path / "auto.json"
    assert storygen_speed.main([*common, "--skip", "autoregressive", "--out", str(hier)]) == 0
    argv = [*common, "--skip", "hierarchical", "--repeats", "2", "--out", str(auto)]
    assert storygen_speed.main(argv) == 0
    merged = tmp_path / "both.json"
    assert storygen_speed.main(["--merge", str(hier), str(auto), "--out", str(merged)]) == 0
    result = json.loads(merged.read_text())
    assert result["merged_from"] == [str(hier), str(auto)]
    assert [r["mode"] for r in result["rows"]] == ["hierarchical"] + ["autoregressive"] * 2
    assert result["speedups_resolved"] == ["tconv"]  # the CPU's auto
    h = json.loads(hier.read_text())["rows"][0]["wall_time_s"]
    a = storygen_speed.median_run(json.loads(auto.read_text())["rows"])["wall_time_s"]
    ratio = result["ratios"]["16"]["wall_time_autoregressive_over_hierarchical"]
    assert abs(ratio - a / h) < 1e-12
    # other speed-ups: refused, the setting named
    other = tmp_path / "other.json"
    argv = [*common, "--skip", "hierarchical", "--speedups", "none", "--out", str(other)]
    assert storygen_speed.main(argv) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        storygen_speed.main(["--merge", str(hier), str(other), "--out", str(merged)])
    assert "differ in speedups_resolved" in capsys.readouterr().err
    # each mode at its own best, asked for: merged, each mode's speed-ups recorded
    argv = ["--merge", str(hier), str(other), "--per-mode-speedups", "--out", str(merged)]
    assert storygen_speed.main(argv) == 0
    assert "speed-ups: hierarchical tconv; autoregressive none" in capsys.readouterr().out
    result = json.loads(merged.read_text())
    assert result["speedups_by_mode"] == {"hierarchical": ["tconv"], "autoregressive": []}
    assert result["speedups_resolved"] is None
    a = json.loads(other.read_text())["rows"][0]["wall_time_s"]
    ratio = result["ratios"]["16"]["wall_time_autoregressive_over_hierarchical"]
    assert abs(ratio - a / h) < 1e-12
    # but one mode's runs with two sets of speed-ups are refused
    with pytest.raises(SystemExit):
        storygen_speed.main(["--merge", str(auto), str(other), "--per-mode-speedups"])
    assert "autoregressive runs used speed-ups []" in capsys.readouterr().err
    # a result from before the resolved speed-ups were recorded cannot be vouched for
    old = json.loads(other.read_text())
    del old["speedups_resolved"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit):
        storygen_speed.main(["--merge", str(hier), str(tmp_path / "old.json")])
    assert "does not record 'speedups_resolved'" in capsys.readouterr().err
    # cuDNN's autotuner off against on: refused; a result from before it was recorded ran on
    mine = json.loads(hier.read_text())
    assert mine["cudnn_autotune"] is True
    (tmp_path / "untuned.json").write_text(json.dumps({**mine, "cudnn_autotune": False}))
    with pytest.raises(SystemExit):
        storygen_speed.main(["--merge", str(tmp_path / "untuned.json"), str(auto)])
    assert "differ in cudnn_autotune: False against True" in capsys.readouterr().err
    del mine["cudnn_autotune"]
    (tmp_path / "before.json").write_text(json.dumps(mine))
    argv = ["--merge", str(tmp_path / "before.json"), str(auto), "--out", str(merged)]
    assert storygen_speed.main(argv) == 0


def test_a_short_warm_up_compiles_the_buckets_the_timed_render_would():
    """--warmup-steps renders with fewer steps but must compile what a render of --steps
    compiles: a bucket compiles once it holds COMPILE_MIN_PASSES passes, counted as if each
    batch ran the timed render's steps."""
    from storygen import accel, runner

    need = accel.COMPILE_MIN_PASSES
    for batches, steps in ((2, 25), (1, 25), (3, 20), (4, 10), (9, 5)):
        full = accel.CompilePolicy("on")
        full.plan([(30, steps)] * batches)
        with storygen_speed.compile_as_for(steps, 1):
            short = runner.CompilePolicy("on")
        short.plan([(30, 1)] * batches)
        assert bool(full.buckets) == (batches * steps >= need)
        assert short.buckets == full.buckets and short.rows == full.rows
    assert runner.CompilePolicy is accel.CompilePolicy  # restored on leaving


def test_warm_up_renders_come_before_the_timed_ones_and_apart(tmp_path):
    out = tmp_path / "speed.json"
    argv = ["--lengths", "16", "--steps", "2", "--warmup-steps", "1", "--out", str(out)]
    assert storygen_speed.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["warmup_steps"] == 1
    warm = result["warmup_renders"]
    assert [(w["frames"], w["mode"], w["steps"]) for w in warm] == [
        (16, "hierarchical", 1),
        (16, "autoregressive", 1),
    ]
    assert all(w["wall_time_s"] > 0 and w["compile_s"] == 0 for w in warm)  # a CPU: eager
    assert all(w["compile_phases_s"] == {} for w in warm)  # nothing compiled, nothing tuned
    assert [(r["mode"], r["repeat"]) for r in result["rows"]] == [
        ("hierarchical", 0),
        ("autoregressive", 0),
    ]
    # the timed renders ran the asked steps: two passes of their one call
    assert [r["unet_passes"] for r in result["rows"]] == [2, 2]


@pytest.mark.slow
def test_a_compiled_warm_up_render_reports_where_its_compiling_went(tmp_path, monkeypatch):
    """The warm-up render pays the compile, and records its phases (where tuning kernels
    would show, which its compile_s leaves out); the timed render after it compiles nothing."""
    from storygen.accel import compile_seconds

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    out = tmp_path / "speed.json"
    argv = ["--lengths", "16", "--steps", "2", "--warmup-steps", "1", "--compile", "all"]
    argv += ["--skip", "autoregressive", "--out", str(out)]
    assert storygen_speed.main(argv) == 0
    result = json.loads(out.read_text())
    (warm,) = result["warmup_renders"]
    assert warm["compiled"] and warm["compile_s"] > 0
    assert warm["compile_s"] == pytest.approx(compile_seconds(warm["compile_phases_s"]))
    assert len(warm["compile_phases_s"]) > 1  # dynamo's outer phase and those inside it
    (row,) = result["rows"]
    assert row["compiled"] and row["compile_s"] == 0
