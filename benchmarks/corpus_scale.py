"""The corpus phase's dedup at scale: 100,000 and 1,000,000 clips on this machine.

Synthetic committed work: unit signatures of the real width (896: a 128-wide CLIP embedding
and four 8×8 RGB thumbnails) drawn around topic centres (content repeats, as in real corpora:
many clips of one kind of scene) with planted near-duplicates (cosine 0.93-0.995) of 2 % of
the clips. No decoding: this measures the corpus phase's search, not the per-video phase.

For each size: the signatures are streamed to a :class:`curate.dedup_index.SignatureStore`
on disk, :func:`curate.dedup_index.ivf_pairs` finds the pairs above the dedup threshold, and
:func:`recall_against_exact` checks them against brute-force search for 1,000 random clips.
The table gives time per stage, peak resident memory of the process (sampled every 20 ms) and
recall.

    python benchmarks/corpus_scale.py                       # 100,000 and 1,000,000 clips
    python benchmarks/corpus_scale.py --sizes 20000 --memory-mb 256
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curate.dedup_index import SignatureStore, ivf_pairs, recall_against_exact  # noqa: E402

DIM = 896


class PeakRSS:
    """Peak resident memory of this process while the block runs."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRSS:
        self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthesize(
    store: SignatureStore, n: int, *, seed: int = 0, dup_rate: float = 0.02
) -> np.ndarray:
    """Append ``n`` signatures; returns the planted duplicate pairs ``(k, 2)`` (row indices)."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((max(16, n // 500), DIM)).astype(np.float32))
    planted = []
    chunk = 20_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        t = rng.integers(len(topics), size=m)
        # a clip of a topic: cosine ~0.6 to its topic centre, ~0.35 to another clip of it
        x = _unit(topics[t] + 1.3 * _unit(rng.standard_normal((m, DIM)).astype(np.float32)))
        k = int(m * dup_rate)
        src = rng.choice(m, size=k, replace=False)
        dst = rng.choice(np.setdiff1d(np.arange(m), src), size=k, replace=False)
        eps = rng.uniform(0.1, 0.38, size=(k, 1)).astype(np.float32)  # cos 0.93-0.995
        x[dst] = _unit(x[src] + eps * _unit(rng.standard_normal((k, DIM)).astype(np.float32)))
        planted.append(np.stack([src, dst], axis=1) + start)
        store.append(x)
    return np.sort(np.concatenate(planted), axis=1)


def planted_recall(
    store: SignatureStore, planted: np.ndarray, pairs: list, threshold: float
) -> dict:
    """Recall over every planted copy whose stored cosine reaches the threshold."""
    a, b = store.rows(planted[:, 0]), store.rows(planted[:, 1])
    cos = np.einsum("ij,ij->i", a, b)
    truth = {(int(i), int(j)) for (i, j), c in zip(planted, cos) if c >= threshold}
    found = {(i, j) for i, j, _ in pairs}
    return {
        "planted_above_threshold": len(truth),
        "recall": len(truth & found) / max(len(truth), 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for n in [int(v) for v in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
            store = SignatureStore(Path(tmp) / "signatures.f16", DIM)
            t0 = time.perf_counter()
            planted = synthesize(store, n, seed=args.seed)
            write_s = time.perf_counter() - t0
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                pairs, report = ivf_pairs(
                    store,
                    args.threshold,
                    nprobe=args.nprobe,
                    memory_mb=args.memory_mb,
                    workers=args.workers,
                    work_dir=tmp,
                )
                dedup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            recall = recall_against_exact(store, pairs, args.threshold, queries=args.queries)
            recall_s = time.perf_counter() - t0
            copies = planted_recall(store, planted, pairs, args.threshold)
            disk = store.path.stat().st_size
        row = {
            "clips": n,
            "planted_duplicates": len(planted),
            "planted_above_threshold": copies["planted_above_threshold"],
            "planted_recall": copies["recall"],
            "write_s": write_s,
            "dedup_s": dedup_s,
            "train_s": report.train_s,
            "assign_s": report.assign_s,
            "search_s": report.search_s,
            "peak_rss_mb": mem.peak / 2**20,
            "store_mb": disk / 2**20,
            "lists": report.n_lists,
            "largest_list": report.largest_list,
            "pairs": len(pairs),
            "recall": recall["recall"],
            "recall_exact_pairs": recall["exact_pairs"],
            "recall_check_s": recall_s,
        }
        rows.append(row)
        print(
            f"{n:>9,} clips  dedup {dedup_s:7.1f} s (k-means {report.train_s:5.1f}, assign "
            f"{report.assign_s:6.1f}, search {report.search_s:6.1f})  peak RSS "
            f"{mem.peak / 2**20:7.0f} MB  store {disk / 2**20:6.0f} MB  {len(pairs):,} pairs  "
            f"recall {recall['recall']:.3f} ({int(recall['exact_pairs'])} exact pairs of "
            f"{args.queries} queries), {copies['recall']:.4f} of the "
            f"{copies['planted_above_threshold']:,} planted copies above the threshold",
            flush=True,
        )
    return {
        "machine": {"cpu_count": psutil.cpu_count(), "platform": platform.platform()},
        "settings": vars(args),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--nprobe", type=int, default=2)
    p.add_argument("--memory-mb", type=float, default=1024.0, help="the corpus phase's budget")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--queries", type=int, default=1000, help="clips checked against exact search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="where the store and lists are written")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "corpus_scale.json"))
    args = p.parse_args(argv)
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
