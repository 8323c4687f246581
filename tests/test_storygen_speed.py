"""benchmarks/storygen_speed.py: repeated renders and the median run the ratios compare."""

from __future__ import annotations

import json
import time
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


def _micro_pipe():
    import argparse

    args = argparse.Namespace(device="cpu", dtype="float32", model=None, preset="micro")
    args.mode = "masked"
    return storygen_speed.load(args)[0]


def test_a_call_of_fewer_frames_counts_its_own_flops(tmp_path):
    """31 frames: one call of 16 frames, then 15 of 3. Each call counts the FLOPs of its own
    frames (a 3-frame call about a fifth of a 16-frame one), in the render's rate and in its
    batched level (the 15 calls of 3 frames)."""
    out = tmp_path / "speed.json"
    argv = ["--lengths", "31", "--steps", "1", "--skip", "autoregressive", "--out", str(out)]
    assert storygen_speed.main(argv) == 0
    result = json.loads(out.read_text())
    by_frames = {
        int(f): v * 1e12 for f, v in result["unet_tflop_per_call_forward_by_frames"].items()
    }
    assert sorted(by_frames) == [3, 16]
    assert by_frames[16] == result["unet_tflop_per_call_forward"] * 1e12
    assert by_frames[3] < 0.3 * by_frames[16]
    (row,) = result["rows"]
    assert sorted(row["bucket_times_s"]) == ["15x3", "1x16"]
    flops = by_frames[16] + 15 * by_frames[3]  # one step, one guidance branch
    steady = row["unet_batches_s"] - row["warmup_s"]
    assert row["unet_tflops_per_s"] == pytest.approx(flops / steady / 1e12)
    level = row["batched_level"]
    assert level["bucket"] == "15x3" and level["calls"] == 15
    assert level["tflops_per_s"] == pytest.approx(15 * by_frames[3] / level["seconds"] / 1e12)


def test_the_default_lengths_make_only_whole_calls():
    """16, 226 and 3,376 frames are whole calls only: their figures count one call's FLOPs."""
    import argparse

    pipe = _micro_pipe()
    args = argparse.Namespace(frames_per_call=16, overlap=1)
    modes = {"hierarchical", "autoregressive"}
    assert storygen_speed.call_lengths(pipe, args, [16, 226, 3376], modes) == [16]
    assert storygen_speed.call_lengths(pipe, args, [31], modes) == [3, 16]
    assert storygen_speed.call_lengths(pipe, args, [31], {"autoregressive"}) == [16]


def test_useful_flops_count_each_bucket_at_its_frames():
    buckets = {"2x16": [[1, 0.5]], "30x3": [[15, 2.0]], "8x16 compiled": [[3, 1.0], [2, 1.0]]}
    flops = {16: 5.0, 3: 1.0}
    # 1 + 3 + 2 calls of 16 frames, 15 of 3; the compiled bucket's padding rows not counted
    assert storygen_speed.useful_flops(buckets, flops, passes=2) == 2 * (6 * 5.0 + 15 * 1.0)
    assert storygen_speed.useful_flops(buckets, 5.0, passes=1) == 21 * 5.0
    rate = storygen_speed.largest_bucket_rate(buckets, flops, passes=2)
    assert rate["bucket"] == "30x3" and rate["tflops_per_s"] == 15 * 1.0 * 2 / 2.0 / 1e12


def test_the_flop_count_render_leaves_the_unet_as_loaded(monkeypatch):
    """The render that finds a call's arguments runs no speed-ups: none applied in place
    (tconv), no speed-up copy kept (qkv, as CUDA's defaults have), no hook left; a render
    with --speedups none after it runs none."""
    from storygen import accel, runner

    monkeypatch.setitem(accel.DEFAULT_SPEEDUPS, "cpu", ("tconv", "qkv"))
    pipe = _micro_pipe()
    before = [(name, type(m)) for name, m in pipe.unet.named_modules()]
    a, kw = storygen_speed.first_unet_call(pipe, 16, 1.0)
    assert a[0].shape[2] == 16
    assert [(name, type(m)) for name, m in pipe.unet.named_modules()] == before
    assert accel.applied_speedups(pipe.unet) == {}
    assert not runner._SPEEDUP_COPIES.get(pipe.unet)
    assert not pipe.unet._forward_pre_hooks
    out = pipe(
        storygen_speed.story_prompts(16),
        16,
        frames_per_call=16,
        num_inference_steps=1,
        guidance_scale=1.0,
        output_type=None,
        progress=False,
        compile="off",
        speedups="none",
    )
    assert out.stats.speedups == {}


