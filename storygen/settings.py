"""The settings of one render: where each comes from, and the object the pipeline reads.

Before a render, :func:`resolve_sampling` picks each sampling setting from the first place that
gives it: the command-line flag, the model folder's ``sampling.json`` (the settings its trainer
recommends, see :func:`read_sampling_json`), the built-in default
(:data:`BUILTIN_DEFAULTS`), and says which place that was. The pipeline then resolves what is
left (the model's own size, its saved scheduler) into one frozen :class:`RenderSettings`.

Nothing here imports torch, so the command line can describe its defaults cheaply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from storygen.plan import FPS_RANGE, FRAMES_PER_CALL_RANGE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: the settings that determine the frames (a run's cache key hashes exactly these)
OUTPUT_FIELDS = (
    "seed",
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "resample_steps",
    "jump_length",
    "reconstruction_guidance",
)

#: schedulers by the short names the command line and ``sampling.json`` take
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}

#: the largest frame side, in pixels, a render accepts unless told otherwise
#: (``--max-frame-size``): 100,000 × 100,000 would ask for terabytes
MAX_FRAME_SIZE = 4096

#: the keys of ``sampling.json``, each with the ``storygen render`` flag it gives a default for
SAMPLING_FLAGS = {
    "scheduler": "--scheduler",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "fps": "--fps",
    "height": "--height",
    "width": "--width",
    "frames_per_call": "--frames-per-call",
}

#: what a render uses where neither a flag nor ``sampling.json`` sets a value; None means
#: the script's fps, the model's size, the scheduler saved in the model folder. Guidance 3:
#: 7.5, the Stable Diffusion habit, renders small models' frames as saturated noise
BUILTIN_DEFAULTS: dict[str, Any] = {
    "scheduler": None,
    "num_inference_steps": 25,
    "guidance_scale": 3.0,
    "fps": None,
    "height": None,
    "width": None,
    "frames_per_call": 16,
}

#: the name of a model folder's file of recommended sampling settings
SAMPLING_FILE = "sampling.json"


@dataclass(frozen=True)
class RenderSettings:
    """What :meth:`StoryVideoPipeline.__call__ <storygen.pipeline.StoryVideoPipeline.__call__>`
    was asked for, with the model's defaults filled in and the seed drawn.

    The first group determines the frames; the second only how the work runs (the same seed
    gives the same frames whatever the micro-batch or the devices).
    """

    seed: int
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    resample_steps: int
    jump_length: int
    reconstruction_guidance: float

    #: model calls per forward pass, or "auto" (16 on the CPU; on CUDA sized from free memory
    #: and the memory a call was measured to take, see storygen.runner)
    micro_batch: int | str = "auto"
    devices: tuple[str | torch.device, ...] | None = None
    progress: bool = True
    #: compile the UNet ("on": the row buckets that carry the work, "all", "regional": all,
    #: block by block, "aot": all, ahead of time into packages on disk, "pre": all, traced
    #: ahead of time into files on disk, "off", "auto": on CUDA
    #: devices the buckets "on" compiles, block by block; see storygen.accel)
    compile: str = "auto"
    #: the UNet speed-ups (storygen.accel.SPEEDUPS: "auto" = the device's defaults, "none",
    #: or names, comma separated)
    speedups: str | tuple[str, ...] = "auto"
    #: cuDNN's autotuner on CUDA devices (``torch.backends.cudnn.benchmark`` for the render):
    #: each convolution shape times cuDNN's algorithms once and keeps the fastest (repeats then
    #: agree to rounding, not bit for bit); off leaves the process's setting as it is
    cudnn_autotune: bool = True

    def output_fields(self) -> dict[str, Any]:
        """The settings the frames depend on, by name (as given: the cache key hashes them)."""
        return {name: getattr(self, name) for name in OUTPUT_FIELDS}


# --------------------------------------------------------------------- frame size
_SIZE_LIMIT: ContextVar[int] = ContextVar("storygen_frame_size_limit", default=MAX_FRAME_SIZE)


@contextlib.contextmanager
def frame_size_limit(limit: int) -> Iterator[int]:
    """Renders inside the block may have sides of up to ``limit`` pixels (``--max-frame-size``;
    :data:`MAX_FRAME_SIZE` otherwise), as :func:`storygen.plan.frame_limit` does for frames::

        with frame_size_limit(8192):
            pipe(script, height=4608, width=4608)
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"frame size limit must be a positive number of pixels, got {limit!r}")
    token = _SIZE_LIMIT.set(limit)
    try:
        yield limit
    finally:
        _SIZE_LIMIT.reset(token)


def check_frame_size(height: int, width: int, limit: int | None = None) -> None:
    """``ValueError`` when a side is not a positive integer or larger than ``limit`` pixels
    (by default the cap in force: :func:`frame_size_limit`)."""
    if limit is None:
        limit = _SIZE_LIMIT.get()
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")
        if value > limit:
            raise ValueError(
                f"{name} {value} is larger than the limit of {limit} pixels "
                f"(frames of {height}×{width}; raise the limit with --max-frame-size, or "
                "storygen.settings.frame_size_limit)"
            )


