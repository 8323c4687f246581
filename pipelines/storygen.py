# ruff: noqa: E402
"""Batch rendering: every story of a stories table → a video, as a Beam pipeline.

One element per story; each worker loads the model once (``DoFn.setup``) and renders its
stories with :class:`storygen.pipeline.StoryVideoPipeline`, streaming frames to a temporary
file renamed into place when complete. A story that cannot be rendered (a malformed timeline,
a model error) becomes a failures row and a ``failed`` results row; the others go on. A rerun
skips stories whose video already exists (``--render_overwrite`` renders them again).

    python -m pipelines.storygen --stories demo-out/curated --render_output out/renders \\
        --render_model models/shapes-storygen [--render_max_stories N] [--render_fps F]

Settings not given (fps, steps, guidance, frames per call) are left to the storygen pipeline,
which takes the model folder's recommended sampling settings. Progress: a bar (or a log line
every 30 s without a terminal) over finished videos, and a log line per story and level.

On a GPU (``--render_device``, by default cuda where there is one) each worker loads the model
there once and compiles as ``storygen render`` does (``--render_compile``, ``--render_speedups``,
``--render_dtype``): a worker keeps its compiled graphs, so a batch shape one of its stories
compiled costs its later stories nothing (``compile_s`` in the results).

Outputs under ``--output``: ``videos/<story>.mp4``, ``results/part-00000-of-00001.parquet``
(story_id, path, frames, seconds, fps, model_calls, wall_time_s, status, error, device,
compile_s) and
``failures/part-00000-of-00001.parquet`` (the curate failures schema, stage ``render``).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.cli import hide_import_notices

# before Beam is imported, which logs notices about GCP extras (hence the imports below it)
hide_import_notices()

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from curate.errors import CurateError
from curate.isolation import traceback_tail
from curate.shards import check_output_dir
from schemas import read_parquet, rows_to_table, video_failure_row, write_parquet
from schemas.cli import auto_or_positive_int, setup_logging
from storygen.accel import COMPILE_CHOICES
from storygen.cli import DTYPES
from storygen.plan import FPS_RANGE, FRAMES_PER_CALL_RANGE, MAX_FRAMES, frame_limit
from storygen.script import script_from_stories_row

from .options import runner_flags
from .progress import RenderProgress
from .transforms import Gather

logger = logging.getLogger("pipelines.storygen")  # the same name when run as __main__

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("story_id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("frames", pa.int64()),
        pa.field("seconds", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("model_calls", pa.int64()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("status", pa.string(), nullable=False),  # ok | skipped | failed
        pa.field("error", pa.string()),
        # where it ran, and what compiling the UNet cost this story: a worker keeps its
        # compiled graphs, so a batch shape an earlier story of the worker ran costs nothing
        pa.field("device", pa.string()),
        pa.field("compile_s", pa.float64()),
    ]
)
NAMESPACE = "storyloom_storygen"


#: the batch renderer's own flags; every other flag goes to Beam (``--runner``, ...)
RENDER_FLAGS = (
    (
        "--stories",
        {
            "metavar": "PATH",
            "help": "stories Parquet file or folder, or a curate "
            "run folder (its stories/ are used)",
        },
    ),
    ("--render_output", {"metavar": "DIR", "help": "folder for videos/, results/, failures/"}),
    (
        "--render_model",
        {"metavar": "DIR", "help": "storygen model folder (e.g. models/shapes-storygen)"},
    ),
    (
        "--render_max_stories",
        {
            "type": int,
            "default": 0,
            "metavar": "N",
            "help": "render only the first N stories by story_id (default 0: all of them)",
        },
    ),
    (
        "--render_fps",
        {
            "type": float,
            "default": None,
            "metavar": "FPS",
            "help": "frame rate of the videos (default: what the model folder "
            "recommends, else each story's own)",
        },
    ),
    (
        "--render_steps",
        {
            "type": int,
            "default": None,
            "metavar": "N",
            "help": "denoising steps per model call (default: the model folder's sampling.json)",
        },
    ),
    (
        "--render_guidance",
        {
            "type": float,
            "default": None,
            "metavar": "SCALE",
            "help": "classifier-free guidance scale (default: the model folder's sampling.json)",
        },
    ),
    (
        "--render_frames_per_call",
        {
            "type": int,
            "default": None,
            "metavar": "L",
            "help": "frames per model call (default: the model's)",
        },
    ),
    (
        "--render_max_frames",
        {
            "type": int,
            "default": MAX_FRAMES,
            "metavar": "N",
            "help": f"refuse stories longer than N frames (default: {MAX_FRAMES:,})",
        },
    ),
    ("--render_seed", {"type": int, "default": 0, "help": "seed of every story (default 0)"}),
    (
        "--render_micro_batch",
        {
            "type": auto_or_positive_int,
            "default": "auto",
            "metavar": "N",
            "help": "model calls per forward pass, or auto (16 on the CPU, sized from free "
            "memory on CUDA; default auto)",
        },
    ),
    (
        "--render_device",
        {
            "default": None,
            "metavar": "DEVICE",
            "help": "cpu, cuda, cuda:1 (default: cuda if there is one, else cpu)",
        },
    ),
    (
        "--render_dtype",
        {
            "default": None,
            "choices": DTYPES,
            "help": "weights' precision (default: float32)",
        },
    ),
    (
        "--render_compile",
        {
            "default": "auto",
            "choices": COMPILE_CHOICES,
            "help": "compile the UNet as storygen render --compile does (auto: on for CUDA, off "
            "on a CPU); each worker compiles a batch shape once and keeps it for its later "
            "stories (default auto)",
        },
    ),
    (
        "--render_speedups",
        {
            "default": "auto",
            "metavar": "LIST",
            "help": "UNet and decoder speed-ups as storygen render --speedups takes them "
            "(default auto)",
        },
    ),
    (
        "--render_format",
        {
            "default": "mp4",
            "choices": ("mp4", "mkv", "webm", "gif"),
            "help": "video container (default mp4)",
        },
    ),
    (
        "--render_overwrite",
        {
            "default": False,
            "action": "store_true",
            "help": "render stories whose video exists already again",
        },
    ),
)


class StorygenOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        # names are prefixed: every PipelineOptions subclass shares one argument parser
        for flag, kwargs in RENDER_FLAGS:
            parser.add_argument(flag, **kwargs)


EPILOG = """\
examples:
  python -m pipelines.storygen --stories demo-out/curated --render_output demo-out/renders \\
      --render_model models/shapes-storygen --render_max_stories 3
  python -m pipelines.storygen --stories out/runs/first/stories --render_output out/renders \\
      --render_model out/my-model --render_fps 8

