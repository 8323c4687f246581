"""The streamed corpus phase (:class:`curate.corpus.CorpusPhase`) on committed work written
here: its output does not depend on how the work is chunked, which search finds duplicates
(below the exact limit or above it), or whether Beam runs its steps; the memory setting
sizes what it holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import shards
from curate.corpus import Budget, CorpusPhase
from curate.corpus.merge import _merge, _row_groups
from curate.dedup import Deduplicator
from curate.run_folder import CORPUS_DIR, foreign_files
from curate.threshold import Threshold
from curate.work import ATTEMPT, FINGERPRINT, work_record
from schemas.failures import video_failure_row
from tests.pipelines.fakes import FakeRecaptioner

DIM = 24


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clip(vid: str, i: int, score: float | None, signature: np.ndarray, emb: np.ndarray) -> dict:
    return {
        "clip_id": f"{vid}-{i:03d}",
        "video_id": vid,
        "scene_index": i,
        "uri": f"{vid}.mp4",
        "start_frame": 10 * i,
        "end_frame": 10 * (i + 1),
        "start_s": float(i),
        "end_s": float(i + 1),
        "fps": 10.0,
        "width": 8,
        "height": 8,
        "source_caption": f"{vid} scene {i}" if score is not None else "",
        "caption_score": score,
        "status": "kept" if score is not None else "dropped",
        "reason": None if score is not None else "empty_caption",
        "embedding": emb.tolist(),
        "frame_scores": None if score is None else [score, score],
        "fragment": f"{vid} scene {i}",
        "frame_embeddings": np.stack([emb, emb]),
        "dedup_signature": signature,
    }


def write_work(
    out: Path, videos: int = 40, *, seed: int = 0, dim: int = DIM, emb: int = 16
) -> tuple[dict[str, str], list]:
    """Committed work of ``videos`` videos (1-4 scenes; every 7th a copy of the one before,
    every 11th failed; one older attempt and one record under an old fingerprint that the
    phase must pass over) → ``keep`` and the manifest's rejected rows."""
    rng = np.random.default_rng(seed)
    keep: dict[str, str] = {}
    records = []
    looks: dict[str, np.ndarray] = {}
    for v in range(videos):
        vid = f"v{v:03d}"
        keep[vid] = f"fp-{vid}"
        video = {
            "video_id": vid,
            "uri": f"{vid}.mp4",
            "caption": f"{vid} caption",
            FINGERPRINT: keep[vid],
            ATTEMPT: 2 if v == 1 else 1,
        }
        if v % 11 == 10:
            row = video_failure_row(video, stage="decode", error_type="X", message="broken")
            records.append(work_record(video, [], [row]))
            continue
        scenes = 1 + v % 4
        copy = v % 7 == 6 and f"v{v - 1:03d}" in looks
        base = looks[f"v{v - 1:03d}"] if copy else _unit(rng.normal(size=(4, dim)))
        looks[vid] = base
        clips = []
        for i in range(scenes):
            sig = base[i] if not copy else _unit(base[i] + 0.02 * rng.normal(size=dim))
            score = None if (v + i) % 9 == 0 else round(float(rng.uniform(0.1, 0.9)), 3)
            clips.append(_clip(vid, i, score, sig, _unit(rng.normal(size=emb))))
        records.append(work_record(video, clips, []))
    for start in range(0, len(records), 4):
        shards.commit_work(out, records[start : start + 4])
    old = [_clip("v001", 0, 0.99, _unit(rng.normal(size=dim)), _unit(rng.normal(size=emb)))]
    first = {"video_id": "v001", "uri": "v001.mp4", FINGERPRINT: "fp-v001", ATTEMPT: 1}
    shards.commit_work(out, [work_record(first, old, [])])
    stale = {**first, FINGERPRINT: "fp-old", ATTEMPT: 3}
    shards.commit_work(out, [work_record(stale, old, [])])
    rejected = [
        {
            "input_id": "line-99",
            "uri": None,
            "stage": "read_manifest",
            "error_type": "MissingField",
            "message": "no uri",
            "source_line": 99,
        }
    ]
    return keep, rejected


