"""``curate run`` / ``curate inspect`` from the command line."""

from __future__ import annotations

import re

import pytest

from pipelines.cli import main
from pipelines.cli.inspect import histogram
from pipelines.curate import run
from tests.pipelines.fakes import fake_components, write_fake_corpus


def test_run_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--threshold",
        "--workers",
        "--runner",
        "--overwrite",
        "--keyframes",
        "RUNNERS.md",
    ):
        assert flag in text


def test_unwritable_output_is_refused_before_work(tmp_path, capsys):
    manifest = write_fake_corpus(tmp_path / "in", {"a": ("scenes=1", "x")})
    (tmp_path / "file.txt").write_text("a file, not a folder")
    code = main(["run", "--input", str(manifest), "--output", str(tmp_path / "file.txt" / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'file.txt'} exists and is not a folder" in err


def test_bad_threshold_is_refused(tmp_path, capsys):
    manifest = write_fake_corpus(tmp_path / "in", {"a": ("scenes=1", "x")})
    code = main(
        ["run", "--input", str(manifest), "--output", str(tmp_path / "o"), "--threshold", "p150"]
    )
    assert code == 2
    assert "p150" in capsys.readouterr().err


def test_inspect_reports_counts_histogram_and_stories(tmp_path, capsys):
    specs = {f"v{i}": (f"scenes={1 + i % 2}", f"clip {i} score 0.{i + 1}") for i in range(6)}
    specs["bad"] = ("broken", "x")
    manifest = write_fake_corpus(tmp_path / "in", specs)
    out = tmp_path / "out"
    run(
        [f"--input={manifest}", f"--output={out}", "--threshold=p50"],
        components=fake_components(),
        progress=False,
    )
    assert main(["inspect", str(out), "--stories", "2"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"clips 9: (kept 5, dropped 4|dropped 4, kept 5)", text), text
    assert "dropped: low_caption_score" in text
    # where every clip's prompt came from, one count per source, adding up to the clips
    sources = re.search(r"prompts from: (.*)", text)
    assert sources and sum(int(p.split()[-1]) for p in sources.group(1).split(", ")) == 9
    assert re.search(r"probe\s+VideoOpenFailure\s+1", text)
    assert text.count("<- threshold") == 1
    assert "example stories" in text and "[  0.00 -   1.00 s]" in text


def test_histogram_marks_the_bin_holding_the_threshold():
    import numpy as np

    lines = histogram(np.array([0.1, 0.2, 0.2, 0.9]), bins=4, cutoff=0.5)
    marked = [line for line in lines if "<- threshold" in line]
    assert len(marked) == 1 and "[+0.500, +0.700)" in marked[0]
    assert sum(int(line.split(")")[1].split()[0]) for line in lines) == 4


def test_inspect_of_a_folder_without_manifest_says_so(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no run manifest" in capsys.readouterr().err


# --- configuration errors: one clear line, before any work -------------------------------------


def _clip_copy(tmp_path, **config_changes):
    import json
    import shutil

    from curate.models import DEFAULT_MODEL

    folder = tmp_path / "clip"
    shutil.copytree(DEFAULT_MODEL, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _captioner_as_clip(tmp_path):
    """A BLIP captioner folder with every file a CLIP folder has: the wrong class."""
    import shutil

    from curate.models import DEFAULT_CAPTIONER, DEFAULT_MODEL

    folder = tmp_path / "blip"
    shutil.copytree(DEFAULT_CAPTIONER, folder)
    shutil.copy(DEFAULT_MODEL / "preprocessor_config.json", folder)
    return folder


class _Payload:
    """A pickle that would run code when loaded (here, only a print)."""

    def __reduce__(self):
        return (print, ("this ran while loading the weights",))


def _refused_pickle(tmp_path):
    import pickle

    folder = _clip_copy(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Payload()}))
    return folder


@pytest.mark.parametrize(
    "model,message",
    [
        (lambda tmp: tmp / "no-such-model", "model folder does not exist"),
        (
            lambda tmp: _captioner_as_clip(tmp),
            "config.json declares model_type 'blip'; a CLIP model has 'clip'",
        ),
        (lambda tmp: _refused_pickle(tmp), "pytorch_model.bin: the weights cannot be loaded"),
    ],
    ids=["missing", "wrong-class", "refused-pickle"],
)
def test_an_unusable_model_is_one_line_before_any_work(tmp_path, capfd, model, message):
    manifest = write_fake_corpus(tmp_path / "in", {"a": ("scenes=1", "x")})
    out = tmp_path / "out"
    code = main(
        ["run", "--input", str(manifest), "--output", str(out), "--model", str(model(tmp_path))]
    )
    captured = capfd.readouterr()
    assert code == 2
    assert message in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "this ran while loading" not in captured.err + captured.out
    assert [line for line in captured.err.splitlines() if line.strip()] == [
        next(line for line in captured.err.splitlines() if message in line)
    ]
    assert not (out / "_work").exists()


def test_run_help_states_the_limits_the_code_has(capsys):
    """The limits' defaults are written out in ``curate run --help`` (which must not import
    the modules that hold them); this keeps the two the same."""
    from curate.video import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
    from pipelines.settings import RunSettings
    from schemas.inputs import CSV_FIELD_LIMIT, DEFAULT_LIMITS

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for line in (
        f"caption {DEFAULT_LIMITS.max_caption_bytes:,} bytes (--max-caption-bytes)",
        f"manifest line or sidecar {DEFAULT_LIMITS.max_line_bytes:,} bytes",
        f"JSON nesting {DEFAULT_LIMITS.max_json_depth} levels",
        f"CSV field {CSV_FIELD_LIMIT:,} characters",
        f"timed captions {DEFAULT_LIMITS.max_timed_captions:,} per video; times finite, 0 to "
        f"{DEFAULT_LIMITS.max_seconds:,.0f} s",
        f"video frame size {DEFAULT_MAX_SIDE} px a side, {DEFAULT_MAX_PIXELS:,} pixels",
    ):
        assert line in text, line
    defaults = RunSettings()
    assert defaults.manifest_limits == DEFAULT_LIMITS  # the flags' defaults are the readers'


# --- the command line's options reach the run, or are refused before it -----------------------


class _Summary:
    stopped = None
    invariant_ok = True

    def lines(self):
        return ["done"]


def test_tuning_flags_after_the_double_dash_reach_the_run(tmp_path, monkeypatch):
    import pipelines.curate

    seen = {}

    def fake_run(argv, *, settings, progress):
        seen.update(argv=argv, settings=settings)
        return _Summary()

    monkeypatch.setattr(pipelines.curate, "run", fake_run)
    manifest = write_fake_corpus(tmp_path / "in", {"a": ("scenes=1", "x")})
    args = ["run", "--input", str(manifest), "--output", str(tmp_path / "o"), "--no-progress"]
    assert main([*args, "--", "--videos_per_shard=2", "--inference_batch_videos=3"]) == 0
    assert (seen["settings"].videos_per_shard, seen["settings"].inference_batch_videos) == (2, 3)


def _refused_before_work(tmp_path, monkeypatch, capfd, *args: str) -> str:
    """Run ``curate run`` with ``args``; assert it is refused in one line, exit status 2,
    without a pipeline or an output folder; return the line."""
    import pipelines.curate

    monkeypatch.setattr(pipelines.curate, "_run_locked", _no_work)
    manifest = write_fake_corpus(tmp_path / "in", {"a": ("scenes=1", "x")})
    out = tmp_path / "out"
    code = main(["run", "--input", str(manifest), "--output", str(out), "--no-progress", *args])
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured
    assert not out.exists()
    return lines[0]


def _no_work(*args, **kwargs):
    raise AssertionError("the run started")


def test_an_unreachable_dask_scheduler_is_one_line_before_work(tmp_path, monkeypatch, capfd):
    import socket

    from pipelines.cli import run as run_cli

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(run_cli, "DASK_CONNECT_TIMEOUT_S", 0.5)
    address = f"tcp://127.0.0.1:{port}"
    line = _refused_before_work(
        tmp_path, monkeypatch, capfd, "--runner", "dask", "--dask-address", address
    )
    assert f"--dask-address {address}: no Dask scheduler answers" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--device", "bogus"], "--device must be cpu, cuda or cuda:N"),
        (["--runner", "bogus"], "unknown runner 'bogus'"),
        (["--dask-address", "tcp://127.0.0.1:8786"], "--dask-address needs --runner dask"),
        (["--", "--samples_per_scene=2"], "give it as --samples-per-scene"),
    ],
    ids=["device", "runner", "dask-address", "after-double-dash"],
)
def test_bad_launch_options_are_one_line_before_work(tmp_path, monkeypatch, capfd, args, message):
    assert message in _refused_before_work(tmp_path, monkeypatch, capfd, *args)


def test_an_unrecognised_manifest_leaves_no_output_folder(tmp_path, monkeypatch, capfd):
    import pipelines.curate

    monkeypatch.setattr(pipelines.curate, "_run_locked", _no_work)
    manifest = tmp_path / "random.bin"
    manifest.write_bytes(bytes(range(256)))
    out = tmp_path / "out"
    code = main(["run", "--input", str(manifest), "--output", str(out), "--no-progress"])
    assert code == 2
    assert "unrecognised manifest format" in capfd.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "interrupt",
    [
        KeyboardInterrupt(),
        RuntimeError("KeyboardInterrupt [while running 'ProbeAndSplit/Decode/ParDo(_DecodeFn)']"),
    ],
    ids=["KeyboardInterrupt", "as-beam-raises-it"],
)
def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path, monkeypatch, capfd, interrupt):
    import pipelines.curate

    def interrupted(*args, **kwargs):
        raise interrupt

    monkeypatch.setattr(pipelines.curate, "run", interrupted)
    manifest = write_fake_corpus(tmp_path / "in", {"a": ("scenes=1", "x")})
    code = main(["run", "--input", str(manifest), "--output", str(tmp_path / "o")])
    captured = capfd.readouterr()
    assert code == 130
    assert captured.err.strip() == (
        "curate run: interrupted; committed work is kept; rerun the same command to resume"
    )
