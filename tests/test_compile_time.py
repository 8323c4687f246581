"""benchmarks/compile_time.py: its table and what it refuses (the renders are storygen_speed's)."""

from __future__ import annotations

import json

import pytest

from benchmarks import compile_time


def _run(compile_s: float, tracing: float) -> dict:
    return {
        "compile_s": compile_s,
        "compile_phases_s": {"_compile.compile_inner": compile_s, "bytecode_tracing": tracing},
        "wall_time_s": compile_s + 1.0,
        "wall_time_after_warmup_s": 1.0,
    }


def test_the_table_compares_each_choice_with_the_first_cold_and_cached(capsys):
    result = {
        "choices": {
            "all": {"cold": _run(80.0, 10.0), "cached": _run(15.0, 10.0)},
            "regional": {"cold": _run(64.0, 3.0), "cached": _run(6.0, 3.0)},
            "aot": {
                "cold": {**_run(60.0, 0.0), "compile_phases_s": {"aot_compile": 58.0}},
                "cached": {**_run(1.5, 0.0), "compile_phases_s": {"aot_load": 1.5}},
            },
            "pre": {
                "cold": {**_run(70.0, 9.0), "compile_phases_s": {"pre_compile": 70.0}},
                "cached": {**_run(3.0, 0.0), "compile_phases_s": {"pre_load": 3.0}},
            },
        }
    }
    compile_time.print_table(result)
    out = capsys.readouterr().out
    assert "| all | cached | 15.0 | 10.0 | 0.0 | 0.0 | 0.0 | 0.0 | 16.0 | 1.0 |" in out
    assert "| aot | cached | 1.5 | 0.0 | 0.0 | 0.0 | 1.5 | 0.0 | 2.5 | 1.0 |" in out
    assert "| pre | cached | 3.0 | 0.0 | 0.0 | 0.0 | 0.0 | 3.0 | 4.0 | 1.0 |" in out
    assert "cached: compile=all / compile=pre = 5.00x" in out
    assert "cached: compile=all / compile=aot = 10.00x" in out
    assert "cold: compile=all / compile=regional = 1.25x" in out
    assert "cached: compile=all / compile=regional = 2.50x" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--compile", "2"],
        ["--repeats", "2"],
        ["--compile=off"],
        ["--repeats=2"],
        ["--repeat", "2"],  # argparse's abbreviation, which storygen_speed.py would take
        ["--lengths", "16", "--compile=all"],
    ],
)
def test_the_settings_it_varies_are_its_own(argv, capsys, monkeypatch):
    def render(*a, **kw):
        raise AssertionError("nothing renders")

    monkeypatch.setattr(compile_time, "render", render)
    with pytest.raises(SystemExit):
        compile_time.main(argv)
    assert "are this script's to set" in capsys.readouterr().err


def test_a_render_of_one_batch_a_bucket_shows_its_wall_less_compiling(tmp_path, capsys):
    """17 frames: every bucket runs one batch, so the time after warm-up tells no compile
    apart (it is the wall time); the table gives the wall time less the compiling, and says
    that a phase's seconds, summed over its calls, can exceed the wall time."""
    cold = {
        **_run(78.3, 2.9),
        "compile_phases_s": {"_compile.compile_inner": 78.3, "compile_file": 87.9},
        "wall_time_s": 79.2,
        "wall_time_after_warmup_s": 79.2,
    }
    compile_time.print_table({"choices": {"regional": {"cold": cold}}})
    out = capsys.readouterr().out
    assert "| regional | cold | 78.3 | 0.0 | 0.0 | 87.9 | 0.0 | 0.0 | 79.2 | 0.9 |" in out
    assert "| compile_file s (summed) |" in out and "| wall less compiling s |" in out
    assert "can exceed the wall time" in out


def test_each_run_records_its_wall_less_compiling(tmp_path, monkeypatch, capsys):
    rows = iter([{**_run(78.3, 2.9), "wall_time_s": 79.2, "compiled_rows": [1]}] * 2)
    monkeypatch.setattr(compile_time, "render", lambda *a, **kw: next(rows))
    out = tmp_path / "ct.json"
    assert compile_time.main(["--choices", "regional", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["choices"]["regional"]
    assert runs["cold"]["wall_time_less_compile_s"] == pytest.approx(0.9)
