"""Reading the score metadata of LangChain messages, the guard signal, and the in-process result store.

A scored completion carries :meth:`gradguard.ScoreResult.metadata` under ``response_metadata["gradguard"]``
(unscorable: ``scored=False`` and an ``error``). Guards fail closed: no metadata, ``scored=False`` or NaN fails.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError, model_validator

from gradguard.integrations._core import GUARD_KEY, METADATA_KEY, ROUTE_KEY, find_metadata, openai_logprobs
from gradguard.integrations._core.deprecation import deprecated_names
from gradguard.result import ScoreResult
from gradguard.routing import GuardSignal as _CoreGuardSignal
from gradguard.routing import GuardSignalError
from gradguard.routing.signal import SIGNALS, SignalReading, is_scored, unscored_metadata

__all__ = [
    "GRADGUARD_KEY", "GUARD_KEY", "ROUTE_KEY", "SIGNALS", "GuardConfigError", "GuardSignal", "SignalReading",
    "is_scored", "openai_logprobs", "read_metadata", "remember_result", "result_for", "unscored_metadata",
]

#: Key of the score metadata in ``AIMessage.response_metadata`` (the one :data:`METADATA_KEY`).
GRADGUARD_KEY = METADATA_KEY


class GuardConfigError(GuardSignalError):
    """A guard was configured with an unusable signal or threshold (the message names the value and the fix)."""


def read_metadata(obj: Any) -> dict[str, Any] | None:
    """The gradguard metadata of ``obj`` (a message, a ``ChatGeneration``, a ``ScoreResult``, a
    ``response_metadata`` mapping or the gradguard dict itself), or ``None`` when it has none."""
    if isinstance(obj, ScoreResult):
        return obj.metadata()
    message = getattr(obj, "message", None)
    bag = getattr(message if hasattr(message, "response_metadata") else obj, "response_metadata", obj)
    found = find_metadata(bag)
    if found is None and isinstance(bag, dict) and "uncertainty" in bag and "confidence" in bag:
        return dict(bag)
    return found


class GuardSignal(_CoreGuardSignal):
    """:class:`gradguard.routing.GuardSignal` raising :class:`GuardConfigError`, plus :meth:`read` for LangChain
    messages and generations. ``GuardSignal(name="hybridgrad", threshold=0.02)`` still builds one: ``threshold``
    is ``min_confidence`` for the confidence and ``max_uncertainty`` for a raw uncertainty."""

    _error: ClassVar[type[GuardSignalError]] = GuardConfigError

    @model_validator(mode="before")
    @classmethod
    def _accept_threshold(cls, data: Any) -> Any:
        if isinstance(data, dict) and "threshold" in data:
            data = dict(data)
            key = "min_confidence" if data.get("name", "confidence") == "confidence" else "max_uncertainty"
            if data.get(key) is not None:
                raise cls._error(f"pass threshold or {key}, not both (they are the same line)")
            data[key] = data.pop("threshold")
        return data

    @classmethod
    def confidence(cls, min_confidence: float | None = 0.5, *, allow_out_of_domain: bool = False) -> GuardSignal:
        """Pass answers whose calibrated confidence is at least ``min_confidence`` (default 0.5)."""
        return cls(name="confidence", min_confidence=min_confidence, allow_out_of_domain=allow_out_of_domain)

    def read(self, obj: Any) -> SignalReading:
        """Whether ``obj`` (message, generation, ScoreResult or metadata) passes, failing closed."""
        if isinstance(obj, ScoreResult):
            return self.check(obj)
        meta = read_metadata(obj)
        if meta is None:
            return SignalReading(False, None, "no gradguard score in the message metadata (unscored: fail closed)")
        return self.check(meta)


@contextmanager
def _validation_as(model: type[BaseModel], error: type[Exception]) -> Iterator[None]:
    """Raise pydantic's ``ValidationError`` for ``model`` as ``error``, naming each bad value (or unknown option)."""
    try:
        yield
    except ValidationError as exc:
        own = sorted(set(model.model_fields) - set(getattr(model.__mro__[1], "model_fields", {})))
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
            got = err.get("input", "(missing)")
            if err.get("type") == "extra_forbidden":
                parts.append(f"no option {loc!r} (got {got!r}); its own options are {own}")
            else:
                parts.append(f"{loc}={got!r}: {err.get('msg')}")
        raise error(f"{model.__name__}: " + "; ".join(parts)) from None


# Full results of the latest completions of this process, by message id (oldest dropped first).
_RESULTS: OrderedDict[str, ScoreResult] = OrderedDict()
_RESULTS_LOCK = threading.Lock()
_MAX_RESULTS = 4096


def remember_result(message_id: str, result: ScoreResult) -> None:
    """Keep ``result`` so that :func:`result_for` can find it from the message with id ``message_id``."""
    with _RESULTS_LOCK:
        _RESULTS[message_id] = result
        _RESULTS.move_to_end(message_id)
        while len(_RESULTS) > _MAX_RESULTS:
            _RESULTS.popitem(last=False)


def result_for(message: Any) -> ScoreResult | None:
    """The full :class:`ScoreResult` behind a scored message of this process (or its id), or ``None``: kept in
    memory for the latest few thousand completions only (the metadata travels with the message everywhere)."""
    key = message if isinstance(message, str) else getattr(message, "id", None)
    with _RESULTS_LOCK:
        return _RESULTS.get(key) if isinstance(key, str) else None


__getattr__ = deprecated_names(__name__, {
    "score_metadata": (lambda: ScoreResult.metadata, "call result.metadata() instead"),
})
