"""Bounds on what a script reader accepts, and values quoted into messages at bounded length.

A script is untrusted input: a YAML alias bomb, a 1 GB file or ten thousand nested brackets
must end in a :class:`~storygen.script.story.ScriptError` quickly, not in a hang, a
``MemoryError`` or a ``RecursionError``. The bounds are far above what a story needs (a
two-hour story with a segment every second is about 300 KB of YAML):

=====================  ==============  ======================================================
bound                  default         what it stops
=====================  ==============  ======================================================
``MAX_SCRIPT_BYTES``   2 MiB           huge files (read no further than the bound)
``MAX_NESTING``        32              deep ``[[[[…]]]]`` (recursion in the parsers)
``MAX_ALIAS_NODES``    10,000          YAML aliases that expand to more nodes than this
                                       ("billion laughs"); recursive aliases
``MAX_SEGMENTS``       100,000         stories tables with millions of segments in one row
``QUOTE_CHARS``        80              a huge value formatted into an error message
``MAX_PROBLEMS_SHOWN`` 20              a message listing every one of 100,000 problems
=====================  ==============  ======================================================
"""

from __future__ import annotations

import reprlib
from typing import Any

#: the largest script file (or text) read, in bytes of UTF-8
MAX_SCRIPT_BYTES = 2 * 1024 * 1024
#: the deepest nesting of lists / mappings (YAML) or arrays / objects (JSON)
MAX_NESTING = 32
#: the most nodes YAML aliases may add to a document when expanded
MAX_ALIAS_NODES = 10_000
#: the most segments one story may hold
MAX_SEGMENTS = 100_000
#: the longest value quoted in a message, in characters
QUOTE_CHARS = 80
#: the most problems a :class:`ScriptError` message lists (all stay in ``.problems``)
MAX_PROBLEMS_SHOWN = 20


class _ShortRepr(reprlib.Repr):
    """``reprlib`` that also abbreviates dict / list subclasses (reprlib matches type names)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 4
        self.maxstring = self.maxother = self.maxlong = QUOTE_CHARS

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, dict) and type(x) is not dict:
            return self.repr_dict(x, level)
        if isinstance(x, list) and type(x) is not list:
            return self.repr_list(x, level)
        if isinstance(x, int) and not isinstance(x, bool) and x.bit_length() > 256:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr1(x, level)


_REPR = _ShortRepr()


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, in time bounded whatever the value's size
    (nested containers are abbreviated level by level, never expanded whole)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a value whose repr fails: name its type instead
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shorten(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def too_large(size: int, what: str = "script") -> str:
    """The problem of a script over :data:`MAX_SCRIPT_BYTES`."""
    return (
        f"{what} is {size:,} bytes, more than the limit of {MAX_SCRIPT_BYTES:,} bytes "
        "for a story script"
    )


def text_too_large(text: str) -> str | None:
    """The size problem of ``text``, or None when it is within :data:`MAX_SCRIPT_BYTES`."""
    # a character takes 1 to 4 bytes of UTF-8: encode only when the length leaves a doubt
    if len(text) <= MAX_SCRIPT_BYTES // 4:
        return None
    size = len(text) if len(text) > MAX_SCRIPT_BYTES else len(text.encode("utf-8", "replace"))
    return too_large(size) if size > MAX_SCRIPT_BYTES else None
