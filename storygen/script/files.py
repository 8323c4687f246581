"""Reading and writing script files: the format from the extension (or sniffed from text)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from schemas.io import rows_to_table, write_parquet
from storygen.script.limits import MAX_SCRIPT_BYTES, too_large
from storygen.script.parquet import load_parquet
from storygen.script.story import ScriptError, StoryScript
from storygen.script.subtitles import parse_srt, to_srt
from storygen.script.yaml_json import parse_json, parse_yaml, to_json, to_yaml

#: file formats ``load_script`` reads, by extension
FORMATS = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".srt": "srt",
    ".vtt": "srt",
    ".parquet": "parquet",
}


def script_format(path: str | os.PathLike[str]) -> str | None:
    """The format :func:`load_script` reads the file ``path`` in (``"parquet"`` for a folder:
    a sharded stories table), or None for an unknown extension."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except (OSError, ValueError):  # a name too long for the file system, say
        is_dir = False
    return "parquet" if is_dir else FORMATS.get(path.suffix.lower())


def _exists(path: str | Path) -> bool:
    """Whether ``path`` names an existing file or folder (False for a name no file system
    takes: too long, or holding a NUL)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def script_to_text(script: StoryScript, fmt: str) -> str:
    """The script as YAML, JSON or SRT text (SRT keeps milliseconds and no fps / id)."""
    if fmt == "srt":
        return to_srt(script)
    if fmt == "json":
        return to_json(script)
    if fmt == "yaml":
        return to_yaml(script)
    raise ValueError(f"fmt must be one of ['json', 'srt', 'yaml'], got {fmt!r}")


def save_script(
    script: StoryScript, path: str | os.PathLike[str], *, fps: float | None = None
) -> Path:
    """Write ``script`` in the format of ``path``'s extension (a ``.parquet`` stories table
    needs a frame rate: ``fps`` or the script's). Returns the path."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unknown script format {path.suffix!r}; expected one of {sorted(FORMATS)}"
        )
    if kind == "parquet":
        row = script.to_stories_row(fps)
        return write_parquet(rows_to_table([row], "stories"), path, "stories")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(script_to_text(script, kind), encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------- entry point
_PARSERS = {"yaml": parse_yaml, "json": parse_json, "srt": parse_srt}
#: no file system takes a path this long (Linux's PATH_MAX): such a string is script text
_PATH_MAX = 4096
#: nor a file name this long (NAME_MAX)
_NAME_MAX = 255


def _could_be_path(text: str) -> bool:
    """Whether a file system could hold ``text`` as a path: no NUL, no name too long."""
    return "\0" not in text and all(len(part) <= _NAME_MAX for part in re.split(r"[/\\]", text))


def _sniff(text: str) -> str:
    head = text.lstrip("\ufeff \t\r\n")
    if head.startswith(("{", "[")):
        return "json"
    if head.upper().startswith("WEBVTT") or re.search(r"-->", head[:400]):
        return "srt"
    return "yaml"


def load_script(
    path_or_text: str | os.PathLike[str],
    *,
    story_id: str | None = None,
    fmt: str | None = None,
) -> StoryScript:
    """Read a script from a file (format by extension, or ``fmt``) or from text.

    Formats: ``yaml`` (.yaml / .yml), ``json``, ``srt`` (.srt, .vtt), ``parquet`` (a stories
    table, or a folder of them; ``story_id`` picks the row, default the first). A string
    holding a newline, blank, starting with ``{`` or ``[``, longer than any path, or naming no
    existing file (without a script extension) is read as text (format from ``fmt`` or
    sniffed); but one line without a ``:`` (``nosuchfile``), which no script's text is, is
    a path, and names a missing file. ``story_id`` also overrides the id a YAML / JSON file
    sets. Raises
    :class:`ScriptError` listing every problem, each with its line, cue or segment.
    """
    if fmt is not None and fmt not in {*_PARSERS, "parquet"}:
        raise ValueError(f"fmt must be one of {sorted({*_PARSERS, 'parquet'})}, got {fmt!r}")
    text: str | None = None
    path: Path | None = None
    if isinstance(path_or_text, os.PathLike):
        path = Path(path_or_text)
    elif isinstance(path_or_text, str):
        if (
            "\n" in path_or_text
            or not path_or_text.strip()
            or path_or_text.lstrip().startswith(("{", "["))
            or len(path_or_text) >= _PATH_MAX
            or (
                Path(path_or_text).suffix.lower() not in FORMATS
                and not _exists(path_or_text)
                # every script's text holds a ':' (YAML's keys, SRT's times) or a newline;
                # a name longer than any file system's is text all the same
                and (":" in path_or_text or not _could_be_path(path_or_text))
            )
        ):
            text = path_or_text
        else:
            path = Path(path_or_text)
    else:
        raise TypeError(f"expected a path or script text, got {type(path_or_text).__name__}")

    if path is not None:
        # a folder is a sharded stories table, as curate writes it
        kind = fmt or script_format(path)
        if kind is None:
            if not path.suffix and not _exists(path):
                raise ScriptError(str(path), ["no such file"])
            raise ScriptError(
                str(path),
                [f"unknown script format {path.suffix!r}; expected one of {sorted(FORMATS)}"],
            )
        if not _exists(path):
            raise ScriptError(str(path), ["no such file"])
        if kind == "parquet":
            return load_parquet(path, story_id)
        try:
            size = path.stat().st_size
            if size > MAX_SCRIPT_BYTES:
                raise ScriptError(str(path), [too_large(size)])
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ScriptError(
                str(path), [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]
            ) from exc
        except OSError as exc:
            raise ScriptError(str(path), [f"cannot read the file ({exc.strerror or exc})"]) from exc
        source = str(path)
        story_id = story_id or None
        script = _PARSERS[kind](text, source, story_id)
        if script.story_id is None:
            script = StoryScript(
                script.segments, script.fps, path.stem, source, length_s=script.length_s
            )
        return script

    assert text is not None
    kind = fmt or _sniff(text)
    if kind == "parquet":
        raise ValueError("a Parquet stories table must be given as a path, not text")
    return _PARSERS[kind](text.lstrip("\ufeff"), "<text>", story_id)
