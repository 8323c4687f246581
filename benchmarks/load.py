"""Load test: a 5,000-video `curate run` that is killed three times and resumes to the same output.

1. A shapes-world corpus (`curate synth`: mixed resolutions, the default caption noise and
   planted duplicates) plus 1 % bad files (truncated, empty, garbage, missing) appended to its
   WebVid CSV.
2. An uninterrupted run (`curate run --workers 2`), its whole process tree's resident memory
   sampled every second beside the number of videos committed.
3. The same run into another folder, killed with SIGKILL (the launcher and its workers) at
   three random moments and restarted each time; the last start runs to the end.
4. The two runs' tables compared row for row (sorted; floats within 1e-5, since CLIP batches
   differ with how work is split), the invariant of both, memory over the run (first vs last
   1,000 videos), the work folder's disk use, and the corpus phase's time and memory.

    python benchmarks/load.py                          # 5,000 videos: a few hours here
    python benchmarks/load.py --videos 300 --kills 2   # a quick look

Prints a table and writes JSON (and the memory trace) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CURATE = [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ----------------------------------------------------------------------------- the corpus
def make_corpus(
    folder: Path, videos: int, seed: int, bad_share: float, synth_args: list[str]
) -> tuple[Path, int]:
    """The corpus (reused when present) and its manifest with bad files appended; returns the
    manifest and the number of inputs."""
    import csv

    if not (folder / "webvid.csv").exists():
        subprocess.run(
            [
                *CURATE,
                "synth",
                "--out",
                str(folder),
                "--videos",
                str(videos),
                "--seed",
                str(seed),
                "--no-progress",
                *synth_args,
            ],
            check=True,
            env=_env(),
        )
    manifest = folder / "load.csv"
    rows = list(csv.reader((folder / "webvid.csv").open(newline="")))
    header, body = rows[0], rows[1:]
    bad = max(1, round(bad_share * len(body)))
    bad_dir = folder / "bad"
    bad_dir.mkdir(exist_ok=True)
    rng = random.Random(seed)
    sources = [folder / r[1] for r in body]
    extra = []
    for i in range(bad):
        kind = ("truncated", "empty", "garbage", "missing")[i % 4]
        path = bad_dir / f"bad_{i:04d}_{kind}.mp4"
        if kind == "truncated":
            data = rng.choice(sources).read_bytes()
            path.write_bytes(data[: len(data) // 3])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "garbage":
            path.write_bytes(rng.randbytes(4096))
        row = [
            f"bad_{i:04d}",
            os.path.relpath(path, folder),
            "PT00H00M05S",
            "bad",
            f"bad file {kind}",
        ]
        extra.append(row)
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(body + extra)
    return manifest, len(body) + len(extra)


# ----------------------------------------------------------------------------- watching a run
def committed(out: Path) -> int:
    """Videos committed so far (rows of the work files, read from their footers)."""
    import pyarrow.parquet as pq

    total = 0
    work = out / "_work"
    if not work.is_dir():
        return 0
    for f in work.glob("w-*.parquet"):
        try:
            total += pq.ParquetFile(f).metadata.num_rows
        except OSError:
            continue
    return total


class TreeMemory:
    """Samples the resident memory of a process and all its descendants once a second."""

    def __init__(self, proc: subprocess.Popen, out: Path) -> None:
        self.root = psutil.Process(proc.pid)
        self.out = out
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._start = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            procs = []
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            per = {}
            for p in procs:
                try:
                    per[p.pid] = p.memory_info().rss
                except psutil.Error:
                    continue
            self.samples.append(
                {
                    "t": round(time.monotonic() - self._start, 1),
                    "committed": committed(self.out),
                    "rss_total": sum(per.values()),
                    "rss_max_process": max(per.values(), default=0),
                    "processes": len(per),
                }
            )

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def start_run(manifest: Path, out: Path, workers: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *CURATE,
            "run",
            "--input",
            str(manifest),
            "--output",
            str(out),
            "--workers",
            str(workers),
            "--no-progress",
        ],
        env=_env(),
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group: the kill reaches every worker
    )


def run_through(manifest: Path, out: Path, workers: int, log: Path) -> dict[str, Any]:
    proc = start_run(manifest, out, workers, log)
    started = time.monotonic()
    with TreeMemory(proc, out) as mem:
        code = proc.wait()
    return {"returncode": code, "wall_s": time.monotonic() - started, "memory": mem.samples}


def run_with_kills(
    manifest: Path, out: Path, workers: int, log: Path, inputs: int, kills: int, seed: int
) -> dict[str, Any]:
    """Kill at ``kills`` random points of the per-video phase, restarting each time."""
    rng = random.Random(seed)
    marks = sorted(rng.uniform(0.1, 0.9) * inputs for _ in range(kills))
    events = []
    started = time.monotonic()
    for mark in [*marks, math.inf]:
        # each kill lands after this start has committed something of its own
        mark = max(mark, committed(out) + 1)
        proc = start_run(manifest, out, workers, log)
        killed = False
        while proc.poll() is None:
            if committed(out) >= mark:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                done = committed(out)
                events.append({"killed_at_committed": done, "t": time.monotonic() - started})
                killed = True
                break
            time.sleep(0.5)
        if not killed:  # this start ran to the end
            break
    return {"returncode": proc.returncode, "wall_s": time.monotonic() - started, "kills": events}


# ----------------------------------------------------------------------------- comparing
def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) or (math.isnan(x) and math.isnan(y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    return x == y


def compare(a: Path, b: Path) -> dict[str, Any]:
    from curate.shards import read_table

    out: dict[str, Any] = {}
    for table, key in (("clips", "clip_id"), ("stories", "story_id"), ("failures", "input_id")):
        ra = sorted(
            read_table(a, table).to_pylist(), key=lambda r: (str(r[key]), str(r.get("stage")))
        )
        rb = sorted(
            read_table(b, table).to_pylist(), key=lambda r: (str(r[key]), str(r.get("stage")))
        )
        # a retried failure counts its attempts: compare what it says, not how often it was tried
        if table == "failures":
            for r in ra + rb:
                r.pop("attempt", None)
        diff = sum(1 for x, y in zip(ra, rb) if not _same(x, y))
        out[table] = {"rows": [len(ra), len(rb)], "differing_rows": diff + abs(len(ra) - len(rb))}
    out["equal"] = all(v["differing_rows"] == 0 for v in out.values() if isinstance(v, dict))
    return out


def memory_flatness(samples: list[dict[str, Any]], inputs: int, window: int) -> dict[str, Any]:
    """Peak tree RSS while the first ``window`` videos were committed vs the last ``window``."""
    per_video = [s for s in samples if 0 < s["committed"] < inputs]
    first = [s["rss_total"] for s in per_video if s["committed"] <= window]
    last = [s["rss_total"] for s in per_video if s["committed"] >= inputs - window]
    if not first or not last:
        return {"first_peak_mb": None, "last_peak_mb": None, "ratio": None}
    a, b = max(first) / 2**20, max(last) / 2**20
    return {"first_peak_mb": a, "last_peak_mb": b, "ratio": b / a}


def corpus_phase(samples: list[dict[str, Any]], inputs: int) -> dict[str, Any]:
    after = [s for s in samples if s["committed"] >= inputs]
    if not after:
        return {"peak_mb": None}
    return {"peak_mb": max(s["rss_total"] for s in after) / 2**20}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=5000)
    p.add_argument("--bad-share", type=float, default=0.01)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=5000)
    p.add_argument(
        "--synth-args",
        default="--resolutions 284x160,320x240,426x240,640x360 --preset ultrafast",
        help="flags for curate synth (default: four resolutions up to 360p, x264 ultrafast, "
        "so that 5,000 videos synthesize in under an hour here)",
    )
    p.add_argument("--work-dir", default=str(ROOT / "out" / "load"))
    p.add_argument("--keep", action="store_true", help="keep the run folders afterwards")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load.json"))
    args = p.parse_args(argv)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    manifest, inputs = make_corpus(
        work / f"corpus-{args.videos}",
        args.videos,
        args.seed,
        args.bad_share,
        args.synth_args.split(),
    )
    synth_s = time.monotonic() - t0
    print(f"corpus: {inputs} inputs ({manifest}), {synth_s:.0f} s", flush=True)
    clean, killed = work / "clean", work / "killed"
    for folder in (clean, killed):
        shutil.rmtree(folder, ignore_errors=True)
    log = work / "runs.log"

    a = run_through(manifest, clean, args.workers, log)
    mf = json.loads((clean / "_manifest.json").read_text())
    print(f"uninterrupted: rc {a['returncode']}, {a['wall_s']:.0f} s", flush=True)
    b = run_with_kills(manifest, killed, args.workers, log, inputs, args.kills, args.seed)
    print(f"killed {len(b['kills'])} times: rc {b['returncode']}, {b['wall_s']:.0f} s", flush=True)
    same = compare(clean, killed)
    flat = memory_flatness(a["memory"], inputs, min(1000, inputs // 5))
    corpus = corpus_phase(a["memory"], inputs)
    summary = mf.get("counts", {})
    per_video_s = next((s["t"] for s in a["memory"] if s["committed"] >= inputs), a["wall_s"])
    result = {
        "settings": vars(args),
        "inputs": inputs,
        "synth_s": synth_s,
        "uninterrupted": {k: v for k, v in a.items() if k != "memory"},
        "videos_per_min": inputs / per_video_s * 60,
        "corpus_phase_s": a["wall_s"] - per_video_s,
        "corpus_phase_peak_rss_mb": corpus["peak_mb"],
        "memory_first_vs_last": flat,
        "peak_rss_mb": max((s["rss_total"] for s in a["memory"]), default=0) / 2**20,
        "max_process_rss_mb": max((s["rss_max_process"] for s in a["memory"]), default=0) / 2**20,
        "work_folder_mb": du(clean / "_work") / 2**20,
        "output_mb": (du(clean) - du(clean / "_work")) / 2**20,
        "with_kills": b,
        "comparison": same,
        "manifest_counts": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_name(out.stem + "-memory.json").write_text(json.dumps(a["memory"]))
    rows = [
        ("inputs (1 % bad files)", inputs),
        ("videos/min, 2 workers", f"{result['videos_per_min']:.0f}"),
        (
            "uninterrupted wall",
            f"{a['wall_s']:.0f} s (corpus phase {result['corpus_phase_s']:.0f} s)",
        ),
        (
            "kills (SIGKILL) at committed",
            ", ".join(str(k["killed_at_committed"]) for k in b["kills"]),
        ),
        ("output after kills == uninterrupted", same["equal"]),
        (
            "rows clips / stories / failures",
            " / ".join(str(same[t]["rows"][0]) for t in ("clips", "stories", "failures")),
        ),
        (
            "peak RSS, process tree",
            f"{result['peak_rss_mb']:.0f} MB (largest process {result['max_process_rss_mb']:.0f} MB)",
        ),
        (
            "peak RSS first vs last 1,000 videos",
            f"{flat['first_peak_mb']:.0f} vs {flat['last_peak_mb']:.0f} MB (x{flat['ratio']:.2f})"
            if flat["ratio"]
            else "-",
        ),
        ("corpus phase peak RSS", f"{corpus['peak_mb']:.0f} MB" if corpus["peak_mb"] else "-"),
        (
            "work folder on disk",
            f"{result['work_folder_mb']:.0f} MB (output {result['output_mb']:.0f} MB)",
        ),
    ]
    for name, value in rows:
        print(f"{name:<40} {value}")
    print(f"results: {out}")
    if not args.keep:
        shutil.rmtree(killed, ignore_errors=True)
    return 0 if same["equal"] and a["returncode"] == 0 and b["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
