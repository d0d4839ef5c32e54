"""Helpers shared by the LlamaIndex components: metadata, message conversion, score capture, signals.

Everything here is framework-light: it imports ``llama_index.core`` types only for conversion.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gradguard.errors import GradguardError, InputError
from gradguard.result import UNCERTAINTY_KEYS, ScoreResult

__all__ = [
    "METADATA_KEY",
    "GradguardLlamaIndexError",
    "CapturedScore",
    "SIGNALS",
    "Signal",
    "SignalFn",
    "apply_signal",
    "describe_signal",
    "missing_score_metadata",
    "attach_metadata",
    "read_metadata",
    "read_result",
    "messages_to_dicts",
    "capture_scores",
    "publish_score",
    "same_answer",
]

#: The key under which every response carries the score metadata
#: (``additional_kwargs["gradguard"]`` on LLM responses, ``metadata["gradguard"]`` on query responses).
METADATA_KEY = "gradguard"

#: A function mapping a score to the confidence fed to a routing policy (``None`` = unconfident).
SignalFn = Callable[[ScoreResult], "float | None"]


class GradguardLlamaIndexError(GradguardError, ValueError):
    """A LlamaIndex component of gradguard was configured or called wrongly."""


def missing_score_metadata(error: str, *, model: str | None = None) -> dict[str, Any]:
    """Metadata in the shared schema for an answer that has **no** score (treated as unconfident).

    Same keys as :meth:`gradguard.ScoreResult.metadata`: every uncertainty is ``None``,
    ``confidence`` is ``None`` and ``scored`` is ``False``; ``error`` says why.
    """
    return {
        "confidence": None,
        "uncertainty": {k: None for k in UNCERTAINTY_KEYS},
        "model": model,
        "profile": None,
        "spt_offset": None,
        "n_response_tokens": None,
        "scored": False,
        "error": error,
    }


def attach_metadata(response: CompletionResponse | ChatResponse, metadata: dict[str, Any]) -> None:
    """Put ``metadata`` in ``response.additional_kwargs["gradguard"]`` (and in the message's, for chat).

    The response object is modified in place; each place gets its own copy of the dict.
    """
    response.additional_kwargs[METADATA_KEY] = copy.deepcopy(metadata)
    if isinstance(response, ChatResponse):
        response.message.additional_kwargs[METADATA_KEY] = copy.deepcopy(metadata)


def read_metadata(response: Any) -> dict[str, Any] | None:
    """The gradguard metadata attached to an LLM response or query ``Response``, or ``None``."""
    for attr in ("additional_kwargs", "metadata"):
        bag = getattr(response, attr, None)
        if isinstance(bag, dict) and isinstance(bag.get(METADATA_KEY), dict):
            return bag[METADATA_KEY]
    message = getattr(response, "message", None)
    if message is not None:
        bag = getattr(message, "additional_kwargs", None)
        if isinstance(bag, dict) and isinstance(bag.get(METADATA_KEY), dict):
            return bag[METADATA_KEY]
    return None


def read_result(response: Any) -> ScoreResult | None:
    """The :class:`~gradguard.ScoreResult` carried in ``response.raw`` by :class:`GradguardLLM`, or ``None``."""
    raw = getattr(response, "raw", None)
    return raw if isinstance(raw, ScoreResult) else None


_ROLE_MAP = {
    MessageRole.SYSTEM.value: "system",
    MessageRole.DEVELOPER.value: "system",
    MessageRole.USER.value: "user",
    MessageRole.ASSISTANT.value: "assistant",
    MessageRole.MODEL.value: "assistant",
    MessageRole.CHATBOT.value: "assistant",
}


def messages_to_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Convert LlamaIndex chat messages to the ``[{"role", "content"}]`` list the scorer expects.

    System/developer roles become ``system``; assistant/model/chatbot become ``assistant``.
    Tool and function messages cannot be chat-templated for scoring and raise
    :class:`gradguard.errors.InputError`.
    """
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
        mapped = _ROLE_MAP.get(role)
        if mapped is None:
            raise InputError(
                f"message {i} has role {role!r}, which gradguard cannot score; "
                "use only system, user and assistant messages (tool calls are not supported)"
            )
        out.append({"role": mapped, "content": message.content or ""})
    if not out:
        raise InputError("messages is empty; pass at least one user message")
    return out


def same_answer(a: str | None, b: str | None) -> bool:
    """True when two answer texts are the same up to surrounding whitespace."""
    if a is None or b is None:
        return False
    return " ".join(a.split()) == " ".join(b.split())


# ----------------------------------------------------------------------------- score capture


class CapturedScore(BaseModel):
    """One scored LLM answer published while a capture (see :func:`capture_scores`) was open."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    text: str = Field(..., description="The answer text that was scored.")
    result: ScoreResult | None = Field(None, description="The score; None when scoring failed (unconfident).")
    metadata: dict[str, Any] = Field(..., description="The shared metadata dict attached to the response.")
    source: str = Field(..., description="Who scored it: 'llm' (GradguardLLM) or 'handler' (GradguardEventHandler).")


_CAPTURES: ContextVar[tuple[list[CapturedScore], ...]] = ContextVar("gradguard_llama_index_captures", default=())
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def capture_scores() -> Iterator[list[CapturedScore]]:
    """Collect every score published by gradguard LLMs/handlers in this context (threads and tasks included).

    The context variable is copied into ``asyncio`` tasks and ``asyncio.to_thread`` calls started
    inside the block, so scores from async LLM calls are captured too. Captures nest: an inner
    capture's scores are also seen by the outer one.
    """
    sink: list[CapturedScore] = []
    token = _CAPTURES.set((*_CAPTURES.get(), sink))
    try:
        yield sink
    finally:
        _CAPTURES.reset(token)


def publish_score(captured: CapturedScore) -> None:
    """Hand a score to every capture open in the current context (no-op when none is open)."""
    sinks = _CAPTURES.get()
    if not sinks:
        return
    with _CAPTURE_LOCK:
        for sink in sinks:
            sink.append(captured)


# ----------------------------------------------------------------------------- signals

#: The signals a guard can read: the calibrated confidence, or one raw uncertainty score.
SIGNALS: tuple[str, ...] = ("confidence", *UNCERTAINTY_KEYS)


class Signal(BaseModel):
    """Which number of a :class:`~gradguard.ScoreResult` the routing policy decides on.

    The policy's tiers are thresholds on a *confidence* in ``[0, 1]`` (larger = more confident).

    - ``Signal.confidence()`` (default): the calibrated ``result.confidence``. On an uncalibrated
      model it is ``None``, so every answer is unconfident (fail closed).
    - ``Signal.uncertainty("hybridgrad", max_value)``: for uncalibrated models. Raw uncertainties
      have no probability scale (larger = **less** confident), so the policy sees ``1.0`` when
      ``result.hybridgrad <= max_value`` and ``0.0`` otherwise; choose ``max_value`` on held-out data.

    A missing score, an unscored (empty) answer or a NaN value always gives ``None``
    (unconfident). Same semantics as the LangChain integration's ``GuardSignal``.

    Example:
        >>> from gradguard.integrations.llama_index import Signal
        >>> Signal.uncertainty("hybridgrad", 0.02).describe()
        'hybridgrad <= 0.02'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("confidence", description="'confidence' or one of the uncertainty keys.")
    max_uncertainty: float | None = Field(
        None, description="Largest uncertainty still counted as confident; required for an uncertainty signal."
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise GradguardLlamaIndexError(f"invalid Signal {data!r}: {exc.errors()[0]['msg']}") from None
        if self.name not in SIGNALS:
            raise GradguardLlamaIndexError(f"signal={self.name!r} is not known; use one of {list(SIGNALS)}")
        if self.name == "confidence":
            if self.max_uncertainty is not None:
                raise GradguardLlamaIndexError(
                    f"max_uncertainty={self.max_uncertainty!r} applies to a raw uncertainty signal, but "
                    "signal='confidence'; drop max_uncertainty or choose signal='hybridgrad' (or another score)"
                )
        elif self.max_uncertainty is None or not math.isfinite(self.max_uncertainty):
            raise GradguardLlamaIndexError(
                f"signal={self.name!r} needs a finite max_uncertainty (got {self.max_uncertainty!r}), the largest "
                f"acceptable {self.name} (larger = less confident); choose it on held-out data"
            )

    @classmethod
    def confidence(cls) -> Signal:
        """Decide on the calibrated confidence (``None`` on uncalibrated models: always unconfident)."""
        return cls(name="confidence")

    @classmethod
    def uncertainty(cls, name: str, max_value: float) -> Signal:
        """Decide on raw uncertainty ``name``: confident (1.0) iff ``result.<name> <= max_value``, else 0.0."""
        return cls(name=name, max_uncertainty=max_value)

    @classmethod
    def from_options(cls, signal: str = "confidence", max_uncertainty: float | None = None) -> Signal:
        """Build from a component's ``signal=`` / ``max_uncertainty=`` options (see the class docs)."""
        return cls(name=signal, max_uncertainty=max_uncertainty)

    def __call__(self, result: ScoreResult | None) -> float | None:
        """The confidence in ``[0, 1]`` the policy sees for ``result``; ``None`` means unconfident."""
        if result is None or not result.scored:
            return None
        if self.name == "confidence":
            c = result.confidence
            return float(c) if c is not None and math.isfinite(c) else None
        value = float(getattr(result, self.name))
        if not math.isfinite(value):
            return None
        assert self.max_uncertainty is not None
        return 1.0 if value <= self.max_uncertainty else 0.0

    def describe(self) -> str:
        """A short rule, e.g. ``confidence`` or ``hybridgrad <= 0.02``; reported in the metadata."""
        if self.name == "confidence":
            return "confidence"
        return f"{self.name} <= {self.max_uncertainty:g}"


def apply_signal(signal: Signal | SignalFn, result: ScoreResult | None) -> float | None:
    """Evaluate ``signal`` on ``result``: ``None`` (unconfident) for a missing/unscored result, ``None``,
    NaN or a non-number; values outside ``[0, 1]`` are clamped. A signal function that raises is
    treated as a missing score (fail closed).
    """
    if result is None or not result.scored:
        return None
    try:
        value = signal(result)
    except Exception:  # noqa: BLE001 - a broken signal must fail closed, never pass the answer
        return None
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return min(1.0, max(0.0, value))


def describe_signal(signal: Signal | SignalFn) -> str:
    """Name of a signal for the metadata."""
    if isinstance(signal, Signal):
        return signal.describe()
    return getattr(signal, "__name__", type(signal).__name__)
