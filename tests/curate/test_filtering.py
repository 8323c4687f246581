"""Filtering: thresholds, calibration and the ``curate calibrate`` command."""

from __future__ import annotations

import pytest

from curate.filtering import CaptionFilter, apply_threshold, summarize, text_histogram


def rec(cid, score, caption="a red circle", **kw):
    return {
        "clip_id": cid,
        "caption_score": score,
        "source_caption": caption,
        "status": "kept",
        "reason": None,
        **kw,
    }


def test_every_clip_gets_status_and_reason():
    rows = [
        rec("hi", 0.5),
        rec("lo", 0.1),
        rec("at", 0.3),
        rec("empty", None, caption=""),
        rec("bad", None, caption="\ufffd"),
        rec("short", 0.9, status="dropped", reason="too_short"),
    ]
    out = {r["clip_id"]: r for r in (apply_threshold(r, 0.3) for r in rows)}
    assert (out["hi"]["status"], out["hi"]["reason"]) == ("kept", None)
    assert (out["lo"]["status"], out["lo"]["reason"]) == ("dropped", "low_caption_score")
    assert out["at"]["status"] == "kept"  # the threshold itself is kept
    assert out["empty"]["reason"] == "empty_caption"
    assert out["bad"]["reason"] == "invalid_caption"
    assert out["short"]["reason"] == "too_short"
    assert summarize(list(out.values())) == {
        "kept": 2,
        "dropped": 4,
        "low_caption_score": 1,
        "empty_caption": 1,
        "invalid_caption": 1,
        "too_short": 1,
    }


def test_filter_step_absolute_and_percentile():
    rows = [
        rec(f"c{i}", s) for i, s in enumerate([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    ]
    out = list(CaptionFilter(threshold=0.35).process_all(rows))
    assert len(out) == len(rows)
    assert [r["status"] for r in out].count("dropped") == 4
    f = CaptionFilter(percentile=30)
    with pytest.raises(RuntimeError, match="fit"):
        list(f.process(rows[0]))
    out = list(f.process_all(rows))
    assert f.threshold == pytest.approx(0.2)
    assert [r["clip_id"] for r in out if r["status"] == "dropped"] == ["c0", "c1"]
    assert f.counts == {"kept": 8, "low_caption_score": 2}


def test_an_earlier_threshold_verdict_is_decided_again():
    # a run's clips file, read by ``curate calibrate`` under another threshold
    rows = [
        rec("was_low", 0.5, status="dropped", reason="low_caption_score"),
        rec("still_low", 0.2, status="dropped", reason="low_caption_score"),
        rec("now_low", 0.35),
        rec("short", 0.9, status="dropped", reason="too_short"),
        rec("copy", 0.9, status="dropped", reason="duplicate"),
    ]
    out = {
        r["clip_id"]: (r["status"], r["reason"]) for r in (apply_threshold(r, 0.4) for r in rows)
    }
    assert out == {
        "was_low": ("kept", None),
        "still_low": ("dropped", "low_caption_score"),
        "now_low": ("dropped", "low_caption_score"),
        "short": ("dropped", "too_short"),
        "copy": ("dropped", "duplicate"),
    }


def test_a_percentile_over_no_scored_clip_keeps_every_clip_it_can():
    rows = [rec("empty", None, caption=""), rec("bad", None, caption="\ufffd")]
    out = list(CaptionFilter(percentile=20).process_all(rows))
    assert [(r["status"], r["reason"]) for r in out] == [
        ("dropped", "empty_caption"),
        ("dropped", "invalid_caption"),
    ]
    assert list(CaptionFilter(percentile=20).process_all([])) == []


@pytest.mark.parametrize(
    "kwargs", [{}, {"threshold": 0.1, "percentile": 5}, {"threshold": 2.0}, {"percentile": 100}]
)
def test_filter_settings_are_validated(kwargs):
    with pytest.raises(ValueError):
        CaptionFilter(**kwargs)


def test_histogram_marks_the_cut():
    text = text_histogram([0.1, 0.2, 0.2, 0.3, 0.9], bins=8, threshold=0.25)
    lines = text.splitlines()
    assert len(lines) == 8
    marked = [line for line in lines if "<- cut" in line]
    assert len(marked) == 1
    lo, hi = (float(x) for x in marked[0].split("|")[0].split(".."))
    assert lo <= 0.25 < hi
    assert sum(int(line.split("|")[1].split()[0]) for line in lines) == 5
    assert text_histogram([None]) == "(no scored clips)"
