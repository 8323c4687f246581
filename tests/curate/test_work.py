"""The committed form of a video's work: extras split off beside the clips, joined back."""

from __future__ import annotations

import numpy as np

from curate.errors import VideoOpenFailure
from curate.work import EXTRA_KEYS, VideoWork, failure_from_exception, joined_clips, work_record
from schemas.tables import CLIPS_SCHEMA


def test_extras_go_beside_the_clips_and_come_back():
    clip = {
        "clip_id": "v:0000",
        "video_id": "v",
        "caption_score": 0.5,
        "frames": np.zeros((2, 4, 4, 3), np.uint8),
        "frame_embeddings": np.eye(2, dtype=np.float32),
        "dedup_signature": [0.6, 0.8],
        "fragment": "a red circle",
    }
    rec = work_record({"video_id": "v", "uri": "v.mp4"}, [clip], [])
    (row,) = rec["clips"]
    assert set(row) == set(CLIPS_SCHEMA.names)  # frames and extras left behind
    (extra,) = rec["clip_extras"]
    assert set(extra) == {"clip_id", *EXTRA_KEYS}
    assert extra["frame_embeddings"] == [[1.0, 0.0], [0.0, 1.0]]
    (joined,) = joined_clips(rec)
    assert joined["fragment"] == "a red circle" and joined["dedup_signature"] == [0.6, 0.8]
    assert joined["caption_score"] == 0.5 and "frames" not in joined


def test_a_failed_video_loses_its_clips_and_names_its_input():
    work = VideoWork(video={"video_id": "v", "uri": "/x/v.mp4", "source_line": 3}, clips=[{}])
    row = failure_from_exception(work.video, VideoOpenFailure("moov atom not found"), stage="x")
    failed = work.fail(row)
    assert failed.failed and not failed.clips and failed.video_id == "v"
    assert row["stage"] == "probe"  # the domain error's own stage
    assert row["message"] == "/x/v.mp4: moov atom not found"
    assert (row["input_id"], row["source_line"]) == ("v", 3)
    rec = failed.record()
    assert rec["clips"] == [] and rec["failures"] == [row]


def test_the_fingerprint_covers_what_determines_a_result(tmp_path):
    import os

    from curate.work import config_digest, fingerprint

    video = tmp_path / "v.mp4"
    video.write_bytes(b"frames")
    row = {"video_id": "v", "uri": str(video), "caption": "a cat", "source_line": 3}
    config = config_digest({"detector": "fast", "samples_per_scene": 4})
    base = fingerprint(row, config=config)
    assert fingerprint({**row, "source_line": 9, "source": "other.csv"}, config=config) == base
    changed = [
        fingerprint({**row, "caption": "a dog"}, config=config),
        fingerprint({**row, "uri": str(tmp_path / "w.mp4")}, config=config),
        fingerprint(
            {**row, "captions": [{"start_s": 0.0, "end_s": 1.0, "text": "x"}]}, config=config
        ),
        fingerprint(row, config=config_digest({"detector": "fast", "samples_per_scene": 2})),
    ]
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    changed.append(fingerprint(row, config=config))
    video.write_bytes(b"other frames")
    changed.append(fingerprint(row, config=config))
    assert len({base, *changed}) == len(changed) + 1


def test_a_file_uri_with_escaped_characters_is_the_file_it_names(tmp_path):
    """``file://`` uris escape spaces, ``#``, ``?`` and non-ASCII names; a rerun must see the
    file itself change."""
    import os
    from urllib.parse import quote

    from curate.work import file_state, fingerprint

    video = tmp_path / "vidéo 猫 #1?.mp4"
    video.write_bytes(b"frames")
    uri = "file://" + quote(str(video))
    assert "%20" in uri and file_state(uri) == file_state(str(video))
    assert not file_state(uri).startswith("error")
    before = fingerprint({"video_id": "v", "uri": uri}, config="c")
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert fingerprint({"video_id": "v", "uri": uri}, config="c") != before
