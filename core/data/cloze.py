"""Questions asked the way a caption-trained model reads: a cloze for its masked-word head, a
statement for its image-text matching head.

A foundation model pre-trained on captions ("two objects: a small red circle and a large blue
square.") has never seen a question. Asked through the heads it was pre-trained with, it can
answer without any VQA training (the zero-shot row), and a model fine-tuned through those heads
answers with the knowledge fine-tuning may erode:

    kind "mask":   the answer is the word the masked-LM head puts at [MASK]
                   "What color is the small circle?"  -> "one object: a small [MASK] circle."
    kind "match":  yes / no is whether the image-text matching head accepts the statement
                   "Is there a red circle left of the square?" -> "the red circle is left of
                   the square."

:func:`synth_prompt` turns every question form of the synthetic benchmark
(:mod:`pkd.data.synth_questions`) into a caption-style prompt; :func:`generic_prompt` serves real
data (VQA v2 / VQA-CP v2): the question followed by ``[MASK]`` (prompt-based fine-tuning; no
zero-shot claim). :func:`answer_word` is the word the masked-LM head should produce for an answer
(captions spell counts: "2" -> "two").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pkd.errors import PkdError

MASK = "[MASK]"  # the placeholder of a cloze; the model's tokenizer maps it to its mask token
DEFAULT_SIZE = "small"  # the size slot of a colour / shape cloze whose question names none
NUMBER_WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
                "6": "six", "7": "seven", "8": "eight", "9": "nine", "10": "ten"}


@dataclass(frozen=True)
class Prompt:
    text: str  # what the model reads; holds MASK exactly once when kind == "mask"
    kind: Literal["mask", "match"]  # answer = masked word | yes/no = does the statement match


_SYNTH = [  # (pattern on the lower-cased question without "?", kind, template)
    # captions read "two objects: a small red circle and a large blue square.": the cloze keeps
    # that frame (a count prefix, the size slot; "small" when the question names no size),
    # chosen on data draw 0's val split against shorter frames ("a [MASK] circle.": the masked
    # word then tends to be a frame word)
    (r"what color is the (?P<n>.+)", "mask", "one object: a {size} [MASK] {last}."),
    (r"what shape is the (?P<n>.+) object", "mask", "one object: a {size} {last} [MASK]."),
    (r"how many objects are there", "mask", "[MASK] objects:"),
    (r"how many (?P<n>.+) objects are there", "mask", "[MASK] {n} objects:"),
    (r"what is the color of the object (?P<r>left of|right of|above|below) the (?P<n>.+)", "mask",
     "the [MASK] object is {r} the {n}."),
    (r"what is the shape of the object (?P<r>left of|right of|above|below) the (?P<n>.+)", "mask",
     "the [MASK] is {r} the {n}."),
    (r"is there a (?P<o>.+?) (?P<r>left of|right of|above|below) the (?P<n>.+)", "match",
     "the {o} is {r} the {n}."),
]
_COMPILED = [(re.compile(p), k, t) for p, k, t in _SYNTH]


def synth_prompt(question: str) -> Prompt:
    """The caption-style prompt of a synthetic benchmark question (forms of
    :mod:`pkd.data.synth_questions`); PkdError for any other form."""
    q = question.strip().lower().rstrip("?").strip()
    for pattern, kind, template in _COMPILED:
        m = pattern.fullmatch(q)
        if m is None:
            continue
        fields = m.groupdict()
        if "{size}" in template:  # "small circle" -> size "small", last "circle"
            words = fields["n"].split()
            size = words[0] if len(words) > 1 else DEFAULT_SIZE
            return Prompt(template.format(size=size, last=words[-1]), kind)  # type: ignore[arg-type]
        return Prompt(template.format(**fields), kind)  # type: ignore[arg-type]
    raise PkdError(f"question {question!r}: not a form of the synthetic benchmark (use the "
                   "generic prompt for real data)")


def generic_prompt(question: str) -> Prompt:
    """Real data: ``"<question> [MASK]"`` (the answer is the masked word)."""
    return Prompt(f"{question.strip()} {MASK}", "mask")


def prompt_for(question: str, style: Literal["synth", "generic"]) -> Prompt:
    """:func:`synth_prompt` or :func:`generic_prompt`."""
    return synth_prompt(question) if style == "synth" else generic_prompt(question)


def answer_word(answer: str) -> str:
    """The word a caption uses for ``answer``: counts spelled out ("2" -> "two"), others as
    they are."""
    return NUMBER_WORDS.get(answer, answer)
