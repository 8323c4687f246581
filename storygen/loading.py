"""Loading a model folder: the pipeline class chosen from its layout, the scheduler by name.

(The folder's recommended sampling settings, ``sampling.json``, are read by
:func:`storygen.settings.read_sampling_json`, which needs no torch.)

A folder in the masked layout (``StoryVideoPipeline.save_pretrained``'s) loads as
:class:`~storygen.pipeline.StoryVideoPipeline`; one in the ModelScope text-to-video layout
(``TextToVideoSDPipeline``'s, see :mod:`storygen.training_free`) as
:class:`~storygen.pipeline.TrainingFreeStoryPipeline`, and so does a masked-layout folder whose
last training run was plain text-to-video (``storygen train --text-to-video 1``: it never
learnt to read known frames), exported to the ModelScope layout as it loads.

Before anything loads, every ``*.safetensors`` file of the folder's parts is checked against its
own header (a file cut short or emptied is named); the parts with weights (UNet, VAE, text
encoder) then load one by one, and a part whose weights do not fit the network its
``config.json`` describes (tensors missing or of another shape) is refused, naming its folder:
transformers would fill missing layers with random weights, diffusers would leave them empty
until the first use. Both raise :class:`ModelFolderError` (a ``ValueError``). Tensors left
over in a part that is otherwise whole (a checkpoint's EMA copy or extra heads) are warned of
and left unused.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diffusers
import torch
from safetensors import SafetensorError

from storygen.pipeline import StoryVideoPipeline, TrainingFreeStoryPipeline, loading_as_saved
from storygen.settings import SCHEDULERS
from storygen.training_free import check_model_files, is_t2v_layout, read_model_index

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEDULERS",
    "ModelFolderError",
    "check_weight_files",
    "load_checked",
    "load_pipeline",
    "load_text_to_video_trained",
    "make_scheduler",
    "trained_as_text_to_video",
]


class ModelFolderError(ValueError):
    """A model folder whose files cannot make the model its configs describe: a damaged
    weights file, or weights that do not fit a part's ``config.json``."""


def trained_as_text_to_video(path: str | os.PathLike) -> bool:
    """Whether the folder's last UNet training run (its ``training.json``) was plain
    text-to-video: every window global, nothing known (``storygen train --text-to-video 1``)."""
    report = os.path.join(os.fspath(path), "training.json")
    if not os.path.isfile(report):
        return False
    try:
        with open(report, encoding="utf-8") as fh:
            runs = json.load(fh).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return False
    unet_runs = [r for r in runs if isinstance(r, dict) and r.get("part") == "unet"]
    return bool(unet_runs and unet_runs[-1].get("text_to_video", False))


