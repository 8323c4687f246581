"""Caption cleaning: every kind of bad caption gets a status and a reason, never a crash; and
splitting a caption into the events it narrates."""

from __future__ import annotations

import numpy as np
import pytest

from curate.captions import (
    CaptionCleaner,
    CleanCaption,
    clean_caption,
    decode_caption,
    normalize_caption,
    split_caption,
)
from curate.errors import CaptionError
from schemas.tables import INVALID_CAPTION


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  a red   circle\n moves\tleft  ", "a red circle moves left"),
        ("cafe\u0301 scene", "caf\u00e9 scene"),  # NFD -> NFC
        ("a\x00red\x07circle", "a red circle"),
    ],
    ids=["whitespace", "nfc", "control-chars"],
)
def test_normalize(raw, expected):
    assert normalize_caption(raw) == expected
    assert clean_caption(raw).text == expected


@pytest.mark.parametrize(
    "raw", ["", "   ", "\n\t ", None], ids=["empty", "spaces", "newlines", "none"]
)
def test_empty_caption_gets_empty_status(raw):
    out = clean_caption(raw)
    assert out.reason == "empty_caption" and not out.ok and out.text == ""


def test_invalid_utf8_bytes_name_the_byte():
    raw = b"a red \xff circle"
    with pytest.raises(CaptionError) as err:
        decode_caption(raw, where="videos/v1.mp4")
    assert "0xff" in str(err.value) and "offset 6" in str(err.value)
    assert err.value.uri == "videos/v1.mp4" and err.value.stage == "caption"
    out = clean_caption(raw)
    assert out.reason == "invalid_caption" and "0xff" in out.note


def test_valid_utf8_bytes_decode():
    assert clean_caption("un cercle rouge é".encode()).text == "un cercle rouge é"


def test_replacement_char_and_punctuation_only_are_invalid():
    assert clean_caption("a red \ufffd circle").reason == "invalid_caption"
    assert clean_caption("!!! ...").reason == "invalid_caption"
    assert clean_caption(12).reason == "invalid_caption"


def test_other_scripts_are_kept():
    for text in ("赤い円が左に動く", "красный круг движется", "دائرة حمراء"):
        out = clean_caption(text)
        assert out.ok and out.text == text


def test_long_caption_is_kept_whole_here():
    # truncation to the model's context happens where the tokenizer is known (the scorer)
    assert clean_caption("word " * 2000).text == ("word " * 2000).strip()


def test_cleaner_step_marks_records_and_keeps_first_reason():
    step = CaptionCleaner()
    rows = [
        {"clip_id": "a", "source_caption": "  a  red circle ", "status": "kept", "reason": None},
        {"clip_id": "b", "source_caption": "   ", "status": "kept", "reason": None},
        {"clip_id": "c", "source_caption": b"\xc3\x28", "status": "kept", "reason": None},
        {"clip_id": "d", "source_caption": "", "status": "dropped", "reason": "too_short"},
    ]
    out = {r["clip_id"]: r for r in step.process_all(rows)}
    assert out["a"]["source_caption"] == "a red circle" and out["a"]["status"] == "kept"
    assert (out["b"]["status"], out["b"]["reason"]) == ("dropped", "empty_caption")
    assert out["b"]["source_caption"] is None
    assert (out["c"]["status"], out["c"]["reason"]) == ("dropped", "invalid_caption")
    assert "UTF-8" in out["c"]["caption_note"]
    assert out["d"]["reason"] == "too_short"


