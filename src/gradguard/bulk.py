"""Bulk scoring of a JSONL file without a server: ``gradguard score --jsonl IN --out OUT``.

Each input line is one answer to score::

    {"id": "q1", "messages": [{"role": "user", "content": "..."}], "response": "..."}
    {"id": "q2", "question": "...", "context": "...", "answer": "..."}    # the rag prompt (context optional)

(``answer`` is accepted for ``response``; ``task`` on a line picks its calibration.) Each output line is
``{"id": ..., "line": n, "gradguard": ScoreResult.metadata()}``, where ``id`` is the input's ``id`` (or the
0-based line number ``n``). A line that cannot be scored (not JSON, a missing field, a chat-template error, too
long for the context window, ...) gives an output line whose ``gradguard`` is
:func:`~gradguard.result.unscored_metadata` and which carries ``error``: the run never stops on a bad line.

Output is written and flushed line by line (and fsync'ed every few lines), so an interrupted run loses at most
the line in flight. Rerunning with the same ``OUT`` resumes: the lines already in ``OUT`` (by ``line``) are
skipped and a partial last line (a crash mid-write) is cut off first. Output lines are in input order within a
run; after a resume ``OUT`` is ordered by run, so sort by ``line`` if the order matters. No NaN is ever
written (scores that are NaN become ``null``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gradguard.errors import InputError
from gradguard.result import unscored_metadata
from gradguard.serving.wire import json_safe

if TYPE_CHECKING:
    from gradguard.scorer import GradScorer

__all__ = ["BulkSummary", "score_jsonl"]

#: fsync the output every this many lines (each line is flushed as it is written).
FSYNC_EVERY = 32


@dataclass(frozen=True)
class BulkSummary:
    """What :func:`score_jsonl` did: ``scored`` and ``unscored`` lines written by this run, ``skipped`` lines
    already in the output (a resumed run), ``blank`` input lines ignored, and ``total`` input lines."""

    scored: int
    unscored: int
    skipped: int
    blank: int
    total: int

    def __str__(self) -> str:
        return (
            f"{self.scored} scored, {self.unscored} unscored, {self.skipped} skipped (already done)"
            + (f", {self.blank} blank" if self.blank else "")
            + f" of {self.total} lines"
        )


class _LineError(InputError):
    """A line that cannot be scored; its message goes to the output line's ``error``."""

    def __init__(self, message: str, record_id: Any = None) -> None:
        super().__init__(message)
        self.record_id = record_id