def test_the_spread_speedup_compares_median_runs():
    """The first render on the devices compiles or autotunes: the speed-up over one device
    takes the spread mode's median run, as every other ratio does."""

    def row(mode, wall):
        return {
            "frames": 226,
            "mode": mode,
            "wall_time_s": wall,
            "wall_time_after_warmup_s": wall,
            "rounds": 2,
            "model_calls": 16,
            "compile_s": 0.0,
            "largest_batch_rows": 15,
        }

    rows = [row("hierarchical", 6.0)] + [row("hierarchical x2", w) for w in (20.0, 3.0, 4.0)]
    ratios = storygen_speed.summarise(rows, [226])["ratios"]["226"]
    assert ratios["speedup_over_one_device"] == 6.0 / 4.0


def test_batches_on_several_devices_are_timed_by_the_wall_they_cover(tmp_path):
    """Spread over two devices, batches run at once: the UNet's wall time is the union of
    their spans, what is left of the wall is never negative, and their summed seconds are
    device-seconds."""
    out = tmp_path / "speed.json"
    argv = ["--lengths", "31", "--steps", "1", "--skip", "autoregressive"]
    argv += ["--devices", "cpu,cpu", "--out", str(out)]
    assert storygen_speed.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["hierarchical", "hierarchical x2"]
    for r in rows:
        assert 0 < r["unet_wall_s"] <= r["wall_time_s"]
        assert r["other_s"] == pytest.approx(r["wall_time_s"] - r["unet_wall_s"])
        assert r["other_s"] >= 0
    one, spread = rows
    # one device: its batches one after another, their sum the wall they cover
    assert one["unet_wall_s"] == pytest.approx(one["unet_batches_s"], rel=0.1, abs=0.02)
    assert sum(spread["calls_per_device"]) == 16 and min(spread["calls_per_device"]) > 0
    assert storygen_speed.covered_s([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (5.5, 5.7)]) == 4.0
    assert storygen_speed.covered_s([]) == 0.0


def test_a_batched_level_of_one_batch_says_it_includes_the_first():
    level = storygen_speed.largest_bucket_rate({"30x3": [[15, 2.0]]}, 1e12, 1)
    assert level["first_batch_included"] is True
    text = storygen_speed.describe_level(level)
    assert text == "30x3, its only batch, compiling or autotuning included"
    level = storygen_speed.largest_bucket_rate({"30x3": [[15, 9.0], [15, 2.0]]}, 1e12, 1)
    assert level["first_batch_included"] is False
    assert storygen_speed.describe_level(level) == "30x3, 1 batch after the first"
    # of two buckets of as many rows (windows that start compiled part-way), the compiled one
    buckets = {"1x16": [[1, 9.0], [1, 1.0]], "1x16 compiled": [[1, 60.0], [1, 0.5], [1, 0.5]]}
    level = storygen_speed.largest_bucket_rate(buckets, 1e12, 1)
    assert level["bucket"] == "1x16 compiled" and level["batches"] == 2


def test_a_render_of_one_batch_logs_what_its_level_timed(tmp_path, capsys):
    argv = ["--lengths", "16", "--steps", "1", "--skip", "autoregressive"]
    assert storygen_speed.main([*argv, "--out", str(tmp_path / "speed.json")]) == 0
    log = capsys.readouterr().out
    assert "batched level (1x16, its only batch, compiling or autotuning included)" in log
    assert "batches after the first" not in log


def _result(**settings):
    row = {
        "frames": 16,
        "mode": settings.pop("mode"),
        "wall_time_s": 1.0,
        "wall_time_after_warmup_s": 1.0,
        "rounds": 1,
        "model_calls": 1,
        "compile_s": 0.0,
        "largest_batch_rows": 1,
    }
    base = {k: None for k in storygen_speed.SAME_SETTINGS}
    return {**base, "speedups_resolved": ["tconv"], "rows": [row], **settings}