def corpus_phase(out: Path, **settings) -> CorpusPhase:
    defaults = {
        "threshold": Threshold(30.0, True),
        "dedup": Deduplicator.at(0.95, pixel_weight=0.0),
        "rows_per_shard": 8,
        "counts": {"inputs": 41},
    }
    return CorpusPhase(out, **{**defaults, **settings})


def published(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    manifest = json.loads((out / "_manifest.json").read_text())
    tables = {t: shards.read_table(out, t).to_pylist() for t in ("clips", "stories", "failures")}
    return {k: manifest[k] for k in ("counts", "shards", "config")}, tables


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("work")
    keep, rejected = write_work(root / "base")
    return root, keep, rejected


def _fresh(work, name: str) -> Path:
    root, _, _ = work
    out = root / name
    shutil.copytree(root / "base" / "_work", out / "_work")
    return out


@pytest.fixture(scope="module")
def reference(work):
    _, keep, rejected = work
    out = _fresh(work, "reference")
    report = corpus_phase(out).run(keep, FakeRecaptioner(), manifest_failures=rejected)
    assert report.chunks == 1
    return published(out)


def test_the_phase_reads_the_current_records_and_accounts_for_every_input(reference):
    manifest, tables = reference
    counts = manifest["counts"]
    assert counts["videos_done"] == 40 and counts["pending"] == 0 and counts["dedup_exact"] == 1
    clip_videos = {c["video_id"] for c in tables["clips"]}
    failed = {f["input_id"] for f in tables["failures"]}
    assert len(clip_videos) + len(failed) == 41 and not clip_videos & failed
    # v001's current record is its second attempt, not the first or the stale fingerprint
    assert [c["clip_id"] for c in tables["clips"] if c["video_id"] == "v001"] == [
        "v001-000",
        "v001-001",
    ]
    dups = {c["clip_id"]: c["duplicate_of"] for c in tables["clips"] if c["duplicate_of"]}
    assert dups and all(k.split("-")[0] != v.split("-")[0] for k, v in dups.items())
    assert manifest["config"]["cutoff"] is not None
    assert len([s for s in manifest["shards"] if s["table"] == "clips"]) > 1


def test_chunk_size_does_not_change_the_output(work, reference):
    _, keep, rejected = work
    out = _fresh(work, "chunked")
    report = corpus_phase(out, chunk_clips=5).run(
        keep, FakeRecaptioner(), manifest_failures=rejected
    )
    assert report.chunks >= 10
    assert published(out) == reference
    assert not (out / CORPUS_DIR).exists()


def test_inverted_lists_find_the_duplicates_exact_search_finds(work, reference):
    _, keep, rejected = work
    out = _fresh(work, "lists")
    report = corpus_phase(out, exact_limit=1, chunk_clips=20).run(
        keep, FakeRecaptioner(), manifest_failures=rejected
    )
    assert report.dedup["method"] == "inverted lists" and report.dedup["lists"] > 1
    manifest, tables = published(out)
    assert manifest["counts"].pop("dedup_exact") == 0
    expected = json.loads(json.dumps(reference[0]))
    expected["counts"].pop("dedup_exact")
    assert (manifest, tables) == (expected, reference[1])


def test_beam_stages_give_what_the_phase_gives_in_process(work, reference):
    from apache_beam.testing import test_pipeline

    from pipelines.transforms import CorpusOnWorkers

    _, keep, rejected = work
    out = _fresh(work, "beam")
    phase = corpus_phase(out, chunk_clips=7, exact_limit=1)
    phase.make_plan(keep, rejected)
    with test_pipeline.TestPipeline() as p:
        _ = p | CorpusOnWorkers(phase, FakeRecaptioner, {})
    manifest, tables = published(out)
    manifest["counts"].pop("dedup_exact")
    expected = json.loads(json.dumps(reference[0]))
    expected["counts"].pop("dedup_exact")
    assert (manifest, tables) == (expected, reference[1])


def test_a_killed_phase_leaves_scratch_that_the_next_run_clears(work, reference):
    from curate.run_folder import check_ownership

    _, keep, rejected = work
    out = _fresh(work, "killed")
    phase = corpus_phase(out)
    phase.make_plan(keep, rejected)
    phase.cutoff()  # ... and the process dies here
    assert (out / CORPUS_DIR / "plan.json").exists()
    check_ownership(out, overwrite=False)  # the scratch is storyloom's own
    corpus_phase(out).run(keep, FakeRecaptioner(), manifest_failures=rejected)
    assert published(out) == reference
    (out / CORPUS_DIR).mkdir()
    (out / CORPUS_DIR / "notes.txt").write_text("mine")
    assert foreign_files(out) == [out / CORPUS_DIR / "notes.txt"]


def test_merging_sorted_parts_gives_one_sorted_order(tmp_path):
    rng = np.random.default_rng(1)
    keys = [(f"v{rng.integers(50):03d}", int(rng.integers(5))) for _ in range(300)]
    keys += [(None, 1), ("v010", None)]
    parts = []
    for k in range(6):
        mine = sorted(keys[k::6], key=lambda t: tuple((0, "") if v is None else (1, v) for v in t))
        table = pa.table(
            {
                "video_id": pa.array([a for a, _ in mine], pa.string()),
                "scene_index": pa.array([b for _, b in mine], pa.int64()),
                "part": [k] * len(mine),
            }
        )
        path = tmp_path / f"p{k}.parquet"
        pq.write_table(table, path)
        parts.append(path)
    merged = pa.concat_tables(
        list(_row_groups(_merge(parts, ("video_id", "scene_index"), batch=4), 50))
    )
    got = list(zip(merged.column("video_id").to_pylist(), merged.column("scene_index").to_pylist()))

    def sortable(t):
        return tuple((0, "") if v is None else (1, v) for v in t)

    assert got == sorted(keys, key=sortable)
    # equal keys come from the earlier part first
    rows = list(zip(got, merged.column("part").to_pylist()))
    for (a, pa_), (b, pb) in zip(rows, rows[1:]):
        assert a != b or pa_ <= pb


def test_the_memory_setting_sizes_what_is_held():
    small, large = Budget(64), Budget(1024)
    assert small.chunk_clips(40_000) < large.chunk_clips(40_000)
    assert large.chunk_clips(40_000) * 40_000 <= large.bytes / 2
    assert small.merge_rows(40, 2_000) * 40 * 2_000 <= small.bytes / 8
    assert small.row_group_rows(2_000) * 2_000 <= small.bytes / 8
    with pytest.raises(ValueError, match="memory_mb"):
        Budget(1)


def _allocated_peak_mb(phase: CorpusPhase, keep: dict[str, str]) -> float:
    """The most the phase had allocated at once, in MiB: Python objects and numpy arrays
    (``tracemalloc``) and Arrow's memory pool (sampled), above what was allocated before."""
    import threading
    import tracemalloc

    arrow_base = arrow_peak = pa.total_allocated_bytes()
    stop = threading.Event()

    def watch() -> None:
        nonlocal arrow_peak
        while not stop.wait(0.001):
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())

    watcher = threading.Thread(target=watch)
    tracemalloc.start()
    watcher.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        phase.run(keep, FakeRecaptioner())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        stop.set()
        watcher.join()
        tracemalloc.stop()
    return (peak - before + arrow_peak - arrow_base) / 2**20


