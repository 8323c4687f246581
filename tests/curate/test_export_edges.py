"""``curate export`` at its edges, on clips tables written by hand (nothing is decoded): values
the plan cannot lay windows over, sources slower than the export fps, raw videos without a
caption, exports that end with no sample, and the bytes a shard's tar headers take."""

from __future__ import annotations

import logging
import math
import tarfile
from pathlib import Path
from typing import Any

import pytest

from curate.export import ExportSettings, plan_export, read_export, read_failures
from curate.export.codec import Encoded
from curate.export.writer import _member_bytes, write_tar
from tests.curate.export_helpers import write_run

SETTINGS = ExportSettings(fps=8, frames=8, samples_per_shard=5)


def _clips(
    video_id: str,
    spans: list[tuple[int, int]],
    *,
    fps: float = 24.0,
    caption: str | None = "a red circle on navy",
    status: str = "kept",
) -> list[dict[str, Any]]:
    """Clips rows of one video (its file need not exist: planning decodes nothing)."""
    return [
        {
            "clip_id": f"{video_id}:{i:04d}",
            "video_id": video_id,
            "scene_index": i,
            "uri": f"/nowhere/{video_id}.mp4",
            "start_frame": start,
            "end_frame": end,
            "start_s": start / 24.0,
            "end_s": end / 24.0,
            "fps": fps,
            "width": 64,
            "height": 64,
            "transition": None,
            "source_caption": caption,
            "caption_score": 0.9,
            "status": status,
            "reason": None,
            "recaption": f"scene {i} of {video_id}",
            "recaption_source": "source_fragment",
            "duplicate_of": None,
        }
        for i, (start, end) in enumerate(spans)
    ]


def _rows(failures: list[dict[str, Any]], error_type: str) -> dict[str, dict[str, Any]]:
    return {f["input_id"]: f for f in failures if f["error_type"] == error_type}


