"""The curate pipeline with the real steps (decord, scene splitting, a tiny random CLIP, faiss)
on a shapes-world corpus mixed with every kind of bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from curate import shards
from pipelines.curate import run
from tests.badvideos import EXPECTED_ERRORS, make_bad_videos

LONG_CAPTION = ("a red circle moving left on a navy background " * 250)[:10_000]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from curate.training.clip import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture(scope="module")
def corpora(shapes_corpus_path, tmp_path_factory):
    """(clean manifest, mixed manifest, names of the bad files)."""
    from curate.shapes import make_video

    root = tmp_path_factory.mktemp("real")
    good = [json.loads(line) for line in (shapes_corpus_path / "manifest.jsonl").open()]
    for row in good:
        row["uri"] = str((shapes_corpus_path / row["uri"]).resolve())
    extra = make_video(
        root / "long_caption.mp4",
        [
            "a yellow star moving right on a brown background",
            "a white ring still on a black background",
        ],
        scene_frames=30,
        width=96,
        height=64,
    )
    long_row = {"video_id": "long_caption", "uri": str(extra.path), "caption": LONG_CAPTION}
    clean = root / "clean.jsonl"
    clean.write_bytes(_jsonl([*good, long_row]))

    bad = make_bad_videos(root / "bad")
    bad_rows = [
        {"video_id": f"bad_{n}", "uri": str(p), "caption": f"{n} video"} for n, p in bad.items()
    ]
    utf8 = make_video(
        root / "bad_utf8.mp4",
        ["an orange triangle moving up on a gray background"],
        scene_frames=30,
        width=96,
        height=64,
    )
    mixed = root / "mixed.jsonl"
    lines = _jsonl([*good[:3], long_row, *bad_rows])
    # a caption of invalid UTF-8 bytes, a row with a missing field, a duplicate id, an empty caption
    lines += (
        b'{"video_id": "bad_utf8", "uri": "'
        + str(utf8.path).encode()
        + b'", "caption": "\xff\xfe caption"}\n'
    )
    lines += _jsonl([{"video_id": "no_uri", "caption": "where is the file"}])
    lines += _jsonl([{**good[0], "caption": "the same id again"}])
    lines += _jsonl([*good[3:]])
    lines += _jsonl([{"video_id": "empty_caption", "uri": str(utf8.path), "caption": ""}])
    mixed.write_bytes(lines)
    return clean, mixed, sorted(bad), {r["video_id"] for r in good}


@pytest.fixture(scope="module")
def runs(corpora, tiny_clip, tmp_path_factory):
    clean, mixed, _, _ = corpora
    out = tmp_path_factory.mktemp("runs")
    flags = [f"--model={tiny_clip}", "--sample_size=32", "--keyframes=jpeg", "--keyframe_size=48"]
    a = run([f"--input={clean}", f"--output={out / 'clean'}", *flags], progress=False)
    b = run([f"--input={mixed}", f"--output={out / 'mixed'}", *flags], progress=False)
    return out / "clean", out / "mixed", a, b


def test_each_bad_file_fails_with_its_domain_error(corpora, runs):
    _, _, bad_names, _ = corpora
    mixed = runs[1]
    failures = {f["input_id"]: f for f in shards.read_table(mixed, "failures").to_pylist()}
    for name in bad_names:
        row = failures[f"bad_{name}"]
        assert row["error_type"] == EXPECTED_ERRORS[name].__name__, (name, row["message"])
        assert row["stage"] in ("probe", "decode", "split-scenes"), row
        assert row["uri"] in row["message"]
    assert failures["bad_absurd_size"]["message"].count("100000") >= 2


def test_captions_and_manifest_rows(corpora, runs):
    mixed = runs[1]
    clips = shards.read_table(mixed, "clips").to_pylist()
    utf8 = [c for c in clips if c["video_id"] == "bad_utf8"]
    assert utf8 and all((c["status"], c["reason"]) == ("dropped", "invalid_caption") for c in utf8)
    empty = [c for c in clips if c["video_id"] == "empty_caption"]
    assert empty and all(c["reason"] == "empty_caption" for c in empty)
    long = [c for c in clips if c["video_id"] == "long_caption"]
    assert long and all(c["caption_score"] is not None for c in long)  # scored, truncated
    failures = shards.read_table(mixed, "failures").to_pylist()
    manifest_rows = sorted(
        (f["source_line"], f["message"]) for f in failures if f["stage"] == "read-manifest"
    )
    assert len(manifest_rows) == 2
    assert "missing field uri" in manifest_rows[0][1]
    assert "duplicate video_id" in manifest_rows[1][1]


def test_invariant_and_good_outputs_unchanged_by_bad_inputs(corpora, runs):
    _, _, _, good_ids = corpora
    clean, mixed, a, b = runs
    assert a.invariant_ok and b.invariant_ok, (a.invariant, b.invariant)
    keep = good_ids | {"long_caption"}

    def rows(out: Path, table: str, key: str) -> list[dict]:
        got = [r for r in shards.read_table(out, table).to_pylist() if r["video_id"] in keep]
        return sorted(got, key=lambda r: r[key])

    assert rows(mixed, "clips", "clip_id") == rows(clean, "clips", "clip_id")
    assert rows(mixed, "stories", "story_id") == rows(clean, "stories", "story_id")
    assert (
        json.loads((clean / "_manifest.json").read_text())["config"]["cutoff"]
        == json.loads((mixed / "_manifest.json").read_text())["config"]["cutoff"]
    )


def test_keyframes_make_the_shard_self_contained(runs):
    from PIL import Image

    clips = shards.read_table(runs[0], "clips").to_pylist()
    assert clips
    for clip in clips:
        assert clip["keyframe_format"] == "jpeg"
        assert len(clip["keyframes"]) >= 1
        image = Image.open(io.BytesIO(clip["keyframes"][0]))
        assert image.format == "JPEG" and max(image.size) <= 48