A rerun into the same --render_output skips stories whose video exists (--render_overwrite
renders them again). Settings left out (fps, steps, guidance, frames per call) are the model
folder's recommendation. Other flags are Beam's (--runner, --direct_num_workers, ...).

On a GPU: --render_device cuda (the default where there is one) --render_dtype bfloat16
--render_compile all; each worker compiles a batch shape once and keeps it for its later stories.

Outputs: videos/<story>.mp4; results/ (story_id, path, frames, seconds, fps, model_calls,
wall_time_s, status, error, device, compile_s); failures/ (the curate failures schema, stage
"render").
"""


def build_parser() -> argparse.ArgumentParser:
    """``python -m pipelines.storygen --help``: the renderer's flags (Beam's pass through)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.storygen",
        description=(
            "Render every story of a stories table (curate's output) to a video, as a Beam "
            "pipeline: one element per story, the model loaded once per worker. A story that "
            "cannot be rendered becomes a failures row; the others go on."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # as Beam's parser: --render_step would reach Beam as no flag at all
    )
    for flag, kwargs in RENDER_FLAGS:
        parser.add_argument(flag, **kwargs)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return parser


def video_name(story_id: str, fmt: str) -> str:
    """A file name for ``story_id``: readable, filesystem-safe, and unique (a short hash)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", story_id).strip("._")[:80] or "story"
    digest = hashlib.sha1(story_id.encode()).hexdigest()[:8]
    return f"{safe}-{digest}.{fmt}"


@dataclass(frozen=True)
class RenderSettings:
    """What the user asked for; ``None``: not given, the storygen pipeline decides (the model
    folder's recommended sampling settings)."""

    model: str
    output: str
    frames_per_call: int | None = None
    steps: int | None = None
    guidance: float | None = None
    fps: float | None = None
    seed: int = 0
    micro_batch: int | str = "auto"
    #: None: cuda if there is one, else cpu
    device: str | None = None
    dtype: str | None = None
    compile: str = "auto"
    speedups: str = "auto"
    video_format: str = "mp4"
    overwrite: bool = False
    #: the most frames a story may have (storygen.plan.frame_limit)
    max_frames: int = MAX_FRAMES
    #: stories to render in this run (for the progress lines)
    total: int = 0

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``StoryVideoPipeline.__call__`` for the settings given; the
        pipeline resolves the rest from the model folder."""
        given = {
            "frames_per_call": self.frames_per_call,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "fps": self.fps,
        }
        return {k: v for k, v in given.items() if v is not None}


class _RenderFn(beam.DoFn):
    """One story → its video file, a results row, and (on failure) a failures row."""

    def __init__(self, settings: RenderSettings) -> None:
        self.s = settings
        self.rendered = Metrics.counter(NAMESPACE, "rendered")
        self.failed = Metrics.counter(NAMESPACE, "failed")
        self.skipped = Metrics.counter(NAMESPACE, "skipped")
        self.frames = Metrics.counter(NAMESPACE, "frames")

    def setup(self) -> None:
        from storygen.cli import torch_dtype  # torch and diffusers: on workers only
        from storygen.loading import load_pipeline

        if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":  # setup_logging, unless -v
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.disable_progress_bar()  # "Loading pipeline components..."
        self.device = render_device(self.s.device)
        self.pipe = load_pipeline(self.s.model, torch_dtype=torch_dtype(self.s.dtype))
        self.pipe.to(self.device)

    def process(self, row: Mapping[str, Any]) -> Iterator[tuple[str, dict]]:
        story_id = str(row.get("story_id"))
        videos = Path(self.s.output) / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        final = videos / video_name(story_id, self.s.video_format)
        if final.exists() and not self.s.overwrite:
            self.skipped.inc()
            yield "results", _result(story_id, status="skipped", path=str(final))
            return
        tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
        start = time.perf_counter()
        try:
            script = script_from_stories_row(row)
            with frame_limit(self.s.max_frames):
                out = self.pipe(
                    script,
                    **self.s.pipeline_kwargs(),
                    generator=self.s.seed,
                    micro_batch=self.s.micro_batch,
                    compile=self.s.compile,
                    speedups=self.s.speedups,
                    output_type=None,
                    output_path=tmp,
                    callback_on_level_end=lambda pipe, level: logger.info(
                        "story %r: level %d done (%.0f s)",
                        story_id,
                        level,
                        time.perf_counter() - start,
                    ),
                    progress=False,
                )
            os.replace(tmp, final)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            self.failed.inc()
            # the plan's limit message names storygen render's flag; this job's is another
            why = str(exc).replace("--max-frames", "--render_max_frames")
            message = f"story {story_id!r}: {type(exc).__name__}: {why}"
            logger.warning("%s", message)
            yield "results", _result(story_id, status="failed", error=message)
            video = {"video_id": story_id, "uri": row.get("uri")}
            yield (
                "failures",
                video_failure_row(
                    video,
                    stage="render",
                    error_type=type(exc).__name__,
                    message=message,
                    traceback=traceback_tail(exc),
                ),
            )
            return
        stats = out.stats
        fps = float(getattr(out.plan, "fps", None) or script.fps or row.get("fps") or 0.0)
        logger.info(
            "story %r rendered: %d frames, %d model calls, %.1f s -> %s",
            story_id,
            stats.num_frames,
            stats.model_calls,
            time.perf_counter() - start,
            final,
        )
        self.rendered.inc()
        self.frames.inc(stats.num_frames)
        yield (
            "results",
            _result(
                story_id,
                status="ok",
                path=str(final),
                frames=stats.num_frames,
                fps=fps,
                seconds=stats.num_frames / fps if fps else None,
                model_calls=stats.model_calls,
                wall_time_s=time.perf_counter() - start,
                device=self.device,
                compile_s=stats.compile_s,
            ),
        )


def render_device(name: str | None) -> str:
    """The device to render on: ``name``, checked, or cuda where there is one, else cpu."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--render_device {name!r}: expected cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--render_device {name!r}: no CUDA device here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--render_device {name!r}: there are {torch.cuda.device_count()} CUDA devices"
            )
    elif device.type != "cpu":
        raise ValueError(f"--render_device {name!r}: expected cpu or cuda[:N]")
    return str(device)