def _done_lines(out: Path) -> set[int]:
    """The input line numbers already in ``out``; a partial or unreadable last line is truncated away.

    A bad line that is not the last one means ``out`` is not a file this function wrote: an error, not a guess.
    """
    done: set[int] = set()
    if not out.exists():
        return done
    good_end = 0
    with out.open("rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    position = 0
    for index, raw in enumerate(lines):
        end = position + len(raw) + 1  # the newline
        is_last = index == len(lines) - 1  # after the final newline: b"" or a partial line
        if not raw.strip():
            if not is_last:
                good_end = end
            position = end
            continue
        try:
            record = json.loads(raw)
            line = record["line"]
            if not isinstance(line, int) or isinstance(line, bool) or is_last:
                raise ValueError("partial or malformed record")
        except (ValueError, KeyError, TypeError):
            remaining = b"".join(lines[index + 1 :]).strip()
            if remaining:
                raise InputError(
                    f"{out}: line {index + 1} is not a gradguard output record, and more follow; "
                    "this is not an output file of `gradguard score --jsonl` (choose another --out)"
                ) from None
            break
        done.add(line)
        good_end = end
        position = end
    if good_end < len(data):
        with out.open("r+b") as f:
            f.truncate(good_end)
    return done


def _read_lines(src: Path) -> Iterator[tuple[int, str]]:
    with src.open("r", encoding="utf-8", errors="replace") as f:
        yield from enumerate(f)


def _count_lines(src: Path) -> int:
    with src.open("rb") as f:
        return sum(1 for _ in f)


def _parse(text: str, default_task: str | None) -> tuple[Any, list[dict[str, Any]], str, str | None]:
    """``(id, messages, response, task)`` of one input line, or :class:`_LineError`."""
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise _LineError(f"not JSON: {exc}") from None
    if not isinstance(record, Mapping):
        raise _LineError(f"a line must be a JSON object, not {type(record).__name__}")
    record_id = record.get("id")
    response = record.get("response", record.get("answer"))
    if not isinstance(response, str):
        raise _LineError('missing "response" (a string): the answer to score', record_id)
    task = record.get("task", default_task)
    if task is not None and not isinstance(task, str):
        raise _LineError('"task" must be a string', record_id)
    messages = record.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
            raise _LineError('"messages" must be a list of {"role", "content"} objects', record_id)
        return record_id, [dict(m) for m in messages], response, task
    question = record.get("question")
    if not isinstance(question, str):
        raise _LineError('missing "messages" (a list of chat messages) or "question" (a string)', record_id)
    context = record.get("context")
    if context is None:
        return record_id, [{"role": "user", "content": question}], response, task
    if not isinstance(context, str):
        raise _LineError('"context" must be a string', record_id)
    from gradguard.tasks import BUILTIN_TASKS

    rag = BUILTIN_TASKS["rag"]
    return record_id, rag.messages(question, context), response, task or rag.name


def _write(f: IO[str], record: dict[str, Any]) -> None:
    f.write(json.dumps(json_safe(record), ensure_ascii=False, allow_nan=False) + "\n")
    f.flush()


def score_jsonl(
    scorer: GradScorer,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    task: str | None = None,
    progress: bool = True,
) -> BulkSummary:
    """Score every line of the JSONL file ``src`` into ``out`` (see the module docstring for both formats).

    ``task`` is the calibration task of lines without their own ``task`` (default: the scorer's; a line with
    ``context`` defaults to ``rag``). ``progress`` shows a tqdm bar on stderr. Resumes from an existing ``out``.
    """
    from tqdm.auto import tqdm

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise InputError(f"--jsonl {src}: no such file")
    if src.resolve() == out.resolve():
        raise InputError(f"--out {out} is the input file; choose another path")
    done = _done_lines(out)
    total = _count_lines(src)
    scored = unscored = skipped = blank = 0
    model = getattr(scorer, "model_name", None)
    bar = tqdm(total=total, desc="score", unit="line", disable=not progress)
    since_sync = 0
    with out.open("a", encoding="utf-8") as f:
        try:
            for n, text in _read_lines(src):
                bar.update(1)
                if n in done:
                    skipped += 1
                    continue
                if not text.strip():
                    blank += 1
                    continue
                record_id: Any = None
                try:
                    try:
                        record_id, messages, response, line_task = _parse(text, task)
                    except _LineError as exc:
                        record_id = exc.record_id
                        raise
                    result = scorer.score(messages, response, task=line_task)
                    record: dict[str, Any] = {
                        "id": n if record_id is None else record_id, "line": n, "gradguard": result.metadata(),
                    }
                    if result.scored:
                        scored += 1
                    else:
                        unscored += 1
                except Exception as exc:  # noqa: BLE001 - any failure on one line is that line's error, not the run's
                    error = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
                    record = {
                        "id": n if record_id is None else record_id,
                        "line": n,
                        "gradguard": unscored_metadata(error, model=model),
                        "error": error,
                    }
                    unscored += 1
                _write(f, record)
                since_sync += 1
                if since_sync >= FSYNC_EVERY:
                    os.fsync(f.fileno())
                    since_sync = 0
        finally:
            f.flush()
            os.fsync(f.fileno())
            bar.close()
    return BulkSummary(scored=scored, unscored=unscored, skipped=skipped, blank=blank, total=total)
