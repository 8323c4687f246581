"""The corpus phase at scale: 100,000 clips and up on this machine, from synthetic committed work.

Synthetic committed work: unit signatures of the real width (896: a 128-wide CLIP embedding
and four 8×8 RGB thumbnails) drawn around topic centres (content repeats, as in real corpora:
many clips of one kind of scene) with planted near-duplicates (cosine 0.93-0.995). No
decoding: this measures the corpus phase, not the per-video phase.

``--what phase`` (the default) runs the whole corpus phase (:class:`curate.corpus.CorpusPhase`
as ``curate run`` runs it with the local runner: cut-off, prompt bank, re-captioning, dedup,
shard writing, publishing) on work files written as the per-video phase commits them (five
clips a video, 2 % of the videos copies of another). The re-captioner is the real one with
its text model replaced by hashed word vectors (:class:`HashedText`): the model's forward
passes are per-video work that is not what grows with the corpus. Reported: time per step,
peak resident memory of the process (sampled every 20 ms), peak disk of the scratch folder
``OUT/_corpus``, dedup recall against exact search for 1,000 random clips, and the share of
planted copies the published clips table marks as duplicates.

``--what dedup`` runs the dedup search alone: the signatures streamed to a
:class:`curate.dedup_index.SignatureStore`, :func:`curate.dedup_index.ivf_pairs`, recall
against brute-force search.

    python benchmarks/corpus_scale.py --sizes 100000,300000        # the whole phase
    python benchmarks/corpus_scale.py --what dedup --sizes 100000,1000000
    python benchmarks/corpus_scale.py --sizes 20000 --memory-mb 256
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peak_rss import PeakRSS  # noqa: E402
from curate import shards  # noqa: E402
from curate.corpus import CorpusPhase  # noqa: E402
from curate.dedup import Deduplicator  # noqa: E402
from curate.dedup_index import SignatureStore, ivf_pairs, recall_against_exact  # noqa: E402
from curate.recaption import Recaptioner  # noqa: E402
from curate.run_folder import CORPUS_DIR  # noqa: E402
from curate.threshold import Threshold  # noqa: E402
from schemas.tables import CLIPS_SCHEMA, KEPT, VIDEOS_SCHEMA  # noqa: E402

DIM = 896


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


def run_dedup(args: argparse.Namespace) -> dict[str, Any]:
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


# --- the whole corpus phase -------------------------------------------------------------------

#: the CLIP embedding's width (a clip's ``embedding``, the text vectors)
EMB = 128
_ADJ = [
    "red",
    "blue",
    "green",
    "small",
    "large",
    "old",
    "young",
    "dark",
    "bright",
    "white",
    "black",
    "striped",
    "wet",
    "dusty",
    "shiny",
    "quiet",
    "busy",
    "tall",
    "round",
    "calm",
]
_NOUN = [
    "cat",
    "dog",
    "car",
    "bird",
    "boat",
    "horse",
    "child",
    "man",
    "woman",
    "train",
    "ball",
    "tree",
    "bus",
    "bike",
    "fish",
    "crowd",
    "plane",
    "robot",
    "river",
    "city",
]
_VERB = ["runs", "jumps", "sits", "turns", "waits", "swims", "drives", "falls", "spins", "walks"]


class HashedText:
    """Stands in for CLIP's text tower in :class:`curate.recaption.Recaptioner`: a text's
    vector is the unit sum of fixed random vectors of its words. The re-captioner's own work
    (alignment of caption fragments to scenes, prompt-bank search, stories) runs as in a real
    run; only the model's forward passes are left out."""

    embedding_dim = EMB

    def __init__(self) -> None:
        self._words: dict[str, np.ndarray] = {}

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def truncate_caption(self, text: str) -> tuple[str, bool]:
        return text, False

    def _word(self, word: str) -> np.ndarray:
        vec = self._words.get(word)
        if vec is None:
            rng = np.random.default_rng(zlib.crc32(word.encode()))
            vec = self._words[word] = rng.standard_normal(EMB).astype(np.float32)
        return vec

    def embed_texts(self, texts: Any) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, EMB), np.float32)
        out = np.stack([sum(self._word(w) for w in t.lower().split()) for t in texts])
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(
            np.float32
        )


def _lists(values: np.ndarray, width: int) -> pa.ListArray:
    """Rows of ``width`` float32 values as a ``list<float32>`` column."""
    flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, len(values) * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _struct(schema: Any, columns: dict[str, Any], rows: int) -> pa.StructArray:
    fields = list(schema)
    arrays = [columns[f.name] if f.name in columns else pa.nulls(rows, f.type) for f in fields]
    return pa.StructArray.from_arrays(arrays, fields=fields)


