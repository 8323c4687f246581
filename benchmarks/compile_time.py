"""What compiling the UNet costs, cold and from the compile cache, for each way of compiling.

For each ``--compile`` choice (default ``all``, ``regional``, ``aot`` and ``pre``) this renders the same story
twice in two fresh processes that share one empty compile cache: the first process compiles
cold, the second finds the graphs on disk (what "a second run" pays). Each render is a
``benchmarks/storygen_speed.py`` run; the table gives the compile time PyTorch records, where
it went by phase (dynamo's tracing, Inductor's code generation and kernel compiles, loads from
the cache; a phase's seconds are summed over its calls, which can overlap, nested or in
parallel compile workers, so one can exceed the wall time), the render's wall time and that
time less the compiling.

    python benchmarks/compile_time.py                        # CPU, random micro model, 2 steps
    python benchmarks/compile_time.py --device cuda --preset modelscope --dtype bfloat16 \\
        --steps 5 --lengths 3376 --out benchmarks/results/compile_time_h200.json

Arguments this script does not know go to ``storygen_speed.py`` as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "storygen_speed.py"
#: the phases the table shows (nested: they overlap; each summed over its calls, which can
#: overlap too, so one can exceed the wall time); the JSON keeps them all
SHOWN = (
    "bytecode_tracing",
    "create_aot_dispatcher_function",
    "compile_file",
    "aot_load",
    "pre_load",
)


def render(choice: str, cache: Path, out: Path, rest: list[str]) -> dict[str, Any]:
    """One render in a fresh process, compiling as ``choice`` with the compile cache in
    ``cache``; its row of ``storygen_speed.py``'s JSON."""
    env = {**os.environ, "STORYLOOM_COMPILE_CACHE": str(cache)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    argv = [sys.executable, str(SPEED), "--compile", choice, "--skip", "autoregressive"]
    done = subprocess.run(
        [*argv, *rest, "--out", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"compile={choice}: storygen_speed.py failed (exit {done.returncode}):\n"
            f"{done.stderr[-3000:]}"
        )
    return json.loads(out.read_text())["rows"][0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--choices",
        default="all,regional,aot,pre",
        help="compile choices to compare, comma separated (default: all,regional,aot,pre)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile_time.json"))
    # known here, in every form argparse takes (--compile=off, --repeat 2), only to refuse them
    p.add_argument("--compile", default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeats", default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.compile is not None or args.repeats is not None:
        p.error("--compile and --repeats are this script's to set")
    if "--lengths" not in rest:  # one short story: the compile is what is timed
        rest = ["--lengths", "17", *rest]
    result: dict[str, Any] = {"storygen_speed_args": rest, "choices": {}}
    with tempfile.TemporaryDirectory(prefix="compile-time-") as tmp:
        for choice in [c for c in args.choices.split(",") if c]:
            cache = Path(tmp) / f"cache-{choice}"
            runs = {}
            for run in ("cold", "cached"):
                row = render(choice, cache, Path(tmp) / f"{choice}-{run}.json", rest)
                runs[run] = {
                    "compile_s": row["compile_s"],
                    "compile_phases_s": row.get("compile_phases_s", {}),
                    "wall_time_s": row["wall_time_s"],
                    "wall_time_after_warmup_s": row["wall_time_after_warmup_s"],
                    # a render of one batch per bucket has no later batch to tell its compile
                    # apart by (its time after warm-up is the wall time): the wall less compiling
                    "wall_time_less_compile_s": max(0.0, row["wall_time_s"] - row["compile_s"]),
                    "compiled_rows": row["compiled_rows"],
                    "flicker": row.get("flicker"),
                }
                print(
                    f"  compile={choice:<9} {run:<6} {row['compile_s']:8.1f} s compiling",
                    flush=True,
                )
            result["choices"][choice] = runs
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nwritten to {out}")
    return 0


def print_table(result: dict[str, Any]) -> None:
    head = [
        "compile",
        "run",
        "compiling s",
        *(f"{s} s (summed)" for s in SHOWN),
        "wall s",
        "wall less compiling s",
    ]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for choice, runs in result["choices"].items():
        for run, r in runs.items():
            phases = r["compile_phases_s"]
            cells = [
                choice,
                run,
                f"{r['compile_s']:.1f}",
                *(f"{phases.get(s, 0.0):.1f}" for s in SHOWN),
                f"{r['wall_time_s']:.1f}",
                f"{max(0.0, r['wall_time_s'] - r['compile_s']):.1f}",
            ]
            print("| " + " | ".join(cells) + " |")
    print(
        "(a phase's seconds are summed over its calls, which can overlap, nested or in "
        "parallel compile workers: one can exceed the wall time)"
    )
    choices = list(result["choices"])
    if len(choices) >= 2:
        base = result["choices"][choices[0]]
        for other in choices[1:]:
            for run in ("cold", "cached"):
                a, b = base[run]["compile_s"], result["choices"][other][run]["compile_s"]
                if b > 0:
                    print(f"{run}: compile={choices[0]} / compile={other} = {a / b:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
