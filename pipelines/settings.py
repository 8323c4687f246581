"""The settings of one ``curate run``, declared once.

:class:`RunSettings` is the single declaration of every run option: its fields carry their
default, help, type and where they are offered. ``curate run``'s argparse flags
(``--samples-per-scene``) and the Beam pipeline options (``--samples_per_scene``, see
:class:`pipelines.options.CurateOptions`) are both built from it, and the pipeline reads a
:class:`RunSettings` whichever way it was started. Launcher options (runner, workers, Dask
address, progress bar) are only command-line flags; tuning options (commit batching, shard
size, inference batch sizes) are only Beam flags (``curate run`` takes them after ``--``).

Beam-free and light on purpose: ``curate --help`` builds its parser from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from curate.choices import DETECTORS, FP8_SCOPES, KEYFRAME_FORMATS
from schemas.inputs import ManifestLimits


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def boolean(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def option(
    default: Any,
    help: str = "",
    *,
    type: Callable[[str], Any] | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    required: bool = False,
    cli: bool = True,
    beam: bool = True,
) -> Any:
    """A :class:`RunSettings` field: ``cli`` offers it on ``curate run``, ``beam`` as a Beam
    pipeline option. A ``bool`` default makes a ``--flag`` on the command line and a
    ``--flag[=true|false]`` Beam option."""
    meta = {
        "help": help,
        "type": type,
        "choices": tuple(choices) if choices else None,
        "metavar": metavar,
        "required": required,
        "cli": cli,
        "beam": beam,
    }
    return field(default=default, metadata=meta)


#: runner names (lower case, without a module path) whose workers are processes of this machine
LOCAL_RUNNERS = ("local", "fnapi", "fnapirunner", "direct", "directrunner")
#: runner names (lower case, without a module path) of Beam's Dask runner
DASK_RUNNERS = ("dask", "daskrunner")

_DEVICE = re.compile(r"cpu|cuda(?::(\d+))?")


def runner_name(runner: str) -> str:
    """``runner`` in lower case without its module path: ``apache_beam...DaskRunner`` ->
    ``daskrunner``."""
    return runner.rsplit(".", 1)[-1].lower()


def check_device(device: str, *, here: bool = True) -> None:
    """Refuse a ``--device`` that is not ``cpu``, ``cuda`` or ``cuda:N``; with ``here`` (the
    models run on this machine), also a CUDA device this machine does not have."""
    m = _DEVICE.fullmatch(device)
    if m is None:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu" or not here:
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu")
    count = torch.cuda.device_count()
    if int(m[1] or 0) >= count:
        raise ValueError(
            f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
            f"cuda:{count - 1}"
        )


def _metavar(name: str, type: Any, choices: Any) -> str | None:
    """A short placeholder for ``--help`` (``N``, ``X``, ``ADDRESS``), not the field's name."""
    if choices:
        return None
    if type in (int, positive_int):
        return "N"
    if type in (float, rate):
        return "X"
    return name.split("_")[-1].upper()


def _with_default(help: str, default: Any) -> str:
    """``help`` ending with its default where it does not say it already."""
    if default is None or isinstance(default, bool) or "default" in help:
        return help
    return f"{help} (default {default})"


