"""The run report: what the page holds, that it needs nothing from outside, and its size."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from curate.report import (
    ReportLimits,
    build_run_report,
    histogram_svg,
    report_numbers,
    write_run_report,
)
from pipelines.cli import main as curate_main

from .report_runs import fake_run, make_videos


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_videos(tmp_path_factory.mktemp("report-videos"), 2)


def test_page_shows_the_runs_numbers_with_thumbnails_and_timelines(tmp_path, videos):
    made = fake_run(tmp_path, videos, videos=30, failures=4)
    timing = {
        "wall_s": 12.5,
        "phase_s": {"per-video": 10.0},
        "stage_s": {"decode": 3.0, "captioner": 2.0},
    }
    path = write_run_report(tmp_path, timing=timing, limits=ReportLimits(per_group=6, stories=12))
    page = path.read_text()
    assert path == tmp_path / "report.html"

    numbers = report_numbers(tmp_path)
    assert numbers["clips"] == made["clips"] == 90 and numbers["kept"] == made["kept"] == 30
    assert f'data-count="clips"><th>clips</th><td class="n">{made["clips"]}<' in page
    assert f'data-count="kept clips"><th>kept clips</th><td class="n">{made["kept"]}<' in page
    assert 'id="invariant" data-ok="true"' in page
    # the histogram covers every scored clip and draws the cut-off
    assert 'id="histogram"' in page and 'data-scored="90"' in page
    assert 'data-cutoff="0.5000"' in page and "cut-off 0.500" in page
    bars = [int(n) for n in re.findall(r'class="bar [a-z]+"[^>]*data-count="(\d+)"', page)]
    assert sum(bars) == 90
    # per group: its total, and a sample of thumbnails decoded from the videos
    for group, total in (
        ("kept", 30),
        ("low_caption_score", 26),
        ("duplicate", 4),
        ("too_short", 30),
    ):
        section = re.search(rf'data-group="{group}" data-total="(\d+)"(.*?)</section>', page, re.S)
        assert section and int(section.group(1)) == total
        assert section.group(2).count('<img class="thumb"') == min(6, total)
    # stories: a timeline each, a keyframe and a status per segment, paged 10 at a time
    assert page.count('class="story"') == 12 and page.count('class="page"') >= 2
    segs = re.findall(r'class="seg (\w+)"', page)
    assert len(segs) == 36 and set(segs) == {"kept", "dropped"}
    # duplicates side by side, failures listed, time per stage with the captioner on its own
    assert page.count('class="dups"') == 4
    assert page.count("CorruptVideo") >= 4 and "moov atom not found" in page
    assert 'data-stage="captioner"' in page and "12.5 s" in page
    # one file: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page and "@import" not in page


def _bars(svg: str) -> list[tuple[str, float, float, float, int]]:
    """``(kind, x, y, height, count)`` of each bar of a histogram."""
    found = re.findall(
        r'class="bar (below|above)" x="([\d.]+)" y="([\d.]+)" width="[\d.]+" '
        r'height="([\d.]+)" data-count="(\d+)"',
        svg,
    )
    return [(k, float(x), float(y), float(h), int(n)) for k, x, y, h, n in found]


def test_the_bin_holding_the_cut_off_shows_its_dropped_and_its_kept_clips():
    # three bins over [0.1, 0.9]: the middle one, [0.367, 0.633), holds 0.45 (under the
    # cut-off, dropped) and 0.55 (kept)
    scores = np.array([0.1, 0.2, 0.3, 0.45, 0.55, 0.9])
    bars = _bars(histogram_svg(scores, 0.5, bins=3))
    counts = {kind: sum(n for k, *_, n in bars if k == kind) for kind in ("below", "above")}
    assert counts == {"below": 4, "above": 2}
    # the cut-off's bin: a dropped part and a kept part on top of it, one clip each
    by_x: dict[float, list] = {}
    for bar in bars:
        by_x.setdefault(bar[1], []).append(bar)
    (split,) = [group for group in by_x.values() if len(group) == 2]
    (low, _, y1, h1, n1), (high, _, y2, h2, n2) = sorted(split, key=lambda b: -b[2])
    assert (low, n1, high, n2) == ("below", 1, "above", 1)
    assert y2 + h2 == pytest.approx(y1, abs=0.1) and h1 == pytest.approx(h2)
    # a score at the cut-off is kept, also in the last bin, whose upper edge it is
    bars = _bars(histogram_svg(np.array([0.2, 0.5, 0.5]), 0.5, bins=2))
    assert [(k, n) for k, *_, n in bars if n] == [("below", 1), ("above", 2)]


def test_report_is_rewritten_with_the_runs_timing_and_flags(tmp_path, videos, capsys):
    fake_run(tmp_path, videos, videos=3)
    write_run_report(tmp_path, timing={"wall_s": 7.0, "phase_s": {}, "stage_s": {"score": 4.0}})
    (tmp_path / "report.html").unlink()
    assert curate_main(["report", str(tmp_path), "--stories", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert 'data-stage="score"' in page and page.count('class="story"') == 2
    other = tmp_path / "elsewhere" / "r.html"
    assert curate_main(["report", str(tmp_path), "--out", str(other)]) == 0 and other.exists()


def test_report_of_a_folder_that_is_no_run_says_so(tmp_path, capsys):
    assert curate_main(["report", str(tmp_path)]) == 2
    assert "curate report:" in capsys.readouterr().err


def test_a_moved_video_costs_its_thumbnails_not_the_report(tmp_path, caplog):
    fake_run(tmp_path, [str(tmp_path / "gone.mp4")], videos=2)
    page = build_run_report(tmp_path)
    assert "no frame" in page and '<img class="thumb"' not in page
    assert "no thumbnails from" in caplog.text


def test_stored_keyframes_make_the_thumbnails_without_the_videos(tmp_path):
    fake_run(tmp_path, [str(tmp_path / "gone.mp4")], videos=3, keyframes=True)
    page = build_run_report(tmp_path)
    assert "no frame" not in page
    assert page.count('<img class="thumb"') == 3 * 3 + 3 * 3  # every clip, every segment


@pytest.mark.slow
def test_size_and_time_stay_bounded_at_100000_clips(tmp_path, videos):
    """Measured: ~34,000 videos, 100,002 clips, 1,000 failures."""
    made = fake_run(tmp_path, videos, videos=33_334, failures=1000)
    start = time.perf_counter()
    path = write_run_report(tmp_path)
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    print(f"100k clips: {size / 1e6:.2f} MB in {seconds:.1f} s")
    assert made["clips"] == 100_002
    assert size < 4_000_000 and seconds < 120
    page = path.read_text()
    assert 'data-scored="100002"' in page and page.count('class="story"') == 40
