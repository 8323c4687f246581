"""Each composite transform of the curate pipeline on its own: ``TestPipeline`` + ``Create``
+ ``assert_that``, with the fake steps of ``fakes.py`` where a model would be needed."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to, is_empty

from curate import shards
from curate.dedup import Deduplicator
from curate.threshold import Threshold
from curate.work import VideoWork
from pipelines.handlers import ClipModelHandler
from pipelines.transforms import (
    CaptionCutoff,
    CleanCaptions,
    CommitWork,
    FilterAndRecaption,
    FindDuplicates,
    Gather,
    MarkDuplicates,
    ProbeAndSplit,
    ReadWork,
    ScoreCaptions,
    WriteShards,
    failure_rate_problem,
    reset_failure_rate,
)
from tests.pipelines.fakes import FakeDecoder, FakeRecaptioner, FakeScorer


def clip(vid: str, i: int, score: float | None, *, status: str = "kept", **extra) -> dict:
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
        "width": 4,
        "height": 4,
        "source_caption": f"{vid} scene {i}",
        "caption_score": score,
        "status": status,
        "reason": None if status == "kept" else "empty_caption",
        **extra,
    }


def record(vid: str, clips: list[dict], caption: str = "x") -> dict:
    return {
        "video_id": vid,
        "video": {"video_id": vid, "uri": f"{vid}.mp4", "caption": caption},
        "clips": clips,
        "failures": [],
    }


def unit(*values: float) -> list[float]:
    v = np.asarray(values, np.float32)
    return (v / np.linalg.norm(v)).tolist()


def statuses(expected: dict[str, tuple[str, str | None]]):
    def check(records):
        got = {c["clip_id"]: (c["status"], c["reason"]) for r in records for c in r["clips"]}
        assert got == expected, got

    return check


# --- shared ------------------------------------------------------------------------------------


def test_gather_makes_one_list_and_nothing_of_nothing():
    with test_pipeline.TestPipeline() as p:
        some = p | "Some" >> beam.Create([3, 1, 2]) | "GatherSome" >> Gather()
        assert_that(some | beam.Map(sorted), equal_to([[1, 2, 3]]), label="Some")
        none = p | "None" >> beam.Create([]) | "GatherNone" >> Gather()
        assert_that(none, is_empty(), label="NoList")


# --- per-video phase -----------------------------------------------------------------------------


def fake_videos(tmp_path: Path) -> list[dict]:
    (tmp_path / "good.mp4").write_text("scenes=2")
    (tmp_path / "broken.mp4").write_text("broken")
    return [
        {"video_id": "good", "uri": str(tmp_path / "good.mp4"), "caption": "a cat score 0.7"},
        {"video_id": "broken", "uri": str(tmp_path / "broken.mp4"), "caption": "x"},
    ]


def test_probe_and_split_routes_failures_to_their_own_output(tmp_path):
    with test_pipeline.TestPipeline() as p:
        ok, failed = (
            p
            | beam.Create(fake_videos(tmp_path))
            | ProbeAndSplit(FakeDecoder, {}, timeout_s=None, isolate=False)
        )
        assert_that(
            ok | "OkIds" >> beam.Map(lambda w: (w.video_id, len(w.clips))),
            equal_to([("good", 2)]),
            label="Ok",
        )
        assert_that(
            failed
            | "FailedRows"
            >> beam.Map(lambda w: (w.video_id, w.clips, w.failures[0]["error_type"])),
            equal_to([("broken", [], "VideoOpenFailure")]),
            label="Failed",
        )


def test_probe_and_split_names_remote_urls(tmp_path):
    from pipelines.transforms.per_video import REMOTE_URL

    videos = [
        {"video_id": v, "uri": uri, "caption": "x"}
        for v, uri in [("h", "https://example.com/a.mp4"), ("s", "s3://bucket/a.mp4")]
    ]
    with test_pipeline.TestPipeline() as p:
        ok, failed = (
            p | beam.Create(videos) | ProbeAndSplit(FakeDecoder, {}, timeout_s=None, isolate=False)
        )
        assert_that(ok, is_empty(), label="Ok")
        assert_that(
            failed
            | "FailedRows"
            >> beam.Map(lambda w: (w.video_id, w.failures[0]["stage"], w.failures[0]["message"])),
            equal_to(
                [
                    ("h", "probe", f"https://example.com/a.mp4: {REMOTE_URL}"),
                    ("s", "probe", f"s3://bucket/a.mp4: {REMOTE_URL}"),
                ]
            ),
            label="Failed",
        )


def test_clean_captions_marks_unusable_captions_dropped():
    work = VideoWork(
        video={"video_id": "v", "uri": "v.mp4"},
        clips=[
            clip("v", 0, None, source_caption="  a   cat "),
            clip("v", 1, None, source_caption=""),
        ],
    )
    with test_pipeline.TestPipeline() as p:
        ok, failed = p | beam.Create([work]) | CleanCaptions()
        assert_that(
            ok | beam.Map(lambda w: [(c["source_caption"], c["status"]) for c in w.clips]),
            equal_to([[("a cat", "kept"), (None, "dropped")]]),
            label="Cleaned",
        )
        assert_that(failed, is_empty(), label="NoFailures")


def test_score_captions_fails_only_the_video_that_raises():
    def work(vid: str, caption: str) -> VideoWork:
        frames = np.zeros((2, 4, 4, 3), np.uint8)
        c = clip(vid, 0, None, source_caption=caption, frames=frames)
        return VideoWork(video={"video_id": vid, "uri": f"{vid}.mp4"}, clips=[c])

    handler = ClipModelHandler(FakeScorer, {}, max_batch_videos=4, dedup={"pixel_weight": 0.0})
    with test_pipeline.TestPipeline() as p:
        ok, failed = (
            p
            | beam.Create([work("a", "a cat score 0.8"), work("b", "explode score 0.1")])
            | ScoreCaptions(handler)
        )
        assert_that(
            ok
            | "Scored"
            >> beam.Map(
                lambda w: [
                    (c["caption_score"], "frames" in c, len(c["dedup_signature"])) for c in w.clips
                ]
            ),
            equal_to([[(0.8, False, 16)]]),
            label="Ok",
        )
        assert_that(
            failed | "Stages" >> beam.Map(lambda w: (w.video_id, w.failures[0]["stage"])),
            equal_to([("b", "clip-score")]),
            label="Failed",
        )


def test_commit_work_writes_each_video_once(tmp_path):
    works = [
        VideoWork(video={"video_id": "a", "uri": "a.mp4"}, clips=[clip("a", 0, 0.5)]),
        VideoWork(video={"video_id": "b", "uri": "b.mp4"}).fail(
            {"input_id": "b", "stage": "probe", "error_type": "E", "message": "m"}
        ),
    ]
    with test_pipeline.TestPipeline() as p:
        summaries = p | beam.Create(works) | CommitWork(str(tmp_path), every=1)
        assert_that(summaries, equal_to([("a", 1, False), ("b", 0, True)]))
    assert shards.done_set(tmp_path) == {"a", "b"}


def test_the_failure_rate_sums_the_counts_of_every_worker_process(tmp_path):
    from curate.run_folder import foreign_files

    out = str(tmp_path)
    run_id = reset_failure_rate(out)

    def problem() -> str | None:
        return failure_rate_problem(out, run_id, max_failure_rate=0.5, min_inputs=4)

    shards.write_failure_count(out, run_id, "a1", seen=3, failed=3)
    assert problem() is None  # 3 seen in all: fewer than 4
    shards.write_failure_count(out, run_id, "b2", seen=3, failed=0)
    assert problem() is None  # 3 of 6: not above 50%
    shards.write_failure_count(out, run_id, "b2", seen=3, failed=1)  # b2's newer count
    assert (problem() or "").startswith(
        "4 of 6 videos failed (67%), above --max-failure-rate 50%; stopped."
    )
    assert foreign_files(tmp_path) == []  # the count files are the run's own
    # a new run counts afresh; an earlier run's counts are not its own
    again = reset_failure_rate(out)
    assert again != run_id and shards.failure_count(out, run_id) == (0, 0)
    assert not list((tmp_path / "_work").glob("_rate-*"))


# --- corpus phase ----------------------------------------------------------------------------------


def test_read_work_joins_extras_and_reads_a_video_once(tmp_path):
    from curate.work import work_record

    video = {"video_id": "a", "uri": "a.mp4", "fingerprint": "now", "attempt": 2}
    clips = [clip("a", 0, 0.5, fragment="a scene", dedup_signature=np.ones(3, np.float32))]
    for _ in range(2):  # a retried bundle commits the same video twice
        shards.commit_work(tmp_path, [work_record(video, clips, [])])
        shards.commit_work(
            tmp_path,
            [
                work_record(video, clips, []),
                work_record({"video_id": "b", "uri": "b.mp4"}, [clip("b", 0, 0.1)], []),
            ],
        )
    # an earlier attempt, and a record made under an older fingerprint: both passed over
    older = [clip("a", 0, 0.1, fragment="older")]
    shards.commit_work(tmp_path, [work_record({**video, "attempt": 1}, older, [])])
    shards.commit_work(tmp_path, [work_record({**video, "fingerprint": "then"}, older, [])])
    files = [str(f) for f in shards.work_files(tmp_path)]
    with test_pipeline.TestPipeline() as p:
        records = p | ReadWork(files, keep={"a": "now"})
        assert_that(
            records
            | beam.Map(
                lambda r: (
                    r["video_id"],
                    [(c["clip_id"], c["fragment"], c["dedup_signature"]) for c in r["clips"]],
                )
            ),
            equal_to([("a", [("a-000", "a scene", [1.0, 1.0, 1.0])])]),
        )


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(Threshold(0.25, False), 0.25), (Threshold(50.0, True), 0.2), (Threshold(0.9, False), 0.9)],
)
def test_caption_cutoff_over_the_scorable_clips(threshold, expected):
    records = [
        record("a", [clip("a", 0, 0.1), clip("a", 1, 0.2)]),
        record("b", [clip("b", 0, 0.3), clip("b", 1, 0.9, status="dropped")]),
    ]
    with test_pipeline.TestPipeline() as p:
        cut = p | beam.Create(records) | CaptionCutoff(threshold)
        assert_that(cut, equal_to([expected]))


def test_filter_and_recaption_uses_the_corpus_cutoff_and_fails_whole_videos():
    records = [
        record("a", [clip("a", 0, 0.1), clip("a", 1, 0.5)]),
        record("b", [clip("b", 0, 0.6)], caption="recaption-fails"),
        record("c", []),
    ]
    with test_pipeline.TestPipeline() as p:
        recs = p | "Records" >> beam.Create(records)
        cutoff = p | "Cutoff" >> beam.Create([0.3])
        out = recs | FilterAndRecaption(cutoff, FakeRecaptioner, {})
        assert_that(
            out
            | beam.Map(
                lambda r: (
                    r["video_id"],
                    [(c["status"], c["reason"], c.get("recaption")) for c in r["clips"]],
                    None if r["story"] is None else len(r["story"]["segments"]),
                    [f["stage"] for f in r["failures"]],
                )
            ),
            equal_to(
                [
                    (
                        "a",
                        [
                            ("dropped", "low_caption_score", "a scene 0"),
                            ("kept", None, "a scene 1"),
                        ],
                        1,
                        [],
                    ),
                    ("b", [], None, ["recaption"]),
                    ("c", [], None, []),
                ]
            ),
        )


def dedup_rows() -> list[dict]:
    same = unit(1, 0, 0, 0)
    return [
        {**clip("a", 0, 0.9), "dedup_signature": same},
        {**clip("b", 0, 0.5), "dedup_signature": same},
        {**clip("c", 0, 0.7), "dedup_signature": unit(0, 1, 0, 0)},
        {**clip("d", 0, 0.7), "dedup_signature": unit(0, 0, 1, 0)},
    ]


@pytest.mark.parametrize("exact", [True, False])
def test_find_duplicates_keeps_the_best_scored_copy(exact):
    dedup = Deduplicator.at(0.95, pixel_weight=0.0)
    with test_pipeline.TestPipeline() as p:
        pairs = (
            p | beam.Create(dedup_rows()) | FindDuplicates(dedup, exact=exact, clusters=2, sample=3)
        )
        assert_that(pairs, equal_to([("b-000", "a-000")]))


def test_mark_duplicates_marks_clips_and_withdraws_copied_stories():
    def story(vid: str) -> dict:
        return {"story_id": vid, "segments": [{"clip_id": f"{vid}-000", "prompt": "p"}]}

    records = [
        {**record(vid, [row]), "story": story(vid)} for vid, row in zip("abcd", dedup_rows())
    ]
    with test_pipeline.TestPipeline() as p:
        rows = (
            p
            | beam.Create(records)
            | MarkDuplicates(Deduplicator.at(0.95, pixel_weight=0.0), exact=True, clusters=2)
        )
        clips = rows | "Clips" >> beam.Filter(lambda tr: tr[0] == "clips")
        assert_that(
            clips
            | "Marks"
            >> beam.Map(
                lambda tr: (
                    tr[1]["clip_id"],
                    tr[1]["status"],
                    tr[1]["duplicate_of"],
                    "dedup_signature" in tr[1],
                )
            ),
            equal_to(
                [
                    ("a-000", "kept", None, False),
                    ("b-000", "dropped", "a-000", False),
                    ("c-000", "kept", None, False),
                    ("d-000", "kept", None, False),
                ]
            ),
            label="Clips",
        )
        stories = rows | "Stories" >> beam.Filter(lambda tr: tr[0] == "stories")
        assert_that(
            stories | "StoryIds" >> beam.Map(lambda tr: tr[1]["story_id"]),
            equal_to(["a", "c", "d"]),
            label="Stories",
        )


def test_write_shards_stages_one_file_per_shard(tmp_path):
    from curate.work import table_row

    rows = [table_row(clip(v, i, 0.5)) for v in "abc" for i in range(2)]
    with test_pipeline.TestPipeline() as p:
        written = p | beam.Create(rows) | WriteShards(str(tmp_path), "clips", 2)
        assert_that(
            written | beam.Map(lambda ic: ic[1]["clips"]) | beam.CombineGlobally(sum),
            equal_to([6]),
        )
    staged = sorted(p.name for p in (tmp_path / shards.STAGING_DIR / "clips").iterdir())
    assert staged and all(name.startswith("part-") for name in staged) and len(staged) <= 2
