"""gradguard for LangChain (``pip install 'gradguard[langchain]'``; see ``docs/langchain.md``).

:class:`ChatGradguard` hosts a local Hugging Face model whose every answer carries ``response_metadata["gradguard"]``
(confidence and uncertainties; larger uncertainty = less confident); :class:`GradguardCallbackHandler` /
:func:`gradguard_callback` score a model you host with ``langchain_huggingface``; :class:`ConfidenceGuardParser`
raises, abstains or annotates on an unconfident answer; :class:`ConfidenceRouter` accepts, abstains, rejects or
escalates by a routing policy; :class:`ConfidenceToolGuard` (``pip install 'gradguard[agents]'``) holds an agent's
low-confidence tool calls for approval, review or rejection.
"""

from __future__ import annotations

from gradguard.extras import require
from gradguard.integrations._core import MissingDependencyError, UnknownOptionError

require("langchain_core", "langchain", "gradguard.integrations.langchain")

from gradguard.integrations.langchain.callbacks import (  # noqa: E402
    GradguardCallbackHandler,
    ScoreRecord,
    UnknownRunError,
    gradguard_callback,
)
from gradguard.integrations.langchain.chat_model import ChatGradguard, ChatInputError, to_chat_dicts  # noqa: E402
from gradguard.integrations.langchain.metadata import (  # noqa: E402
    GRADGUARD_KEY,
    GUARD_KEY,
    ROUTE_KEY,
    SIGNALS,
    GuardConfigError,
    GuardSignal,
    is_scored,
    read_metadata,
    result_for,
)
from gradguard.integrations.langchain.parsers import (  # noqa: E402
    ConfidenceGuardParser,
    GuardedText,
    GuardVerdict,
    LowConfidenceError,
)
from gradguard.integrations.langchain.router import (  # noqa: E402
    ROUTE_EVENT,
    AnswerRejectedError,
    ConfidenceRouter,
    RouterInputError,
    answer_and_result,
    chat_model_target,
    human_review_target,
    runnable_target,
)

__all__ = [
    "ChatGradguard", "ChatInputError", "to_chat_dicts", "GradguardCallbackHandler", "ScoreRecord",
    "UnknownRunError", "gradguard_callback", "ConfidenceGuardParser", "GuardVerdict", "GuardedText",
    "LowConfidenceError", "ConfidenceRouter", "AnswerRejectedError", "RouterInputError", "ROUTE_EVENT",
    "answer_and_result", "chat_model_target", "runnable_target", "human_review_target", "GRADGUARD_KEY",
    "GUARD_KEY", "ROUTE_KEY", "SIGNALS", "GuardConfigError", "GuardSignal", "MissingDependencyError",
    "UnknownOptionError", "is_scored", "read_metadata", "result_for",
    *(_AGENT_NAMES := (
        "ConfidenceToolGuard", "ToolGuardState", "ToolRoute", "ToolGuardSettings", "ToolGuardConfigError",
        "CheckpointerRequiredError", "tool_call_scores", "LowAction", "LOW_ACTIONS",
    )),
]


def __getattr__(name: str) -> object:
    """The agent middleware's names, imported on first use: they need the ``agents`` extra (langchain, langgraph)."""
    if name in _AGENT_NAMES:
        from gradguard.integrations.langchain import middleware

        return getattr(middleware, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