@pytest.mark.slow
def test_what_the_phase_holds_does_not_grow_with_the_corpus(tmp_path):
    """Four times the videos (896-wide signatures, 128-wide embeddings): under a 16 MiB
    setting the phase holds a chunk at a time, so what it allocates at once stays about the
    same (a few bytes per clip stay: scores, dedup columns, the k-means sample up to its
    cap); with a 4 GiB setting the corpus is one chunk, and the same measure sees it."""
    keep = {}
    for n in (200, 800):
        keep[n], _ = write_work(tmp_path / str(n), n, seed=n, dim=896, emb=128)

    def peak(n: int, memory_mb: int) -> tuple[float, int]:
        phase = corpus_phase(tmp_path / str(n), memory_mb=memory_mb, exact_limit=1)
        return _allocated_peak_mb(phase, keep[n]), phase.report.chunks

    (small, small_chunks), (large, large_chunks) = peak(200, 16), peak(800, 16)
    unbounded, one = peak(800, 4096)
    assert large_chunks > small_chunks > 1 and one == 1
    assert large < 16 + 8 and large < small + 2, (small, large)
    assert unbounded > large + 5, (large, unbounded)


def test_the_corpus_bank_is_cleaned_over_every_video_at_once(tmp_path):
    """A prompt that says less than another video's, or one cut off mid-word that only
    another video's words show, leaves the bank: cleaning each video's prompts alone misses
    both."""
    fragments = {
        "v000": "a red circle moving left",
        "v001": "a red circle moving left on a brown background",
        "v002": "a white star moving up on a black ba",
    }
    rng = np.random.default_rng(0)
    keep, records = {}, []
    for vid, text in fragments.items():
        keep[vid] = f"fp-{vid}"
        video = {"video_id": vid, "uri": f"{vid}.mp4", FINGERPRINT: keep[vid], ATTEMPT: 1}
        clip = _clip(vid, 0, 0.5, _unit(rng.normal(size=DIM)), _unit(rng.normal(size=16)))
        records.append(work_record(video, [{**clip, "source_caption": text, "fragment": text}], []))
    shards.commit_work(tmp_path, records)
    step = FakeRecaptioner()
    phase = corpus_phase(tmp_path, threshold=Threshold(0.0, False), counts={"inputs": 3})
    phase.run(keep, step)
    assert step.bank == ["a red circle moving left on a brown background"]


