"""Helpers shared by the LlamaIndex components: metadata, message conversion, score capture, signals.

Everything here is framework-light: it imports ``llama_index.core`` types only for conversion.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole
from pydantic import BaseModel, ConfigDict, Field

from gradguard.errors import GradguardError, InputError
from gradguard.result import ScoreResult
from gradguard.routing import GuardSignal, GuardSignalError
from gradguard.routing.signal import SIGNALS, SignalFn, unscored_metadata

__all__ = [
    "METADATA_KEY",
    "GradguardLlamaIndexError",
    "CapturedScore",
    "SIGNALS",
    "Signal",
    "SignalConfigError",
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

class GradguardLlamaIndexError(GradguardError, ValueError):
    """A LlamaIndex component of gradguard was configured or called wrongly."""


#: Metadata in the shared schema for an answer that has **no** score (treated as unconfident);
#: :func:`gradguard.routing.signal.unscored_metadata`.
missing_score_metadata = unscored_metadata


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


class SignalConfigError(GradguardLlamaIndexError, GuardSignalError):
    """A :class:`Signal` was configured wrongly (also a :class:`gradguard.routing.GuardSignalError`)."""


class Signal(GuardSignal):
    """Which number of a :class:`~gradguard.ScoreResult` the routing policy decides on:
    :class:`gradguard.routing.GuardSignal` (the same class as the LangChain integration's
    ``GuardSignal``), raising :class:`GradguardLlamaIndexError` on bad options.

    The policy's tiers are thresholds on a *confidence* in ``[0, 1]`` (larger = more confident);
    calling the signal (or :meth:`confidence_of`) gives that confidence, ``None`` = unconfident.

    - ``Signal.confidence()`` (default): the calibrated ``result.confidence``. On an uncalibrated
      model it is ``None``, so every answer is unconfident (fail closed).
    - ``Signal.uncertainty("hybridgrad", max_value)``: for uncalibrated models. Raw uncertainties
      have no probability scale (larger = **less** confident), so the policy sees ``1.0`` when
      ``result.hybridgrad <= max_value`` and ``0.0`` otherwise; choose ``max_value`` on held-out data.
    - ``Signal.from_function(fn)``: ``fn(result)``, a confidence in [0, 1].

    A missing score, an unscored (empty) answer, a NaN value, or a function that raises or returns
    anything but a number in [0, 1] always gives ``None`` (unconfident).

    Example:
        >>> from gradguard.integrations.llama_index import Signal
        >>> Signal.uncertainty("hybridgrad", 0.02).describe()
        'hybridgrad <= 0.02'
    """

    _error: ClassVar[type[GuardSignalError]] = SignalConfigError


def apply_signal(signal: Signal | SignalFn, result: ScoreResult | None) -> float | None:
    """The confidence in ``[0, 1]`` that ``signal`` (a :class:`Signal` or a function) gives ``result``;
    ``None`` (unconfident) for a missing/unscored result, a function that raises, or a value that is
    ``None``, NaN, not a number or outside ``[0, 1]``.
    """
    return Signal.from_options(signal).confidence_of(result)


def describe_signal(signal: Signal | SignalFn) -> str:
    """Name of a signal for the metadata."""
    return Signal.from_options(signal).describe()
