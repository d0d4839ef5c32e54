"""The ``response_metadata["gradguard"]`` schema, reading it back, and the signal a guard reads.

Every completion scored by gradguard carries, under ``message.response_metadata["gradguard"]``,
the schema shared with the LlamaIndex integration (:meth:`gradguard.ScoreResult.metadata`)::

    {"confidence": float | None,          # calibrated P(correct); None when uncalibrated
     "uncertainty": {"hybridgrad", "semgrad", "paragrad", "exgrad",
                     "g_nll", "mean_nll", "mean_entropy"},   # larger = less confident; None for NaN
     "model": str | None, "profile": str | None,
     "spt_offset": int, "n_response_tokens": int,
     "scored": bool}                        # False: no usable score, treat as unconfident

A completion that could not be scored carries the same keys with ``None`` values,
``"scored": False`` and an ``"error"`` string. Guards (:class:`GuardSignal`) fail closed:
missing metadata, ``scored=False`` or a NaN/None value is *unconfident*.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import model_validator

from gradguard.result import ScoreResult
from gradguard.routing import GuardSignal as _CoreGuardSignal
from gradguard.routing import GuardSignalError
from gradguard.routing.signal import SIGNALS, SignalReading, is_scored, unscored_metadata

__all__ = [
    "GRADGUARD_KEY",
    "GUARD_KEY",
    "ROUTE_KEY",
    "SIGNALS",
    "GuardConfigError",
    "GuardSignal",
    "SignalReading",
    "is_scored",
    "openai_logprobs",
    "read_metadata",
    "remember_result",
    "result_for",
    "score_metadata",
    "unscored_metadata",
]

#: Key of the score metadata in ``AIMessage.response_metadata``.
GRADGUARD_KEY = "gradguard"
#: Key of a :class:`~gradguard.integrations.langchain.ConfidenceGuardParser` verdict.
GUARD_KEY = "gradguard_guard"
#: Key of a :class:`~gradguard.integrations.langchain.ConfidenceRouter` outcome.
ROUTE_KEY = "gradguard_route"


class GuardConfigError(GuardSignalError):
    """A guard was configured with an unusable signal or threshold (the message names the value and the fix).

    A :class:`gradguard.routing.GuardSignalError`, so code that catches the core error catches it too.
    """


def score_metadata(result: ScoreResult) -> dict[str, Any]:
    """The shared metadata dict of one scored completion (JSON-able; NaN scores become ``None``)."""
    return result.metadata()


def read_metadata(obj: Any) -> dict[str, Any] | None:
    """The gradguard metadata of ``obj``, or ``None`` when it has none.

    ``obj`` may be a message (``response_metadata["gradguard"]``), a ``ChatGeneration``
    (its message), a :class:`~gradguard.ScoreResult`, a ``response_metadata`` mapping,
    or the gradguard dict itself.
    """
    if isinstance(obj, ScoreResult):
        return obj.metadata()
    message = getattr(obj, "message", None)
    if message is not None and hasattr(message, "response_metadata"):
        obj = message
    response_metadata = getattr(obj, "response_metadata", None)
    if isinstance(response_metadata, Mapping):
        obj = response_metadata
    if not isinstance(obj, Mapping):
        return None
    if GRADGUARD_KEY in obj:
        inner = obj[GRADGUARD_KEY]
        return dict(inner) if isinstance(inner, Mapping) else None
    if "uncertainty" in obj and "confidence" in obj:
        return dict(obj)
    return None


class GuardSignal(_CoreGuardSignal):
    """The number a guard reads and the line it draws: :class:`gradguard.routing.GuardSignal`
    (same fields, constructors and fail-closed reading), raising :class:`GuardConfigError`, plus
    :meth:`read` for LangChain messages and generations.

    - ``name="confidence"`` (default): the calibrated probability that the answer is correct;
      the answer passes when ``confidence >= min_confidence`` (``threshold``, in [0, 1]). On an
      uncalibrated model ``confidence`` is ``None`` and nothing passes.
    - ``name`` one of the raw uncertainties (``hybridgrad``, ``semgrad``, ``paragrad``,
      ``exgrad``, ``g_nll``, ``mean_nll``, ``mean_entropy``): larger means **less** confident;
      the answer passes when ``value <= max_uncertainty``. Use this on uncalibrated models,
      with a threshold chosen on held-out data.

    ``threshold`` is the line either way (``GuardSignal(name="hybridgrad", threshold=0.02)``
    still builds one, as in earlier versions).

    Fails closed: no metadata, ``scored=False``, or a missing/NaN value never passes.
    """

    _error: ClassVar[type[GuardSignalError]] = GuardConfigError

    @model_validator(mode="before")
    @classmethod
    def _accept_threshold(cls, data: Any) -> Any:
        """Keep ``GuardSignal(name=..., threshold=...)`` working: ``threshold`` is ``min_confidence``
        for the confidence and ``max_uncertainty`` for a raw uncertainty."""
        if isinstance(data, dict) and "threshold" in data:
            data = dict(data)
            key = "min_confidence" if data.get("name", "confidence") == "confidence" else "max_uncertainty"
            if data.get(key) is not None:
                raise cls._error(f"pass threshold or {key}, not both (they are the same line)")
            data[key] = data.pop("threshold")
        return data

    @classmethod
    def confidence(cls, min_confidence: float | None = 0.5) -> GuardSignal:
        """Pass answers whose calibrated confidence is at least ``min_confidence`` (in [0, 1]; default 0.5)."""
        return cls(name="confidence", min_confidence=min_confidence)

    def read(self, obj: Any) -> SignalReading:
        """Whether ``obj`` (message, generation, ScoreResult or metadata) passes, failing closed."""
        if isinstance(obj, ScoreResult):
            return self.check(obj)
        meta = read_metadata(obj)
        if meta is None:
            return SignalReading(False, None, "no gradguard score in the message metadata (unscored: fail closed)")
        return self.check(meta)


# --- in-process store of full ScoreResults, keyed by message id -------------------------------


class _ResultStore:
    """A thread-safe, bounded map from message id to the full :class:`ScoreResult`."""

    def __init__(self, maxsize: int = 4096) -> None:
        self._items: OrderedDict[str, ScoreResult] = OrderedDict()
        self._lock = threading.Lock()
        self._maxsize = maxsize

    def put(self, key: str, result: ScoreResult) -> None:
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)

    def get(self, key: str) -> ScoreResult | None:
        with self._lock:
            return self._items.get(key)


_RESULTS = _ResultStore()


def remember_result(message_id: str, result: ScoreResult) -> None:
    """Keep ``result`` so that :func:`result_for` can find it from the message with id ``message_id``."""
    _RESULTS.put(message_id, result)


def result_for(message: Any) -> ScoreResult | None:
    """The full :class:`ScoreResult` behind a scored message of this process, or ``None``.

    ``message`` is a message (or its id). Metadata travels with the message everywhere;
    the full result (token log-probabilities, timings, ...) is kept in memory for the
    latest few thousand completions only.
    """
    key = message if isinstance(message, str) else getattr(message, "id", None)
    if not isinstance(key, str):
        return None
    return _RESULTS.get(key)


# --- OpenAI-style logprobs ---------------------------------------------------------------------


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode map used by byte-level BPE tokenizers."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()


def _token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The raw bytes a token stands for (byte-level BPE, SentencePiece byte-fallback, or decoded text)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    if isinstance(piece, str) and piece not in special:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        if piece and all(ch in _BYTE_DECODER for ch in piece):
            return bytes(_BYTE_DECODER[ch] for ch in piece)
        if "\u2581" in piece:
            return piece.replace("\u2581", " ").encode("utf-8")
    return tokenizer.decode([int(token_id)]).encode("utf-8")


def _entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    raw = _token_bytes(tokenizer, token_id)
    return {"token": raw.decode("utf-8", errors="replace"), "bytes": list(raw), "logprob": float(logprob)}


def openai_logprobs(
    tokenizer: Any,
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    top: Sequence[Sequence[tuple[int, float]]] | None = None,
) -> dict[str, Any]:
    """Log-probabilities in OpenAI's chat format: ``{"content": [{"token", "bytes", "logprob", "top_logprobs"}], "refusal": None}``.

    ``logprobs[t]`` is ``log p(y_t)`` of the response token ``token_ids[t]`` (the scorer's
    ``token_logprobs``); ``top[t]`` lists ``(token_id, logprob)`` of the most likely tokens
    at that position (empty lists when not asked for).
    """
    content = []
    for t, (tid, lp) in enumerate(zip(token_ids, logprobs)):
        entry = _entry(tokenizer, tid, lp)
        entry["top_logprobs"] = [_entry(tokenizer, i, v) for i, v in top[t]] if top is not None else []
        content.append(entry)
    return {"content": content, "refusal": None}
