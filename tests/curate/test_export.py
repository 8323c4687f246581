"""``curate export``: training shards from a run folder, checked against the shapes world's
ground truth (every clip accounted for, frames and prompts of every sample, the formats that
read them, damaged sources, determinism, resume after SIGKILL)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.export import (
    EXPORT_NAME,
    INDEX_NAME,
    ExportError,
    ExportSettings,
    decode_mp4,
    export_run,
    iter_samples,
    parse_bytes,
    parse_size,
    read_export,
    read_failures,
    shard_paths,
)
from tests.curate.export_helpers import run_from_truth, truth_clips, write_run

REPO = Path(__file__).resolve().parents[2]
#: small, quick samples that read back exactly: the corpus' own 128 px (at 64 px a ring's hole
#: is a pixel or two and the reader misses some), yuv444p (yuv420p blurs thin colour details)
SETTINGS = ExportSettings(
    width=128, height=128, fps=8, frames=8, crf=18, pix_fmt="yuv444p", samples_per_shard=5
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from curate.shapes import generate_corpus

    return generate_corpus(
        tmp_path_factory.mktemp("export_corpus"),
        videos=8,
        seed=77,
        noise_rate=0.3,
        duplicate_rate=0.15,
        resolutions=["128x128"],
        max_scenes=4,
        scene_seconds=(1.6, 3.0),
        ensure_variety=True,
        workers=1,
        progress=False,
    )


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    return run_from_truth(corpus, tmp_path_factory.mktemp("export_run") / "run")


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_out") / "shards"
    export_run(run, out, SETTINGS)
    return out


@pytest.fixture(scope="module")
def one_per_shard(run, tmp_path_factory) -> Path:
    """The reference export of one sample per shard (resume tests stop between shards)."""
    out = tmp_path_factory.mktemp("export_one") / "shards"
    export_run(run, out, ExportSettings(**{**SETTINGS.to_dict(), "samples_per_shard": 1}))
    return out


#: the CLI flags of SETTINGS, one sample per shard
ONE_PER_SHARD_FLAGS = ["--size", "128", "--fps", "8", "--frames", "8", "--crf", "18"]
ONE_PER_SHARD_FLAGS += ["--pix-fmt", "yuv444p", "--samples-per-shard", "1", "--no-progress"]


def _index(out: Path) -> list[dict]:
    return pq.read_table(out / INDEX_NAME).to_pylist()


def _selected(corpus) -> set[str]:
    return {
        c["clip_id"]
        for c in truth_clips(corpus)
        if c["status"] == "kept" and c["duplicate_of"] is None
    }


def test_every_selected_clip_is_in_a_sample_or_a_failures_row(corpus, exported):
    index = _index(exported)
    in_samples = {cid for row in index for cid in row["clip_ids"]}
    failures = read_failures(exported)
    failed = {f["input_id"] for f in failures if f["stage"].startswith("export")}
    assert in_samples and in_samples.isdisjoint(failed)
    assert in_samples | failed == _selected(corpus)
    for f in failures:
        assert f["message"].startswith(f["input_id"]) and f["error_type"], f
    counts = read_export(exported)["counts"]
    assert counts["clips_exported"] == len(in_samples)
    assert (
        counts["clips_exported"] + counts["clips_failed"] + counts["clips_not_selected"]
        == (counts["run_clips"])
    )
    # no source frame is in two samples
    seen: set[tuple[str, int]] = set()
    for sample in iter_samples(shard_paths(exported)):
        meta = sample["json"]
        frames = {(meta["video_id"], i) for i in meta["source_frames"]}
        assert len(frames) == meta["frames"] and frames.isdisjoint(seen)
        seen |= frames


def test_frames_and_prompts_match_the_source_span(corpus, exported):
    """Every frame is the source frame its index names: pixel-read colour and background equal
    the truth of the scene there (shape too, but for the reader's rare misses), and its
    prompt is that scene's caption."""
    from curate.shapes import read_frame

    by_id = corpus.by_id
    frames_read = shapes_right = 0
    for sample in iter_samples(shard_paths(exported)):
        meta = sample["json"]
        video = by_id[meta["video_id"]]
        frames = decode_mp4(sample["mp4"])
        assert frames.shape == (meta["frames"], 128, 128, 3)
        idx = meta["source_frames"]
        assert len(idx) == meta["frames"] and idx == sorted(idx)
        assert (idx[0], idx[-1] + 1) == (meta["source"]["start_frame"], meta["source"]["end_frame"])
        prompts = [""] * meta["frames"]
        for seg in meta["segments"]:
            prompts[seg["start_frame"] : seg["end_frame"]] = [seg["prompt"]] * (
                seg["end_frame"] - seg["start_frame"]
            )
        mixed = {f for t in video.transitions for f in range(t.start_frame, t.end_frame)}
        for k, i in enumerate(idx):
            scene = video.scene_at(int(i))
            assert prompts[k] == scene.caption
            if int(i) in mixed:  # a fade or dissolve frame shows two scenes
                continue
            seen = read_frame(frames[k])
            assert (seen.color, seen.background) == (scene.color, scene.background), (k, i)
            frames_read += 1
            shapes_right += seen.shape == scene.shape
    assert frames_read > 40
    assert shapes_right / frames_read > 0.95


def test_json_round_trips_through_index_and_clips_table(run, exported):
    from curate.shards import read_table

    clips = {c["clip_id"]: c for c in read_table(run, "clips").to_pylist()}
    index = {row["key"]: row for row in _index(exported)}
    for sample in iter_samples(shard_paths(exported)):
        meta = sample["json"]
        row = index[sample["__key__"]]
        assert meta["key"] == row["key"] == sample["__key__"]
        assert meta["segments"] == row["segments"]
        assert meta["clip_ids"] == row["clip_ids"]
        assert (meta["source"]["start_frame"], meta["source"]["end_frame"]) == (
            row["start_frame"],
            row["end_frame"],
        )
        assert (
            meta["frames"]
            == row["frames"]
            == sum(s["end_frame"] - s["start_frame"] for s in meta["segments"])
        )
        for seg in meta["segments"]:
            clip = clips[seg["clip_id"]]
            assert seg["prompt"] == clip["recaption"]
            assert seg["score"] == clip["caption_score"]
            assert seg["start_s"] == pytest.approx(seg["start_frame"] / meta["fps"])
        assert row["prompt"] in [s["prompt"] for s in meta["segments"]]
        assert row["clip_id"] in meta["clip_ids"]


def test_shards_open_with_webdataset_tarfile_pandas_and_duckdb(exported):
    import duckdb
    import pandas as pd
    import webdataset as wds

    index = _index(exported)
    urls = [str(p) for p in shard_paths(exported)]
    from_wds = [
        (s["__key__"], json.loads(s["json"]), s["mp4"])
        for s in wds.WebDataset(urls, shardshuffle=False)
    ]
    assert [k for k, _, _ in from_wds] == [row["key"] for row in index]
    members = []
    for url in urls:
        with tarfile.open(url) as tar:
            members += tar.getnames()
    assert members == [f"{row['key']}.{ext}" for row in index for ext in ("json", "mp4")]
    # random access through the index: the mp4 bytes at the recorded offset
    for (_, _, mp4), row in zip(from_wds, index):
        with open(exported / row["shard"], "rb") as fh:
            fh.seek(row["mp4_offset"])
            assert fh.read(row["mp4_bytes"]) == mp4
    frame = pd.read_parquet(exported / INDEX_NAME)
    assert list(frame.columns[:5]) == ["shard", "key", "clip_id", "prompt", "frames"]
    assert len(frame) == len(index)
    n = duckdb.sql(f"select count(*) from '{exported / INDEX_NAME}'").fetchall()
    assert n[0][0] == len(index)


def test_a_damaged_source_becomes_failures_rows_and_the_rest_export(corpus, run, tmp_path):
    from curate.shards import read_table

    clips = read_table(run, "clips").to_pylist()
    victim = next(c["video_id"] for c in clips if c["clip_id"] in _selected(corpus))
    src = Path(next(c["uri"] for c in clips if c["video_id"] == victim))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    for c in clips:
        if c["video_id"] == victim:
            c["uri"] = str(broken)
    damaged = write_run(tmp_path / "run", clips)
    out = tmp_path / "shards"
    export_run(damaged, out, SETTINGS)
    index = _index(out)
    assert victim not in {row["video_id"] for row in index}
    rows = [f for f in read_failures(out) if f["input_id"].startswith(victim + ":")]
    assert rows and all(f["stage"] == "export-decode" for f in rows)
    assert all(str(broken) in f["message"] for f in rows)
    assert {f["error_type"] for f in rows} <= {"TruncatedVideo", "VideoOpenFailure"}
    others = {row["video_id"] for row in _index(out)}
    assert others == {row["video_id"] for row in index} and others  # the rest exported


class CrashingExport:
    """The export step, but its decoder segfaults on one video (run in the child process)."""

    def __init__(self, settings: ExportSettings) -> None:
        from curate.export import _ExportStep

        self.step = _ExportStep(settings)

    def __call__(self, job):
        if job.video_id == os.environ.get("CRASH_VIDEO"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return self.step(job)


def test_a_decoder_crash_fails_its_video_and_the_rest_export(run, monkeypatch):
    from curate.export import _results, plan_export

    jobs = plan_export(run, SETTINGS).jobs
    victim = jobs[1].video_id
    monkeypatch.setenv("CRASH_VIDEO", victim)  # the child processes inherit it
    results = list(_results(jobs, SETTINGS, 2, 60.0, CrashingExport))
    assert len(results) == len(jobs)
    for job, (samples, failures) in zip(jobs, results):
        if job.video_id == victim:
            assert samples == [] and {f["input_id"] for f in failures} == set(job.clip_ids)
            assert all(f["error_type"] == "DecoderCrash" for f in failures)
            assert all("signal 11 (SIGSEGV)" in f["message"] for f in failures)
        else:
            assert failures == [] and len(samples) == len(job.windows)


def test_raw_exports_every_video_with_its_manifest_caption(corpus, run, tmp_path):
    out = tmp_path / "raw"
    summary = export_run(run, out, ExportSettings(**{**SETTINGS.to_dict(), "raw": True}))
    index = _index(out)
    captions = {v.video_id: v.source_caption for v in corpus.videos}
    exported = {row["video_id"] for row in index}
    failures = read_failures(out)
    assert exported | {f["input_id"] for f in failures} == set(captions) | {"lost_video"}
    assert "lost_video" in {f["input_id"] for f in failures}
    noisy = {v.video_id for v in corpus.videos if v.caption_is_noise or v.duplicate_of}
    assert noisy & exported  # noise and duplicates go in as they come
    for sample in iter_samples(shard_paths(out)):
        meta = sample["json"]
        assert {s["prompt"] for s in meta["segments"]} == {captions[meta["video_id"]].strip()}
    assert summary.samples == len(index)
    # the summary counts videos, every input one exported or failed
    counts = summary.counts
    failed = {f["input_id"] for f in failures}
    assert counts["videos_exported"] == len(exported) > 0
    assert counts["videos_failed"] == len(failed) > 0
    assert counts["input_videos"] == len(captions) + 1 == len(exported) + len(failed)
    assert summary.lines()[1] == (
        f"  videos exported {len(exported)}, failed {len(failed)} (of {len(captions) + 1}: "
        f"{len(captions)} with clips, 1 that the curate run could not decode)"
    )


def test_include_dropped_adds_the_dropped_clips(corpus, run, exported, tmp_path):
    out = tmp_path / "all"
    export_run(run, out, ExportSettings(**{**SETTINGS.to_dict(), "include_dropped": True}))
    kept = {cid for row in _index(exported) for cid in row["clip_ids"]}
    every = {cid for row in _index(out) for cid in row["clip_ids"]}
    failed = {f["input_id"] for f in read_failures(out)}
    assert kept < every
    assert every | failed >= {c["clip_id"] for c in truth_clips(corpus)}


def test_shards_split_by_bytes_and_the_sample_cap(run, tmp_path):
    limit = parse_bytes("100KB")
    out = tmp_path / "bytes"
    by_bytes = {**SETTINGS.to_dict(), "samples_per_shard": None, "shard_bytes": limit}
    export_run(run, out, ExportSettings(**by_bytes))
    info = read_export(out)
    assert len(info["shards"]) > 1
    assert all(s["bytes"] <= limit for s in info["shards"][:-1])
    capped = tmp_path / "capped"
    export_run(run, capped, ExportSettings(**{**SETTINGS.to_dict(), "max_samples": 4}))
    assert len(_index(capped)) <= 4
    assert any(f["error_type"] == "SampleCap" for f in read_failures(capped))


def test_same_shards_with_two_workers_and_other_settings_refused(run, exported, tmp_path):
    out = tmp_path / "again"
    export_run(run, out, SETTINGS, workers=2)
    assert [s["sha256"] for s in read_export(out)["shards"]] == [
        s["sha256"] for s in read_export(exported)["shards"]
    ]
    with pytest.raises(ExportError, match="other settings"):
        export_run(run, out, ExportSettings(**{**SETTINGS.to_dict(), "fps": 6.0}))
    export_run(run, out, ExportSettings(**{**SETTINGS.to_dict(), "fps": 6.0}), overwrite=True)
    assert read_export(out)["settings"]["fps"] == 6.0


def test_rerun_after_sigkill_gives_the_same_shards(run, one_per_shard, tmp_path):
    settings = ExportSettings(**{**SETTINGS.to_dict(), "samples_per_shard": 1})
    reference = one_per_shard
    out = tmp_path / "killed"
    code = "import sys; from pipelines.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", code, "export", str(run), "--out", str(out), *ONE_PER_SHARD_FLAGS]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "shard-000000.tar").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the export wrote no shard in time"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_early = not (out / EXPORT_NAME).exists()
    summary = export_run(run, out, settings)
    assert [s["sha256"] for s in read_export(out)["shards"]] == [
        s["sha256"] for s in read_export(reference)["shards"]
    ]
    assert _index(out) == _index(reference)
    assert read_failures(out) == read_failures(reference)
    assert summary.samples == len(_index(reference)) > 3
    assert killed_early, "the export finished before the kill; the resume path was not exercised"


