"""Re-captioning: turn each video's scenes into a timed prompt sequence (a stories row)."""

from __future__ import annotations

import re

# Connectives that start a new event in WebVid-style narration. Longer ones come first so
# "and then" is consumed whole rather than leaving a dangling "and".
_CONNECTIVES = r"(?:and\s+then|after\s+that|afterwards|followed\s+by|and\s+later|later|then|next)"
_SPLIT = re.compile(
    rf"\s*(?:[;,。！？]|[.!?](?=\s|$))\s*(?:{_CONNECTIVES}\b)?\s*|\s+{_CONNECTIVES}\s+",
    re.IGNORECASE,
)
_EDGE = re.compile(r"^[\s,;:.!?\-。！？]+|[\s,;:.!?\-。！？]+$")
_LEADING = re.compile(rf"^{_CONNECTIVES}\b\s*", re.IGNORECASE)


def split_caption(text: str) -> list[str]:
    """Split a caption narrating several events into its fragments, in order.

    Splits on ";", ",", sentence ends and "then" / "and then" / "after that" / "followed
    by"; fragments without a letter or digit are dropped. A caption with one event comes back
    as a one-element list.
    """
    parts = [_LEADING.sub("", _EDGE.sub("", p)) for p in _SPLIT.split(text or "")]
    return [p for p in parts if any(ch.isalnum() for ch in p)]