def _tamper(run: Path, changes: dict[str, dict[str, Any]]) -> None:
    """Set values of the run's clips rows (by clip id) in its Parquet file, past the checks
    of the writer, as a hand edit of the file would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (path,) = (run / "clips").glob("*.parquet")
    table = pq.read_table(path)
    rows = [row | changes.get(row["clip_id"], {}) for row in table.to_pylist()]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def test_bad_fps_and_spans_in_the_clips_table_fail_their_video_only(tmp_path):
    """An fps of 0, NaN, inf or below 0, and a span that is empty, reversed or starts before
    frame 0, each fail their video's clips (stage export-plan, naming the clip and the value);
    the other videos are planned."""
    bad_fps = {"zero": 0.0, "nan": math.nan, "inf": math.inf, "negative": -24.0}
    bad_spans = {"empty": (48, 48), "reversed": (60, 50), "before": (-5, 48)}
    videos = ["good", *bad_fps, *bad_spans]
    clips = [c for v in videos for c in _clips(v, [(0, 48), (48, 96)])]
    run = write_run(tmp_path / "run", clips)
    changes = {f"{v}:{i:04d}": {"fps": fps} for v, fps in bad_fps.items() for i in (0, 1)}
    for v, (start, end) in bad_spans.items():
        changes[f"{v}:0001"] = {"start_frame": start, "end_frame": end}
    _tamper(run, changes)
    plan = plan_export(run, SETTINGS)
    assert [j.video_id for j in plan.jobs] == ["good"]
    assert plan.samples == 4  # 96 frames at 24 fps: 32 at 8 fps
    rows = _rows(plan.failures, "InvalidValue")
    assert set(rows) == {c["clip_id"] for c in clips if c["video_id"] != "good"}
    assert all(f["stage"] == "export-plan" for f in rows.values())
    for name, fps in bad_fps.items():
        message = rows[f"{name}:0000"]["message"]
        assert message.startswith(f"{name}:0000: ") and f"fps {fps!r}" in message, message
    for name, (start, end) in bad_spans.items():
        message = rows[f"{name}:0000"]["message"]
        assert f"clip {name}:0001" in message and f"[{start}, {end})" in message, message


def test_a_source_slower_than_the_export_fps_is_refused_unless_allowed(tmp_path):
    """Nearest-frame resampling of a 6 fps video at 8 fps shows some source frames twice:
    by default its clips are UpsampledSource rows; allow_upsample plans it, frames repeated."""
    clips = _clips("slow", [(0, 30), (30, 60)], fps=6.0) + _clips("fast", [(0, 96)])
    run = write_run(tmp_path / "run", clips)
    plan = plan_export(run, SETTINGS)
    assert [j.video_id for j in plan.jobs] == ["fast"]
    rows = _rows(plan.failures, "UpsampledSource")
    assert set(rows) == {"slow:0000", "slow:0001"}
    assert all(f["stage"] == "export-plan" for f in rows.values())
    assert "6 fps, below the export's 8 fps" in rows["slow:0000"]["message"]
    raw = plan_export(run, ExportSettings(**{**SETTINGS.to_dict(), "raw": True}))
    assert set(_rows(raw.failures, "UpsampledSource")) == {"slow"}
    allowed = ExportSettings(**{**SETTINGS.to_dict(), "allow_upsample": True})
    plan = plan_export(run, allowed)
    assert {j.video_id for j in plan.jobs} == {"slow", "fast"}
    slow = next(j for j in plan.jobs if j.video_id == "slow")
    frames = [i for w in slow.windows for i in w.source_frames]
    assert len(set(frames)) < len(frames)  # what the opt-in accepts
    assert not _rows(plan.failures, "UpsampledSource")


def test_an_ntsc_rate_passes_for_its_round_one(tmp_path):
    """29.97 fps exported at 30 repeats one frame in about a thousand: exported; a video 1 %
    slower is not."""
    settings = ExportSettings(**{**SETTINGS.to_dict(), "fps": 30.0})
    clips = _clips("ntsc", [(0, 200)], fps=30000 / 1001) + _clips("slower", [(0, 200)], fps=29.7)
    plan = plan_export(write_run(tmp_path / "run", clips), settings)
    assert [j.video_id for j in plan.jobs] == ["ntsc"]
    assert set(_rows(plan.failures, "UpsampledSource")) == {"slower:0000"}


def test_the_export_fps_is_bounded(tmp_path, capsys):
    from pipelines.cli import main

    with pytest.raises(ValueError, match="fps must be at most 1000"):
        ExportSettings(fps=1e12)
    run = write_run(tmp_path / "run", _clips("v", [(0, 96)]))
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out), "--fps", "1e12", "--no-progress"]) == 2
    assert "fps must be at most 1000" in capsys.readouterr().err
    assert not out.exists()


def test_a_raw_video_without_a_manifest_caption_is_a_no_prompt_row(tmp_path):
    """Its frames would train with the empty prompt, the unconditional one."""
    clips = (
        _clips("none", [(0, 96)], caption=None)
        + _clips("blank", [(0, 96)], caption="   ")
        + _clips("captioned", [(0, 96)])
    )
    plan = plan_export(write_run(tmp_path / "run", clips), ExportSettings(raw=True, frames=8))
    assert [j.video_id for j in plan.jobs] == ["captioned"]
    rows = _rows(plan.failures, "NoPrompt")
    assert set(rows) == {"none", "blank"}
    assert all("no manifest caption" in f["message"] for f in rows.values())
    prompts = {p.prompt for j in plan.jobs for w in j.windows for p in w.pieces}
    assert prompts == {"a red circle on navy"}


def _export_cli(run: Path, out: Path, *flags: str) -> int:
    from pipelines.cli import main

    return main(["export", str(run), "--out", str(out), "--no-progress", *flags])


def test_an_export_with_no_sample_exits_3_and_says_why(tmp_path, capsys):
    """Every run shorter than one window; a sample cap below the first video's windows: the
    export is published, empty, and the command says why with exit status 3."""
    short = write_run(tmp_path / "short", _clips("a", [(0, 20)]) + _clips("b", [(0, 12)]))
    out = tmp_path / "short-out"
    assert _export_cli(short, out, "--frames", "8") == 3
    captured = capsys.readouterr()
    assert "0 samples in 0 shards" in captured.out
    assert "no sample written" in captured.err and "RunTooShort 2" in captured.err
    assert "fewer frames (--frames)" in captured.err
    assert read_export(out)["counts"]["samples"] == 0
    assert {f["error_type"] for f in read_failures(out)} == {"RunTooShort"}
    assert _export_cli(short, out, "--frames", "8") == 3  # a rerun says it again

    capped = write_run(tmp_path / "capped", _clips("a", [(0, 96)]))  # 4 windows
    out = tmp_path / "capped-out"
    assert _export_cli(capped, out, "--frames", "8", "--max-samples", "1") == 3
    err = capsys.readouterr().err
    assert "SampleCap 1" in err and "max_samples (--max-samples)" in err

    dropped = write_run(tmp_path / "dropped", _clips("a", [(0, 96)], status="dropped"))
    assert _export_cli(dropped, tmp_path / "dropped-out") == 3
    assert "1 not selected" in capsys.readouterr().err


def test_interrupting_the_cli_prints_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    import curate.export as export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_run", interrupted)
    run = write_run(tmp_path / "run", _clips("a", [(0, 96)]))
    try:
        code = _export_cli(run, tmp_path / "out")
    except KeyboardInterrupt:  # would end the test session
        pytest.fail("curate export let KeyboardInterrupt through (a traceback)")
    assert code == 130
    captured = capsys.readouterr()
    assert captured.err == (
        "curate export: interrupted; finished shards are kept; rerun the same command to resume\n"
    )


def _encoded(key: str, mp4: int) -> Encoded:
    """A sample of ``mp4`` bytes whose JSON has what an index row reads."""
    segment = {
        "start_s": 0.0,
        "end_s": 1.0,
        "start_frame": 0,
        "end_frame": 8,
        "prompt": "a red circle",
        "clip_id": f"{key}:0000",
        "score": None,
        "status": "kept",
        "reason": None,
        "prompt_source": None,
    }
    meta = {
        "key": key,
        "video_id": key,
        "uri": f"/nowhere/{key}.mp4",
        "fps": 8.0,
        "frames": 8,
        "width": 64,
        "height": 64,
        "source": {"start_frame": 0, "end_frame": 24},
        "clip_ids": [f"{key}:0000"],
        "segments": [segment],
    }
    return Encoded(key, b"\x01" * mp4, meta)


def test_shard_bytes_count_the_long_name_headers_tar_writes(tmp_path):
    """A member name over 100 characters takes GNU long-name blocks (1 KiB) besides its
    header: the size a shard is judged by is the size written."""
    for key in ("short-0000", "v" * 120 + "-0000"):
        samples = [_encoded(f"{key}{i}", 5000 + 700 * i) for i in range(6)]
        path = tmp_path / f"{len(key)}.tar"
        write_tar(path, samples)
        assert path.stat().st_size == _member_bytes(samples), key
        with tarfile.open(path) as tar:
            assert len(tar.getnames()) == 12


def test_a_sample_over_shard_bytes_is_named(tmp_path, caplog):
    """A sample larger than the limit alone: its shard holds it alone and passes the limit,
    with a warning naming it; the others keep within the limit, and the summary counts it."""
    from curate.export.plan import Plan
    from curate.export.writer import ShardWriter, publish, shard_name

    settings = ExportSettings(samples_per_shard=None, shard_bytes=40_000)
    out = tmp_path / "out"
    (out / "_parts").mkdir(parents=True)
    writer = ShardWriter(out, settings, 0, 0)
    sizes = [8000, 9000, 70_000, 8000, 9000, 7000]
    with caplog.at_level(logging.WARNING, logger="curate.export.writer"):
        for i, size in enumerate(sizes):
            writer.add(_encoded(f"s{i}", size), next_position=i + 1)
        writer.finish()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and warned[0].startswith("sample s2: ")
    assert "over shard_bytes (40000)" in warned[0] and shard_name(1) in warned[0]
    plan = Plan([], [], {"run_clips": 0, "run_videos": 0})
    summary = publish(out, plan, settings, {"settings": settings.to_dict()})
    shards = read_export(out)["shards"]
    assert [s["samples"] for s in shards] == [2, 1, 3]
    assert [s["bytes"] > 40_000 for s in shards] == [False, True, False]
    assert summary.counts["shards_over_limit"] == 1
    assert any("1 shard(s) pass shard_bytes" in line for line in summary.lines())