def test_merge_refuses_other_warm_up_steps_and_records_each_modes_repeats():
    hier = _result(mode="hierarchical", repeats=1, warmup_steps=None)
    auto = _result(mode="autoregressive", repeats=3, warmup_steps=None)
    warm = {**auto, "warmup_steps": 1}
    with pytest.raises(ValueError, match="differ in warmup_steps: None against 1"):
        storygen_speed.merge([hier, warm], ["h.json", "a.json"])
    merged = storygen_speed.merge([hier, auto], ["h.json", "a.json"])
    assert merged["repeats"] is None  # they differ: no one count is the merged run's
    assert merged["repeats_by_mode"] == {"hierarchical": [1], "autoregressive": [3]}
    same = storygen_speed.merge([hier, {**auto, "repeats": 1}], ["h.json", "a.json"])
    assert same["repeats"] == 1
    # a result from before warm-up renders were recorded rendered none
    old = {k: v for k, v in hier.items() if k != "warmup_steps"}
    assert storygen_speed.merge([old, auto], ["old.json", "a.json"])["warmup_steps"] is None


def test_the_decoders_compile_is_not_counted_as_time_after_warm_up(tmp_path, monkeypatch):
    """A compiled VAE decoder (vdec) compiles in the render's first decode, which no batch's
    time holds: the time after warm-up leaves it out too. Here its compiled call is stood in
    for: half a second PyTorch's record shows in its first call. Compile seconds recorded in a
    decode outside the decoder's call (a UNet compile the decode waits for) are not its."""
    from storygen import accel, runner

    spent = {"_compile.compile_inner": 0.0}
    monkeypatch.setattr(runner, "compile_phases", lambda: dict(spent))
    monkeypatch.setattr(storygen_speed, "compile_phases", lambda: dict(spent))
    load, run = storygen_speed.load, runner.PlanRunner.run
    rendering: list[bool] = []

    def render(self, *a, **kw):
        rendering.append(True)
        try:
            return run(self, *a, **kw)
        finally:
            rendering.pop()

    def loaded(args):
        pipe, name = load(args)
        decoder, vae_decode = pipe.vae.decoder, pipe.vae.decode

        def compiled(*a, **kw):  # the render's first call compiles
            if rendering and not compiling:
                compiling.append(True)
                time.sleep(0.5)
                spent["_compile.compile_inner"] += 0.5
            return decoder.forward(*a, **kw)

        def waiting(*a, **kw):  # each decode of the render waits for another compile first
            if rendering:
                spent["_compile.compile_inner"] += 0.25
            return vae_decode(*a, **kw)

        decoder._compiled_call_impl = compiled
        setattr(decoder, accel._COMPILED_FLAG, True)
        pipe.vae.decode = waiting
        return pipe, name

    compiling: list[bool] = []
    monkeypatch.setattr(runner.PlanRunner, "run", render)
    monkeypatch.setattr(storygen_speed, "load", loaded)
    out = tmp_path / "speed.json"
    argv = ["--preset", "micro-latent", "--lengths", "16", "--steps", "1", "--compile", "on"]
    argv += ["--speedups", "auto,vdec", "--skip", "autoregressive", "--out", str(out)]
    assert storygen_speed.main(argv) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["compile_s"] > 0.5  # the render's own record holds the others too
    assert row["decoder_compile_s"] == 0.5
    assert row["warmup_s"] == 0.0  # one batch: nothing to tell a compile apart by
    assert row["wall_time_after_warmup_s"] == pytest.approx(row["wall_time_s"] - 0.5)


def test_a_text_to_video_unet_is_counted_as_sampling_runs_it(tmp_path):
    """A diffusers text-to-video UNet runs block by block, a prompt per frame: its FLOPs are
    counted on that pass (its forward never runs)."""
    out = tmp_path / "speed.json"
    argv = ["--mode", "t2v", "--lengths", "16", "--steps", "1", "--skip", "autoregressive"]
    assert storygen_speed.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "random micro (t2v)"
    assert result["unet_tflop_per_call_forward"] > 0
    (row,) = result["rows"]
    assert row["unet_tflops_per_s"] > 0