def make_scheduler(name: str, config: Any) -> Any:
    """The scheduler ``SCHEDULERS[name]`` built from ``config`` (another scheduler's)."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def load_pipeline(
    path: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> StoryVideoPipeline:
    """Load a model folder in either layout, choosing the pipeline class from it.

    ``scheduler``: ``"ddim"``, ``"dpm"`` (DPM-Solver++ multistep) or ``"euler"`` to replace
    the saved scheduler, keeping its noise schedule. ``progress=False``: no loading bars
    (diffusers' and transformers'). A missing file raises FileNotFoundError naming it; a
    damaged weights file, or weights that do not fit their config, :class:`ModelFolderError`.
    """
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    check_model_files(path)
    check_weight_files(path)
    with _loading_bars(progress):
        if not is_t2v_layout(path) and trained_as_text_to_video(path):
            pipe = load_text_to_video_trained(path, kwargs)
        else:
            cls = TrainingFreeStoryPipeline if is_t2v_layout(path) else StoryVideoPipeline
            pipe = load_checked(cls, path, kwargs)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    return pipe


def load_text_to_video_trained(
    path: str | os.PathLike, kwargs: dict[str, Any] | None = None
) -> TrainingFreeStoryPipeline:
    """A masked-layout folder whose UNet was last trained as plain text-to-video
    (:func:`trained_as_text_to_video`), exported to the ModelScope layout and loaded as the
    :class:`TrainingFreeStoryPipeline` it is. ``kwargs``: ``from_pretrained``'s.

    :func:`load_pipeline` and ``StoryVideoPipeline.from_pretrained`` both load such a folder
    this way (neither calls the other for it: ``from_pretrained`` on the training-free class
    does not come back here)."""
    import tempfile

    from storygen.training.folder import to_t2v_folder

    kwargs = dict(kwargs or {})
    with tempfile.TemporaryDirectory() as tmp:  # the weights are in memory once loaded
        # the export loads the folder as it is (no recursion), its parts checked
        # (:func:`load_checked`): a folder whose weights do not fit gets a clear error
        with loading_as_saved():
            exported = to_t2v_folder(os.fspath(path), os.path.join(tmp, "t2v"))
        pipe = load_checked(TrainingFreeStoryPipeline, exported, kwargs)
    return pipe  # type: ignore[no-any-return]


def load_checked(cls: Any, path: str | os.PathLike, kwargs: dict[str, Any]) -> Any:
    """``cls.from_pretrained`` on the parts :func:`load_parts` loaded and checked (a part
    given in ``kwargs`` is taken as given)."""
    parts = load_parts(path, torch_dtype=kwargs.get("torch_dtype"))
    parts = {name: part for name, part in parts.items() if name not in kwargs}
    try:
        return cls.from_pretrained(str(path), **kwargs, **parts)
    except (RuntimeError, SafetensorError) as exc:  # a tokenizer or scheduler file
        raise ModelFolderError(
            f"{path}: the model does not load ({_first_line(exc)}); the model folder is damaged"
        ) from exc


@contextlib.contextmanager
def _loading_bars(show: bool) -> Iterator[None]:
    """diffusers' and transformers' loading bars on (as they are) or off, then as before."""
    if show:
        yield
        return
    import transformers

    libraries = (diffusers.utils.logging, transformers.utils.logging)
    were = [lib.is_progress_bar_enabled() for lib in libraries]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in zip(libraries, were):
            if was:
                lib.enable_progress_bar()


# ------------------------------------------------------------------ checks
def check_weight_files(path: str | os.PathLike) -> None:
    """Raise :class:`ModelFolderError` naming the first ``*.safetensors`` file of the
    folder's parts that its own header does not describe: empty, cut short, or with bytes
    after its last tensor. Reads the headers only."""
    folder = Path(path)
    for name, spec in read_model_index(folder).items():
        if name.startswith("_") or not isinstance(spec, (list, tuple)) or not spec or not spec[0]:
            continue
        if (folder / name).is_dir():
            for file in sorted((folder / name).glob("*.safetensors")):
                why = _safetensors_damage(file)
                if why is not None:
                    raise ModelFolderError(
                        f"{file}: a damaged weights file: {why}; the model folder is damaged"
                    )


def _safetensors_damage(file: Path) -> str | None:
    """What is wrong with a safetensors file, from its header and its size; None if nothing."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors header" if size else "it is empty"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"its header is {length:,} bytes long, the whole file only {size:,}: cut short"
        try:
            header = json.loads(fh.read(length))
        except (ValueError, UnicodeDecodeError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    try:
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (KeyError, IndexError, TypeError, ValueError):
        return "its header does not give every tensor's place in the file"
    have = size - 8 - length
    if end > have:
        return (
            f"its tensors take {end:,} bytes, the file holds {have:,} after its header: cut short"
        )
    if end < have:
        return f"{have - end:,} bytes follow its last tensor"
    return None


# ------------------------------------------------------------------ the parts with weights
def load_parts(path: str | os.PathLike, *, torch_dtype: torch.dtype | None = None) -> dict:
    """The folder's parts with weights (diffusers and transformers models: UNet, VAE, text
    encoder), loaded one by one as ``DiffusionPipeline.from_pretrained`` would, by name;
    :class:`ModelFolderError` naming the part's folder where its weights do not fit the
    network its ``config.json`` describes."""
    folder = Path(path)
    parts: dict[str, Any] = {}
    for name, spec in read_model_index(folder).items():
        if name.startswith("_") or not isinstance(spec, (list, tuple)) or len(spec) != 2:
            continue
        cls = _model_class(*spec)
        if cls is not None and (folder / name).is_dir():
            parts[name] = _load_part(cls, folder / name, torch_dtype)
    return parts


def _model_class(library: Any, class_name: Any) -> Any:
    """The diffusers or transformers model class ``library.class_name``; None for anything
    else (a tokenizer, a scheduler, a name that does not import: diffusers says so)."""
    import transformers

    if not isinstance(library, str) or not isinstance(class_name, str):
        return None
    try:
        cls = getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError):
        return None
    models = (diffusers.ModelMixin, transformers.PreTrainedModel)
    return cls if isinstance(cls, type) and issubclass(cls, models) else None


