"""Model folders: where the shipped models are, what a folder must hold, what it declares.

curate loads every model from a folder (or a hub id where the hub is reachable). This module
checks a folder before anything heavy is imported, so a missing file is named in a second, and
reads what a folder says about itself besides the transformers files: ``scoring.json`` (a CLIP's
recommended caption cut-off and the storyboard grid it reads scenes with) and
``captioning.json`` (the grid a captioner reads). It also says what ``--model`` and
``--captioner`` mean when they are left to their defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ModelFolderError

#: the shipped shapes-world CLIP; the folder lives at the repository root, next to ``curate/``
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "shapes-clip"

#: the shipped shapes-world captioner (a folder at the repository root, next to ``curate/``)
DEFAULT_CAPTIONER = Path(__file__).resolve().parent.parent / "models" / "shapes-captioner"

#: CLIP's published image statistics; every CLIP folder written here uses them, so any CLIP
#: tooling reads the folder the same way
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# --- CLIP folders -----------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_model_folder(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a complete CLIP folder; raise :class:`ModelFolderError` if not.

    The message names the first missing file: ``config.json``, the weights
    (``model.safetensors`` or ``pytorch_model.bin``), the tokenizer files (``tokenizer.json``,
    or ``vocab.json`` + ``merges.txt``) or ``preprocessor_config.json``.
    """
    folder = Path(path)
    if not folder.exists():
        hint = ""
        if folder.resolve() == DEFAULT_MODEL:
            hint = "; the shipped model is built by `make train-clip`"
        raise ModelFolderError(f"model folder does not exist{hint}", uri=str(folder))
    if not folder.is_dir():
        raise ModelFolderError("model path is not a folder", uri=str(folder))
    missing: list[str] = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        missing.append("model.safetensors (or pytorch_model.bin)")
    has_fast = (folder / "tokenizer.json").is_file()
    has_slow = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_fast or has_slow):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if not (folder / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json")
    if missing:
        raise ModelFolderError(
            f"incomplete model folder: missing {', '.join(missing)}", uri=str(folder)
        )
    config = _read_json(folder, "config.json")
    if not isinstance(config, dict):
        raise ModelFolderError("config.json is not a JSON object", uri=str(folder))
    if "vision_config" not in config or "text_config" not in config:
        raise ModelFolderError(
            "config.json is not a CLIP config (no vision_config / text_config)", uri=str(folder)
        )
    return folder


def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFolderError(f"{name} is not readable JSON: {exc}", uri=str(folder)) from None


def check_model_type(folder: Path, expected: str, what: str) -> None:
    """Raise :class:`ModelFolderError` unless ``config.json`` declares ``model_type``
    ``expected`` (a folder of another class fails here, not deep inside transformers)."""
    config = _read_json(folder, "config.json")
    found = config.get("model_type") if isinstance(config, dict) else None
    if found != expected:
        raise ModelFolderError(
            f"config.json declares model_type {found!r}; a {what} has {expected!r}",
            uri=str(folder),
        )


#: largest safetensors header read when checking a weights file
_SAFETENSORS_HEADER_LIMIT = 100 << 20


def _check_safetensors(folder: Path, path: Path) -> None:
    """The safetensors header parses and every tensor lies inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, _SAFETENSORS_HEADER_LIMIT):
            raise ModelFolderError(
                f"{path.name}: not a safetensors file (header length {n})", uri=str(folder)
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelFolderError(
                f"{path.name}: unreadable safetensors header ({exc})", uri=str(folder)
            ) from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path.name}: unreadable safetensors header", uri=str(folder))
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= size - 8 - n
        ):
            raise ModelFolderError(
                f"{path.name}: tensor {name!r} lies outside the file (truncated?)",
                uri=str(folder),
            )


def _check_pickle(folder: Path, path: Path) -> None:
    """A PyTorch pickle loads with ``weights_only=True``: tensors and plain containers, no
    code (torch's own restricted unpickler decides)."""
    import warnings

    import torch  # only for a folder whose weights are a pickle

    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: not for the user
            warnings.simplefilter("ignore")
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                torch.load(path, map_location="cpu", weights_only=True)  # the legacy format
    except Exception as exc:  # whatever the pickle holds, it is not loaded
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFolderError(
            f"{path.name}: the weights cannot be loaded safely ({type(exc).__name__}: "
            f"{first[:160]}); a pickle may only hold tensors (use model.safetensors)",
            uri=str(folder),
        ) from None


def check_weights(folder: Path) -> None:
    """Raise :class:`ModelFolderError` naming a weights file that cannot be loaded: a
    truncated or malformed safetensors file, a sharded index naming missing shards, or a
    pickle that holds more than tensors."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        _check_safetensors(folder, single)
    elif index.is_file():
        data = _read_json(folder, index.name)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise ModelFolderError(f"{index.name} has no weight_map", uri=str(folder))
        for shard in sorted({str(v) for v in weight_map.values()}):
            path = folder / shard
            if path.parent != folder or not path.is_file():
                raise ModelFolderError(
                    f"{index.name} names a missing shard {shard!r}", uri=str(folder)
                )
            _check_safetensors(folder, path)
    elif (folder / "pytorch_model.bin").is_file():
        _check_pickle(folder, folder / "pytorch_model.bin")


def check_clip_model(model: str | os.PathLike[str]) -> str:
    """Everything about a ``--model`` that can be checked before any work starts: a local
    folder is complete (:func:`check_model_folder`), holds a CLIP (``model_type`` ``clip``)
    and weights that load; a hub id is left to the hub. Returns what ``resolve_model`` does."""
    source = resolve_model(model)
    folder = Path(source)
    if folder.is_dir():
        check_model_type(folder, "clip", "CLIP model")
        for name in ("preprocessor_config.json", "tokenizer_config.json", "tokenizer.json"):
            if (folder / name).is_file():
                _read_json(folder, name)
        check_weights(folder)
    return source


def looks_like_hub_id(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` names a hub model (``org/name``) rather than a local folder.

    A path that does not exist is still a local path when it reads as one: it starts with
    ``./``, ``../``, ``/`` or ``~``, ends with a separator, has a first component that is a
    folder here (``models/shapes-clipp``), or has more than one separator; such a path fails at
    once as a missing folder instead of going to the hub.
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.exists() or text.count("/") != 1 or os.sep in text.replace("/", ""):
        return False
    if text.startswith((".", "/", "~")) or text.endswith("/"):
        return False
    return not Path(text.split("/", 1)[0]).is_dir()


def resolve_model(model: str | os.PathLike[str]) -> str:
    """A checked local folder, or a hub id (``org/name`` that is not a local path, see
    :func:`looks_like_hub_id`)."""
    text = os.fspath(model)
    if looks_like_hub_id(text):
        return text
    return str(check_model_folder(Path(text).expanduser()))


# --- CLIP folders: scoring.json -------------------------------------------------------------

#: optional file in a model folder: the caption-score cut-off its authors measured for it
SCORING_FILE = "scoring.json"


def recommended_threshold(model: str | os.PathLike[str]) -> float | None:
    """The ``caption_threshold`` stored in the model folder's ``scoring.json``, if any.

    Thresholds belong to a model (and a corpus): the shipped shapes-world CLIP records the one
    measured on its held-out frames; other checkpoints have none, and should be calibrated
    with ``curate calibrate``.
    """
    value = read_scoring(model).get("caption_threshold")
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ModelFolderError(
            f"{SCORING_FILE} caption_threshold is not a number: {value!r}", uri=str(model)
        ) from None


def read_scoring(model: str | os.PathLike[str]) -> dict[str, Any]:
    """The model folder's ``scoring.json`` (``{}`` when it has none, or for a hub id)."""
    path = Path(model) / SCORING_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise ModelFolderError(
            f"{SCORING_FILE} is not readable JSON: {exc}", uri=str(model)
        ) from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{SCORING_FILE} is not a JSON object", uri=str(model))
    return data


def write_scoring(folder: str | os.PathLike[str], values: dict[str, Any]) -> None:
    """Merge ``values`` into the folder's ``scoring.json`` (what the scorer reads of a model)."""
    path = Path(folder) / SCORING_FILE
    current = read_scoring(folder)
    current.update(values)
    path.write_text(json.dumps(current, indent=2) + "\n")


# --- captioner folders ------------------------------------------------------------------------

#: (any of) the files a captioner folder needs
BLIP_FILES = (
    ("config.json",),
    ("processor_config.json", "preprocessor_config.json"),
    ("tokenizer.json", "vocab.txt"),
)


#: what a captioner folder may say about its input besides the transformers files
CAPTIONING_FILE = "captioning.json"


def read_captioning(folder: str | os.PathLike[str]) -> tuple[int, int] | None:
    """The storyboard grid a captioner folder's ``captioning.json`` asks for, or ``None``."""
    path = Path(folder) / CAPTIONING_FILE
    if not path.is_file():
        return None
    try:
        grid = json.loads(path.read_text())["storyboard"]["grid"]
        rows, cols = (int(g) for g in grid)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFolderError(
            f"{CAPTIONING_FILE} has no valid storyboard grid: {exc}", uri=str(path)
        ) from exc
    if rows < 1 or cols < 1:
        raise ModelFolderError(f"storyboard grid must be positive, got {grid!r}", uri=str(path))
    return rows, cols


def check_captioner_folder(model: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Raise :class:`ModelFolderError` naming what a local captioner folder lacks; return the
    storyboard grid it declares (``None``: it reads single frames, or it is a hub id)."""
    text = os.fspath(model)
    folder = Path(text)
    if folder.exists():
        missing = [
            " or ".join(names)
            for names in (*BLIP_FILES, WEIGHT_FILES)
            if not any((folder / n).is_file() for n in names)
        ]
        if missing:
            raise ModelFolderError(
                f"incomplete captioner folder: missing {', '.join(missing)}", uri=str(folder)
            )
        check_model_type(folder, "blip", "BLIP-class captioner")
        check_weights(folder)
        return read_captioning(folder)
    if not looks_like_hub_id(text):
        raise ModelFolderError("captioner folder does not exist", uri=text)
    return None


# --- what --model and --captioner mean --------------------------------------------------------


def folder_state(model: str | os.PathLike[str]) -> str:
    """The names, sizes and modification times of a model folder's files, so that a model
    retrained in place reads as a different model; a hub id stands for itself."""
    folder = Path(model)
    if not folder.is_dir():
        return os.fspath(model)
    parts = []
    for entry in sorted(folder.iterdir()):
        try:
            st = entry.stat()
        except OSError:
            continue
        if entry.is_file():
            parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def resolve_model_path(model: str | None) -> str:
    """The CLIP ``--model`` means: the given folder or hub id, else the shipped CLIP."""
    return str(model) if model else str(DEFAULT_MODEL)


def resolve_captioner(model: str | None, captioner: str | None) -> str | None:
    """The captioner folder ``--captioner`` means (``None``: none). ``auto`` is the shipped
    shapes-world captioner when the CLIP is the shipped one (the pair is trained on the same
    world); with any other CLIP, auto means none."""
    value = (captioner or "none").strip()
    if value.lower() == "none":
        return None
    if value.lower() != "auto":
        return value
    same = Path(resolve_model_path(model)).resolve() == Path(DEFAULT_MODEL).resolve()
    return str(DEFAULT_CAPTIONER) if same and Path(DEFAULT_CAPTIONER).is_dir() else None
