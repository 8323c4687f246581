"""The run report in a real browser (``-m browser``; ``.ci/run`` runs these after the suite)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from curate.report import report_numbers, write_run_report
from pipelines.cli import main as curate_main
from tests.browser import console_errors, headless_chromium, screenshot

from .report_runs import fake_run, make_videos

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def curated(shapes_corpus_path, tmp_path_factory) -> Path:
    """A real ``curate run`` of the session corpus, with its report."""
    out = tmp_path_factory.mktemp("curated")
    code = curate_main(
        [
            "run",
            "--input",
            str(shapes_corpus_path / "webvid.csv"),
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def test_run_report_in_chromium_shows_the_runs_numbers(curated, tmp_path):
    numbers = report_numbers(curated)
    page = curated / "report.html"
    assert page.exists(), "curate run writes OUT/report.html"
    with headless_chromium() as driver:
        driver.get(page.as_uri())
        assert console_errors(driver) == []
        assert "curate run report" in driver.title
        q = driver.find_element

        def count(label: str) -> int:
            return int(
                q("css selector", f'#counts tr[data-count="{label}"] td').text.replace(",", "")
            )

        assert count("clips") == numbers["clips"] and count("kept clips") == numbers["kept"]
        assert count("stories") == numbers["stories"]
        assert q("id", "invariant").get_attribute("data-ok") == "true"
        hist = q("id", "histogram")
        assert int(hist.get_attribute("data-scored")) == numbers["scored"]
        assert float(hist.get_attribute("data-cutoff")) == pytest.approx(
            numbers["cutoff"], abs=1e-4
        )
        line = driver.execute_script(
            "return document.getElementById('cutoff').getBoundingClientRect().height"
        )
        assert hist.size["width"] > 300 and line > 50
        bars = driver.find_elements("css selector", "#histogram rect.bar")
        assert sum(int(b.get_attribute("data-count")) for b in bars) == numbers["scored"]
        # every thumbnail decoded (an inline image that failed has no natural width)
        thumbs = driver.find_elements("css selector", "img.thumb")
        assert thumbs and all(
            driver.execute_script("return arguments[0].naturalWidth", t) > 0 for t in thumbs
        )
        groups = driver.find_elements("css selector", "section.group")
        reasons = {
            g.get_attribute("data-group"): int(g.get_attribute("data-total")) for g in groups
        }
        assert reasons.pop("kept") == numbers["kept"] and reasons == numbers["reasons"]
        # story timelines: one per story on the first page, a keyframe and a status per segment
        visible = [s for s in driver.find_elements("css selector", ".story") if s.is_displayed()]
        assert len(visible) == min(10, numbers["stories"])
        for story in visible:
            segs = story.find_elements("css selector", ".seg")
            assert segs and all(s.get_attribute("data-status") in ("kept", "dropped") for s in segs)
            assert len(story.find_elements("css selector", ".seg img.thumb")) == len(segs)
        assert q("id", "timing").is_displayed()
        shot = screenshot(driver, tmp_path / "run-report.png")
    assert shot.stat().st_size > 10_000


def test_large_run_report_loads_fast_and_pages(tmp_path):
    videos = make_videos(tmp_path / "videos", 2)
    made = fake_run(tmp_path / "run", videos, videos=33_334, failures=1000)
    path = write_run_report(tmp_path / "run")
    with headless_chromium() as driver:
        start = time.perf_counter()
        driver.get(path.as_uri())
        load_s = time.perf_counter() - start
        assert console_errors(driver) == []
        hist = driver.find_element("id", "histogram")
        assert int(hist.get_attribute("data-scored")) == made["clips"]
        stories = driver.find_elements("css selector", "#stories .story")
        assert len(stories) == 40 and sum(s.is_displayed() for s in stories) == 10
        # the pager shows page 2 in place of page 1
        driver.find_element("css selector", "#stories .pager button:nth-child(2)").click()
        shown = [s.get_attribute("data-story-id") for s in stories if s.is_displayed()]
        assert len(shown) == 10 and shown[0] == stories[10].get_attribute("data-story-id")
        failures = driver.find_elements("css selector", "#failures .page")
        assert len(failures) == 20  # 500 rows listed, 25 to a page
        screenshot(driver, tmp_path / "large-run-report.png")
    print(f"100k-clip report: {path.stat().st_size / 1e6:.2f} MB, loaded in {load_s:.2f} s")
    assert load_s < 20
