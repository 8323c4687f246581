"""Beam pipeline options of the curate pipeline, and how runner names map to Beam runners.

The options themselves are declared once, in :class:`pipelines.settings.RunSettings`; this
module registers them with Beam.
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from .settings import LOCAL_RUNNERS, RunSettings, runner_name

#: runner names accepted by ``curate run --runner`` (anything else is passed to Beam as is)
RUNNER_ALIASES = {
    "local": "apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "fnapi": "apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "FnApiRunner": "apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "dask": "apache_beam.runners.dask.dask_runner.DaskRunner",
    "DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner",
}


class CurateOptions(PipelineOptions):
    """Settings of one curation run (Beam flags use underscores: ``--samples_per_scene 4``)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        RunSettings.add_beam_arguments(parser)


def settings_of(options: PipelineOptions) -> RunSettings:
    """The run settings Beam ``options`` hold (as given: not yet resolved)."""
    return RunSettings.from_namespace(options.view_as(CurateOptions))


def runner_flags(runner: str, *, workers: int = 1) -> list[str]:
    """Beam flags for ``runner`` (an alias or a Beam runner name) and a worker count.

    Worker processes are flags of the local runners (the ``FnApiRunner``, and the
    ``DirectRunner``, which runs these pipelines on it); a Dask cluster has its own workers,
    and any other runner sizes its workers with its own flags, so ``workers`` above 1 is
    refused there rather than ignored."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    name = RUNNER_ALIASES.get(runner, runner)
    flags = [f"--runner={name}"]
    if workers > 1:
        if runner_name(name) not in LOCAL_RUNNERS:
            raise ValueError(
                f"--workers applies to the local, direct and dask runners; give {runner} its "
                "own worker flags after '--'"
            )
        flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    return flags