def test_ctrl_c_says_so_in_one_line_and_the_rerun_resumes(
    run, one_per_shard, tmp_path, capsys, monkeypatch
):
    """Ctrl-C between shards: exit status 130 and one line (no traceback), the finished
    shards kept; the same command again finishes the export, shards byte-identical."""
    import curate.export.run as export_module
    from curate.export.writer import ShardWriter
    from pipelines.cli import main

    class Interrupted(ShardWriter):
        def add(self, sample, *, next_position):
            written = super().add(sample, next_position=next_position)
            if self.shard == 2:  # two shards written: the user presses Ctrl-C
                raise KeyboardInterrupt
            return written

    out = tmp_path / "interrupted"
    argv = ["export", str(run), "--out", str(out), *ONE_PER_SHARD_FLAGS]
    monkeypatch.setattr(export_module, "ShardWriter", Interrupted)
    try:
        code = main(argv)
    except KeyboardInterrupt:  # would end the test session
        pytest.fail("curate export let KeyboardInterrupt through (a traceback)")
    assert code == 130
    captured = capsys.readouterr()
    assert captured.err == (
        "curate export: interrupted; finished shards are kept; rerun the same command to resume\n"
    )
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    assert not (out / EXPORT_NAME).exists()
    monkeypatch.undo()
    assert main(argv) == 0
    assert [s["sha256"] for s in read_export(out)["shards"]] == [
        s["sha256"] for s in read_export(one_per_shard)["shards"]
    ]
    assert _index(out) == _index(one_per_shard)
    assert read_failures(out) == read_failures(one_per_shard)


