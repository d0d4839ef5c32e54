"""Reading question-answer and paraphrase JSONL files; the short-answer system prompt; file digests.

Two line formats are read:

- QA: ``{"query": str, "truthful answer": [str, ...]}`` (``"question"`` is accepted in place of
  ``"query"``; ``"answers"`` or ``"answer"`` in place of ``"truthful answer"``), with optional
  ``"context"`` (str, the passage a RAG prompt supplies), ``"is_impossible"`` (bool: the context
  does not answer the question, so the right response is to decline), ``"title"`` (str, the
  cross-validation group: questions sharing a title never fall on both sides of a fold) and
  ``"id"``. The gold answer list may be empty only when ``is_impossible`` is true, so SQuAD 2.0
  lines read as they are.
- Paraphrases (``paraphrase.jsonl``): ``{"query": str, "paraphrases": [str, ...], ...}``.

Blank lines are skipped. A malformed line raises :class:`DataFormatError` naming the
file and the line number. Nothing is copied or cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gradguard.errors import InputError

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DataFormatError",
    "QAItem",
    "ParaphraseGroup",
    "file_sha256",
    "iter_jsonl",
    "load_qa",
    "load_paraphrase_groups",
    "qa_messages",
]

#: The system message used for short-answer QA everywhere in gradguard's profiling,
#: calibration and evaluation (keep it identical between calibration and use).
DEFAULT_SYSTEM_PROMPT = "Answer with only the answer itself: a word or a short phrase, not a sentence."

_ANSWER_KEYS = ("truthful answer", "answers", "answer")


class DataFormatError(InputError):
    """A data file is missing, or one of its lines is not in the expected format."""


@dataclass(frozen=True)
class QAItem:
    """One question with its gold answers; ``index`` is the 0-based line order among non-blank lines.

    ``context`` is the passage a RAG prompt supplies (None for closed-book questions);
    ``is_impossible`` marks a question the context does not answer (declining is correct);
    ``group`` is the cross-validation fold key (the line's ``title``, else its context, else the index).
    """

    index: int
    query: str
    answers: tuple[str, ...]
    context: str | None = None
    is_impossible: bool = False
    title: str | None = None
    id: str | None = None

    @property
    def group(self) -> str:
        """The fold key: questions with the same key are never split across folds."""
        if self.title:
            return f"title:{self.title}"
        if self.context:
            return f"context:{hashlib.sha256(self.context.encode()).hexdigest()[:16]}"
        return f"index:{self.index}"


@dataclass(frozen=True)
class ParaphraseGroup:
    """A query and its paraphrases (``variants`` = the query first, then the paraphrases)."""

    index: int
    query: str
    paraphrases: tuple[str, ...]

    @property
    def variants(self) -> tuple[str, ...]:
        """The query followed by its paraphrases."""
        return (self.query, *self.paraphrases)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (recorded in profiles so a figure names the data it came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, object]]]:
    """Yield ``(line_number, object)`` for every non-blank line; line numbers start at 1."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"data file {str(path)!r} does not exist; pass the path of a JSONL file")
    with p.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line"
                ) from exc
            if not isinstance(obj, dict):
                raise DataFormatError(
                    f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}; fix that line"
                )
            yield lineno, obj


def _query(path: str | os.PathLike[str], lineno: int, obj: dict[str, object]) -> str:
    key = "query" if "query" in obj else "question"
    query = obj.get(key)
    if not isinstance(query, str) or not query.strip():
        has_context = isinstance(obj.get("context"), str)
        raise DataFormatError(
            f"{path}:{lineno}: missing or empty \"{key}\" (got {query!r})"
            + (" on a line with a \"context\"" if has_context else "")
            + "; every line needs a non-empty \"query\" (or \"question\") string"
        )
    return query.strip()