# --------------------------------------------------------------------- sampling.json
def _positive_int(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 1 else None


def _check_sampling_value(key: str, value: Any) -> Any:
    """The value of ``key`` as a render takes it, or ``ValueError`` saying what is expected."""
    if key == "scheduler":
        if value not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {value!r}")
        return value
    if key in ("num_inference_steps", "height", "width"):
        number = _positive_int(value)
        if number is None:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        return number
    if key == "frames_per_call":
        number = _positive_int(value)
        lo, hi = FRAMES_PER_CALL_RANGE
        if number is None or not lo <= number <= hi:
            raise ValueError(f"frames_per_call must be an integer from {lo} to {hi}, got {value!r}")
        return number
    # any real number (numpy's too), not a bool
    finite = not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
    finite = finite and math.isfinite(value)
    if key == "guidance_scale":
        if not finite or value < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {value!r}")
        return float(value)
    if key == "fps":
        fps_lo, fps_hi = FPS_RANGE
        if not finite or not fps_lo <= value <= fps_hi:
            raise ValueError(f"fps must be a number from {fps_lo:g} to {fps_hi:g}, got {value!r}")
        return float(value)
    raise KeyError(key)


def read_sampling_json(folder: str | Path) -> dict[str, Any]:
    """A model folder's recommended sampling settings (its ``sampling.json``), checked.

    Keys (all optional): ``scheduler`` ("ddim", "dpm", "euler"), ``num_inference_steps``,
    ``guidance_scale``, ``fps``, ``height``, ``width``, ``frames_per_call``. Returns an empty
    dict where the folder has no such file; unknown keys are logged and left out; a value of
    the wrong kind is a ``ValueError`` naming the file and the key.
    """
    path = Path(folder) / SAMPLING_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SAMPLING_FLAGS))
    if unknown:
        logger.warning("%s: ignoring unknown key(s) %s", path, unknown)
    out = {}
    for key in SAMPLING_FLAGS:
        if data.get(key) is None:
            continue
        try:
            out[key] = _check_sampling_value(key, data[key])
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return out


def write_sampling_json(folder: str | Path, settings: Mapping[str, Any]) -> Path:
    """Write a model folder's ``sampling.json`` (the keys :func:`read_sampling_json` reads,
    each checked; unknown keys are a ``ValueError``)."""
    unknown = sorted(set(settings) - set(SAMPLING_FLAGS))
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {unknown}; known: {sorted(SAMPLING_FLAGS)}")
    checked = {k: _check_sampling_value(k, v) for k, v in settings.items() if v is not None}
    path = Path(folder) / SAMPLING_FILE
    path.write_text(json.dumps(checked, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class Choice:
    """A resolved setting and where it came from (a flag, a file, "built-in default", ...)."""

    value: Any
    source: str


def resolve(
    layers: Sequence[tuple[str, Mapping[str, Any]]], keys: Sequence[str]
) -> dict[str, Choice]:
    """For every key, the first layer's value that is not None, with that layer's name.

    ``layers`` run from the strongest (the flags) to the weakest (the built-in defaults); a
    layer's name may hold ``{flag}``, replaced by the key's flag (``--steps``).
    """
    out = {}
    for key in keys:
        out[key] = Choice(None, "unset")
        for name, values in layers:
            if values.get(key) is not None:
                out[key] = Choice(values[key], name.format(flag=SAMPLING_FLAGS.get(key, key)))
                break
    return out


def resolve_sampling(
    flags: Mapping[str, Any],
    model: str | Path | None,
    *,
    script_fps: float | None = None,
    curated: bool = False,
) -> dict[str, Choice]:
    """Each sampling setting of a render, and where it came from: the flag, else the model
    folder's ``sampling.json``, else :data:`BUILTIN_DEFAULTS`.

    ``flags`` maps ``sampling.json`` keys to the flags' values (None where not given). The
    frame rate sits between the flag and the file when a hand-written script sets it (its
    author chose it); for a ``curated`` story (a stories table row) the row's fps is the
    source video's, so the model's native fps comes first and the row's after it. A ``model``
    folder that does not exist is a ``ValueError`` (a mistyped ``--model`` must not fall back
    to the built-in defaults).
    """
    if model is not None and not Path(model).is_dir():
        raise ValueError(f"{model}: no such model folder")
    sampling = read_sampling_json(model) if model is not None else {}
    # the summary names the model folder already; its file needs no path
    where = f"the model's {SAMPLING_FILE}"
    script: tuple[str, Mapping[str, Any]]
    layers: list[tuple[str, Mapping[str, Any]]] = [("{flag}", flags)]
    if curated:
        script = ("the story's source video", {"fps": script_fps})
        layers += [(where, sampling), script]
    else:
        script = ("the script", {"fps": script_fps})
        layers += [script, (where, sampling)]
    layers.append(("built-in default", BUILTIN_DEFAULTS))
    return resolve(layers, list(SAMPLING_FLAGS))


def describe(choices: Mapping[str, Choice], names: Mapping[str, str] | None = None) -> list[str]:
    """One line per source: ``"12 steps, guidance 3 (models/x/sampling.json)"``."""
    names = names or {}
    by_source: dict[str, list[str]] = {}
    for key, choice in choices.items():
        if choice.value is None:
            continue
        value = f"{choice.value:g}" if isinstance(choice.value, float) else str(choice.value)
        by_source.setdefault(choice.source, []).append(f"{names.get(key, key)} {value}")
    return [f"{', '.join(items)} ({source})" for source, items in by_source.items()]
