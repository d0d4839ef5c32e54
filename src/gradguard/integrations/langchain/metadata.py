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

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from gradguard.errors import GradguardError
from gradguard.result import UNCERTAINTY_KEYS, ScoreResult

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
#: The signals a guard can read: the calibrated confidence, or one raw uncertainty score.
SIGNALS: tuple[str, ...] = ("confidence", *UNCERTAINTY_KEYS)


class GuardConfigError(GradguardError, ValueError):
    """A guard was configured with an unusable signal or threshold (the message names the value and the fix)."""


def score_metadata(result: ScoreResult) -> dict[str, Any]:
    """The shared metadata dict of one scored completion (JSON-able; NaN scores become ``None``)."""
    return result.metadata()


def unscored_metadata(*, model: str | None = None, error: str) -> dict[str, Any]:
    """The metadata of a completion that could not be scored: every score ``None``, ``scored`` False.

    Guards treat it as unconfident; ``error`` says why it has no score.
    """
    return {
        "confidence": None,
        "uncertainty": dict.fromkeys(UNCERTAINTY_KEYS),
        "model": model,
        "profile": None,
        "spt_offset": None,
        "n_response_tokens": None,
        "scored": False,
        "error": error,
    }


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


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def is_scored(meta: Mapping[str, Any] | None) -> bool:
    """True when ``meta`` describes a completion with finite gradient scores.

    Uses the ``scored`` flag when present, else checks that every uncertainty is finite.
    """
    if not isinstance(meta, Mapping):
        return False
    if "scored" in meta:
        return meta["scored"] is True
    unc = meta.get("uncertainty")
    if not isinstance(unc, Mapping):
        return False
    return all(_finite(unc.get(k)) is not None for k in ("hybridgrad", "semgrad", "paragrad", "exgrad"))


class SignalReading(NamedTuple):
    """What a guard read from one completion: whether it passes, the value read, and why."""

    passed: bool
    value: float | None
    reason: str


