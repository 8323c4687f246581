"""Shapes-world vocabulary and the caption grammar (and its parser)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: shape colours, RGB; far apart so pixel reading is unambiguous after h264 4:2:0 encoding
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (40, 220, 230),
}

#: background colours, RGB (flat colour with a faint static texture and sensor noise)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "navy": (20, 30, 90),
    "beige": (220, 205, 170),
    "brown": (100, 65, 30),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")

MOTIONS: tuple[str, ...] = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "growing",
    "shrinking",
    "still",
)

#: caption noise kinds; "clean" is the correct description
NOISE_KINDS: tuple[str, ...] = (
    "clean",
    "mismatched",
    "boilerplate",
    "truncated",
    "empty",
    "non_ascii",
)

TRANSITION_KINDS: tuple[str, ...] = ("fade", "dissolve")
DUPLICATE_KINDS: tuple[str, ...] = ("reencode", "resize", "trim")

#: minimum RGB distance between a shape colour and the background it is drawn on
MIN_CONTRAST = 120.0


#: motion names as a caption spells them (only "still" reads better with a verb)
_MOTION_PHRASES: dict[str, str] = {m: m for m in MOTIONS} | {"still": "standing still"}

BOILERPLATE: tuple[str, ...] = (
    "Stock footage: beautiful 4k background loop. royalty free",
    "HD video clip",
    "Abstract motion background. Seamless loop. 4K UHD",
    "Royalty-free stock video footage, editorial use only",
    "Video footage of abstract background, 1080p HD",
    "Animation. Loopable. Motion graphics element for your project",
    "stock video - shutterstock",
    "Creative background for presentations and titles, high quality footage",
)

NON_ASCII: tuple[str, ...] = (
    "美丽的海上日落，高清视频素材",
    "城市夜景延时摄影 4K",
    "Красивый закат над морем, видео в высоком качестве",
    "Абстрактный фон для презентаций",
    "美しい桜の花が風に揺れる",
    "東京の夜景、タイムラプス映像",
    "아름다운 해변의 일몰 풍경",
    "Ηλιοβασίλεμα πάνω από τη θάλασσα",
)

_CONNECTORS: tuple[str, ...] = (", then ", ", followed by ", "; ", ". Then ")


def _rgb_distance(a: Sequence[float], b: Sequence[float]) -> float:
    return float(math.dist(a, b))


def compatible(color: str, background: str) -> bool:
    """Whether ``color`` shapes may be drawn on ``background`` (far enough apart to read)."""
    return _rgb_distance(COLORS[color], BACKGROUNDS[background]) >= MIN_CONTRAST


# --- grammar --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneFacts:
    """What one scene shows: the grammar's four slots."""

    color: str
    shape: str
    motion: str
    background: str

    def __post_init__(self) -> None:
        for value, vocab, what in (
            (self.color, COLORS, "color"),
            (self.shape, SHAPES, "shape"),
            (self.motion, MOTIONS, "motion"),
            (self.background, BACKGROUNDS, "background"),
        ):
            if value not in vocab:
                raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(vocab)}")

    @property
    def caption(self) -> str:
        return caption_for(self.color, self.shape, self.motion, self.background)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(color: str, shape: str, motion: str, background: str) -> str:
    """The grammar's caption, e.g. ``"a red circle moving right on a navy background"``."""
    SceneFacts(color, shape, motion, background)  # validates the vocabulary
    return (
        f"{_article(color)} {color} {shape} {_MOTION_PHRASES[motion]} "
        f"on {_article(background)} {background} background"
    )


def all_captions() -> list[str]:
    """Every caption of the grammar, colour-major then shape, motion, background (1,400)."""
    return [
        caption_for(c, s, m, b)
        for c in COLORS
        for s in SHAPES
        for m in MOTIONS
        for b in BACKGROUNDS
    ]


def _alternation(words: Iterable[str]) -> str:
    # longest first so "moving up" never loses to a prefix
    return "|".join(
        re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True)
    )


_PHRASE_TO_MOTION = {phrase: m for m, phrase in _MOTION_PHRASES.items()} | {"still": "still"}
_CAPTION_RE = re.compile(
    rf"\b(?:an?\s+)?(?P<color>{_alternation(COLORS)})\s+(?P<shape>{_alternation(SHAPES)})\s+"
    rf"(?P<motion>{_alternation(_PHRASE_TO_MOTION)})\s+on\s+(?:an?\s+)?"
    rf"(?P<background>{_alternation(BACKGROUNDS)})\s+background\b",
    re.IGNORECASE,
)


def _facts_from_match(m: re.Match[str]) -> SceneFacts:
    motion = _PHRASE_TO_MOTION[" ".join(m["motion"].lower().split())]
    return SceneFacts(m["color"].lower(), m["shape"].lower(), motion, m["background"].lower())


def parse_caption(text: str | None) -> SceneFacts | None:
    """The first scene description found in ``text`` (any case and spacing), or ``None``."""
    if not text:
        return None
    m = _CAPTION_RE.search(text)
    return _facts_from_match(m) if m else None


def parse_captions(text: str | None) -> list[SceneFacts]:
    """Every scene description in ``text``, in order (a multi-scene source caption)."""
    if not text:
        return []
    return [_facts_from_match(m) for m in _CAPTION_RE.finditer(text)]


def join_captions(captions: Sequence[str], rng: np.random.Generator | None = None) -> str:
    """Join per-scene captions into one sentence with varied connectors."""
    if not captions:
        return ""
    out = captions[0]
    for cap in captions[1:]:
        conn = _CONNECTORS[int(rng.integers(len(_CONNECTORS)))] if rng is not None else ", then "
        out += conn + cap
    return out
