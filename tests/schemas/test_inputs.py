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
        # a record of separators only is still a line of the manifest
        (",,,,\n", 2, "every field is blank"),
        ("1,a.mp4,PT1S,d,cap\n , ,,,\n", 3, "every field is blank"),
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


def test_file_uris_are_decoded_and_relative_ones_resolve_against_the_manifest(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    video = write(tmp_path / "m" / "my video #1.mp4", b"\x00")
    m = write(
        tmp_path / "m" / "webvid.csv",
        HEADER
        + f"1,file://{video.parent}/my%20video%20%231.mp4,PT1S,d,a\n"
        + "2,file:my%20video%20%231.mp4,PT1S,d,b\n"
        + "3,file://localhost/data/x.mp4,PT1S,d,c\n"
        + "4,file://fileserver/share/x.mp4,PT1S,d,d\n",
    )
    r = read_manifest(m)
    by_id = {v["video_id"]: v["uri"] for v in r.videos}
    assert by_id == {"1": str(video), "2": str(video), "3": "/data/x.mp4"}
    (fail,) = r.failures
    assert fail["input_id"] == "4" and "another host ('fileserver')" in fail["message"]


def test_a_folder_video_named_twice_names_the_file_it_clashes_with(tmp_path):
    root = tmp_path / "vids"
    write(root / "a.mp4", b"\x00")
    write(root / "a.mkv", b"\x00")
    r = read_manifest(root)
    assert [v["uri"] for v in r.videos] == [str(root / "a.mkv")]
    (fail,) = r.failures
    assert fail["input_id"] == "a.mp4"
    assert fail["message"] == (
        f"{root / 'a.mp4'}: duplicate video_id 'a' (first seen as a.mkv); file skipped"
    )
    assert r.inputs == 2


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


#: the first bytes of an MP4 file
MP4_HEAD = b"\x00\x00\x00 ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + bytes(64)


@pytest.mark.parametrize(
    "name,data,says,hint",
    [
        ("clip.mp4", MP4_HEAD, "starts with bytes 00 00 00 20 66 74 79 70", True),
        ("clip.mov", MP4_HEAD, "starts with bytes 00 00 00 20 66 74 79 70", True),
        ("videos.zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "50 4b 03 04", False),
        ("list.csv", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01", "ff d8 ff e0", False),
    ],
    ids=["mp4", "mov", "zip", "jpeg-named-csv"],
)
def test_a_binary_file_given_as_manifest_is_named_as_one(tmp_path, name, data, says, hint):
    path = write(tmp_path / name, data)
    with pytest.raises(SchemaError) as err:
        read_manifest(path)
    message = str(err.value)
    assert message.startswith(f"{path}: unrecognised manifest format: ")
    assert "looks like a binary file" in message and says in message
    assert "\\x00" not in message and "first line" not in message
    folder = f"give the folder that holds the videos ({tmp_path}) as the manifest"
    assert (folder in message) == hint


def test_a_utf16_manifest_is_named_as_such(tmp_path):
    path = write(tmp_path / "webvid.csv", (HEADER + "1,a.mp4,PT1S,d,x\n").encode("utf-16"))
    with pytest.raises(SchemaError, match=r"webvid.csv: the manifest is UTF-16 text; save it"):
        read_manifest(path)


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


# --- rows that used to swallow others or stop the read ---------------------------------------


def test_unterminated_quote_costs_one_row_not_the_rows_after_it(tmp_path):
    body = (
        '1,a.mp4,PT1S,d,"a caption whose quote never closes\n'
        "2,b.mp4,PT1S,d,fine\n"
        '3,c.mp4,PT1S,d,"quoted, with a comma"\n'
        "4,d.mp4,PT1S,d,last\n"
    )
    r = read_manifest(write(tmp_path / "w.csv", HEADER + body))
    assert [(v["video_id"], v["caption"]) for v in r.videos] == [
        ("2", "fine"),
        ("3", "quoted, with a comma"),
        ("4", "last"),
    ]
    (fail,) = r.failures
    assert fail["source_line"] == 2 and "unterminated quote" in fail["message"]
    assert r.inputs == 4  # every row of the file is an input: the invariant sees them all


def test_unterminated_quote_at_the_end_of_the_file(tmp_path):
    body = '1,a.mp4,PT1S,d,ok\n2,b.mp4,PT1S,d,"never closed\nmore words\n'
    r = read_manifest(write(tmp_path / "w.csv", HEADER + body))
    assert [v["video_id"] for v in r.videos] == ["1"]
    (fail,) = r.failures
    assert fail["source_line"] == 3 and "unterminated quote" in fail["message"]


def test_csv_field_over_the_csv_module_limit_is_one_failure(tmp_path):
    huge = "x" * 200_000
    body = f"1,{huge}.mp4,PT1S,d,cap\n2,b.mp4,PT1S,d,fine\n"
    r = read_manifest(write(tmp_path / "w.csv", HEADER + body))
    assert [v["video_id"] for v in r.videos] == ["2"]
    (fail,) = r.failures
    assert fail["source_line"] == 2 and "field larger than field limit" in fail["message"]


def test_caption_over_the_byte_limit_is_refused_with_the_limit_named(tmp_path):
    long = "a red circle " * 6000  # 78,000 bytes, over the 65,536 default
    body = f"1,a.mp4,PT1S,d,{long}\n2,b.mp4,PT1S,d,fine\n"
    r = read_manifest(write(tmp_path / "w.csv", HEADER + body))
    assert [v["video_id"] for v in r.videos] == ["2"]
    (fail,) = r.failures
    assert fail["input_id"] == "1"
    assert "caption is 78,000 bytes, over the limit of 65,536" in fail["message"]
    # the limit is a setting: the same reader with a smaller one
    from schemas.inputs import ManifestLimits

    small = read_manifest(
        write(tmp_path / "s.jsonl", json.dumps({"video_id": "a", "uri": "a", "caption": "x" * 11})),
        limits=ManifestLimits(max_caption_bytes=10),
    )
    assert small.videos == [] and "over the limit of 10" in small.failures[0]["message"]


def test_a_line_over_the_line_limit_is_skipped_unread(tmp_path):
    from schemas.inputs import ManifestLimits

    good = json.dumps({"video_id": "ok", "uri": "ok.mp4", "caption": "fine"})
    big = json.dumps({"video_id": "big", "uri": "b.mp4", "caption": "y" * 5000})
    m = write(tmp_path / "m.jsonl", f"{big}\n{good}\n")
    r = read_manifest(m, limits=ManifestLimits(max_line_bytes=1000))
    assert [v["video_id"] for v in r.videos] == ["ok"]
    assert "line is 5," in r.failures[0]["message"] and "limit of 1,000" in r.failures[0]["message"]


def test_deeply_nested_json_is_one_failure_not_a_recursion_error(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    rows = [
        '{"video_id": "a", "uri": "a.mp4", "caption": "x", "extra": ' + deep + "}",
        deep,
        json.dumps({"video_id": "ok", "uri": "ok.mp4", "caption": "fine"}),
    ]
    r = read_manifest(write(tmp_path / "m.jsonl", "\n".join(rows) + "\n"), fmt="jsonl")
    assert [v["video_id"] for v in r.videos] == ["ok"]
    assert [f["source_line"] for f in r.failures] == [1, 2]
    assert all("nested deeper than the limit of 32" in f["message"] for f in r.failures)


def test_deeply_nested_sidecar_is_one_failure(tmp_path):
    root = tmp_path / "vids"
    write(root / "a.mp4", b"\x00")
    write(root / "a.json", '{"caption": ' + "[" * 100_000 + "]" * 100_000 + "}")
    write(root / "b.mp4", b"\x00")
    r = read_manifest(root)
    assert [v["video_id"] for v in r.videos] == ["b"]
    assert "nested deeper" in r.failures[0]["message"]


def test_symlink_loop_as_uri_is_read_for_the_probe_to_name(tmp_path):
    (tmp_path / "loop1.mp4").symlink_to(tmp_path / "loop2.mp4")
    (tmp_path / "loop2.mp4").symlink_to(tmp_path / "loop1.mp4")
    rows = [
        {"video_id": "loop", "uri": "loop1.mp4", "caption": "x"},
        {"video_id": "nul", "uri": "a\u0000b.mp4", "caption": "x"},
        {"video_id": "ok", "uri": "ok.mp4", "caption": "x"},
    ]
    r = read_manifest(write(tmp_path / "m.jsonl", "\n".join(json.dumps(x) for x in rows)))
    assert [v["video_id"] for v in r.videos] == ["loop", "ok"]
    assert r.videos[0]["uri"].endswith(".mp4")
    (fail,) = r.failures
    assert fail["input_id"] == "nul" and "NUL" in fail["message"]


def test_utf8_bom_does_not_reject_the_first_jsonl_row(tmp_path):
    text = "\n".join(
        json.dumps({"video_id": v, "uri": f"{v}.mp4", "caption": "x"}) for v in ("a", "b")
    )
    r = read_manifest(write(tmp_path / "m.jsonl", b"\xef\xbb\xbf" + text.encode()))
    assert r.format == "jsonl" and r.failures == []
    assert [v["video_id"] for v in r.videos] == ["a", "b"]


def test_a_duplicated_csv_column_is_refused(tmp_path):
    m = write(tmp_path / "w.csv", "videoid,contentUrl,name,name\n1,a.mp4,first,second\n")
    with pytest.raises(SchemaError, match=r"names 'name' 2 times \(columns 3, 4\)"):
        read_manifest(m)


@pytest.mark.parametrize(
    "captions,message",
    [
        ('[{"start": NaN, "end": 1, "text": "t"}]', "captions[0].start must be between"),
        ('[{"start": 0, "end": 1e300, "text": "t"}]', "captions[0].end must be between"),
        ('[{"start": -1, "end": 1, "text": "t"}]', "captions[0].start must be between"),
        ('[{"start": 0, "end": Infinity, "text": "t"}]', "captions[0].end must be between"),
    ],
)
def test_timed_captions_must_be_finite_times_in_range(tmp_path, captions, message):
    line = '{"video_id": "a", "uri": "a.mp4", "caption": "x", "captions": ' + captions + "}"
    r = read_manifest(write(tmp_path / "m.jsonl", line + "\n"))
    assert r.videos == []
    assert message in r.failures[0]["message"]


def test_folder_entries_named_like_videos_that_are_not_files_are_counted(tmp_path):
    root = tmp_path / "vids"
    write(root / "good.mp4", b"\x00")
    (root / "dangling.mp4").symlink_to(root / "nowhere.mp4")
    (root / "loop1.mp4").symlink_to(root / "loop2.mp4")
    (root / "loop2.mp4").symlink_to(root / "loop1.mp4")
    (root / "folder.mp4").mkdir()
    r = read_manifest(root)
    assert [v["video_id"] for v in r.videos] == ["good"]
    problems = {f["input_id"]: f["message"] for f in r.failures}
    assert set(problems) == {"dangling", "loop1", "loop2", "folder"}
    assert "dangling symbolic link" in problems["dangling"]
    assert "symbolic link loop" in problems["loop1"]
    assert "a folder named like a video" in problems["folder"]
    assert r.inputs == 5
