"""The render report (``storygen.report``): from a real render's statistics, plan and preview
sheet, and from a plan object; in headless Chromium with ``-m browser``."""

from __future__ import annotations

import json
import re

import pytest

from storygen.cli import main
from storygen.plan import plan_story
from storygen.report import build_render_report, write_render_report
from storygen.script import load_script
from tests.browser import console_errors, headless_chromium, screenshot

from .test_render_cli import SCRIPT


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    """A tiny render: its script, video, preview sheet and statistics JSON."""
    tmp = tmp_path_factory.mktemp("render")
    assert main(["new-model", str(tmp / "model"), "--preset", "micro"]) == 0
    (tmp / "story.yaml").write_text(SCRIPT)
    argv = ["render", str(tmp / "story.yaml"), "--model", str(tmp / "model")]
    argv += ["--out", str(tmp / "story.mp4"), "--frames-per-call", "5", "--steps", "2"]
    argv += ["--guidance", "1", "--preview", str(tmp / "sheet.png")]
    argv += ["--stats-json", str(tmp / "stats.json"), "--no-progress"]
    assert main(argv) == 0
    return tmp


def _page(render) -> str:
    stats = json.loads((render / "stats.json").read_text())
    path = write_render_report(
        render / "render.html",
        stats["stats"],
        stats["plan"],
        render / "sheet.png",
        script=load_script(render / "story.yaml"),
        settings={"guidance": 1.0, "steps": 2},
        video=render / "story.mp4",
    )
    return path.read_text()


def test_render_report_holds_sheet_script_plan_and_timing(render):
    page = _page(render)
    assert 'id="preview"' in page and "data:image/png;base64," in page
    assert 'data-segments="2"' in page and "a blue square on a striped background" in page
    assert re.search(r'data-name="frames"><th>frames</th><td>17<', page)
    assert re.search(r'data-name="model calls"><th>model calls</th><td>5<', page)
    levels = re.findall(r'<tr data-level="(\d)"><th>level \d</th><td class="n">(\d+)</td>', page)
    assert levels == [("0", "1"), ("1", "4")]
    assert page.count(' s</td><td><span class="hbar"') == 2  # a time for each level
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_render_report_from_plan_objects_marks_each_levels_frames(tmp_path):
    (tmp_path / "story.yaml").write_text(SCRIPT)
    script = load_script(tmp_path / "story.yaml")
    plan = plan_story(script, frames_per_call=5)
    stats = {
        "num_frames": plan.num_frames,
        "model_calls": plan.model_calls,
        "level_times_s": [1.0, 3.0],
    }
    page = build_render_report(stats=stats, plan=plan, script=script)
    marks = [len(re.findall(r'class="mark"', row)) for row in page.split("<tr data-level=")[1:]]
    assert marks == [5, 12]  # 5 keyframes, then the 12 frames between them
    assert 'id="preview"' not in page


@pytest.mark.browser
def test_render_report_in_chromium(render, tmp_path):
    _page(render)
    with headless_chromium() as driver:
        driver.get((render / "render.html").as_uri())
        assert console_errors(driver) == []
        sheet = driver.find_element("id", "preview")
        assert driver.execute_script("return arguments[0].naturalWidth", sheet) > 0
        assert len(driver.find_elements("css selector", "#script .seg")) == 2
        rows = driver.find_elements("css selector", "#levels tr[data-level]")
        assert [r.find_elements("css selector", "td")[0].text for r in rows] == ["1", "4"]
        shot = screenshot(driver, tmp_path / "render-report.png")
    assert shot.stat().st_size > 5_000


def test_render_report_timeline_stops_where_the_render_ends(tmp_path):
    (tmp_path / "story.yaml").write_text(SCRIPT)  # 4.25 s
    script = load_script(tmp_path / "story.yaml")
    plan = plan_story(script, frames_per_call=5, num_frames=8)  # 2 s at 4 fps
    page = build_render_report(stats={}, plan=plan, script=script)
    timeline = page.split('id="script"')[1].split("</div></div>")[0]
    lefts = [float(x) for x in re.findall(r"left:([\d.]+)%", timeline)]
    widths = [float(x) for x in re.findall(r"width:([\d.]+)%", timeline)]
    assert lefts == [0.0] and widths == [100.0]  # the first segment, cut at 2 s
    assert "a blue square" not in timeline
    assert "The render ends at 2.00 s, the script at 4.25 s" in page
    assert "1 segment after it not shown, 1 cut short" in page


def test_render_report_takes_the_sheet_as_png_bytes(render, tmp_path):
    """A render with --report and no --preview has its sheet in memory, never on disk."""
    import base64

    stats = json.loads((render / "stats.json").read_text())
    png = (render / "sheet.png").read_bytes()
    page = build_render_report(stats=stats["stats"], plan=stats["plan"], preview_png=png)
    inline = re.search(r'id="preview" class="sheet" src="data:image/png;base64,([^"]+)"', page)
    assert inline and base64.b64decode(inline[1]) == png
    empty = build_render_report(stats=stats["stats"], plan=stats["plan"], preview_png=b"")
    assert 'id="preview"' not in empty
