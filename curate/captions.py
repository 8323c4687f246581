"""Caption text: cleaning, validation, and splitting a caption into the events it narrates.

Captions arrive as WebVid-style text: stray whitespace, decomposed Unicode, stock-footage
boilerplate, sometimes bytes that are not UTF-8 at all, sometimes nothing. This module turns
each into either a clean string or a clip status with a reason, so that nothing downstream has
to guess. Captions in any script are kept as they are: they are scored like any other text (a
model that never saw the script simply gives them a low score).

A WebVid-style caption often narrates several events ("a red circle ..., then a blue square
..."); :func:`split_caption` cuts it into its fragments, which scoring and re-captioning both
match against scenes.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.tables import DROPPED, EMPTY_CAPTION, INVALID_CAPTION

from .errors import CaptionError
from .step import Step

logger = logging.getLogger(__name__)

_WS = re.compile(r"\s+")
# C0/C1 control characters other than whitespace; they are never meaningful in a caption
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# the joiners some scripts and emoji sequences need among the format characters (Cf), which are
# otherwise invisible marks (zero-width spaces, byte-order marks, direction overrides)
_JOINERS = frozenset("\u200c\u200d")
# HTML formatting tags scraped captions carry, literal or escaped ("&lt;i&gt;"): markup, not text
_TAG = re.compile(
    r"</?(?:a|b|big|br|div|em|font|i|p|small|span|strong|sub|sup|u)"
    r"""(?:\s+[\w:-]+\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s"'<>=]+))*\s*/?>""",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class CleanCaption:
    """The outcome of cleaning one caption.

    ``text`` is the cleaned caption ("" when there is none); ``reason`` is a
    :data:`schemas.DROP_REASONS` entry when the caption is unusable, else ``None``; ``note``
    explains what was changed or why it is unusable, for logs and failures rows.
    """

    text: str
    reason: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def normalize_caption(text: str) -> str:
    """NFC-normalise, drop control characters and invisible format characters (zero-width
    spaces, byte-order marks, direction marks; the joiners stay), collapse whitespace runs,
    strip the ends."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    if not text.isascii():
        text = "".join(ch for ch in text if ch in _JOINERS or unicodedata.category(ch) != "Cf")
    return _WS.sub(" ", text).strip()


def decode_caption(raw: bytes | bytearray | memoryview, *, where: str = "") -> str:
    """Decode UTF-8 caption bytes, raising :class:`CaptionError` that locates the bad byte."""
    data = bytes(raw)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.end].hex()
        raise CaptionError(
            f"caption is not valid UTF-8: byte 0x{bad} at offset {exc.start} ({exc.reason})",
            uri=where or None,
        ) from None


def clean_caption(raw: Any, *, where: str = "") -> CleanCaption:
    """Clean one caption of any type: ``str``, UTF-8 ``bytes`` or ``None``.

    HTML character references are decoded ("Tom &amp; Jerry" is "Tom & Jerry": scraped
    captions carry them) and HTML formatting tags removed ("<i>A dog</i>" is "A dog"); a
    reference to no character ("&#0;") is dropped as a control character would be. Never raises
    for bad text; the problem becomes ``reason`` + ``note``.
    """
    if raw is None:
        return CleanCaption("", EMPTY_CAPTION, "no caption")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = decode_caption(raw, where=where)
        except CaptionError as exc:
            return CleanCaption("", INVALID_CAPTION, exc.reason)
    if not isinstance(raw, str):
        return CleanCaption("", INVALID_CAPTION, f"caption must be text, got {type(raw).__name__}")
    if "\ufffd" in raw:
        # U+FFFD means an earlier stage already decoded invalid bytes with errors="replace"
        return CleanCaption("", INVALID_CAPTION, "caption holds U+FFFD replacement characters")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's "\ud83d": half of an emoji's pair
        where_ = f"lone surrogate U+{ord(raw[exc.start]):04X}"
        return CleanCaption("", INVALID_CAPTION, f"caption is not valid Unicode ({where_})")
    if "&" in raw:
        # a reference to no character (&#0;, &#xD800;) decodes to U+FFFD: dropped like a control
        raw = html.unescape(raw).replace("\ufffd", " ")
    if "<" in raw:
        raw = _TAG.sub(" ", raw)
    text = normalize_caption(raw)
    if not text:
        return CleanCaption("", EMPTY_CAPTION, "caption is empty or whitespace only")
    if not any(ch.isalnum() for ch in text):
        return CleanCaption(
            text, INVALID_CAPTION, f"caption has no letters or digits: {text!r:.60}"
        )
    return CleanCaption(text)


# Connectives that start a new event in WebVid-style narration, taken with the comma or
# sentence end before them ("..., then a blue square"). Longer ones come first so "and then" is
# consumed whole rather than leaving a dangling "and"; "next to" is a place, not a connective.
_CONNECTIVES = (
    r"(?:and\s+then|after\s+that|afterwards|followed\s+by|and\s+later|later|then|next(?!\s+to\b))"
)
# Without punctuation before them, only these split: "then", "later" and "next" alone are as
# often part of a phrase ("a woman later in life", "back then")
_BARE = r"(?:and\s+then|and\s+later|and\s+afterwards|and\s+after\s+that)"
# a comma between digits groups thousands ("1,000 balloons"); it separates nothing
_SPLIT = re.compile(
    rf"\s*(?:[;。！？]|(?<!\d),|,(?!\d)|[.!?](?=\s|$))\s*(?:{_CONNECTIVES}\b)?\s*"
    rf"|\s+{_BARE}\s+",
    re.IGNORECASE,
)
_EDGE = re.compile(r"^[\s,;:.!?\-。！？]+|[\s,;:.!?\-。！？]+$")
# a caption may open with a connective ("Then a cat ..."); "Next" and "Later" open phrases
# too ("Next generation phones"), so they go only when nothing else is left of the fragment
_LEADING = re.compile(r"^(?:and\s+then|then|after\s+that|afterwards)\b\s*", re.IGNORECASE)
_ONLY_CONNECTIVE = re.compile(rf"^{_CONNECTIVES}$", re.IGNORECASE)


def split_caption(text: str) -> list[str]:
    """Split a caption narrating several events into its fragments, in order.

    Splits on ";", "," (not between digits), sentence ends, the connectives after them ("...,
    then", ". After that", "; followed by") and on "and then" / "and later" anywhere;
    "then", "next" and "later" alone do not split ("a dog sits next to a cat" is one event).
    Fragments without a letter or digit are dropped. A caption with one event comes back as a
    one-element list.
    """
    parts = [_LEADING.sub("", _EDGE.sub("", p)) for p in _SPLIT.split(text or "")]
    return [p for p in parts if any(ch.isalnum() for ch in p) and not _ONLY_CONNECTIVE.match(p)]


def truncate_to_tokens(text: str, tokenizer: Any, max_length: int) -> tuple[str, bool]:
    """Cut ``text`` to what ``tokenizer`` keeps within ``max_length`` tokens (specials included).

    Returns ``(text, truncated)``. The cut falls on a character boundary reported by the
    tokenizer's offsets, so the kept text is exactly what the model reads.
    """
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    ends = [end for start, end in enc["offset_mapping"] if end > start]
    if len(enc["input_ids"]) < max_length or not ends:
        return text, False
    cut = ends[-1]
    if not text[cut:].strip():
        return text, False
    return text[:cut].rstrip(), True


class CaptionCleaner(Step[dict, dict]):
    """Clean ``source_caption`` of clip records; mark unusable ones dropped with the reason.

    A record that is already dropped keeps its first reason: the earliest problem is the one
    a reader needs to see.
    """

    stage = "caption"

    def __init__(self, *, field: str = "source_caption") -> None:
        if not field:
            raise ValueError(f"field must be a column name, got {field!r}")
        self.field = field

    def process(self, record: Mapping[str, Any]) -> Iterator[dict]:
        out = dict(record)
        where = str(out.get("uri") or out.get("clip_id") or "")
        cleaned = clean_caption(out.get(self.field), where=where)
        out[self.field] = cleaned.text or None
        if not cleaned.ok:
            logger.info("%s: %s (%s)", out.get("clip_id", where), cleaned.reason, cleaned.note)
            if out.get("status") != DROPPED:
                out["status"] = DROPPED
                out["reason"] = cleaned.reason
            out["caption_note"] = cleaned.note
        yield out

    def process_all(self, records: Iterable[Mapping[str, Any]]) -> Iterator[dict]:
        for record in records:
            yield from self.process(record)
