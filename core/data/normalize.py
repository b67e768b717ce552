"""VQA answer normalization, ported faithfully from the official evaluation code.

Source: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (class ``VQAEval``,
methods ``processPunctuation`` and ``processDigitArticle``; the lists below are copied from its
``__init__``: ``punct``, ``periodStrip``, ``commaStrip``, ``manualMap``, ``articles``,
``contractions``). https://github.com/GT-Vision-Lab/VQA (master). The same functions are copied
verbatim into hengyuan-hu/bottom-up-attention-vqa ``tools/compute_softscore.py``.

Quirks kept on purpose (scores must equal the official ones):

- ``process_punctuation``: each punctuation mark ``p`` is deleted (no space) when the *original*
  text contains ``p + " "`` or ``" " + p`` **or when it contains any digit,digit group anywhere**
  (``commaStrip`` matches, e.g. "1,000"); otherwise ``p`` is replaced by a space. So
  ``"t-shirt"`` -> ``"t shirt"``, ``"t - shirt"`` -> ``"t  shirt"``, but
  ``"1,000 t-shirts"`` -> ``"1000 tshirts"``. ``'``, ``:`` and ``.`` are not in the list.
- ``periodStrip`` is ``(?!<=\\d)(\\.)(?!\\d)``: the ``(?!<=\\d)`` typo makes it a no-op lookahead,
  so the rule is "delete a period not followed by a digit": ``"3.5"`` stays, ``"yes."`` ->
  ``"yes"``, ``"5."`` -> ``"5"``. The official call passes ``re.UNICODE`` (= 32) positionally,
  which is the ``count`` argument: at most 32 periods are deleted.
- ``process_digit_article``: lower-case, split on whitespace, map number words ``none``/``zero``
  ..``ten`` to digits, drop the articles a/an/the, then expand contractions (``"dont"`` ->
  ``"don't"``); keys with capitals (``"Im"``) can never match after lower-casing.
"""

from __future__ import annotations

import re
from functools import lru_cache

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # official typo kept: means \.(?!\d)
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
PERIOD_STRIP_COUNT = re.UNICODE  # official passes re.UNICODE (32) as Pattern.sub's `count`

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation`` (see the module docstring for its quirks)."""
    out = text
    comma_group = COMMA_STRIP.search(text) is not None  # tested on the original text
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or comma_group:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower, number words to digits, articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def clean_whitespace(text: str) -> str:
    """Official first step for every answer: newlines and tabs -> spaces, then ``strip()``."""
    return text.replace("\n", " ").replace("\t", " ").strip()


@lru_cache(maxsize=1 << 18)
def normalize_answer(text: str) -> str:
    """``process_digit_article(process_punctuation(text))``: the official full normalization.

    The official metric applies it only to questions whose 10 answers are not all identical
    (see :mod:`pkd.data.metric`); vocabularies use :func:`preprocess_answer`.
    """
    return process_digit_article(process_punctuation(text))


@lru_cache(maxsize=1 << 18)
def preprocess_answer(text: str) -> str:
    """Answer key of the bottom-up-attention-vqa vocabulary (``preprocess_answer`` there).

    ``normalize_answer(text)`` with every remaining ``,`` deleted
    (hengyuan-hu/bottom-up-attention-vqa, ``tools/compute_softscore.py``).
    """
    return normalize_answer(text).replace(",", "")
