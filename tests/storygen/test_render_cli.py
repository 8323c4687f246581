"""``storygen render`` / ``new-model`` end to end with a tiny random model."""

from __future__ import annotations

import json
import os
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


# --------------------------------------------------------------------------- refused requests
def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """stderr of a render refused with exit code 2: one line, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith("storygen render: ")
    return err


@pytest.fixture
def request_in(tmp_path):
    """``render`` argv for a script in ``tmp_path`` and a model folder that holds nothing: a
    request refused before a model would load (none could) never gets to render."""
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    (tmp_path / "no-model").mkdir()

    def argv(*args: str) -> list[str]:
        return ["render", str(script), "--model", str(tmp_path / "no-model"), *args]

    return argv


def test_bad_output_paths_are_refused_before_the_model_loads(request_in, tmp_path, capsys):
    (tmp_path / "a.mp4").write_bytes(b"not a folder")
    (tmp_path / "dir.mp4").mkdir()
    out = ["--out", str(tmp_path / "x.mp4")]
    cases = [
        (["--out", str(tmp_path / "a.mp4" / "x.mp4")], "a.mp4 is a file, not a folder"),
        (["--out", str(tmp_path / "dir.mp4")], "dir.mp4: is a folder; name a file"),
        (["--out", str(tmp_path / "x.avi")], "unknown video extension '.avi'"),
        (["--out", str(tmp_path / "x.gif"), "--fps", "60"], "a GIF plays at most 50 fps"),
        ([*out, "--preview", str(tmp_path / "a.mp4" / "p.png")], "--preview"),
        ([*out, "--stats-json", str(tmp_path / "a.mp4" / "s.json")], "--stats-json"),
        ([*out, "--report", str(tmp_path / "dir.mp4")], "--report"),
        ([*out, "--cache-dir", str(tmp_path / "a.mp4")], "exists and is not a folder"),
    ]
    for args, message in cases:
        assert message in _refused(capsys, request_in(*args)), args
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.gif").exists()


def test_an_output_folder_that_cannot_be_written_is_refused(
    request_in, tmp_path, capsys, monkeypatch
):
    import storygen.render_cli

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(storygen.render_cli.tempfile, "NamedTemporaryFile", denied)
    out = tmp_path / "ro" / "x.mp4"
    err = _refused(capsys, request_in("--out", str(out)))
    # a folder still to make: tried in the nearest one that exists, and not made
    assert f"--out {out}: cannot create the folder {out.parent}: cannot write in {tmp_path}" in err
    assert "Permission denied" in err and not out.parent.exists()
    out.parent.mkdir()
    err = _refused(capsys, request_in("--out", str(out)))
    assert f"--out {out}: cannot write in {out.parent} (Permission denied)" in err


def test_outputs_may_not_overwrite_each_other_or_the_script(request_in, tmp_path, capsys):
    same = str(tmp_path / "same.mp4")
    err = _refused(capsys, request_in("--out", same, "--preview", same))
    assert f"--preview {same} is the path of --out too" in err
    script = tmp_path / "story.yaml"
    err = _refused(capsys, request_in("--out", same, "--stats-json", str(script)))
    assert f"--stats-json {script} is the script" in err
    assert script.read_text() == SCRIPT
    assert not (tmp_path / "same.mp4").exists()


@pytest.mark.parametrize(
    ("args", "cuda", "message"),
    [
        (["--device", "bogus"], None, "--device bogus: 'bogus' is not a device"),
        (["--devices", "cpu,,cpu"], None, "--devices cpu,,cpu: an empty device name"),
        (["--device", "cuda"], (False, 0), "--device cuda: CUDA is not available here"),
        (["--devices", "cuda:0,cuda:3"], (True, 2), "there is no cuda:3; this machine has 2"),
    ],
)
def test_bad_devices_are_refused(request_in, tmp_path, capsys, monkeypatch, args, cuda, message):
    if cuda is not None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda[0])
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda[1])
    assert message in _refused(capsys, request_in("--out", str(tmp_path / "x.mp4"), *args))


@pytest.mark.parametrize("args", [["--depth", "2"], ["--policy", "trim"]])
def test_hierarchical_flags_are_refused_in_autoregressive_mode(request_in, tmp_path, capsys, args):
    argv = request_in("--out", str(tmp_path / "x.mp4"), "--mode", "autoregressive", *args)
    err = _refused(capsys, argv)
    assert f"{args[0]} applies to --mode hierarchical only" in err


def test_frame_size_refusal_names_only_real_sizes(request_in, tmp_path, capsys):
    err = _refused(capsys, request_in("--out", str(tmp_path / "x.mp4"), "--height", "5000"))
    assert "height 5000 is larger than the limit of 4096 pixels" in err
    assert "5000×1" not in err and "the width is the model's" in err


def test_render_warns_about_segments_the_output_cannot_show(request_in, tmp_path, caplog, capsys):
    script = tmp_path / "story.yaml"
    script.write_text(
        "fps: 8\nsegments:\n  - {start: 0, end: 2, prompt: a}\n"
        "  - {start: 2.01, end: 2.05, prompt: a flash}\n  - {start: 2.05, end: 4, prompt: c}\n"
        "  - {start: 4, end: 6, prompt: late}\n"
    )
    with caplog.at_level("WARNING", logger="storygen.render_cli"):
        main(request_in("--out", str(tmp_path / "x.mp4"), "--duration", "4"))
    assert (
        f"{script}: segment 2 (line 4): not shown at 8 fps (32 frames): 2.01–2.05 s falls "
        "between two frames (2 s and 2.125 s)"
    ) in caplog.text
    assert (
        f"{script}: segment 4 (line 6): not shown at 8 fps (32 frames): it starts at 4 s, "
        "after the output's last frame (frame 31 at 3.875 s)"
    ) in caplog.text
    capsys.readouterr()


def test_stale_temporary_videos_of_dead_renders_are_removed(request_in, tmp_path, capsys):
    dead = tmp_path / ".x.tmp-999999999.mp4"  # beyond any pid: its render is gone
    alive = tmp_path / f".x.tmp-{os.getpid()}.mp4"  # a render still running
    other = tmp_path / ".y.tmp-999999999.mp4"  # another output's
    for path in (dead, alive, other):
        path.write_bytes(b"partial")
    main(request_in("--out", str(tmp_path / "x.mp4")))  # refused later: no model here
    capsys.readouterr()
    assert not dead.exists() and alive.exists() and other.exists()


# --------------------------------------------------------------------------- failures while running
def _argv(model_dir, tmp_path, *args: str) -> list[str]:
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    argv = ["render", str(script), "--model", str(model_dir), "--frames-per-call", "5"]
    return [*argv, "--steps", "1", "--guidance", "1", "--no-progress", *args]


def test_a_write_failure_during_the_render_is_one_line_and_exit_1(
    model_dir, tmp_path, capsys, monkeypatch
):
    import storygen.render_cli
    from storygen.export import ExportError

    def fails(*args, **kwargs):
        raise ExportError(f"{tmp_path / 'x.mp4'}: finishing the file failed (No space left)")

    monkeypatch.setattr(storygen.render_cli, "_render", fails)
    assert main(_argv(model_dir, tmp_path, "--out", str(tmp_path / "x.mp4"))) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the loading bar
    assert err == (
        f"storygen render: the render failed: {tmp_path / 'x.mp4'}: finishing the file failed "
        "(No space left)"
    )


def test_an_extra_that_cannot_be_written_does_not_lose_the_others(
    model_dir, tmp_path, capsys, monkeypatch
):
    import storygen.render_cli

    def fails(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "sheet.png"))

    monkeypatch.setattr(storygen.render_cli, "plan_sheet", fails)
    args = ["--out", str(tmp_path / "x.mp4"), "--preview", str(tmp_path / "sheet.png")]
    args += ["--stats-json", str(tmp_path / "s.json"), "--report", str(tmp_path / "r.html")]
    assert main(_argv(model_dir, tmp_path, *args)) == 1
    captured = capsys.readouterr()
    assert f"--preview {tmp_path / 'sheet.png'} was not written: " in captured.err
    assert "Permission denied" in captured.err and "Traceback" not in captured.err
    assert (tmp_path / "s.json").exists() and (tmp_path / "r.html").exists()
    assert f"wrote           {tmp_path / 'x.mp4'}, {tmp_path / 's.json'}" in captured.out


def test_ctrl_c_exits_130_and_leaves_no_temporary_video(model_dir, tmp_path, capsys, monkeypatch):
    from storygen.export import VideoWriter

    write = VideoWriter.write

    def interrupted(self, frames):
        write(self, frames)  # the temporary file now exists
        raise KeyboardInterrupt

    monkeypatch.setattr(VideoWriter, "write", interrupted)
    out = tmp_path / "out" / "x.mp4"
    assert main(_argv(model_dir, tmp_path, "--out", str(out))) == 130
    err = capsys.readouterr().err
    assert "storygen: interrupted" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []


def test_without_dtype_a_render_runs_in_bfloat16_on_cuda_and_float32_elsewhere():
    from storygen.render_cli import default_dtype

    assert default_dtype("cuda") == default_dtype("cuda:1") == "bfloat16"
    assert default_dtype("cpu") == default_dtype("mps") == "float32"


def test_without_dtype_every_part_loads_in_float32(tmp_path):
    from storygen.cli import build_parser
    from storygen.render_cli import _check_request, _load_model

    model = tmp_path / "bf16"
    assert main(["new-model", str(model), "--preset", "micro", "--dtype", "bfloat16"]) == 0
    argv = _argv(model, tmp_path, "--out", str(tmp_path / "x.mp4"))
    args = build_parser().parse_args(argv)
    _, choices, _, _ = _check_request(args, model)
    pipe = _load_model(args, model, choices)
    assert pipe.text_encoder.dtype == torch.float32 and pipe.unet.dtype == torch.float32


# --------------------------------------------------------------------------- new-model
def test_new_model_refuses_bad_presets_and_layouts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["new-model", str(tmp_path / "m"), "--preset", "bogus"])
    assert exc.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    assert main(["new-model", str(tmp_path / "m"), "--preset", "micro", "--mode", "t2v"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("storygen new-model: --preset micro is pixel space")
    (tmp_path / "file").write_text("x")
    assert main(["new-model", str(tmp_path / "file" / "m"), "--preset", "micro"]) == 2
    assert "file is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_new_model_preset_names_match_the_presets():
    from storygen.model_cli import PIXEL_PRESETS, PRESET_NAMES
    from storygen.presets import PRESETS

    assert sorted(PRESET_NAMES) == sorted(PRESETS)
    assert sorted(PIXEL_PRESETS) == sorted(k for k, p in PRESETS.items() if p.vae is None)


def test_new_model_replaces_a_full_folder_only_with_force(tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "sampling.json").write_text('{"fps": 99}')
    assert main(["new-model", str(folder), "--preset", "micro"]) == 2
    assert "the folder is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["sampling.json"]
    assert main(["new-model", str(folder), "--preset", "micro", "--force"]) == 0
    assert (folder / "model_index.json").exists() and not (folder / "sampling.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left