def test_shard_bytes_hold_with_long_video_ids(corpus, tmp_path, caplog):
    """Keys over 100 characters make tar write long-name blocks: a shard keeps within
    shard_bytes all the same, but for one holding a sample larger than the limit alone,
    which is named in a warning and counted."""
    clips = truth_clips(corpus)
    for c in clips:
        c["video_id"] = "long_" + "x" * 110 + c["video_id"]
        c["clip_id"] = c["video_id"] + c["clip_id"][c["clip_id"].index(":") :]
    run = write_run(tmp_path / "run", clips)
    settings = {**SETTINGS.to_dict(), "samples_per_shard": None}
    # limits on the tar record size: where the long-name blocks, uncounted, passed them
    for records in (4, 6, 9):
        limit = records * tarfile.RECORDSIZE
        out = tmp_path / f"bytes-{records}"
        with caplog.at_level("WARNING", logger="curate.export.writer"):
            export_run(run, out, ExportSettings(**{**settings, "shard_bytes": limit}))
        info = read_export(out)
        assert len(info["shards"]) > 1
        assert all(s["bytes"] <= limit for s in info["shards"]), (limit, info["shards"])
        assert info["counts"]["shards_over_limit"] == 0 and not caplog.records
    limit = 2 * tarfile.RECORDSIZE  # some samples take more alone
    out = tmp_path / "small"
    with caplog.at_level("WARNING", logger="curate.export.writer"):
        summary = export_run(run, out, ExportSettings(**{**settings, "shard_bytes": limit}))
    shards = read_export(out)["shards"]
    over = {s["path"] for s in shards if s["bytes"] > limit}
    assert over and len(over) < len(shards)
    assert all(s["samples"] == 1 for s in shards if s["path"] in over)
    assert summary.counts["shards_over_limit"] == len(over)
    warned = sorted(r.getMessage().split(":")[0] for r in caplog.records)
    assert warned == sorted(f"sample {row['key']}" for row in _index(out) if row["shard"] in over)