def _optional_str(path: str | os.PathLike[str], lineno: int, obj: dict[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataFormatError(f"{path}:{lineno}: \"{key}\" must be a string, got {value!r}; fix that line")
    return value.strip() or None


def _string_list(
    path: str | os.PathLike[str], lineno: int, key: str, value: object, *, allow_str: bool = False
) -> tuple[str, ...]:
    if isinstance(value, str) and allow_str:
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataFormatError(f"{path}:{lineno}: \"{key}\" must be a list of strings, got {value!r}; fix that line")
    return tuple(v.strip() for v in value if v.strip())


def load_qa(path: str | os.PathLike[str], n: int | None = None, *, shuffle_seed: int | None = None) -> list[QAItem]:
    """``n`` (all if None) questions of a QA JSONL file: the first ``n`` in file order, or — with
    ``shuffle_seed`` — ``n`` drawn at random (every line is read and validated first)."""
    if n is not None and n < 1:
        raise DataFormatError(f"n={n} must be a positive number of questions (or None for all)")
    if shuffle_seed is not None:
        import random

        everything = load_qa(path)
        random.Random(shuffle_seed).shuffle(everything)
        return everything[:n] if n is not None else everything
    items: list[QAItem] = []
    for lineno, obj in iter_jsonl(path):
        query = _query(path, lineno, obj)
        impossible = obj.get("is_impossible", False)
        if not isinstance(impossible, bool):
            raise DataFormatError(
                f"{path}:{lineno}: \"is_impossible\" must be true or false, got {impossible!r}; write a JSON boolean"
            )
        key = next((k for k in _ANSWER_KEYS if k in obj), None)
        if key is None and not impossible:
            raise DataFormatError(
                f"{path}:{lineno}: no gold answers; add a \"truthful answer\" list (or \"answers\") to that line, "
                "or mark it \"is_impossible\": true if the context does not answer it"
            )
        answers = _string_list(path, lineno, key, obj[key], allow_str=True) if key is not None else ()
        if not answers and not impossible:
            raise DataFormatError(
                f"{path}:{lineno}: \"{key}\" is empty on an answerable question; give at least one gold answer, "
                "or mark it \"is_impossible\": true"
            )
        ident = obj.get("id")
        items.append(
            QAItem(
                index=len(items),
                query=query,
                answers=answers,
                context=_optional_str(path, lineno, obj, "context"),
                is_impossible=impossible,
                title=_optional_str(path, lineno, obj, "title"),
                id=str(ident) if ident is not None else None,
            )
        )
        if n is not None and len(items) >= n:
            break
    if not items:
        raise DataFormatError(f"{path} holds no questions; pass a JSONL file with one question per line")
    return items


def load_paraphrase_groups(path: str | os.PathLike[str], n: int | None = None) -> list[ParaphraseGroup]:
    """The first ``n`` (all if None) queries with at least one paraphrase, in file order.

    A line without a ``"paraphrases"`` list, or with an invalid one, raises
    :class:`DataFormatError` with its line number.
    """
    if n is not None and n < 2:
        raise DataFormatError(f"n={n} queries is too few: SPS compares different queries, use at least 2")
    groups: list[ParaphraseGroup] = []
    for lineno, obj in iter_jsonl(path):
        query = _query(path, lineno, obj)
        if "paraphrases" not in obj:
            raise DataFormatError(
                f"{path}:{lineno}: no \"paraphrases\" list; every line needs the query's paraphrases"
            )
        paras = tuple(p for p in _string_list(path, lineno, "paraphrases", obj["paraphrases"]) if p != query)
        if not paras:
            raise DataFormatError(f"{path}:{lineno}: \"paraphrases\" is empty; give at least one paraphrase")
        groups.append(ParaphraseGroup(index=len(groups), query=query, paraphrases=paras))
        if n is not None and len(groups) >= n:
            break
    if len(groups) < 2:
        raise DataFormatError(f"{path} holds {len(groups)} usable queries; SPS needs at least 2")
    return groups


def qa_messages(query: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The chat messages used to ask one short-answer question (system message, then the question)."""
    msgs: list[dict[str, str]] = []
    if system_prompt:
        msgs.append({"role": "system", "content": system_prompt})
    msgs.append({"role": "user", "content": query})
    return msgs
