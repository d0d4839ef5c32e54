"""The framework-free core under the LangChain and LlamaIndex integrations.

The backend (generate, stream with cancellation and stop strings, score a foreign answer),
the generation options and their one policy for unknown options, the metadata keys and
helpers, and the errors. The adapters translate framework types and call this; routing
decisions come from :class:`gradguard.routing.Router`. No framework import here.
"""

from gradguard.integrations._core.backend import (
    LocalBackend,
    Messages,
    ScoringBackend,
    StreamPiece,
    score_foreign,
    with_system_prompt,
)
from gradguard.integrations._core.errors import (
    AnswerRejectedError,
    IntegrationError,
    MissingDependencyError,
    UnknownOptionError,
)
from gradguard.integrations._core.metadata import (
    GUARD_KEY,
    METADATA_KEY,
    ROUTE_EVENT,
    ROUTE_KEY,
    attach_metadata,
    find_metadata,
    metadata_of,
    openai_logprobs,
    unscored_metadata,
)
from gradguard.integrations._core.options import CALL_OPTIONS, MAX_TOP_LOGPROBS, GenerationOptions
from gradguard.integrations._core.remote import RemoteBackend, RemoteServerError, RemoteToolBinding
from gradguard.integrations._core.streaming import stream_generation
from gradguard.integrations._core.tool_formats import (
    TOOL_CALL_FORMATS,
    InvalidToolCall,
    ParsedTurn,
    ToolCall,
    ToolCallFormat,
    ToolChoiceError,
    ToolMessageError,
    ToolSchemaError,
    ToolsUnsupportedError,
    format_for,
    register_tool_call_format,
)
from gradguard.integrations._core.tool_turn import (
    REASONING_TAGS,
    TOOLS_TASK,
    ScoredCall,
    ToolMessages,
    ToolTurn,
    TurnPiece,
    generate_turn,
    score_turn,
    split_reasoning,
    stream_turn,
)
from gradguard.integrations._core.tools import ToolBinding, ToolChoice, ToolNames, ToolSpec, normalize_tools

__all__ = [
    "AnswerRejectedError", "CALL_OPTIONS", "GUARD_KEY", "GenerationOptions", "IntegrationError", "LocalBackend",
    "MAX_TOP_LOGPROBS", "METADATA_KEY", "Messages", "MissingDependencyError", "ROUTE_EVENT", "ROUTE_KEY",
    "ScoringBackend", "StreamPiece", "UnknownOptionError", "attach_metadata", "find_metadata", "metadata_of",
    "openai_logprobs", "score_foreign", "unscored_metadata", "with_system_prompt", "stream_generation",
    "TOOL_CALL_FORMATS", "InvalidToolCall", "ParsedTurn", "ToolCall", "ToolCallFormat", "ToolChoiceError",
    "ToolMessageError", "ToolSchemaError", "ToolsUnsupportedError", "format_for", "register_tool_call_format",
    "REASONING_TAGS", "TOOLS_TASK", "ScoredCall", "ToolMessages", "ToolTurn", "TurnPiece", "generate_turn",
    "score_turn", "split_reasoning", "stream_turn", "ToolBinding", "ToolChoice", "ToolNames", "ToolSpec",
    "normalize_tools", "RemoteBackend", "RemoteServerError", "RemoteToolBinding",
]