def test_settings_and_sizes_are_checked():
    assert parse_size("64") == (64, 64) and parse_size("96x64") == (96, 64)
    assert parse_bytes("64MB") == 64_000_000 and parse_bytes("1KiB") == 1024
    for bad in ("63", "0", "axb", "8x8"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError, match="frames"):
        ExportSettings(frames=0)
    with pytest.raises(ValueError, match="samples_per_shard or shard_bytes"):
        ExportSettings(samples_per_shard=None)
    with pytest.raises(ValueError, match="resize"):
        ExportSettings(resize="stretch")
    for fps in (float("inf"), float("nan"), 0):
        with pytest.raises(ValueError, match="fps must be a finite number > 0"):
            ExportSettings(fps=fps)


def test_an_export_that_cannot_be_planned_writes_nothing(run, tmp_path, monkeypatch):
    import curate.export.run as export_module

    def unplannable(*args, **kwargs):
        raise ExportError("cannot plan", uri=str(run))

    monkeypatch.setattr(export_module, "plan_export", unplannable)
    out = tmp_path / "shards"
    with pytest.raises(ExportError, match="cannot plan"):
        export_run(run, out, SETTINGS)
    assert not out.exists()


def test_cli_exports_and_reports(run, tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "cli"
    assert main(["export", str(run), "--out", str(out), "--frames", "8", "--no-progress"]) == 0
    assert "samples in" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(out), "--frames", "6", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    shutil.rmtree(out)
    assert main(["export", str(tmp_path / "nothing"), "--out", str(out)]) == 2


@pytest.mark.parametrize("pix_fmt", ["yuv444p", "yuv420p"])
def test_every_decoder_reads_a_sample_alike(pix_fmt):
    from curate.export.codec import DECODERS, encode_mp4
    from curate.shapes import SceneFacts, SceneRenderer

    facts = SceneFacts("red", "circle", "moving left", "navy")
    truth = np.stack(list(SceneRenderer(facts, num_frames=12, width=64, height=64, seed=1)))
    data = encode_mp4(truth, fps=8.0, crf=18, pix_fmt=pix_fmt)
    decoded = {name: decode_mp4(data, backend=name) for name in DECODERS}
    for name, frames in decoded.items():
        assert frames.shape == truth.shape and frames.dtype == np.uint8, name
        # lossy h264: close to the frames encoded, and the decoders agree with each other
        assert np.abs(frames.astype(int) - truth).mean() < 3.0, name
        assert np.abs(frames.astype(int) - decoded["av"]).max() <= 3, name
    assert np.array_equal(decode_mp4(data), decoded["decord"])  # auto: decord first here
    with pytest.raises(ValueError, match="backend must be"):
        decode_mp4(data, backend="ffmpeg")


def test_auto_falls_back_to_the_decoder_that_imports(monkeypatch):
    from curate.export import codec

    frames = np.zeros((4, 32, 32, 3), np.uint8)
    frames[:, 8:24, 8:24] = (200, 40, 40)
    data = codec.encode_mp4(frames, fps=8.0, pix_fmt="yuv444p")

    def missing(_data):
        raise ImportError("not installed")

    monkeypatch.setitem(codec._DECODE, "decord", missing)
    monkeypatch.setitem(codec._DECODE, "av", missing)
    got = codec.decode_mp4(data)  # OpenCV, as on a machine with neither decord nor PyAV
    assert got.shape == frames.shape and np.abs(got.astype(int) - frames).mean() < 2
    monkeypatch.setitem(codec._DECODE, "opencv", missing)
    with pytest.raises(ImportError, match="needs one of"):
        codec.decode_mp4(data)
    with pytest.raises(ImportError, match="not installed"):
        codec.decode_mp4(data, backend="av")


def test_a_damaged_shard_gives_its_whole_samples_and_the_next_shard(tmp_path, caplog):
    """A tar cut short mid-sample and a json member that does not parse do not end the
    stream: the samples read whole come out, a bad json as None, then the next shard."""
    import io

    def shard(path: Path, samples: list[tuple[str, bytes, bytes]]) -> None:
        with tarfile.open(path, "w") as tar:
            for key, meta, mp4 in samples:
                for ext, data in (("json", meta), ("mp4", mp4)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    shard(first, [(f"s{i}", b'{"frames": %d}' % i, b"x" * 4000) for i in range(3)])
    whole = first.read_bytes()
    first.write_bytes(whole[: len(whole) - 6000])  # cut inside the last sample
    shard(second, [("t0", b"{not json", b"y"), ("t1", b'{"frames": 1}', b"z")])
    with caplog.at_level("WARNING"):
        got = list(iter_samples([first, second]))
    assert [s["__key__"] for s in got] == ["s0", "s1", "t0", "t1"]
    assert got[1]["json"] == {"frames": 1} and got[2]["json"] is None
    assert got[3]["mp4"] == b"z"
    assert str(first) in caplog.text and "t0.json is not JSON" in caplog.text
