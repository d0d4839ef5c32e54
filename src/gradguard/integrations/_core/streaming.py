"""Streaming a scorer generation from a worker thread: whole tokens only, stop strings held back, cancel on leave."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from gradguard.result import ScoreResult

__all__ = ["StreamPiece", "stream_generation"]

logger = logging.getLogger(__name__)


class StreamPiece(NamedTuple):
    """One piece of a streamed answer: new ``text``, and on the last piece only, the answer's ``result``."""

    text: str
    result: ScoreResult | None = None


def stream_generation(
    tokenizer: Any,
    run: Callable[[Any, threading.Event], ScoreResult],
    stop: Sequence[str],
    *,
    prefix_ids: Sequence[int] = (),
) -> Iterator[StreamPiece]:
    """Run ``run(streamer, cancel)`` (a scorer generation) in a worker thread and stream its text.

    ``prefix_ids``: tokens the answer starts with that the model did not generate (a prefill); they are
    streamed first. When the consumer leaves early, ``cancel`` is set: generation stops at the next token
    and nothing is scored.
    """
    feed = _TokenFeed()
    cancel = threading.Event()

    def work() -> None:
        try:
            feed.items.put(("result", run(feed, cancel)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
            feed.items.put(("error", exc))

    worker = threading.Thread(target=work, name="gradguard-stream", daemon=True)
    worker.start()
    ids: list[int] = list(prefix_ids)
    sent = ""
    try:
        while True:
            kind, payload = feed.items.get()
            if kind == "ids":
                ids.extend(payload)
                safe = _safe_prefix(tokenizer, ids, stop)
                if len(safe) > len(sent) and safe.startswith(sent):
                    yield StreamPiece(safe[len(sent) :])
                    sent = safe
            elif kind == "error":
                raise payload
            else:
                result: ScoreResult = payload
                if not result.response.startswith(sent):
                    logger.warning("streamed %r is not a prefix of the scored answer %r", sent, result.response)
                rest = result.response[len(sent) :] if result.response.startswith(sent) else ""
                yield StreamPiece(rest, result)
                return
    finally:
        cancel.set()  # no-op once generation is over; stops it when the consumer left early


class _TokenFeed:
    """A transformers streamer that hands generated token ids (not the prompt) to a queue."""

    def __init__(self) -> None:
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.items.put(("ids", [int(v) for v in value.reshape(-1).tolist()]))

    def end(self) -> None:
        """Generation ended; the result (or error) follows from the worker."""


def _safe_prefix(tokenizer: Any, ids: Sequence[int], stop: Sequence[str]) -> str:
    """The longest decoded prefix of whole tokens that the scored answer is sure to keep.

    Tokens that overlap a stop string (or text that may still grow into one) and a trailing
    incomplete character are held back, as the scorer drops the tokens from the first one
    that overlaps a stop string.
    """
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    stable = text.rstrip("\ufffd")  # an incomplete character may still complete a stop string
    limit = min(hits) if hits else len(stable) - _held_back(stable, stop)
    n = len(ids)
    while n > 0:
        prefix = text if n == len(ids) else tokenizer.decode(list(ids[:n]), skip_special_tokens=True)
        if len(prefix) <= limit and text.startswith(prefix) and not prefix.endswith("\ufffd"):
            return prefix
        n -= 1
    return ""


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-n:]):
                best = n
                break
    return best
