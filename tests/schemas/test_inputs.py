"""Input-manifest readers: every good row read, every bad row a located failure."""

from __future__ import annotations

import json

import pytest

from schemas import SchemaError, detect_format, read_manifest, rows_to_table, validate_rows
from schemas.inputs import parse_duration


def write(path, data: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


HEADER = "videoid,contentUrl,duration,page_dir,name\n"


def test_webvid_csv_good_rows(tmp_path):
    m = write(
        tmp_path / "m" / "webvid.csv",
        HEADER
        + '1001,videos/a.mp4,PT00H00M12S,dir,"a red circle, moving right"\n'
        + "1002,https://example.org/b.mp4,PT01H02M03S,dir,b\n",
    )
    r = read_manifest(m)
    assert r.format == "webvid" and r.failures == []
    a, b = r.videos
    assert a["video_id"] == "1001"
    assert a["uri"] == str((tmp_path / "m" / "videos" / "a.mp4").resolve())
    assert a["caption"] == "a red circle, moving right"
    assert a["duration_s"] == 12.0
    assert a["source_line"] == 2
    assert b["uri"] == "https://example.org/b.mp4"
    assert b["duration_s"] == 3723.0
    validate_rows(r.videos, "videos")
    rows_to_table(r.videos, "videos")


@pytest.mark.parametrize(
    "body,line,message",
    [
        ("1,a.mp4,PT1S,d\n", 2, "expected 5 fields"),
        (",a.mp4,PT1S,d,cap\n", 2, "missing videoid"),
        ("1,,PT1S,d,cap\n", 2, "missing contentUrl"),
        ("1,a.mp4,twelve,d,cap\n", 2, "bad duration 'twelve'"),
        (
            "1,a.mp4,PT1S,d,cap\n1,b.mp4,PT1S,d,cap\n",
            3,
            "duplicate video_id '1' (first seen at line 2)",
        ),
    ],
)
def test_webvid_bad_rows_are_located_failures(tmp_path, body, line, message):
    m = write(tmp_path / "w.csv", HEADER + body + "9,z.mp4,PT2S,d,fine\n")
    r = read_manifest(m)
    assert [v["video_id"] for v in r.videos][-1] == "9", "the rows after a bad one still go on"
    (fail,) = r.failures
    assert fail["source_line"] == line
    assert fail["stage"] == "read-manifest"
    assert f"line {line}: {message}" in fail["message"]
    assert str(m) in fail["message"]
    rows_to_table(r.failures, "failures")
    assert r.inputs == body.count("\n") + 1


def test_multiline_quoted_caption_keeps_line_numbers(tmp_path):
    m = write(tmp_path / "w.csv", HEADER + '1,a.mp4,PT1S,d,"two\nlines"\n2,b.mp4,bad,d,x\n')
    r = read_manifest(m)
    assert r.videos[0]["caption"] == "two\nlines"
    assert r.failures[0]["source_line"] == 4


def test_invalid_utf8_caption_is_kept_visibly(tmp_path):
    m = write(tmp_path / "w.csv", HEADER.encode() + b"1,a.mp4,PT1S,d,caf\xff\xfe\n")
    (row,) = read_manifest(m).videos
    assert "\ufffd" in row["caption"]


def test_jsonl_with_timed_captions(tmp_path):
    lines = [
        {"video_id": "a", "uri": "a.mp4", "caption": "x"},
        {
            "video_id": "b",
            "uri": "/abs/b.mp4",
            "caption": "y",
            "captions": [
                {"start": 0, "end": 1.5, "text": "p"},
                {"start": 1.5, "end": 3, "text": "q"},
            ],
        },
    ]
    m = write(tmp_path / "m.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    r = read_manifest(m)
    assert r.format == "jsonl" and not r.failures
    assert r.videos[0]["uri"] == str((tmp_path / "a.mp4").resolve())
    assert r.videos[1]["captions"] == [
        {"start_s": 0.0, "end_s": 1.5, "text": "p"},
        {"start_s": 1.5, "end_s": 3.0, "text": "q"},
    ]
    rows_to_table(r.videos, "videos")


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"video_id": "a", "caption": "x"}', "missing field uri"),
        ('{"uri": "a.mp4"}', "missing fields video_id, caption"),
        ('{"video_id": "", "uri": "a.mp4", "caption": "x"}', "empty or non-string video_id"),
        ('{"video_id": "a", "uri": "a.mp4", "caption": 5}', "caption must be a string"),
        (
            '{"video_id": "a", "uri": "a.mp4", "caption": "x", "captions": [{"start": 2, "end": 1, "text": "t"}]}',
            "captions[0] ends (1 s) before it starts (2 s)",
        ),
        (
            '{"video_id": "a", "uri": "a.mp4", "caption": "x", "captions": [{"start": 0, "text": "t"}]}',
            "captions[0] lacks end",
        ),
    ],
)
def test_jsonl_bad_rows(tmp_path, line, message):
    good = json.dumps({"video_id": "ok", "uri": "ok.mp4", "caption": "fine"})
    m = write(tmp_path / "m.jsonl", good + "\n" + line + "\n" + good.replace("ok", "ok2") + "\n")
    r = read_manifest(m, fmt="jsonl")
    assert [v["video_id"] for v in r.videos] == ["ok", "ok2"]
    (fail,) = r.failures
    assert fail["source_line"] == 2
    assert message in fail["message"], fail["message"]


def test_folder_with_sidecars(tmp_path):
    root = tmp_path / "vids"
    write(root / "a.mp4", b"\x00")
    write(root / "a.txt", "a red circle\n")
    write(root / "sub" / "b.mkv", b"\x00")
    write(
        root / "sub" / "b.json",
        json.dumps({"caption": "b", "captions": [{"start": 0, "end": 2, "text": "t"}]}),
    )
    write(root / "c.mp4", b"\x00")  # no sidecar: kept, caption null
    write(root / "d.mp4", b"\x00")
    write(root / "d.json", "{broken")
    write(root / "notes.md", "ignored")
    r = read_manifest(root)
    assert r.format == "folder"
    by_id = {v["video_id"]: v for v in r.videos}
    assert set(by_id) == {"a", "sub/b", "c"}
    assert by_id["a"]["caption"] == "a red circle"
    assert by_id["sub/b"]["captions"][0]["end_s"] == 2.0
    assert by_id["c"]["caption"] is None
    (fail,) = r.failures
    assert fail["input_id"] == "d" and "d.json: bad sidecar" in fail["message"]
    rows_to_table(r.videos, "videos")


def test_format_recognised_from_content_not_name(tmp_path):
    csv_named_txt = write(tmp_path / "list.txt", HEADER + "1,a.mp4,PT1S,d,x\n")
    jsonl_named_csv = write(tmp_path / "list.csv", '{"video_id": "a", "uri": "a", "caption": ""}\n')
    assert detect_format(csv_named_txt) == "webvid"
    assert detect_format(jsonl_named_csv) == "jsonl"
    assert detect_format(tmp_path) == "folder"
    with pytest.raises(SchemaError, match="unrecognised manifest format"):
        read_manifest(write(tmp_path / "x.csv", "a,b,c\n1,2,3\n"))
    with pytest.raises(SchemaError, match="empty manifest"):
        read_manifest(write(tmp_path / "e.jsonl", ""))
    with pytest.raises(SchemaError, match="no such manifest"):
        read_manifest(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("PT00H00M12S", 12.0),
        ("PT1M", 60.0),
        ("PT1H0M0.5S", 3600.5),
        ("P1D", 86400.0),
        ("7.25", 7.25),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["PT", "P", "12 seconds", "-3", "nan"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)
