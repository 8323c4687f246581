"""The caption-score threshold: parsing, what ``auto`` means, percentile cut-offs."""

from __future__ import annotations

import numpy as np
import pytest

from curate.threshold import (
    FALLBACK,
    Threshold,
    auto_threshold,
    calibrate,
    calibrate_threshold,
    parse_threshold,
    resolve_threshold,
)


def test_percentile_drops_at_most_that_share():
    scores = np.linspace(0.0, 1.0, 101)
    cut = calibrate_threshold(scores, percentile=10)
    assert cut == pytest.approx(0.10)
    assert (scores < cut).sum() == 10
    assert calibrate_threshold(scores, percentile=0) == 0.0


def test_unscored_clips_do_not_count():
    assert calibrate_threshold([None, float("nan"), 0.2, 0.4], percentile=50) == 0.2
    with pytest.raises(ValueError, match="zero scored"):
        calibrate_threshold([None], percentile=10)


@pytest.mark.parametrize("bad", [-1, 100, 150])
def test_bad_percentile(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        calibrate_threshold([0.1], percentile=bad)


def test_calibrate_counts():
    cal = calibrate([0.1, 0.2, 0.3, None], threshold=0.25)
    assert (cal.threshold, cal.scored, cal.dropped, cal.kept) == (0.25, 3, 2, 1)
    with pytest.raises(ValueError, match="exactly one"):
        calibrate([0.1], threshold=0.1, percentile=5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.22", Threshold(0.22, False)),
        (" -0.1 ", Threshold(-0.1, False)),
        (0.3, Threshold(0.3, False)),
        ("p20", Threshold(20.0, True)),
        ("P 12.5", Threshold(12.5, True)),
        ("pct5", Threshold(5.0, True)),
        ("percentile:30", Threshold(30.0, True)),
        ("20%", Threshold(20.0, True)),
        ("p0", Threshold(0.0, True)),
    ],
)
def test_parse_threshold(text, expected):
    parsed = parse_threshold(text)
    assert parsed == expected
    assert parse_threshold(str(parsed)) == parsed  # the spelling round-trips
    assert parse_threshold(parsed) is parsed


@pytest.mark.parametrize("bad", ["p150", "p100", "1.5", "-2", "cat", "", "p", "auto"])
def test_bad_threshold_names_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        parse_threshold(bad)


def test_auto_is_the_model_folders_cut_off_else_the_fallback(tmp_path):
    from curate.models import DEFAULT_MODEL, recommended_threshold, write_scoring

    shipped = recommended_threshold(DEFAULT_MODEL)
    assert shipped is not None
    assert resolve_threshold("auto", model=None) == Threshold(float(f"{shipped:g}"), False)
    assert resolve_threshold(None, model=str(DEFAULT_MODEL)) == resolve_threshold(
        "AUTO", model=None
    )
    folder = tmp_path / "clip"
    folder.mkdir()
    assert auto_threshold(str(folder)) == FALLBACK == "p20"
    assert resolve_threshold("auto", model=str(folder)) == Threshold(20.0, True)
    write_scoring(folder, {"caption_threshold": 0.31})
    assert resolve_threshold("auto", model=str(folder)) == Threshold(0.31, False)
    # an explicit threshold is never overridden by the folder
    assert resolve_threshold("p5", model=str(folder)) == Threshold(5.0, True)


def test_cutoff_of_a_corpus():
    scores = [0.4, None, 0.1, float("nan"), 0.3, 0.2]
    assert Threshold(0.25, False).cutoff(scores) == 0.25
    assert Threshold(0.25, False).cutoff([]) == 0.25
    assert Threshold(50.0, True).cutoff(scores) == 0.2
    assert Threshold(50.0, True).cutoff([None]) is None
    assert Threshold(50.0, True).cutoff(np.linspace(0, 1, 101)) == pytest.approx(0.5)
    cal = Threshold(50.0, True).calibrate(scores)
    assert (cal.threshold, cal.method, cal.scored, cal.dropped) == (0.2, "percentile", 4, 1)
    cal = Threshold(0.25, False).calibrate(scores)
    assert (cal.method, cal.dropped, cal.kept) == ("absolute", 2, 2)