def write_work(
    out: Path,
    n: int,
    *,
    per_video: int = 5,
    per_file: int = 64,
    copy_rate: float = 0.02,
    seed: int = 0,
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Committed work (``out/_work``) of ``n`` clips, ``per_video`` a video, as the per-video
    phase commits it: clips rows with caption scores and CLIP embeddings, their extras
    (caption fragment, two frame embeddings, an 896-wide dedup signature). Signatures are
    drawn around topic centres (see :func:`synthesize`); ``copy_rate`` of the videos are
    copies of an earlier video (every scene re-encoded: cosine 0.93-0.995 to the original).
    Returns the fingerprints to keep and the planted ``(copy clip, original clip)`` pairs."""
    rng = np.random.default_rng(seed)
    text = HashedText()
    topics = _unit(rng.standard_normal((max(16, n // 500), DIM)).astype(np.float32))
    folder = out / shards.WORK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    videos = -(-n // per_video)
    keep: dict[str, str] = {}
    planted: list[tuple[str, str]] = []
    previous: dict[str, Any] | None = None
    for f, first in enumerate(range(0, videos, per_file)):
        v_n = min(per_file, videos - first)
        m = v_n * per_video
        vids = [f"v{first + k:08d}" for k in range(v_n)]
        words = np.stack([rng.integers(len(w), size=m) for w in (_ADJ, _NOUN, _VERB)], axis=1)
        sig = _unit(
            topics[rng.integers(len(topics), size=m)]
            + 1.3 * _unit(rng.standard_normal((m, DIM)).astype(np.float32))
        )
        score = rng.uniform(0.15, 0.4, size=m)
        # copies: a video of this file remakes one of the previous file (of this one, at first)
        copies = np.flatnonzero(rng.random(v_n) < copy_rate)
        pool = previous or {"vids": vids, "words": words, "sig": sig, "score": score}
        for k in copies:
            src = int(rng.integers(len(pool["vids"]) if previous else max(k, 1)))
            if not previous and src >= k:
                continue
            a, b = k * per_video, (k + 1) * per_video
            s = slice(src * per_video, (src + 1) * per_video)
            eps = rng.uniform(0.1, 0.38, size=(per_video, 1)).astype(np.float32)
            noise = _unit(rng.standard_normal((per_video, DIM)).astype(np.float32))
            sig[a:b] = _unit(pool["sig"][s] + eps * noise)
            words[a:b] = pool["words"][s]
            score[a:b] = pool["score"][s] + rng.normal(0, 0.002, size=per_video)
            planted += [
                (f"{vids[k]}:{i:04d}", f"{pool['vids'][src]}:{i:04d}") for i in range(per_video)
            ]
        fragments = [f"a {_ADJ[a]} {_NOUN[b]} {_VERB[c]}" for a, b, c in words.tolist()]
        emb = _unit(
            text.embed_texts(fragments)
            + 0.6 * _unit(rng.standard_normal((m, EMB))).astype(np.float32)
        )
        frames = np.repeat(emb, 2, axis=0)
        video_of = np.repeat(np.arange(v_n), per_video)
        scene = np.tile(np.arange(per_video), v_n)
        clip_ids = [f"{vids[v]}:{i:04d}" for v, i in zip(video_of.tolist(), scene.tolist())]
        uris = [f"/videos/{vids[v]}.mp4" for v in video_of.tolist()]
        start = scene * 120
        clips = _struct(
            CLIPS_SCHEMA,
            {
                "clip_id": pa.array(clip_ids),
                "video_id": pa.array([vids[v] for v in video_of.tolist()]),
                "scene_index": pa.array(scene.astype(np.int32)),
                "uri": pa.array(uris),
                "start_frame": pa.array(start.astype(np.int64)),
                "end_frame": pa.array((start + 120).astype(np.int64)),
                "start_s": pa.array(start / 30.0),
                "end_s": pa.array((start + 120) / 30.0),
                "fps": pa.array(np.full(m, 30.0)),
                "width": pa.array(np.full(m, 320, np.int32)),
                "height": pa.array(np.full(m, 240, np.int32)),
                "transition": pa.array(["start" if i == 0 else "cut" for i in scene.tolist()]),
                "source_caption": pa.array(fragments),
                "caption_score": pa.array(score),
                "frame_scores": _lists(np.stack([score, score], axis=1), 2),
                "status": pa.array([KEPT] * m),
                "embedding": _lists(emb, EMB),
            },
            m,
        )
        frame_lists = pa.ListArray.from_arrays(
            pa.array(np.arange(0, 2 * m + 1, 2, dtype=np.int32)), _lists(frames, EMB)
        )
        extras = _struct(
            shards.CLIP_EXTRAS,
            {
                "clip_id": pa.array(clip_ids),
                "fragment": pa.array(fragments),
                "frame_embeddings": frame_lists,
                "dedup_signature": _lists(sig, DIM),
            },
            m,
        )
        per = pa.array(np.arange(0, m + 1, per_video, dtype=np.int32))
        captions = [
            ", then ".join(fragments[v * per_video : (v + 1) * per_video]) for v in range(v_n)
        ]
        video = _struct(
            VIDEOS_SCHEMA,
            {
                "video_id": pa.array(vids),
                "uri": pa.array([f"/videos/{v}.mp4" for v in vids]),
                "caption": pa.array(captions),
                "duration_s": pa.array(np.full(v_n, per_video * 4.0)),
                "source_line": pa.array(np.arange(first, first + v_n, dtype=np.int64)),
            },
            v_n,
        )
        fps = [f"fp-{v}" for v in vids]
        keep.update(zip(vids, fps))
        failure_type = shards.WORK_SCHEMA.field("failures").type
        table = pa.Table.from_arrays(
            [
                pa.array(vids),
                video,
                pa.ListArray.from_arrays(per, clips),
                pa.ListArray.from_arrays(per, extras),
                pa.array([[]] * v_n, failure_type),
                pa.array(fps),
                pa.array(np.ones(v_n, np.int64)),
                pa.array(np.zeros(v_n, bool)),
            ],
            schema=shards.WORK_SCHEMA,
        ).replace_schema_metadata({shards.META_WORK_VERSION: shards.WORK_VERSION.encode()})
        name = f"w-{hashlib.sha1(f'{seed}-{f}'.encode()).hexdigest()}.parquet"
        pq.write_table(table, folder / name)
        previous = {"vids": vids, "words": words, "sig": sig, "score": score}
    return keep, planted


class FolderSize:
    """Peak size on disk of a folder while the block runs (sampled every ``every`` s)."""

    def __init__(self, path: Path, every: float = 1.0) -> None:
        self.path, self.every, self.peak = path, every, 0
        self._stop = threading.Event()

    def size(self) -> int:
        total = 0
        for root, _, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, name)).st_blocks * 512
        return total

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.size())

    def __enter__(self) -> FolderSize:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.size())


def _found_copies(out: Path, planted: list[tuple[str, str]]) -> tuple[float, int]:
    """Share of the planted (copy, original) clip pairs, both left kept by the caption
    cut-off, that the published clips table marks as one duplicate group (one is the other's
    duplicate, or both duplicates of a third); and how many pairs that is."""
    dup: dict[str, str] = {}
    cut: set[str] = set()
    for file in sorted((out / "clips").glob("*.parquet")):
        t = pq.read_table(file, columns=["clip_id", "status", "reason", "duplicate_of"])
        marked = t.filter(pc.is_valid(t.column("duplicate_of")))
        ids, originals = marked.column("clip_id"), marked.column("duplicate_of")
        dup.update(zip(ids.to_pylist(), originals.to_pylist()))
        other = t.filter(
            pc.and_(pc.equal(t.column("status"), "dropped"), pc.is_null(t.column("duplicate_of")))
        )
        cut.update(other.column("clip_id").to_pylist())
    both = [(a, b) for a, b in planted if a not in cut and b not in cut]
    hit = sum(dup.get(a, a) == dup.get(b, b) for a, b in both)
    return hit / max(len(both), 1), len(both)


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    """The whole corpus phase (:class:`curate.corpus.CorpusPhase`, as ``curate run`` runs it
    with the local runner) on synthetic committed work of each size."""
    rows = []
    for n in [int(v) for v in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
            out = Path(tmp) / "run"
            t0 = time.perf_counter()
            keep, planted = write_work(out, n, per_file=args.videos_per_file, seed=args.seed)
            write_s = time.perf_counter() - t0
            work_mb = sum(f.stat().st_size for f in (out / shards.WORK_DIR).iterdir()) / 2**20
            phase = CorpusPhase(
                out,
                threshold=Threshold(args.percentile, True),
                dedup=Deduplicator.at(args.threshold, nprobe=args.nprobe),
                exact_limit=args.exact_limit,
                memory_mb=args.memory_mb,
                threads=args.workers,
                counts={"inputs": len(keep)},
                keep_scratch=True,
            )
            recaptioner = Recaptioner(scorer=HashedText(), fallback="prompt_bank")
            gc.collect()
            with PeakRSS() as mem, FolderSize(out / CORPUS_DIR) as disk:
                base = mem.peak
                t0 = time.perf_counter()
                report = phase.run(keep, recaptioner)
                phase_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            recall: dict[str, float] = {}
            info = out / CORPUS_DIR / "dedup" / "signatures.json"
            if info.exists():
                meta = json.loads(info.read_text())
                store = SignatureStore(
                    out / CORPUS_DIR / "dedup" / "signatures.sig", meta["dim"], dtype=meta["dtype"]
                )
                recall = recall_against_exact(
                    store, phase.pairs(), args.threshold, queries=args.queries
                )
            recall_s = time.perf_counter() - t0
            copies, eligible = _found_copies(out, planted)
            manifest = json.loads((out / "_manifest.json").read_text())
        counts = manifest["counts"]
        row = {
            "clips": n,
            "videos": len(keep),
            "work_mb": work_mb,
            "write_work_s": write_s,
            "phase_s": phase_s,
            "step_s": report.seconds,
            "chunks": report.chunks,
            "chunk_clips": report.chunk_clips,
            "peak_rss_mb": mem.peak / 2**20,
            "rss_before_mb": base / 2**20,
            "scratch_peak_mb": disk.peak / 2**20,
            "dedup": report.dedup,
            "recall": recall.get("recall"),
            "recall_exact_pairs": recall.get("exact_pairs"),
            "recall_check_s": recall_s,
            "planted_pairs": len(planted),
            "planted_pairs_kept": eligible,
            "planted_found": copies,
            "clips_kept": counts.get("clips_kept"),
            "clips_dropped_duplicate": counts.get("clips_dropped_duplicate"),
            "stories": counts.get("stories"),
        }
        rows.append(row)
        if getattr(args, "out", None):  # each size as it is done: a long run keeps what it did
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
        steps = ", ".join(f"{k} {v:.0f}" for k, v in report.seconds.items())
        print(
            f"{n:>9,} clips  corpus phase {phase_s:7.1f} s ({steps})  peak RSS "
            f"{mem.peak / 2**20:6.0f} MB (before {base / 2**20:.0f})  scratch "
            f"{disk.peak / 2**20:6.0f} MB  work {work_mb:6.0f} MB  {report.chunks} chunks  "
            f"recall {row['recall'] if row['recall'] is None else round(row['recall'], 4)} "
            f"({int(recall.get('exact_pairs', 0))} exact pairs of {args.queries} queries)  "
            f"planted copies found {copies:.4f}",
            flush=True,
        )
    return {
        "machine": {"cpu_count": psutil.cpu_count(), "platform": platform.platform()},
        "settings": vars(args),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--what", choices=("phase", "dedup"), default="phase", help="the whole phase, or dedup"
    )
    p.add_argument("--sizes", default=None, help="clips, comma-separated (100000,300000)")
    p.add_argument("--threshold", type=float, default=0.95, help="the dedup threshold")
    p.add_argument("--percentile", type=float, default=20.0, help="caption cut-off percentile")
    p.add_argument("--nprobe", type=int, default=2)
    p.add_argument("--memory-mb", type=int, default=1024, help="the corpus phase's setting")
    p.add_argument("--exact-limit", type=int, default=50_000, help="--dedup_exact_limit")
    p.add_argument("--workers", type=int, default=2, help="threads searching inverted lists")
    p.add_argument("--queries", type=int, default=1000, help="clips checked against exact search")
    p.add_argument(
        "--videos-per-file",
        type=int,
        default=64,
        help="videos per synthetic work file (a run commits --commit_every, 8, at a time)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="where the run folder or store is written")
    p.add_argument("--out", default=None, help="the JSON results (benchmarks/results/...)")
    args = p.parse_args(argv)
    if args.work_dir:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    phase = args.what == "phase"
    args.sizes = args.sizes or ("100000,300000" if phase else "100000,1000000")
    name = "corpus_phase.json" if phase else "corpus_scale.json"
    args.out = args.out or str(ROOT / "benchmarks" / "results" / name)
    result = run_phase(args) if phase else run_dedup(args)
    _table(result["rows"], phase)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"results: {args.out}")
    return 0


def _table(rows: list[dict[str, Any]], phase: bool) -> None:
    if phase:
        print(
            f"\n{'clips':>10} {'time s':>8} {'peak RSS MB':>12} {'scratch MB':>11} "
            f"{'work MB':>8} {'recall':>7} {'copies found':>13}"
        )
        for r in rows:
            recall = "-" if r["recall"] is None else f"{r['recall']:.4f}"
            print(
                f"{r['clips']:>10,} {r['phase_s']:>8.1f} {r['peak_rss_mb']:>12.0f} "
                f"{r['scratch_peak_mb']:>11.0f} {r['work_mb']:>8.0f} {recall:>7} "
                f"{r['planted_found']:>13.4f}"
            )
    else:
        print(f"\n{'clips':>10} {'dedup s':>8} {'peak RSS MB':>12} {'store MB':>9} {'recall':>7}")
        for r in rows:
            print(
                f"{r['clips']:>10,} {r['dedup_s']:>8.1f} {r['peak_rss_mb']:>12.0f} "
                f"{r['store_mb']:>9.0f} {r['recall']:>7.4f}"
            )


if __name__ == "__main__":
    sys.exit(main())
