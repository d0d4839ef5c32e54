"""Correctness judges for short answers (is the model's answer one of the gold answers?).

Both judges first **normalise** text: Unicode NFKC, lower case, accents are stripped, every
character that is not a letter or digit becomes a space, the articles *a/an/the* are dropped, and runs of
spaces collapse to one ("The Sun!" → "sun"; "iron-deficiency" → "iron deficiency").

- ``containment`` (the default): correct when some normalised gold answer occurs in the
  normalised response **starting at a word boundary** ("darwin" in "charles darwin
  proposed it"; "iron def" in "iron deficiency anemia"; but "ion" is not found in
  "lion"). A gold answer may end inside a word, which accepts plurals and truncated
  gold strings. It is lenient with long responses that mention the answer among others.
- ``f1``: SQuAD-style token F1 between the normalised response and the best gold answer;
  correct when F1 ≥ 0.5 (by default). It penalises long responses that bury the answer.

A judge's label is what the calibrated confidence predicts: a confidence calibrated with
one judge means "P(correct according to that judge)".
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gradguard.errors import InputError

__all__ = ["Judge", "ContainmentJudge", "TokenF1Judge", "JUDGES", "get_judge", "normalize_answer", "token_f1"]

_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lower-cased, punctuation-free, article-free text with single spaces."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = "".join(ch if ch.isalnum() else " " for ch in t)
    t = unicodedata.normalize("NFKD", t)
    t = "".join(ch for ch in t if not unicodedata.combining(ch))
    return " ".join(w for w in t.split() if w not in _ARTICLES)


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between two texts after :func:`normalize_answer`."""
    p = normalize_answer(prediction).split()
    g = normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision = common / len(p)
    recall = common / len(g)
    return 2 * precision * recall / (precision + recall)


class Judge(Protocol):
    """Decides whether a response answers the question, given the gold answers."""

    @property
    def name(self) -> str:
        """The judge's name, as recorded in a calibration (``containment``, ``f1``)."""
        ...

    def __call__(self, response: str, golds: Sequence[str]) -> bool:
        """True when ``response`` counts as correct."""
        ...


@dataclass(frozen=True)
class ContainmentJudge:
    """Correct when a normalised gold answer appears in the normalised response at a word start."""

    name: str = "containment"

    def __call__(self, response: str, golds: Sequence[str]) -> bool:
        """True when some gold answer is contained in ``response`` (see the module docstring)."""
        r = normalize_answer(response)
        if not r:
            return False
        padded = " " + r
        for gold in golds:
            g = normalize_answer(gold)
            if g and (" " + g) in padded:
                return True
        return False


@dataclass(frozen=True)
class TokenF1Judge:
    """Correct when the best token F1 against the gold answers reaches ``threshold``."""

    threshold: float = 0.5
    name: str = "f1"

    def __call__(self, response: str, golds: Sequence[str]) -> bool:
        """True when ``max(token_f1(response, g)) >= threshold``."""
        if not normalize_answer(response):
            return False
        return max((token_f1(response, g) for g in golds), default=0.0) >= self.threshold


#: Judges by name.
JUDGES: dict[str, Judge] = {"containment": ContainmentJudge(), "f1": TokenF1Judge()}


def get_judge(name: str) -> Judge:
    """The judge called ``name`` (``containment`` or ``f1``)."""
    try:
        return JUDGES[name]
    except KeyError:
        raise InputError(f"unknown judge {name!r}; choose one of {sorted(JUDGES)}") from None
