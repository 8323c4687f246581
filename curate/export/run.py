"""``export_run``: a published run into shards, resumed where a previous export stopped, with
each video decoded and encoded in an isolated child process."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from schemas import RunManifest

from ..isolation import IsolatedWorker
from .codec import Encoded, ExportStep, video_failures
from .plan import Plan, VideoJob, plan_export
from .settings import (
    EXPORT_FORMAT,
    EXPORT_NAME,
    PARTS_DIR,
    SETTINGS_NAME,
    STAGE_DECODE,
    ExportError,
    ExportSettings,
)
from .writer import (
    ExportSummary,
    ShardWriter,
    clear_export,
    load_parts,
    prune,
    publish,
    summary_of,
    write_json_atomic,
)

logger = logging.getLogger(__name__)


def export_run(
    run_folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: ExportSettings | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    on_shard: Callable[[str], None] | None = None,
    timeout_s: float | None = 600.0,
) -> ExportSummary:
    """Export a published run into shards under ``out`` (see the package docstring).

    Rerunning into the same ``out`` with the same settings resumes (or, when the export is
    complete, returns its summary); other settings are refused unless ``overwrite``.
    ``workers`` child processes decode and encode videos in parallel (the output does not
    depend on it); a video whose decoder crashes or takes over ``timeout_s`` seconds becomes
    failures rows and the rest export.
    """
    settings = settings or ExportSettings()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    run_folder = Path(run_folder)
    out = Path(out)
    _check_folder(out)
    identity = {"format": EXPORT_FORMAT, "settings": settings.to_dict()}
    identity["run"] = _run_identity(run_folder)
    # the run and the settings are planned before anything is written: a plan that fails
    # leaves no folder behind to refuse the corrected rerun
    plan = plan_export(run_folder, settings)
    _claim_folder(out, identity, overwrite=overwrite)
    parts = load_parts(out)
    prune(out, parts)
    if parts and parts[-1].get("final"):  # every shard is written: publish (again)
        if (out / EXPORT_NAME).exists():
            return summary_of(out, json.loads((out / EXPORT_NAME).read_text()))
        return publish(out, plan, settings, identity)
    (out / EXPORT_NAME).unlink(missing_ok=True)
    _write_shards(
        out,
        plan,
        settings,
        parts,
        workers=workers,
        timeout_s=timeout_s,
        progress=progress,
        on_shard=on_shard,
    )
    return publish(out, plan, settings, identity)


def _check_folder(out: Path) -> None:
    """Refuse an ``out`` that cannot be a folder: it, or the nearest of its parents that
    exists, is a file."""
    for path in [out, *out.parents]:
        if path.exists():
            if not path.is_dir():
                where = None if path == out else str(out)
                raise ExportError(f"{path} exists and is not a folder", uri=where)
            return


def _claim_folder(out: Path, identity: dict[str, Any], *, overwrite: bool) -> None:
    """Make ``out`` this export's folder: new, or holding an export of the same run with the
    same settings (``overwrite`` clears another export first)."""
    if overwrite:
        clear_export(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / PARTS_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise ExportError(
            f"cannot create the folder: {exc.strerror or exc}", uri=str(out)
        ) from None
    settings_path = out / PARTS_DIR / SETTINGS_NAME
    if settings_path.exists():
        before = json.loads(settings_path.read_text())
        if before != json.loads(json.dumps(identity, default=str)):
            raise ExportError(
                "the folder holds an export of another run or with other settings; "
                "pass overwrite (--overwrite) or choose another folder",
                uri=str(out),
            )
    else:
        if any(out.glob("shard-*.tar")) or (out / EXPORT_NAME).exists():
            raise ExportError(
                "the folder holds shards without export settings; pass overwrite (--overwrite)",
                uri=str(out),
            )
        write_json_atomic(settings_path, identity)


def _write_shards(
    out: Path,
    plan: Plan,
    settings: ExportSettings,
    parts: list[dict[str, Any]],
    *,
    workers: int,
    timeout_s: float | None,
    progress: bool,
    on_shard: Callable[[str], None] | None,
) -> None:
    """The samples after the last finished part, encoded and written shard by shard."""
    resume = parts[-1]["next"] if parts else 0
    jobs = [j for j in plan.jobs if j.windows[-1].position >= resume]
    logger.info(
        "export: %d samples planned from %d videos; %d shards done, resuming at sample %d",
        plan.samples,
        len(plan.jobs),
        len(parts),
        resume,
    )
    state = ShardWriter(out, settings, len(parts), sum(1 for p in parts if p.get("shard")))
    state.next = resume
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.samples, initial=resume, desc="export", unit="sample")
    results = _results(jobs, settings, workers, timeout_s)
    for job, (samples, failures) in zip(jobs, results):
        state.failures.extend(failures)
        for window, sample in zip(job.windows, _align(job, samples)):
            if window.position < resume or sample is None:
                continue
            name = state.add(sample, next_position=window.position + 1)
            if name and on_shard:
                on_shard(name)
        state.next = max(state.next, job.windows[-1].position + 1)
        if bar is not None:
            bar.update(len(job.windows))
    if bar is not None:
        bar.close()
    state.finish()
    if on_shard:
        on_shard("")


def _align(job: VideoJob, samples: list[Encoded]) -> list[Encoded | None]:
    by_key = {s.key: s for s in samples}
    return [by_key.get(w.key) for w in job.windows]


def _results(
    jobs: list[VideoJob],
    settings: ExportSettings,
    workers: int,
    timeout_s: float | None,
    step: type = ExportStep,
) -> Iterator[tuple[list[Encoded], list[dict]]]:
    """Each job's samples and failures, in job order. Videos are decoded and encoded by
    ``step`` in ``workers`` isolated child processes; a child that crashes or overruns
    ``timeout_s`` fails its video and is replaced."""
    if not jobs:  # nothing to decode: no child process to start
        return
    pool = [
        IsolatedWorker(step, {"settings": settings}, timeout_s=timeout_s, name="export")
        for _ in range(max(1, min(workers, len(jobs))))
    ]
    free = list(pool)

    def one(job: VideoJob) -> tuple[list[Encoded], list[dict]]:
        worker = free.pop()
        try:
            outcome = worker.call(job)
        finally:
            free.append(worker)
        if outcome.ok:
            return outcome.value
        return [], video_failures(
            job,
            settings,
            STAGE_DECODE,
            outcome.error_type or "ExportError",
            outcome.message or "export failed",
            outcome.traceback or "",
        )

    try:
        with ThreadPoolExecutor(max_workers=len(pool)) as threads:
            yield from threads.map(one, jobs)
    finally:
        for worker in pool:
            worker.close()


def _run_identity(run_folder: Path) -> dict[str, Any]:
    m = RunManifest.read(run_folder)
    return {
        "path": str(run_folder.resolve()),
        "created_at": m.created_at,
        "code_version": m.code_version,
        "counts": m.counts,
    }
