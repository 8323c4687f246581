"""End-to-end curate throughput on a shapes-world corpus, per worker count.

Generates a corpus (``--videos``, small resolutions), then runs ``curate run`` (Beam's local
FnApiRunner, real steps: decord + scene splitting in the isolated decoder, CLIP scoring through
RunInference, filtering, re-captioning, faiss dedup) once per worker count into a fresh output
folder, and reports videos per minute, video-seconds processed per wall-second, peak memory of
the whole process tree (launcher, Beam workers, decoder children) and the share of time per
stage (from the pipeline's per-stage timers, summed over workers).

    python benchmarks/curate_e2e.py                 # 200 videos, workers 1 and 2
    python benchmarks/curate_e2e.py --videos 40 --workers 1

Prints a table and writes benchmarks/results/curate_e2e.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.peak_rss import PeakRSS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--resolution", default="160x120")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--model", help="CLIP folder (default: the shipped models/shapes-clip)")
    parser.add_argument(
        "--captioner",
        default="auto",
        help="captioner for the runs (auto: the shipped one with the shipped CLIP; none)",
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the extra 1-worker run without a captioner (what captioning costs)",
    )
    parser.add_argument("--work-dir", help="keep the corpus and outputs here (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "curate_e2e.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from curate import shards
    from curate.models import resolve_model_path
    from curate.shapes import generate_corpus
    from pipelines.curate import run
    from pipelines.options import runner_flags

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="curate_e2e-"))
    corpus = work / "corpus"
    t = time.perf_counter()
    if not (corpus / "manifest.jsonl").exists():
        generate_corpus(
            corpus,
            videos=args.videos,
            seed=args.seed,
            resolutions=[args.resolution],
            progress=True,
        )
    print(f"corpus: {args.videos} videos at {args.resolution} in {time.perf_counter() - t:.1f} s")
    model = resolve_model_path(args.model)

    rows = []
    plan = [(int(w), args.captioner) for w in args.workers.split(",")]
    if not args.no_baseline and args.captioner != "none":
        plan.append((1, "none"))
    for workers, captioner in plan:
        out = work / f"out-w{workers}-{'none' if captioner == 'none' else 'cap'}"
        shutil.rmtree(out, ignore_errors=True)
        flags = [
            *runner_flags("local", workers=workers),
            f"--input={corpus / 'manifest.jsonl'}",
            f"--output={out}",
            f"--model={model}",
            f"--captioner={captioner}",
        ]
        with PeakRSS(interval=0.2, tree=True) as mem:
            start = time.perf_counter()
            summary = run(flags, progress=False)
            wall = time.perf_counter() - start
        clips = shards.read_table(out, "clips").to_pylist()
        seconds = sum(c["end_s"] - c["start_s"] for c in clips)
        stage = summary.stage_s
        total_stage = sum(stage.values()) or 1.0
        published = json.loads((out / "_manifest.json").read_text())["config"]
        row = {
            "workers": workers,
            "captioner": published.get("captioner"),
            "videos": summary.counts.get("inputs", 0),
            "videos_failed": summary.counts.get("videos_failed", 0),
            "clips": len(clips),
            "video_seconds": round(seconds, 2),
            "wall_s": round(wall, 2),
            "per_video_phase_s": round(summary.phase_s.get("per-video", 0.0), 2),
            "corpus_phase_s": round(summary.phase_s.get("corpus", 0.0), 2),
            "videos_per_min": round(60 * summary.counts.get("inputs", 0) / wall, 2),
            "video_s_per_wall_s": round(seconds / wall, 3),
            "peak_rss_mb": round(mem.peak / 2**20, 1),
            "stage_s": {k: round(v, 2) for k, v in sorted(stage.items())},
            "stage_share": {k: round(v / total_stage, 3) for k, v in sorted(stage.items())},
            "invariant_ok": summary.invariant_ok,
        }
        rows.append(row)
        print(f"workers={workers}: {summary.invariant}")

    header = (
        f"{'workers':>7} {'captioner':>9} {'videos':>6} {'clips':>5} {'wall s':>7} {'per-video s':>11} "
        f"{'corpus s':>8} {'videos/min':>10} {'video-s/s':>9} {'peak MB':>8}  stage shares"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        shares = ", ".join(
            f"{k} {v:.0%}" for k, v in sorted(r["stage_share"].items(), key=lambda kv: -kv[1])
        )
        print(
            f"{r['workers']:>7} {'no' if r['captioner'] in (None, 'none') else 'yes':>9} "
            f"{r['videos']:>6} {r['clips']:>5} {r['wall_s']:>7.1f} "
            f"{r['per_video_phase_s']:>11.1f} {r['corpus_phase_s']:>8.1f} "
            f"{r['videos_per_min']:>10.1f} {r['video_s_per_wall_s']:>9.2f} "
            f"{r['peak_rss_mb']:>8.0f}  {shares}"
        )
    with_cap = [r for r in rows if r["captioner"] not in (None, "none")]
    without = [r for r in rows if r["captioner"] in (None, "none") and r["workers"] == 1]
    if with_cap and without and with_cap[0]["workers"] == 1:
        print(
            "captioning every scene costs "
            f"{with_cap[0]['per_video_phase_s'] / without[0]['per_video_phase_s']:.2f}x "
            "per-video time (1 worker)"
        )
    same = [r for r in rows if r["captioner"] == rows[0]["captioner"]]
    if len(same) >= 2:
        base = same[0]
        for r in same[1:]:
            print(
                f"speed-up {r['workers']} vs {base['workers']} workers: "
                f"{base['wall_s'] / r['wall_s']:.2f}x wall, "
                f"{base['per_video_phase_s'] / max(r['per_video_phase_s'], 1e-9):.2f}x per-video phase"
            )
    result = {
        "benchmark": "curate_e2e",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "settings": {
            "videos": args.videos,
            "resolution": args.resolution,
            "seed": args.seed,
            "model": model,
            "runner": "FnApiRunner",
        },
        "runs": rows,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out_path}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
