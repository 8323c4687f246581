"""Dedup of a shot shared by many videos (an intro or a logo card, common in stock footage):
each clip keeping its 32 nearest neighbours above the threshold against every pair kept.

K videos, each a shared intro (re-encoded: a little noise per copy) and 4 scenes of its own,
go through ``Deduplicator.at(0.95).duplicates`` in a fresh process per run, which reports its
time, its peak RSS, the pairs the search handed on and the duplicates found. Both ways must
find the same duplicates (every intro but one); the table gives the ratio of their times.

  python benchmarks/dedup_shared_shot.py                       # K = 250, 500, 1000
  python benchmarks/dedup_shared_shot.py --videos 500,1000,2000 --skip-all-pairs
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dedup_shared_shot.json"
#: the dimension of a clip signature with the shipped CLIP (128) and the pixel part (768)
DIM = 896
SCENES = 5


def make_rows(videos: int, seed: int = 0) -> list[dict]:
    """``videos`` videos of :data:`SCENES` scenes, the first of each a copy of one intro."""
    rng = np.random.default_rng(seed)
    intro = rng.normal(size=DIM)
    rows = []
    for v in range(videos):
        for s in range(SCENES):
            base = intro if s == 0 else rng.normal(size=DIM)
            x = base + rng.normal(size=DIM) * 0.02 * np.linalg.norm(base) / np.sqrt(DIM)
            rows.append(
                {
                    "clip_id": f"v{v:06d}:{s:04d}",
                    "video_id": f"v{v:06d}",
                    "scene_index": s,
                    "caption_score": 0.3,
                    "status": "kept",
                    "start_frame": s * 100,
                    "end_frame": s * 100 + 100,
                    "dedup_signature": (x / np.linalg.norm(x)).astype(np.float32),
                }
            )
    return rows


def one(videos: int, arm: str) -> dict:
    """One run in this process: ``arm`` "nearest" (the default) or "all" (every pair)."""
    import curate.dedup as dedup

    rows = make_rows(videos)
    counted: dict[str, int] = {}
    search = dedup.similar_pairs
    if arm == "all":
        search = functools.partial(search, neighbours=None)

    def counting(*args, **kwargs):
        pairs = search(*args, **kwargs)
        counted["pairs"] = len(pairs)
        return pairs

    dedup.similar_pairs = counting  # what Deduplicator.duplicates calls
    started = time.perf_counter()
    found = dedup.Deduplicator.at(0.95).duplicates(rows)
    seconds = time.perf_counter() - started
    intros = {f"v{v:06d}:0000" for v in range(videos)}
    return {
        "videos": videos,
        "clips": len(rows),
        "arm": arm,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pairs": counted.get("pairs", 0),
        "duplicates": len(found),
        "only_intros": set(found) | set(found.values()) <= intros,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--videos", default="250,500,1000", help="comma-separated counts K")
    p.add_argument("--skip-all-pairs", action="store_true", help="time the default way only")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--one", nargs=2, metavar=("K", "ARM"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1])))
        return 0
    arms = ["nearest"] if args.skip_all_pairs else ["nearest", "all"]
    runs = []
    for k in (int(v) for v in args.videos.split(",")):
        for arm in arms:
            cmd = [sys.executable, __file__, "--one", str(k), arm]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(
                f"K={k:>5} {arm:>7}: {r['seconds']:7.2f} s, {r['peak_rss_mb']:6.0f} MB, "
                f"{r['pairs']:>9,} pairs, {r['duplicates']:,} duplicates",
                flush=True,
            )
    print()
    print(
        "| videos (clips) | 32 nearest: time, peak RSS, pairs | every pair: time, peak RSS, pairs "
        "| time ratio |"
    )
    print("|---|---|---|---|")
    for k in sorted({r["videos"] for r in runs}):
        near = next(r for r in runs if r["videos"] == k and r["arm"] == "nearest")
        every = next((r for r in runs if r["videos"] == k and r["arm"] == "all"), None)
        cell = (
            f"{every['seconds']:.1f} s, {every['peak_rss_mb']:.0f} MB, {every['pairs']:,}"
            if every
            else "-"
        )
        ratio = f"{every['seconds'] / near['seconds']:.1f}×" if every else "-"
        print(
            f"| {k:,} ({near['clips']:,}) | {near['seconds']:.1f} s, "
            f"{near['peak_rss_mb']:.0f} MB, {near['pairs']:,} | {cell} | {ratio} |"
        )
    same = all(r["only_intros"] and r["duplicates"] == r["videos"] - 1 for r in runs)
    print(f"\nboth ways find every intro but one as a duplicate, and nothing else: {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "same_duplicates": same}, indent=2))
    print(f"wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