#: diffusers' error for a tensor of another shape than the config's network has
_SHAPE = re.compile(
    r"because (\S+) expected shape (?:torch\.Size\()?(\[[^\]]*\])\)?, but got "
    r"(?:torch\.Size\()?(\[[^\]]*\])"
)


def _load_part(cls: Any, sub: Path, torch_dtype: torch.dtype | None) -> Any:
    """One part, loaded with the loader's report of the tensors it could not place."""
    import transformers

    if issubclass(cls, transformers.PreTrainedModel):
        # mismatched shapes come back in the report (then refused) rather than as an error
        # whose message says only "look at the above report"
        kwargs: dict[str, Any] = {"dtype": torch_dtype, "ignore_mismatched_sizes": True}
    else:
        kwargs = {"torch_dtype": torch_dtype}
    fits = f"the weights do not fit the {cls.__name__} network of its config.json"
    with _quiet_loaders():  # their reports would repeat, at length, what is refused here
        try:
            module, info = cls.from_pretrained(str(sub), output_loading_info=True, **kwargs)
        except (ValueError, RuntimeError, SafetensorError) as exc:
            shape = _SHAPE.search(str(exc))
            why = (
                f"tensor {shape[1]} is {shape[3]} in the weights, {shape[2]} in the network"
                if shape
                else _first_line(exc)
            )
            raise ModelFolderError(
                f"{sub}: {fits} ({why}){_class_note(cls, sub)}; the model folder is damaged"
            ) from exc
    problems = []
    missing = sorted(info.get("missing_keys") or [])
    meta = [
        n
        for n, t in (*module.named_parameters(), *module.named_buffers())
        if t.is_meta and n not in missing
    ]
    missing += meta
    if missing:
        problems.append(f"{_some(missing)} of the network not in the weights")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected and (problems or info.get("mismatched_keys")):
        problems.append(f"{_some(unexpected)} in the weights not in the network")
    elif unexpected:  # the network is whole: checkpoints often carry extra tensors (EMA, heads)
        logger.warning(
            "%s: %s in the weights not in the %s network of its config.json, left unused",
            sub,
            _some(unexpected),
            cls.__name__,
        )
    for key, in_file, in_net in sorted(info.get("mismatched_keys") or [])[:1]:
        problems.append(
            f"tensor {key} is {list(in_file)} in the weights, {list(in_net)} in the network"
        )
    if problems:
        raise ModelFolderError(
            f"{sub}: {fits} ({'; '.join(problems)}){_class_note(cls, sub)}; the model folder "
            "is damaged"
        )
    return module


def _some(names: list[str]) -> str:
    """``"48 tensors (a.weight, b.bias, ...)"``."""
    shown = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
    return f"{len(names)} tensor{'s' if len(names) != 1 else ''} ({shown})"


def _class_note(cls: Any, sub: Path) -> str:
    """Where the part's config.json names another class than model_index.json does."""
    try:
        named = json.loads((sub / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return ""
    if isinstance(named, str) and named != cls.__name__:
        return f"; model_index.json names {cls.__name__}, config.json is for {named}"
    return ""


def _first_line(exc: BaseException) -> str:
    """An error's message up to its first line break (the loaders' go on with advice)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_loaders() -> Iterator[None]:
    """diffusers' and transformers' warnings off (errors still show), then as before."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.ERROR))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