def test_cleaner_validates_settings():
    with pytest.raises(ValueError, match="''"):
        CaptionCleaner(field="")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a red circle moving up on a navy background",
            ["a red circle moving up on a navy background"],
        ),
        ("a red circle, then a blue square", ["a red circle", "a blue square"]),
        (
            "a red circle, followed by a blue square; a green star",
            ["a red circle", "a blue square", "a green star"],
        ),
        ("A red circle. Then a blue square.", ["A red circle", "a blue square"]),
        ("a red circle and then a blue square", ["a red circle", "a blue square"]),
        ("a red circle. After that, a blue square", ["a red circle", "a blue square"]),
        ("then a cat", ["a cat"]),
        ("", []),
        (" ; , . ", []),
        ("赤い円。青い四角", ["赤い円", "青い四角"]),
        # "next", "later" and "then" inside a phrase, a thousands separator: one event
        ("a dog sits next to a cat", ["a dog sits next to a cat"]),
        ("a dog sits, next to a cat", ["a dog sits", "next to a cat"]),
        ("a woman later in life reading", ["a woman later in life reading"]),
        ("a red circle then a blue square", ["a red circle then a blue square"]),
        ("Next generation smartphone on a table", ["Next generation smartphone on a table"]),
        ("1,000 balloons rising, then 20,000 more", ["1,000 balloons rising", "20,000 more"]),
        # after a comma or a sentence end they start the next event
        ("a dog sits. Next, a cat runs", ["a dog sits", "a cat runs"]),
        ("Later, a cat comes", ["a cat comes"]),
        ("a red circle and later a blue square", ["a red circle", "a blue square"]),
    ],
)
def test_split_caption(text, expected):
    assert split_caption(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Tom &amp; Jerry chase each other", ["Tom & Jerry chase each other"]),
        ("Rock &#39;n&#39; roll guitarist on stage", ["Rock 'n' roll guitarist on stage"]),
        ("a red circle &lt;HD&gt;, then a blue square", ["a red circle <HD>", "a blue square"]),
    ],
)
def test_html_character_references_are_decoded_before_splitting(raw, expected):
    cleaned = clean_caption(raw)
    assert cleaned.ok and split_caption(cleaned.text) == expected


def test_split_matches_the_shapes_world_connectors():
    from curate.shapes import caption_for, join_captions

    caps = [
        caption_for("red", "circle", "moving up", "navy"),
        caption_for("blue", "star", "still", "beige"),
        caption_for("green", "ring", "growing", "black"),
        caption_for("white", "square", "shrinking", "brown"),
    ]
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert split_caption(join_captions(caps, rng)) == caps


def test_a_lone_surrogate_is_an_invalid_caption_not_a_crash_at_the_writer():
    """JSON's "\\ud83d" (half of an emoji's pair) reaches the cleaner as a lone surrogate,
    which no Parquet writer can encode."""
    got = clean_caption("a red circle \ud83d moving")
    assert (got.text, got.reason) == ("", INVALID_CAPTION)
    assert got.note == "caption is not valid Unicode (lone surrogate U+D83D)"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("Tom &#0; Jerry", "Tom Jerry"),  # a reference to no character: dropped like a NUL
        ("\ufeffa dog", "a dog"),  # byte-order mark
        ("a red\u200b circle", "a red circle"),  # zero-width space
        ("\u202eA dog runs\u202c", "A dog runs"),  # direction override
        ("a family: 👨\u200d👩\u200d👧", "a family: 👨\u200d👩\u200d👧"),  # joiners stay
        ("&lt;i&gt;A dog&lt;/i&gt; runs &lt;br /&gt;", "A dog runs"),
        ("<b>bold</b> dog <SPAN class='x'>jumps</SPAN>", "bold dog jumps"),
        ("a <3 heart, x < y > z", "a <3 heart, x < y > z"),  # not markup
        ("a<b and c>d", "a<b and c>d"),  # a tag's name, but not a tag's shape
        ('<a href="http://x" target=_blank>link</a> text', "link text"),
    ],
)
def test_invisible_characters_and_markup_leave_the_caption(raw, text):
    assert clean_caption(raw) == CleanCaption(text)


def test_invisible_characters_do_not_split_one_prompt_into_several():
    from curate.prompt_bank import clean_prompt_bank

    bank = ["\ufeffa red circle", "a red circle moving up", "a red\u200b circle"]
    assert clean_prompt_bank(bank) == ["a red circle moving up"]
