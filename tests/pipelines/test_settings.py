"""One declaration of the run options: ``curate run``'s flags and Beam's options agree."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from curate.models import DEFAULT_CAPTIONER, DEFAULT_MODEL, recommended_threshold
from curate.threshold import Threshold
from pipelines.settings import RunSettings


def cli_settings(*flags: str) -> RunSettings:
    parser = argparse.ArgumentParser()
    RunSettings.add_cli_arguments(parser)
    return RunSettings.from_namespace(parser.parse_args(["--input=m.csv", "--output=o", *flags]))


def beam_settings(*flags: str) -> RunSettings:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import settings_of

    return settings_of(PipelineOptions(["--input=m.csv", "--output=o", *flags]))


def test_both_parsers_have_the_same_defaults():
    assert cli_settings() == beam_settings() == RunSettings(input="m.csv", output="o")


def test_cli_flags_become_beam_flags_unchanged():
    cli = cli_settings(
        "--samples-per-scene=2",
        "--threshold=p25",
        "--share-model",
        "--keyframes=jpeg",
        "--max-failure-rate=0.5",
        "--prompt-bank=bank.txt",
    )
    beam = beam_settings(*cli.beam_flags())
    launch = {f.name for f in RunSettings.options(cli=True) if not f.metadata["beam"]}
    assert dataclasses.replace(beam, **{k: getattr(cli, k) for k in launch}) == cli
    assert (beam.samples_per_scene, beam.share_model, beam.prompt_bank) == (2, True, "bank.txt")


def test_beam_only_options_are_not_command_line_flags():
    parser = argparse.ArgumentParser()
    RunSettings.add_cli_arguments(parser)
    flags = {a for action in parser._actions for a in action.option_strings}
    assert "--samples-per-scene" in flags and "--no-progress" in flags
    assert "--commit-every" not in flags and "--commit_every" not in flags
    assert beam_settings("--commit_every=1", "--isolate_decode=false").commit_every == 1


@pytest.mark.parametrize("bad", ["--samples-per-scene=0", "--max-failure-rate=2"])
def test_bad_values_are_refused_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit):
        cli_settings(bad)
    assert bad.split("=")[1] in capsys.readouterr().err


def test_resolved_settings_say_what_auto_means():
    resolved = RunSettings(input="m.csv", output="o").resolved()
    shipped = recommended_threshold(DEFAULT_MODEL)
    assert resolved.resolved_threshold == Threshold(float(f"{shipped:g}"), False)
    assert resolved.threshold == f"{shipped:g}"
    assert resolved.captioner_folder == str(DEFAULT_CAPTIONER)
    assert resolved.resolved() == resolved  # resolving twice changes nothing
    assert RunSettings(input="m", output="o", captioner="none").resolved().captioner == "none"
    with pytest.raises(ValueError, match="p150"):
        RunSettings(input="m", output="o", threshold="p150").resolved()
    with pytest.raises(ValueError, match="--output is required"):
        RunSettings(input="m").resolved()


def test_tuning_flags_after_the_double_dash_reach_the_settings():
    settings = RunSettings(input="m.csv", output="o").with_beam_args(
        ["--videos_per_shard=2", "--commit_every", "3", "--isolate_decode=false", "--project=p"]
    )
    assert (settings.videos_per_shard, settings.commit_every, settings.isolate_decode) == (
        2,
        3,
        False,
    )
    assert settings.clip_batch_size is None  # untouched options keep their values


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--samples_per_scene=2", "give it as --samples-per-scene, before the '--'"),
        ("--threshold=p30", "give it as --threshold"),
        ("--runner=DataflowRunner", "give it as --runner"),
        ("--videos-per-shard=2", "Beam flags use underscores: --videos_per_shard"),
        ("--videos_per_shard=0", "'0'"),
    ],
)
def test_run_options_after_the_double_dash_are_refused(flag, message):
    with pytest.raises(ValueError, match=message):
        RunSettings(input="m.csv", output="o").with_beam_args([flag])


def test_the_device_is_checked_where_the_work_runs(monkeypatch):
    import torch

    base = RunSettings(input="m.csv", output="o", captioner="none")
    with pytest.raises(ValueError, match="--device must be cpu, cuda or cuda:N, got 'bogus'"):
        dataclasses.replace(base, device="bogus").resolved()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device is available here"):
        dataclasses.replace(base, device="cuda").resolved()
    # a cluster's workers have their own GPUs: the launcher needs none
    remote = dataclasses.replace(base, device="cuda", runner="DataflowRunner").resolved()
    assert remote.device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        dataclasses.replace(base, device="cuda:1").resolved()
    with pytest.raises(ValueError, match="--clip-fp8 mlp needs a CUDA --device"):
        dataclasses.replace(base, clip_fp8="mlp").resolved()


def test_options_the_runner_would_ignore_are_refused():
    from pipelines.options import runner_flags

    base = RunSettings(input="m.csv", output="o", captioner="none")
    with pytest.raises(ValueError, match="--dask-address needs --runner dask"):
        dataclasses.replace(base, dask_address="tcp://h:8786").resolved()
    with pytest.raises(ValueError, match="--workers applies to the local, direct and dask"):
        dataclasses.replace(base, runner="DataflowRunner", workers=4).resolved()
    with pytest.raises(ValueError, match="--workers applies"):
        runner_flags("FlinkRunner", workers=2)
    # the DirectRunner runs these pipelines on the FnApiRunner: it takes the worker flags
    for runner in ("direct", "DirectRunner", "local"):
        assert "--direct_num_workers=3" in runner_flags(runner, workers=3)
    assert dataclasses.replace(base, runner="direct", workers=2).resolved().workers == 2
