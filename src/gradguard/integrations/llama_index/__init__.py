"""LlamaIndex integration of gradguard (``pip install 'gradguard[llama-index]'``).

- :class:`GradguardLLM`: a ``FunctionCallingLLM`` hosting a local Hugging Face chat model (the embedded
  Qwen2.5-Coder-0.5B-Instruct by default); every response carries its gradient uncertainty in
  ``additional_kwargs["gradguard"]``, with one score per tool call (``FunctionAgent``, ``AgentWorkflow``).
- :class:`ConfidenceGatedTool` / :func:`guard_tools`: hold an agent's low-confidence tool call for a human
  (``InputRequiredEvent`` -> ``HumanResponseEvent``) or reject it.
- :class:`GradguardEventHandler`: an instrumentation event handler that scores the answers of an
  LLM you already host (e.g. ``HuggingFaceLLM``) and attaches the same metadata.
- :class:`ConfidenceGuardQueryEngine`: wraps any query engine and applies a
  :class:`gradguard.routing.RoutingPolicy` (accept, abstain, reject, escalate); also an agent tool.

The metadata schema is shared with the LangChain integration (:meth:`gradguard.ScoreResult.metadata`).
Every uncertainty is larger when the model is less confident; a missing or NaN score is unconfident.
Importing :mod:`gradguard` never imports LlamaIndex; importing this package does.
"""

from gradguard.extras import require
from gradguard.integrations._core import AnswerRejectedError, MissingDependencyError, UnknownOptionError

require("llama_index.core", "llama-index", "gradguard.integrations.llama_index")

from gradguard.integrations.llama_index.base import GradguardLLM  # noqa: E402
from gradguard.integrations.llama_index.handler import GradguardEventHandler, ScoredCall  # noqa: E402
from gradguard.integrations.llama_index.query_engine import (  # noqa: E402
    ConfidenceGuardQueryEngine,
    Escalation,
    GuardedQueryEngineTool,
    verdict_line,
)
from gradguard.integrations.llama_index.tools import (  # noqa: E402
    ConfidenceGatedTool,
    ToolApprovalRequest,
    ToolGateDecision,
    guard_tools,
)
from gradguard.integrations.llama_index.utils import (  # noqa: E402
    METADATA_KEY,
    SIGNALS,
    CapturedScore,
    GradguardLlamaIndexError,
    Signal,
    capture_scores,
    missing_score_metadata,
    read_metadata,
    read_result,
)

__all__ = [
    "GradguardLLM", "GradguardEventHandler", "ScoredCall", "ConfidenceGuardQueryEngine", "GuardedQueryEngineTool",
    "AnswerRejectedError", "MissingDependencyError", "UnknownOptionError", "Escalation", "verdict_line", "Signal",
    "SIGNALS", "METADATA_KEY", "CapturedScore", "GradguardLlamaIndexError", "capture_scores",
    "missing_score_metadata", "read_metadata", "read_result", "ConfidenceGatedTool", "ToolApprovalRequest",
    "ToolGateDecision", "guard_tools",
]
