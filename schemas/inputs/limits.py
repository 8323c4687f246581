"""What one manifest row may hold (:class:`ManifestLimits`), and reading within it: lines
read without holding more than the limit, JSON measured for depth before it is parsed, caption
sizes and times checked. A row that breaks a limit raises :class:`RowError`, which its reader
turns into a failures row."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ManifestLimits:
    """What one manifest row may hold; a row over a limit becomes a failures row.

    The defaults are far above any real caption or row and far below what would slow a run
    down: a caption is scored and re-captioned by the model's first tokens only (77 for CLIP),
    so a longer one carries nothing but cost.
    """

    #: bytes of one caption (UTF-8), the plain caption or one timed caption's text
    max_caption_bytes: int = 65_536
    #: bytes of one manifest line (a CSV record, a JSONL object) or one sidecar file
    max_line_bytes: int = 4 << 20
    #: nesting depth of a JSON value (a JSONL row or a ``.json`` sidecar); a row is 3 deep
    max_json_depth: int = 32
    #: timed captions of one video
    max_timed_captions: int = 10_000
    #: seconds: largest start, end or duration a row may give
    max_seconds: float = 1_000_000.0

    def __post_init__(self) -> None:
        for name in ("max_caption_bytes", "max_line_bytes", "max_json_depth", "max_timed_captions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.max_seconds, (int, float)) and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds!r}")


DEFAULT_LIMITS = ManifestLimits()

#: the csv module's own limit on one field (characters); a longer field is a failures row
CSV_FIELD_LIMIT = csv.field_size_limit()


class RowError(ValueError):
    """One manifest row cannot be used; the message says why (the reader adds where)."""

    def __init__(self, message: str, *, input_id: str | None = None, uri: str | None = None):
        super().__init__(message)
        self.input_id = input_id
        self.uri = uri


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def check_caption(text: str, limits: ManifestLimits, what: str = "caption") -> None:
    # a str of n characters is at most 4n bytes of UTF-8: encode only when it could be over
    if len(text) * 4 > limits.max_caption_bytes:
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > limits.max_caption_bytes:
            raise RowError(
                f"{what} is {size:,} bytes, over the limit of {limits.max_caption_bytes:,} "
                "(--max-caption-bytes)"
            )


def check_seconds(value: Any, name: str, limits: ManifestLimits) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(f"{name} must be a number, got {value!r:.60}")
    if not math.isfinite(value) or not 0 <= value <= limits.max_seconds:
        raise RowError(f"{name} must be between 0 and {limits.max_seconds:g} s, got {value!r:.60}")
    return float(value)


def bounded_lines(fh: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, bytes, size)`` per line; the bytes are ``None`` for a line longer than
    ``limit``, which is skipped without being held in memory. A leading BOM is dropped."""
    number = 0
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while True:
                more = fh.readline(1 << 20)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield number, None, size
        else:
            yield number, raw, len(raw)


def too_long(size: int, limit: int) -> str:
    return f"line is {size:,} bytes, over the limit of {limit:,} bytes"


#: a JSON string (skipped whole) or one bracket
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def json_depth(text: str, *, stop_above: int | None = None) -> int:
    """The nesting depth of JSON ``text`` (``[[1]]`` is 2), counted without parsing it, so a
    value nested too deep for a recursive parser is measured safely; counting stops once the
    depth passes ``stop_above``."""
    depth = deepest = 0
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        elif token in ("]", "}"):
            depth -= 1
    return deepest


def load_json(text: str, limits: ManifestLimits = DEFAULT_LIMITS) -> Any:
    """Parse one JSON value, refusing one nested deeper than ``limits.max_json_depth``."""
    depth = json_depth(text, stop_above=limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise RowError(f"JSON nested deeper than the limit of {limits.max_json_depth} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of too many digits
        raise RowError(f"not valid JSON ({describe(exc)})") from None