def test_a_story_stays_while_dedup_leaves_one_of_its_scenes_kept():
    """Two scenes with one prompt merge into one segment named by its first clip; dedup
    dropping that clip alone leaves the other scene kept, and the story with it."""
    from curate.corpus.spill import _STORY_SPILL, _story_clips
    from curate.corpus.write import _final_stories
    from curate.recaption import Recaptioner
    from tests.curate.test_recaption import StubScorer, scene

    clips = [
        scene(0, "red circle", 0, 50, caption="a red circle"),
        scene(1, "red circle", 50, 100, caption="a red circle"),
    ]
    with Recaptioner(scorer=StubScorer()) as step:
        rows, story = step.recaption_video(clips)
    assert [s["clip_id"] for s in story["segments"]] == ["v:0000"]
    spilled = pa.Table.from_pylist([{**story, "_clips": _story_clips(rows)}], schema=_STORY_SPILL)

    def final(dup):
        return _final_stories(spilled, lambda video_id: dup).to_pylist()

    (kept,) = final({"v:0000": "w:0000"})
    assert [(s["clip_id"], s["status"], s["reason"]) for s in kept["segments"]] == [
        ("v:0000", "dropped", "duplicate"),
        ("v:0001", "kept", None),
    ]
    assert final({"v:0000": "w:0000", "v:0001": "w:0001"}) == []  # every scene a copy


def test_a_bank_that_could_not_be_set_fails_only_the_videos_that_needed_it():
    from curate.corpus.per_video import recaption_filtered

    class Step:
        fallback = "prompt_bank"

        def recaption_record(self, video, clips):
            source = "prompt_bank" if "needs-bank" in video["video_id"] else "source_fragment"
            return [dict(c, recaption="a prompt", recaption_source=source) for c in clips], None

    error = RuntimeError("bank unreadable")
    for vid, fails in (("own-words", False), ("needs-bank", True)):
        video = {"video_id": vid, "uri": f"{vid}.mp4"}
        clip = _clip(vid, 0, 0.5, _unit(np.ones(DIM)), _unit(np.ones(16)))
        out = recaption_filtered(Step(), {"video": video, "clips": [clip]}, bank_error=error)
        assert bool(out.get("failures")) == fails and bool(out["clips"]) != fails
        if fails:
            assert "bank unreadable" in out["failures"][0]["message"]