class GuardSignal(BaseModel):
    """The number a guard reads and the line it draws.

    - ``name="confidence"`` (default): the calibrated probability that the answer is
      correct; the answer passes when ``confidence >= threshold`` (``threshold`` in [0, 1]).
      On an uncalibrated model ``confidence`` is ``None`` and nothing passes.
    - ``name`` one of the raw uncertainties (``hybridgrad``, ``semgrad``, ``paragrad``,
      ``exgrad``, ``g_nll``, ``mean_nll``, ``mean_entropy``): larger means **less**
      confident; the answer passes when ``value <= threshold``. Use this on uncalibrated
      models, with a threshold chosen on held-out data.

    Fails closed: no metadata, ``scored=False``, or a missing/NaN value never passes.
    Build it with :meth:`confidence` or :meth:`uncertainty`; bad values raise
    :class:`GuardConfigError`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "confidence"
    threshold: float = 0.5

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise GuardConfigError(f"invalid GuardSignal {data!r}: {exc.errors()[0]['msg']}") from None
        _check_signal(self.name, self.threshold)

    @classmethod
    def confidence(cls, min_confidence: float = 0.5) -> GuardSignal:
        """Pass answers whose calibrated confidence is at least ``min_confidence`` (in [0, 1])."""
        return cls(name="confidence", threshold=min_confidence)

    @classmethod
    def uncertainty(cls, name: str, max_value: float) -> GuardSignal:
        """Pass answers whose raw uncertainty ``name`` is at most ``max_value`` (larger = less confident)."""
        return cls(name=name, threshold=max_value)

    @classmethod
    def from_options(
        cls,
        *,
        signal: str = "confidence",
        min_confidence: float | None = None,
        max_uncertainty: float | None = None,
        owner: str = "guard",
    ) -> GuardSignal:
        """Build the signal from a component's ``signal``/``min_confidence``/``max_uncertainty`` options.

        ``min_confidence`` goes with ``signal="confidence"``; ``max_uncertainty`` with a raw
        uncertainty signal. Mixing them raises :class:`GuardConfigError` saying which to drop.
        """
        if signal not in SIGNALS:
            raise GuardConfigError(f"{owner}: signal={signal!r} is not known; use one of {list(SIGNALS)}")
        if signal == "confidence":
            if max_uncertainty is not None:
                raise GuardConfigError(
                    f"{owner}: max_uncertainty={max_uncertainty!r} applies to a raw uncertainty signal, but "
                    "signal='confidence'; set min_confidence instead, or choose signal='hybridgrad' (or another score)"
                )
            return cls.confidence(0.5 if min_confidence is None else min_confidence)
        if min_confidence is not None:
            raise GuardConfigError(
                f"{owner}: min_confidence={min_confidence!r} applies to signal='confidence', but signal={signal!r}; "
                f"set max_uncertainty (the largest acceptable {signal}) instead"
            )
        if max_uncertainty is None:
            raise GuardConfigError(
                f"{owner}: signal={signal!r} needs max_uncertainty, the largest acceptable {signal} "
                "(larger = less confident); choose it on held-out data"
            )
        return cls.uncertainty(signal, max_uncertainty)

    @property
    def is_confidence(self) -> bool:
        """True when the signal is the calibrated confidence (larger = more confident)."""
        return self.name == "confidence"

    def describe(self) -> str:
        """A short human-readable rule, e.g. ``confidence >= 0.7`` or ``hybridgrad <= 0.02``."""
        return f"{self.name} {'>=' if self.is_confidence else '<='} {self.threshold:g}"

    def value(self, meta: Mapping[str, Any] | None) -> float | None:
        """The signal's value in ``meta`` (a gradguard metadata dict), or ``None`` when missing/NaN/unscored."""
        if not is_scored(meta):
            return None
        assert meta is not None
        if self.is_confidence:
            return _finite(meta.get("confidence"))
        unc = meta.get("uncertainty")
        return _finite(unc.get(self.name)) if isinstance(unc, Mapping) else None

    def read(self, obj: Any) -> SignalReading:
        """Whether ``obj`` (message, generation, ScoreResult or metadata) passes, failing closed."""
        meta = read_metadata(obj)
        if meta is None:
            return SignalReading(False, None, "no gradguard score in the message metadata (unscored: fail closed)")
        if not is_scored(meta):
            why = meta.get("error") or "the answer has no finite score (e.g. an empty answer)"
            return SignalReading(False, None, f"unscored: {why}")
        value = self.value(meta)
        if value is None:
            if self.is_confidence:
                return SignalReading(
                    False,
                    None,
                    "no calibrated confidence (the model has no calibration profile); "
                    "guard on a raw score instead, e.g. signal='hybridgrad' with max_uncertainty",
                )
            return SignalReading(False, None, f"{self.name} is missing or NaN")
        passed = value >= self.threshold if self.is_confidence else value <= self.threshold
        verb = "meets" if passed else "fails"
        return SignalReading(passed, value, f"{self.name}={value:.6g} {verb} {self.describe()}")

    def confidence_of(self, result: ScoreResult | None) -> float | None:
        """A confidence in [0, 1] for routing policies.

        For ``name="confidence"`` this is the calibrated confidence itself (``None`` when
        uncalibrated or unscored). For a raw uncertainty it is 1.0 when the score passes
        the threshold and 0.0 when it does not (``None`` when unscored): an uncalibrated
        score has no probability scale, only the line drawn on it.
        """
        if result is None:
            return None
        reading = self.read(result)
        if reading.value is None:
            return None
        if self.is_confidence:
            return reading.value
        return 1.0 if reading.passed else 0.0


def _check_signal(name: str, threshold: float) -> None:
    if name not in SIGNALS:
        raise GuardConfigError(f"signal {name!r} is not known; use one of {list(SIGNALS)}")
    if not math.isfinite(threshold):
        raise GuardConfigError(f"threshold {threshold!r} for signal {name!r} is not a finite number; pass a real number")
    if name == "confidence" and not 0.0 <= threshold <= 1.0:
        raise GuardConfigError(
            f"confidence threshold {threshold!r} is outside [0, 1]; a confidence is a probability, pass e.g. 0.7"
        )
    if name != "confidence" and threshold < 0.0:
        raise GuardConfigError(
            f"max {name} {threshold!r} is negative, but {name} is never negative; pass a threshold >= 0"
        )


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
