"""Pipeline options of the curate pipeline, and how runner names map to Beam runners."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from curate.choices import DETECTORS, KEYFRAME_FORMATS

#: runner names accepted by ``curate run --runner`` (anything else is passed to Beam as is)
RUNNER_ALIASES = {
    "local": "apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "fnapi": "apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "FnApiRunner": "apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "dask": "apache_beam.runners.dask.dask_runner.DaskRunner",
    "DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner",
}


@dataclass(frozen=True)
class Threshold:
    """A caption-score cut-off: an absolute cosine, or a percentile of the corpus's scores."""

    value: float
    percentile: bool

    def __str__(self) -> str:
        return f"p{self.value:g}" if self.percentile else f"{self.value:g}"


_PERCENTILE = re.compile(r"^\s*(?:p|pct|percentile:?)\s*([0-9.]+)\s*%?\s*$", re.IGNORECASE)


def parse_threshold(text: str | float | Threshold) -> Threshold:
    """``"0.22"`` (absolute cosine) or ``"p20"`` / ``"20%"`` (drop the lowest 20 %)."""
    if isinstance(text, Threshold):
        return text
    if isinstance(text, (int, float)):
        return Threshold(float(text), False)
    raw = str(text).strip()
    m = _PERCENTILE.match(raw)
    if m is None and raw.endswith("%"):
        m = re.match(r"^([0-9.]+)%$", raw)
    if m is not None:
        value = float(m.group(1))
        if not 0.0 <= value < 100.0:
            raise ValueError(f"a percentile threshold must be in [0, 100), got {text!r}")
        return Threshold(value, True)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"threshold must be a cosine such as 0.22 or a percentile such as p20, got {text!r}"
        ) from None
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"an absolute threshold is a cosine in [-1, 1], got {text!r}")
    return Threshold(value, False)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


class CurateOptions(PipelineOptions):
    """Settings of one curation run (Beam flags use underscores: ``--samples_per_scene 4``)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", help="manifest: WebVid CSV, JSONL, or a folder of videos")
        parser.add_argument("--output", help="run folder for the shards and _manifest.json")
        parser.add_argument(
            "--model", default=None, help="CLIP folder (default: the shipped shapes-world CLIP)"
        )
        parser.add_argument(
            "--threshold",
            default="auto",
            help="caption-score cut-off: a cosine (0.22), a corpus percentile (p20), or auto "
            "(the model folder's recommended cut-off from its scoring.json, else p20)",
        )
        parser.add_argument(
            "--prompt_bank",
            default=None,
            help="text file of prompts, one per line, added to the corpus' own kept captions "
            "as the bank that scenes without a usable caption are re-captioned from",
        )
        parser.add_argument(
            "--captioner",
            default="auto",
            help="BLIP-class captioner folder whose caption of each scene competes with the "
            "bank's prompt for scenes without a usable caption; auto: the shipped shapes-world "
            "captioner when --model is the shipped CLIP; none: no captioner",
        )
        parser.add_argument("--detector", default="fast", choices=DETECTORS)
        parser.add_argument("--samples_per_scene", type=_positive_int, default=4)
        parser.add_argument("--sample_size", type=_positive_int, default=224)
        parser.add_argument("--min_scene_frames", type=_positive_int, default=15)
        parser.add_argument("--dedup_threshold", type=float, default=0.95)
        parser.add_argument(
            "--dedup_exact_limit",
            type=_positive_int,
            default=50_000,
            help="up to this many kept clips dedup is exact; above, clips are grouped by centroid",
        )
        parser.add_argument("--keyframes", default="none", choices=KEYFRAME_FORMATS)
        parser.add_argument("--keyframe_size", type=_positive_int, default=256)
        parser.add_argument("--max_failure_rate", type=_rate, default=1.0)
        parser.add_argument("--failure_rate_min_inputs", type=_positive_int, default=20)
        parser.add_argument("--decode_timeout", type=float, default=300.0)
        parser.add_argument("--isolate_decode", default=True, type=_bool, nargs="?", const=True)
        parser.add_argument("--commit_every", type=_positive_int, default=8)
        parser.add_argument("--commit_interval_s", type=float, default=30.0)
        parser.add_argument("--videos_per_shard", type=_positive_int, default=1000)
        parser.add_argument("--inference_batch_videos", type=_positive_int, default=8)
        parser.add_argument("--clip_batch_size", type=_positive_int, default=64)
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--share_model", default=False, type=_bool, nargs="?", const=True)
        parser.add_argument("--overwrite", default=False, type=_bool, nargs="?", const=True)


def _bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def runner_flags(runner: str, *, workers: int = 1) -> list[str]:
    """Beam flags for ``runner`` (an alias or a Beam runner name) and a worker count."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    name = RUNNER_ALIASES.get(runner, runner)
    flags = [f"--runner={name}"]
    if name.endswith("FnApiRunner") and workers > 1:
        flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    return flags


def curate_view(options: PipelineOptions) -> Any:
    return options.view_as(CurateOptions)