def _result(story_id: str, *, status: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {f.name: None for f in RESULTS_SCHEMA}
    row.update(fields)
    row["story_id"], row["status"] = story_id, status
    return row


class _WriteTablesFn(beam.DoFn):
    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, tagged: list[tuple[str, dict]]) -> Iterator[str]:
        yield str(write_tables(self.output, tagged))


def write_tables(output: str | os.PathLike[str], tagged: Sequence[tuple[str, dict]]) -> Path:
    """The results and failures tables of ``tagged`` rows (either may be empty); returns the
    results table's path."""
    out = Path(output)
    results = sorted((r for t, r in tagged if t == "results"), key=lambda r: r["story_id"])
    failures = sorted((r for t, r in tagged if t == "failures"), key=lambda r: r["input_id"])
    target = results_path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(results, schema=RESULTS_SCHEMA), tmp)
    os.replace(tmp, target)
    write_parquet(
        rows_to_table(failures, "failures"),
        out / "failures" / "part-00000-of-00001.parquet",
        "failures",
    )
    return target


def results_path(output: str | os.PathLike[str]) -> Path:
    return Path(output) / "results" / "part-00000-of-00001.parquet"


def _stories_table(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p / "stories" if p.is_dir() and (p / "stories").is_dir() else p


def read_stories(path: str | os.PathLike[str], *, limit: int = 0) -> list[dict[str, Any]]:
    """Stories rows from a stories Parquet file, a folder of them, or a curate run folder."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0: all stories), got {limit}")
    rows = read_parquet(_stories_table(path), "stories").to_pylist()
    rows.sort(key=lambda r: r["story_id"])
    return rows[:limit] if limit else rows


def duplicate_stories(
    path: str | os.PathLike[str], stories: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[str, dict]]]:
    """``stories`` whose story_id no other row of the table at ``path`` holds, and the
    results and failures rows of the others: every row of an id on several rows fails, as
    ``storygen render --story-id`` refuses it (which row to render is not clear, and two
    workers would write one video file)."""
    from storygen.script.parquet import duplicate_rows

    table = _stories_table(path)
    columns = read_parquet(table, "stories", columns=["story_id", "uri"]).to_pydict()
    rows_of: dict[Any, list[int]] = {}
    for i, sid in enumerate(columns["story_id"]):
        rows_of.setdefault(sid, []).append(i)
    unique: list[dict[str, Any]] = []
    refused: list[tuple[str, dict]] = []
    for row in stories:
        sid = row["story_id"]
        rows = rows_of.get(sid, [])
        if len(rows) <= 1:
            unique.append(dict(row))
            continue
        uris = [columns["uri"][i] for i in rows]
        message = duplicate_rows(table, str(sid), rows, uris)
        refused.append(("results", _result(str(sid), status="failed", error=message)))
        refused.append(
            (
                "failures",
                video_failure_row(
                    {"video_id": str(sid), "uri": row.get("uri")},
                    stage="render",
                    error_type="DuplicateStory",
                    message=message,
                ),
            )
        )
    return unique, refused


def build_storygen_pipeline(
    p: beam.Pipeline,
    stories: Sequence[Mapping[str, Any]],
    settings: RenderSettings,
    refused: Sequence[tuple[str, dict]] = (),
) -> beam.PCollection:
    """One element per story → videos, then the results and failures tables (with the rows of
    stories ``refused`` before rendering). ``stories`` must not be empty: Gather emits nothing
    for no elements, and no table would be written."""
    rendered = (
        p | "Stories" >> beam.Create(list(stories)) | "Render" >> beam.ParDo(_RenderFn(settings))
    )
    if refused:
        refused_rows = p | "Refused" >> beam.Create(list(refused))
        rendered = (rendered, refused_rows) | "WithRefused" >> beam.Flatten()
    return (
        rendered
        | "Gather" >> Gather()
        | "WriteTables" >> beam.ParDo(_WriteTablesFn(settings.output))
    )


@dataclass
class RenderSummary:
    output: Path
    results: list[dict[str, Any]]
    wall_s: float

    def lines(self) -> list[str]:
        ok = [r for r in self.results if r["status"] == "ok"]
        failed = [r for r in self.results if r["status"] == "failed"]
        skipped = [r for r in self.results if r["status"] == "skipped"]
        frames = sum(r["frames"] or 0 for r in ok)
        if not self.results:
            return [
                "stories 0: nothing to render",
                f"results {self.output / 'results'}; failures {self.output / 'failures'} (empty)",
            ]
        lines = [
            f"stories {len(self.results)}: rendered {len(ok)}, skipped {len(skipped)} (already "
            f"rendered), failed {len(failed)}",
            f"frames {frames} in {self.wall_s:.1f} s"
            + (f" ({frames / self.wall_s:.1f} frames/s)" if self.wall_s > 0 else ""),
            f"videos under {self.output / 'videos'}; results {self.output / 'results'}; "
            f"failures {self.output / 'failures'}",
        ]
        lines += [f"  failed: {r['error']}" for r in failed[:5]]
        return lines


def unknown_render_flags(argv: Sequence[str]) -> None:
    """Refuse a flag that looks like the renderer's (``--render_*``, ``--stories*``) but is
    none of them: Beam would take it as one of its own and ignore it, and the batch would run
    with the defaults. Other flags are Beam's and go through."""
    _, leftover = build_parser().parse_known_args(argv)
    known = [flag for flag, _ in RENDER_FLAGS]
    for arg in leftover:
        flag = arg.split("=", 1)[0]
        if flag.startswith(("--render_", "--stories")):
            close = difflib.get_close_matches(flag, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown flag {flag}{hint}")


def check_render_values(opts: Any) -> None:
    """The values a render takes, as the storygen pipeline bounds them: refused once, before
    any model loads, rather than per story on every worker."""
    steps, fpc, fps, guidance = (
        opts.render_steps,
        opts.render_frames_per_call,
        opts.render_fps,
        opts.render_guidance,
    )
    if opts.render_max_stories < 0:
        raise ValueError(
            f"--render_max_stories must be >= 0 (0: all stories), got {opts.render_max_stories}"
        )
    if opts.render_max_frames < 1:
        raise ValueError(f"--render_max_frames must be >= 1, got {opts.render_max_frames}")
    if steps is not None and steps < 1:
        raise ValueError(f"--render_steps must be >= 1, got {steps}")
    lo, hi = FRAMES_PER_CALL_RANGE
    if fpc is not None and not lo <= fpc <= hi:
        raise ValueError(f"--render_frames_per_call must be from {lo} to {hi}, got {fpc}")
    fps_lo, fps_hi = FPS_RANGE
    if fps is not None and not (math.isfinite(fps) and fps_lo <= fps <= fps_hi):
        raise ValueError(f"--render_fps must be from {fps_lo:g} to {fps_hi:g}, got {fps:g}")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"--render_guidance must be a finite number >= 0, got {guidance:g}")


def check_model_folder(model: str) -> None:
    """A storygen model folder with every file it names, and readable sampling settings."""
    from storygen.settings import read_sampling_json
    from storygen.training_free import check_model_files

    try:
        check_model_files(model)
        read_sampling_json(model)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--render_model {model}: {exc}") from None


def run(argv: Sequence[str] | None = None, *, progress: bool = True) -> RenderSummary:
    argv = list(sys.argv[1:] if argv is None else argv)
    unknown_render_flags(argv)
    options = PipelineOptions(argv)
    opts = options.view_as(StorygenOptions)
    if not opts.stories or not opts.render_output or not opts.render_model:
        raise ValueError("--stories, --render_output and --render_model are required")
    if options.view_as(StandardOptions).runner is None:
        options = PipelineOptions([*runner_flags("local"), *argv])
    # everything that can be refused is, before a folder is made or a model loads
    check_render_values(opts)
    check_model_folder(str(opts.render_model))
    device = render_device(opts.render_device)
    from storygen.accel import check_render_speed

    # a bad name, or choices that do not go together: refused now
    check_render_speed(opts.render_compile, opts.render_speedups, device.split(":")[0])
    out = check_output_dir(opts.render_output)
    selected = read_stories(opts.stories, limit=opts.render_max_stories)
    stories, refused = duplicate_stories(opts.stories, selected)
    settings = RenderSettings(
        model=str(opts.render_model),
        output=str(out),
        frames_per_call=opts.render_frames_per_call,
        steps=opts.render_steps,
        guidance=opts.render_guidance,
        fps=opts.render_fps,
        seed=opts.render_seed,
        micro_batch=opts.render_micro_batch,
        device=device,
        dtype=opts.render_dtype,
        compile=opts.render_compile,
        speedups=opts.render_speedups,
        video_format=opts.render_format,
        overwrite=opts.render_overwrite,
        max_frames=opts.render_max_frames,
        total=len(stories),
    )
    for _, row in refused[::2]:
        logger.warning("%s", row["error"])
    start = time.perf_counter()
    if not stories:  # no Beam job: it would write no tables (Gather emits nothing)
        write_tables(out, refused)
        return RenderSummary(out, _read_results(out), time.perf_counter() - start)
    names = [video_name(str(s["story_id"]), settings.video_format) for s in stories]
    done = 0 if settings.overwrite else _already_rendered(out, stories, settings.video_format)
    logger.info(
        "%d stories from %s, %d rendered already; model %s",
        len(stories),
        opts.stories,
        done,
        settings.model,
    )
    watcher = RenderProgress(
        out / "videos",
        total=len(stories),
        already=done,
        enabled=progress,
        suffix=f".{settings.video_format}",
        names=names,
        since=time.time() if settings.overwrite else None,
    )
    with watcher, beam.Pipeline(options=options) as p:
        build_storygen_pipeline(p, stories, settings, refused)
    results = _read_results(out)
    expected = sorted(
        [str(s["story_id"]) for s in stories] + [r["story_id"] for _, r in refused[::2]]
    )
    if sorted(r["story_id"] for r in results) != expected:  # never another run's table
        raise RuntimeError(f"{results_path(out)} is not this run's: its stories differ")
    return RenderSummary(out, results, time.perf_counter() - start)


def _read_results(out: Path) -> list[dict[str, Any]]:
    return pq.read_table(results_path(out)).to_pylist()


def _already_rendered(out: Path, stories: Sequence[Mapping[str, Any]], fmt: str) -> int:
    videos = out / "videos"
    return sum(1 for s in stories if (videos / video_name(str(s["story_id"]), fmt)).exists())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _beam = build_parser().parse_known_args(argv)  # --help; unknown render flags: run
    setup_logging(args.verbose)
    try:
        summary = run([a for a in argv if a not in ("-v", "--verbose")])
    except (ValueError, CurateError) as exc:  # CurateError: an unwritable --render_output
        print(f"python -m pipelines.storygen: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 1 if any(r["status"] == "failed" for r in summary.results) else 0


if __name__ == "__main__":
    sys.exit(main())