@dataclass(frozen=True)
class RunSettings:
    """Every option of one curation run (see the module docstring)."""

    input: str | None = option(
        None,
        "manifest: a WebVid CSV, a JSONL file, or a folder of videos with sidecar captions "
        "(recognised from the content)",
        required=True,
    )
    output: str | None = option(None, "run folder (created if needed)", required=True)
    model: str | None = option(
        None, "CLIP model folder (default: the shipped shapes-world CLIP, models/)"
    )
    prompt_bank: str | None = option(
        None,
        "prompts, one per line, added to the corpus' own kept captions as the bank that "
        "scenes without a usable caption are re-captioned from",
        metavar="FILE",
    )
    captioner: str = option(
        "auto",
        "image-to-text (BLIP-class) model folder that captions every scene; a scene "
        "without a usable caption takes its caption or the bank's prompt, whichever CLIP "
        "prefers. auto (default): the shipped shapes-world captioner when the CLIP is the "
        "shipped one, else none",
        metavar="FOLDER|auto|none",
    )
    runner: str = option(
        "local",
        "local (Beam's FnApiRunner, the default), dask, or any Beam runner name",
        beam=False,
    )
    workers: int = option(
        1,
        "worker processes (local, direct: FnApiRunner multi-processing; dask: LocalCluster "
        "workers)",
        type=int,
        beam=False,
    )
    dask_address: str | None = option(
        None,
        "scheduler address of a running Dask cluster, with --runner dask (default: start a "
        "local one)",
        beam=False,
    )
    threshold: str = option(
        "auto",
        "caption-score cut-off: an absolute cosine (0.22), a corpus percentile (p20 drops "
        "the lowest 20%%), or auto: the cut-off the model folder recommends in its "
        "scoring.json (the shipped CLIP's does), else p20; default %(default)s",
    )
    detector: str = option(
        "fast",
        "scene detector: the numba fast path or a PySceneDetect detector (default fast)",
        choices=DETECTORS,
    )
    samples_per_scene: int = option(4, "frames CLIP sees per scene", type=positive_int)
    sample_size: int = option(224, "short side of sampled frames", type=positive_int)
    min_scene_frames: int = option(15, "shortest scene the splitter keeps", type=positive_int)
    dedup_threshold: float = option(
        0.95,
        "signature cosine (CLIP embedding + pixel thumbnails) at or above which two kept "
        "clips are duplicates (default 0.95)",
        type=float,
    )
    keyframes: str = option(
        "none",
        "store the sampled frames, encoded, in the clips shard (so it can train alone)",
        choices=KEYFRAME_FORMATS,
    )
    keyframe_size: int = option(256, "longest side of keyframes", type=positive_int)
    max_failure_rate: float = option(
        1.0,
        "stop when more than this fraction of the run's videos fail, once at least 20 were "
        "seen; the rate is the whole run's (with --workers N or a cluster, every worker "
        "process's videos together). What is done is published and the run exits with "
        "status 3 (default 1.0: never stop)",
        type=rate,
    )
    decode_timeout: float = option(300.0, "seconds one video may take to decode", type=float)
    device: str = option(
        "cpu",
        "CLIP and captioner device: cpu, cuda, cuda:1 (on CUDA: bfloat16, batches sized from "
        "free memory, CLIP's image tower compiled once a run has embedded 50,000 frames)",
    )
    clip_fp8: str = option(
        "auto",
        "float8 in CLIP's image tower on CUDA (compute capability 8.9+, needs torchao: pip "
        "install 'storyloom[gpu]'): auto = the encoder layers' MLPs once the tower is "
        "compiled, where the GPU allows (ViT-L/14 on an H200: 1.42x eager bf16, embeddings at "
        "cosine >= 0.9993 of bf16); mlp = from the first batch; all = every linear layer "
        "(1.54x, cosine 0.998); off",
        choices=FP8_SCOPES,
    )
    share_model: bool = option(
        False, "one CLIP per machine shared by all worker processes (large models on a GPU)"
    )
    overwrite: bool = option(
        False,
        "discard the output folder's previous run, and write into a folder that holds files "
        "storyloom did not write (they are kept: only storyloom's own files are ever deleted)",
    )
    no_retry_failed: bool = option(
        False,
        "keep the failures of earlier runs into the output folder instead of trying those "
        "inputs again (by default a rerun retries every failed input; a changed manifest row "
        "or file is redone either way)",
    )
    max_caption_bytes: int = option(
        65_536,
        "longest caption (UTF-8 bytes) a manifest row may hold; a longer one makes the row a "
        "failures row (default 65536). Models read only the first tokens of a caption "
        "(CLIP: 77), so this bounds cost, not quality",
        type=positive_int,
    )
    max_manifest_line_bytes: int = option(
        4 << 20,
        "longest manifest line (a CSV record, a JSONL row) or sidecar file, in bytes; a "
        "longer one is a failures row, skipped unread (default 4194304)",
        type=positive_int,
    )
    max_json_depth: int = option(
        32,
        "deepest nesting of a JSONL row or .json sidecar; a deeper one is a failures row "
        "(default 32; a manifest row is 3 deep)",
        type=positive_int,
    )
    corpus_memory_mb: int = option(
        1024,
        "memory the corpus phase (cut-off, prompt bank, re-captioning, dedup, shard writing) "
        "may hold for corpus data, in MiB, whatever the corpus' size; its models come on top "
        "(default 1024)",
        type=positive_int,
    )
    no_progress: bool = option(False, "no progress bar", beam=False)
    # tuning: Beam options only
    dedup_exact_limit: int = option(
        50_000,
        "up to this many kept clips dedup is exact; above, clips are grouped by centroid",
        type=positive_int,
        cli=False,
    )
    failure_rate_min_inputs: int = option(
        20,
        "videos the whole run (every worker process together) has seen before "
        "--max_failure_rate applies",
        type=positive_int,
        cli=False,
    )
    isolate_decode: bool = option(True, "decode in an isolated child process", cli=False)
    commit_every: int = option(8, "videos per committed work file", type=positive_int, cli=False)
    commit_interval_s: float = option(
        30.0, "seconds between commits of finished videos", type=float, cli=False
    )
    videos_per_shard: int = option(1000, "videos per output shard", type=positive_int, cli=False)
    inference_batch_videos: int = option(
        8, "videos per RunInference batch", type=positive_int, cli=False
    )
    clip_batch_size: int | None = option(
        None,
        "frames per CLIP forward pass (default: 64 on the CPU, sized from free memory on CUDA)",
        type=positive_int,
        cli=False,
    )
    #: the parsed :class:`curate.threshold.Threshold`, set by :meth:`resolved` (not an option)
    resolved_threshold: Any = option(None, cli=False, beam=False)

    # --- building parsers from the declaration ------------------------------------------------

    @classmethod
    def options(cls, *, cli: bool = False, beam: bool = False) -> list[dataclasses.Field]:
        return [
            f
            for f in dataclasses.fields(cls)
            if (cli and f.metadata["cli"]) or (beam and f.metadata["beam"])
        ]

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``curate run``'s flags: ``--samples-per-scene 4``, ``--overwrite``."""
        for f in cls.options(cli=True):
            m = f.metadata
            kwargs: dict[str, Any] = {"help": _with_default(m["help"], f.default)}
            kwargs["default"] = f.default
            if isinstance(f.default, bool):
                kwargs["action"] = "store_true"
            else:
                metavar = m["metavar"] or _metavar(f.name, m["type"], m["choices"])
                kwargs.update(type=m["type"], choices=m["choices"], metavar=metavar)
                kwargs["required"] = m["required"]
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)

    @classmethod
    def add_beam_arguments(
        cls, parser: argparse.ArgumentParser, fields: Iterable[dataclasses.Field] | None = None
    ) -> None:
        """The Beam pipeline options: ``--samples_per_scene 4``, ``--overwrite[=true]`` (those
        of ``fields``, default all)."""
        for f in cls.options(beam=True) if fields is None else fields:
            m = f.metadata
            if isinstance(f.default, bool):
                parser.add_argument(
                    f"--{f.name}", default=f.default, type=boolean, nargs="?", const=True
                )
            else:
                parser.add_argument(
                    f"--{f.name}",
                    default=f.default,
                    type=m["type"],
                    choices=m["choices"],
                    help=m["help"],
                )

    @classmethod
    def from_namespace(cls, values: Any) -> RunSettings:
        """Settings from parsed flags (an ``argparse.Namespace`` or a Beam options view);
        options a parser does not offer keep their defaults."""
        return cls(
            **{
                f.name: getattr(values, f.name)
                for f in dataclasses.fields(cls)
                if hasattr(values, f.name)
            }
        )

    def beam_flags(self) -> list[str]:
        """These settings as Beam pipeline flags (unset ones left out)."""
        return [
            f"--{f.name}={getattr(self, f.name)}"
            for f in self.options(beam=True)
            if getattr(self, f.name) is not None
        ]

    def with_beam_args(self, argv: Sequence[str]) -> RunSettings:
        """These settings with the tuning options (the Beam-only ones) that ``argv``, the Beam
        flags given after ``--`` to ``curate run``, sets. A run option that has its own
        command-line flag is refused there, naming the flag; other flags are left to Beam."""
        flags = {f.name: "--" + f.name.replace("_", "-") for f in self.options(cli=True)}
        tuning = [f for f in self.options(beam=True) if not f.metadata["cli"]]
        for arg in argv:
            if not arg.startswith("--"):
                continue
            given = arg.split("=", 1)[0]
            name = given[2:].replace("-", "_")
            if name in flags:
                raise ValueError(f"{given} after '--': give it as {flags[name]}, before the '--'")
            if name != given[2:] and name in {f.name for f in tuning}:
                raise ValueError(f"{given} after '--': Beam flags use underscores: --{name}")
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
        self.add_beam_arguments(parser, tuning)
        try:
            values, _ = parser.parse_known_args(list(argv))
        except argparse.ArgumentError as exc:
            raise ValueError(f"after '--': {exc}") from None
        return dataclasses.replace(self, **{f.name: getattr(values, f.name) for f in tuning})

    @property
    def on_dask(self) -> bool:
        """Whether the run uses Beam's Dask runner."""
        return runner_name(self.runner) in DASK_RUNNERS

    @property
    def runs_here(self) -> bool:
        """Whether the per-video work runs on this machine (the local runners, or Dask on a
        cluster started here), so that its device can be checked here."""
        if self.on_dask:
            return self.dask_address is None
        return runner_name(self.runner) in LOCAL_RUNNERS

    # --- what the values mean ----------------------------------------------------------------

    def resolved(self) -> RunSettings:
        """The settings with ``--threshold auto`` and ``--captioner auto`` resolved against the
        model folder, checked before any work starts: a bad value, an option the runner would
        ignore, a device this machine lacks (where the work runs here), an unusable CLIP or
        captioner folder, an unreadable prompt bank fails here, naming the value."""
        # curate's model, prompt-bank and threshold modules: only when a run starts, so that
        # --help stays fast
        from curate.models import (
            check_captioner_folder,
            check_clip_model,
            resolve_captioner,
            resolve_model_path,
        )
        from curate.prompt_bank import load_prompt_bank
        from curate.threshold import resolve_threshold

        if self.input is None:
            raise ValueError("--input is required")
        if self.output is None:
            raise ValueError("--output is required")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.dask_address is not None and not self.on_dask:
            raise ValueError(f"--dask-address needs --runner dask (the runner is {self.runner})")
        if self.workers > 1 and not (self.on_dask or self.runs_here):
            raise ValueError(
                f"--workers applies to the local, direct and dask runners; give {self.runner} "
                "its own worker flags after '--'"
            )
        check_device(self.device, here=self.runs_here)
        if self.device == "cpu" and self.clip_fp8 in ("mlp", "all"):
            raise ValueError(f"--clip-fp8 {self.clip_fp8} needs a CUDA --device")
        if not self.decode_timeout > 0:
            raise ValueError(f"--decode-timeout must be > 0 seconds, got {self.decode_timeout}")
        if not 0 < self.dedup_threshold <= 1:
            raise ValueError(f"--dedup-threshold must be in (0, 1], got {self.dedup_threshold}")
        if self.corpus_memory_mb < 16:
            raise ValueError(f"--corpus-memory-mb must be >= 16, got {self.corpus_memory_mb}")
        # a missing, incomplete or wrong-class model, or weights that cannot be loaded
        # safely, fail now: not inside a worker after the pipeline has started
        check_clip_model(resolve_model_path(self.model))
        threshold = resolve_threshold(self.threshold, model=self.model)
        if self.prompt_bank:
            load_prompt_bank(self.prompt_bank)  # an unreadable or empty file fails now
        captioner = resolve_captioner(self.model, self.captioner)
        if captioner:
            check_captioner_folder(captioner)  # a missing or incomplete folder fails now
        return dataclasses.replace(
            self,
            threshold=str(threshold),
            resolved_threshold=threshold,
            captioner=captioner or "none",
        )

    @property
    def manifest_limits(self) -> ManifestLimits:
        """The :class:`schemas.inputs.ManifestLimits` of these settings."""
        return ManifestLimits(
            max_caption_bytes=self.max_caption_bytes,
            max_line_bytes=max(self.max_manifest_line_bytes, self.max_caption_bytes),
            max_json_depth=self.max_json_depth,
        )

    @property
    def captioner_folder(self) -> str | None:
        """The resolved captioner folder (``None``: no captioner)."""
        return None if self.captioner.strip().lower() in ("none", "auto") else self.captioner
