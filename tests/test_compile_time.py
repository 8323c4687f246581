"""benchmarks/compile_time.py: its table and what it refuses (the renders are storygen_speed's)."""

from __future__ import annotations

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


@pytest.mark.parametrize("flag", ["--compile", "--repeats"])
def test_the_settings_it_varies_are_its_own(flag, capsys):
    with pytest.raises(SystemExit):
        compile_time.main([flag, "2"])
    assert "are this script's to set" in capsys.readouterr().err
