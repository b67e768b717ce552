"""Answer normalization: every quirk of the official vqaEval.py, values worked out by hand."""

from __future__ import annotations

import pytest

from pkd.data.normalize import (
    clean_whitespace,
    normalize_answer,
    preprocess_answer,
    process_digit_article,
    process_punctuation,
)


@pytest.mark.parametrize(("text", "expected"), [
    # no space next to the mark, no digit,digit group: the mark becomes a space
    ("t-shirt", "t shirt"),
    ("red,blue", "red blue"),
    ("left/right", "left right"),
    ("why?", "why "),
    # a space next to the mark (p + " " or " " + p in the text): deleted, no space added
    ("t - shirt", "t  shirt"),
    ("red, blue", "red blue"),
    ("why ?", "why "),
    # the test is per mark: "(" has a space before it (deleted), ")" has none (-> space)
    ("x (a)", "x a "),
    # commaStrip quirk: one digit,digit group anywhere deletes EVERY mark without a space
    ("1,000 t-shirts", "1000 tshirts"),
    ("(2,5)", "25"),
    # marks not in the official list are left alone
    ("don't", "don't"),
    ("10:30", "10:30"),
])
def test_punctuation_marks(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("3.5", "3.5"),  # period followed by a digit is kept
    ("yes.", "yes"),  # otherwise deleted
    ("5.", "5"),
    ("a.b", "ab"),
    (".5", ".5"),
    ("1.5.", "1.5"),
])
def test_period_strip(text, expected):
    assert process_punctuation(text) == expected


def test_period_strip_stops_after_32_deletions():
    # the official code passes re.UNICODE (== 32) as Pattern.sub's count argument
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("x" + ". " * 33) == "x" + " " * 32 + ". "


@pytest.mark.parametrize(("text", "expected"), [
    ("Two", "2"),
    ("none", "0"),
    ("zero one two three four five six seven eight nine ten", "0 1 2 3 4 5 6 7 8 9 10"),
    ("eleven", "eleven"),  # the map stops at ten
    ("the dog", "dog"),
    ("A Dog", "dog"),
    ("an apple and the pear", "apple and pear"),
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("Im", "im"),  # capitalized keys of the official map never match after lower-casing
    ("  many   spaces\there ", "many spaces here"),
])
def test_digit_article(text, expected):
    assert process_digit_article(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes.", "yes"),
    ("The two dogs!", "2 dogs"),
    ("T-Shirt", "t shirt"),
    ("1,000", "1000"),
    ("A couple, maybe 3.5", "couple maybe 3.5"),
    ("dont know", "don't know"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_preprocess_answer_is_normalize_without_commas():
    assert preprocess_answer("Two, maybe") == "2 maybe"
    assert preprocess_answer("yes") == normalize_answer("yes") == "yes"


def test_clean_whitespace():
    assert clean_whitespace("\tyes\nno \n") == "yes no"
