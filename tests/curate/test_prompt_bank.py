"""The prompt bank: a user file, the corpus' own prompts, and what is cleaned out of them."""

from __future__ import annotations

import pytest

from curate.errors import CaptionError
from curate.prompt_bank import build_prompt_bank, clean_prompt_bank, load_prompt_bank


def test_prompt_bank_files(tmp_path):
    good = tmp_path / "bank.txt"
    good.write_bytes(b"# prompts\na red circle\n\n  a blue   square \na red circle\n\xff\xfe bad\n")
    assert load_prompt_bank(good) == ["a red circle", "a blue square"]
    with pytest.raises(CaptionError, match="no usable prompt"):
        (tmp_path / "empty.txt").write_text("# nothing\n\n")
        load_prompt_bank(tmp_path / "empty.txt")
    with pytest.raises(CaptionError, match="cannot read"):
        load_prompt_bank(tmp_path / "missing.txt")
    rows = [
        {"status": "kept", "fragment": "a red circle"},
        {"status": "dropped", "fragment": "x y"},
        {"status": "kept", "source_caption": "a  blue square"},
        {"status": "kept", "fragment": "a red circle"},
    ]
    assert build_prompt_bank(rows) == ["a red circle", "a blue square"]


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        # cut mid-word: "ba" / "bro" never stand alone, but longer words of the bank start so
        (
            [
                "a red circle moving left on a brown background",
                "a white star moving up on a black ba",
                "an orange star moving right on a bro",
            ],
            ["a red circle moving left on a brown background"],
        ),
        # a prompt another one extends says less (case and spacing do not matter)
        (
            ["A red circle", "a red circle moving up", "a blue  square", "a blue square"],
            ["a red circle moving up", "a blue square"],
        ),
        # a rare last word that no longer word starts with is a whole word
        (["slow motion water", "a dog on the beach"], ["slow motion water", "a dog on the beach"]),
        # prompts compare by whole words: "a caterpillar" does not continue "a cat", and a
        # word the bank holds whole elsewhere is not cut off
        (
            ["a cat", "a black cat sleeping", "a caterpillar on a leaf"],
            ["a cat", "a black cat sleeping", "a caterpillar on a leaf"],
        ),
        # two captions cut at one length limit end alike: a last word is no proof of a word
        (
            [
                "a green circle growing on a brown bac",
                "an orange square moving up on a black bac",
                "a red circle on a navy background",
            ],
            ["a red circle on a navy background"],
        ),
        # a plural is no completion of a cut word
        (
            ["a red circle", "three red circles on a beige background"],
            ["a red circle", "three red circles on a beige background"],
        ),
        # a tail without a letter or digit adds nothing: the clean prompt stays
        (
            ["a red circle on a navy background &amp", "a red circle on a navy background"],
            ["a red circle on a navy background"],
        ),
        ([], []),
    ],
)
def test_clean_prompt_bank(prompts, expected):

    assert clean_prompt_bank(prompts) == expected


def test_bank_prompts_stand_for_one_scene_each():
    rows = [
        {"status": "kept", "fragment": "a red circle; a blue square. Then a green st"},
        {"status": "kept", "fragment": "a green star moving up"},
    ]
    # split into events; the cut tail goes, its completion stays
    assert build_prompt_bank(rows) == ["a red circle", "a blue square", "a green star moving up"]


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    bank = tmp_path / "bank.txt"
    bank.write_bytes(b"\xef\xbb\xbf# my prompts\r\na red circle\r\na blue square\r\n")
    assert load_prompt_bank(bank) == ["a red circle", "a blue square"]
    bank.write_bytes(b"\xef\xbb\xbfa red circle\n")
    assert load_prompt_bank(bank) == ["a red circle"]
