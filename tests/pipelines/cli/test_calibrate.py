"""``curate calibrate`` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.cli import main
from schemas.io import rows_to_table, write_parquet


def test_calibrate_cli_on_a_clips_file(tmp_path, capsys):

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        rows.append(
            {
                "clip_id": f"v{i}:0000",
                "video_id": f"v{i}",
                "scene_index": 0,
                "uri": f"v{i}.mp4",
                "start_frame": 0,
                "end_frame": 50,
                "start_s": 0.0,
                "end_s": 2.0,
                "fps": 25.0,
                "width": 64,
                "height": 64,
                "source_caption": "a red circle" if i else None,
                "caption_score": float(rng.uniform(0, 1)) if i else None,
                "status": "kept",
            }
        )
    path = tmp_path / "clips.parquet"
    write_parquet(rows_to_table(rows, "clips"), path, "clips")
    out_json = tmp_path / "cal.json"
    assert main(["calibrate", str(path), "--percentile", "25", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "<- cut" in printed and "39 scored clips" in printed
    payload = json.loads(out_json.read_text())
    scores = [s for s in payload["scores"].values() if s is not None]
    assert payload["dropped"] == sum(s < payload["threshold"] for s in scores) <= 0.25 * 39
    assert payload["counts"]["empty_caption"] == 1


def test_calibrate_cli_reports_bad_input(tmp_path, capsys):

    assert main(["calibrate", str(tmp_path / "missing.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--bins", "0"],
        ["--threshold", "nan"],
        ["--threshold", "2"],
        ["--percentile", "inf"],
        ["--percentile", "100"],
        ["--k", "0"],
    ],
)
def test_bad_values_are_refused_by_the_parser(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", str(tmp_path), *args])
    assert exit_.value.code == 2
    assert repr(args[1]) in capsys.readouterr().err


def test_an_unwritable_json_target_is_refused_before_scoring(tmp_path, capsys, monkeypatch):
    from pipelines.cli import calibrate

    def no_scoring(*args, **kwargs):
        raise AssertionError("scoring started")

    monkeypatch.setattr(calibrate, "_measure", no_scoring)
    (tmp_path / "a-file").write_text("x")
    for target, message in [
        (tmp_path, "is a folder; give a file name"),
        (tmp_path / "a-file" / "cal.json", "a-file exists and is not a folder"),
    ]:
        assert main(["calibrate", str(tmp_path), "--json", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


class _CountingSampler:
    """Samples nothing; records the clip ids of each ``sample_video`` call."""

    stage = "sample"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def sample_video(self, clips):
        self.calls.append([c["clip_id"] for c in clips])
        return [dict(c) for c in clips]


class _ConstantScorer:
    stage = "clip-score"

    def process_all(self, records):
        return [dict(r, caption_score=0.5) for r in records]


def _clip_rows(videos: int, scenes: int) -> list[dict]:
    return [
        {
            "clip_id": f"v{v}:{s:04d}",
            "video_id": f"v{v}",
            "scene_index": s,
            "uri": f"v{v}.mp4",
            "start_frame": 10 * s,
            "end_frame": 10 * s + 10,
            "start_s": s * 1.0,
            "end_s": s * 1.0 + 1.0,
            "fps": 10.0,
            "width": 64,
            "height": 64,
            "source_caption": "a red circle",
            "status": "kept",
        }
        for v in range(videos)
        for s in range(scenes)
    ]


def test_rescoring_a_clips_file_reads_each_video_once_in_any_row_order(tmp_path):
    from curate.scoring import score_clips_file

    rows = _clip_rows(4, 3)
    np.random.default_rng(3).shuffle(rows)
    path = tmp_path / "clips.parquet"
    write_parquet(rows_to_table(rows, "clips"), path, "clips")
    first_seen = list(dict.fromkeys(r["video_id"] for r in rows))

    sampler = _CountingSampler()
    scored = score_clips_file(path, scorer=_ConstantScorer(), sampler=sampler, progress=False)
    # one call per video, with all of its clips, videos in the order the file first names them
    assert [call[0].split(":")[0] for call in sampler.calls] == first_seen
    for call in sampler.calls:
        video = call[0].split(":")[0]
        assert call == [r["clip_id"] for r in rows if r["video_id"] == video]
    assert sorted(r["clip_id"] for r in scored.records) == sorted(r["clip_id"] for r in rows)
    assert not scored.failures

    sampler = _CountingSampler()
    scored = score_clips_file(
        path, scorer=_ConstantScorer(), sampler=sampler, limit=2, progress=False
    )
    # --limit counts videos: the first two, whole
    assert {r["video_id"] for r in scored.records} == set(first_seen[:2])
    assert len(scored.records) == 2 * 3


@pytest.mark.parametrize(
    "url", ["gs://bucket/run/clips.parquet", "s3://bucket/webvid.csv", "https://host/m.jsonl"]
)
def test_a_remote_url_is_named_as_unsupported(url, capsys, monkeypatch):
    from pipelines.cli import calibrate

    def no_scoring(*args, **kwargs):
        raise AssertionError("scoring started")

    monkeypatch.setattr(calibrate, "_measure", no_scoring)
    assert main(["calibrate", url]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"error: {url}: remote paths are not supported by curate calibrate; copy the file "
        "to this machine and give its local path"
    )
