"""``storygen render`` / ``new-model`` end to end with a tiny random model."""

from __future__ import annotations

import json
import re

import av
import pytest
import torch

from storygen.cli import main

SCRIPT = """\
fps: 4
segments:
  - {start: 0, end: 2.5, prompt: "a red circle moving left"}
  - {start: 2.5, end: 4.25, prompt: "a blue square on a striped background"}
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model"
    assert main(["new-model", str(path), "--preset", "micro"]) == 0
    return path


def _frames_in(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_render_writes_video_preview_and_summary(model_dir, tmp_path, capsys):
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    out = tmp_path / "out" / "story.mp4"
    argv = [
        "render",
        str(script),
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--frames-per-call",
        "5",
        "--steps",
        "2",
        "--guidance",
        "1",
        "--preview",
        str(tmp_path / "sheet.png"),
        "--stats-json",
        str(tmp_path / "stats.json"),
        "--report",
        str(tmp_path / "report.html"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "rendered 17 frames (4.25 s at 4 fps)" in text
    assert "5 (0 from cache) in 2 sequential rounds" in text
    assert "unet " in text.split("wall time")[1].splitlines()[0]  # where the time went
    assert re.search(r"speed-ups\s+tconv \(\d+ layers\)", text)  # a CPU's default
    assert str(out) in text and "sheet.png" in text
    assert _frames_in(out) == 17
    assert (tmp_path / "sheet.png").stat().st_size > 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["stats"]["model_calls"] == 5 and stats["plan"]["rounds"] == 2
    page = (tmp_path / "report.html").read_text()
    assert "report.html" in text and "data:image/png;base64," in page  # the sheet, inline
    assert "level 1" in page and "a red circle" in page  # the plan and the script
    # a rerun is served from the cache
    assert main(argv) == 0
    assert "5 (5 from cache)" in capsys.readouterr().out


def test_autoregressive_mode_and_duration(model_dir, tmp_path, capsys):
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    out = tmp_path / "ar.gif"
    argv = ["render", str(script), "--model", str(model_dir), "--out", str(out)]
    argv += ["--mode", "autoregressive", "--duration", "2", "--frames-per-call", "5"]
    argv += ["--steps", "1", "--guidance", "1", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "rendered 8 frames" in text and "in 2 sequential rounds" in text
    assert out.stat().st_size > 0


def test_missing_model_file_is_named(model_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "text_encoder" / "config.json").unlink()
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    argv = ["render", str(script), "--model", str(broken), "--out", str(tmp_path / "x.mp4")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(broken / "text_encoder" / "config.json") in err
    assert not (tmp_path / "x.mp4").exists()


def test_bad_script_is_reported(model_dir, tmp_path, capsys):
    script = tmp_path / "bad.yaml"
    script.write_text("fps: 4\nsegments:\n  - {start: 3, end: 1, prompt: backwards}\n")
    argv = ["render", str(script), "--model", str(model_dir), "--out", str(tmp_path / "x.mp4")]
    assert main(argv) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_the_summary_says_how_graphs_were_compiled_and_what_ran_instead():
    """The summary's compile part: compiling, or loading graphs built ahead of time; and for
    each fallback, what the module ran instead of what was asked."""
    from storygen.render_cli import _speedups
    from storygen.runner import GenerationStats

    base = {"num_frames": 17, "model_calls": 6, "rounds": 3}

    built = GenerationStats(
        **base,
        compiled=True,
        compiled_rows=[2, 4],
        compile_s=130.4,
        compile_phases_s={"pre_compile": 129.0, "pre_load": 0.0},
        speedups={"tconv": 3},
    )
    assert _speedups(built) == "tconv (3 layers), compiled 2, 4-row passes (130 s compiling)"
    loaded = GenerationStats(
        **base, compiled=True, compiled_rows=[4], compile_s=1.2, compile_phases_s={"aot_load": 1.1}
    )
    assert _speedups(loaded) == "none, compiled 4-row passes (1 s loading saved graphs)"
    fell = GenerationStats(
        **base,
        compiled=True,
        compiled_rows=[4],
        compile_s=9.0,
        compile_fallbacks=[
            "compile='aot': the loader died (SIGSEGV); MaskedUNet3D runs precompiled graphs "
            "instead (torch.compile's aot_compile, saved as *.dynamo beside the packages)",
            "compile='pre': dynamo cannot precompile it as one graph: x; AutoencoderKL "
            "compiles in process instead (torch.compile, every shape)",
            "compile='all': sampling calls a UNet3DConditionModel block by block (a prompt per "
            "frame); its blocks compile one by one instead (as 'regional')",
        ],
    )
    assert _speedups(fell).split(", ")[2:] == [
        "compile='aot' not possible here: precompiled graphs instead (see the log)",
        "compile='pre' not possible here: compiled in process instead (see the log)",
        "compile='all' not possible here: its blocks compiled one by one instead (see the log)",
    ]
    assert _speedups(GenerationStats(**base, compiled=True)) == (
        "none, compile on, no shape ran enough passes to repay it"
    )
