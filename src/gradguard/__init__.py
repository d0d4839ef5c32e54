"""gradguard: gradient-based uncertainty for local Hugging Face chat models.

``GradScorer.score(messages, response)`` returns a :class:`ScoreResult` with SemGrad,
ParaGrad and HybridGrad — uncertainties, larger = less confident. This package imports
neither LangChain nor LlamaIndex; their integrations live in ``gradguard.integrations``.
torch and transformers are imported on first use of the scorer or loader, so the routing
policy and review queue stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradguard._version import __version__
from gradguard.errors import (
    ChatTemplateError,
    ContextLengthError,
    EmbeddedModelError,
    GenerationCancelled,
    GradguardError,
    InputError,
    MissingExtraError,
    ModelSourceError,
    UnknownOffsetError,
    UnsupportedModelError,
)
from gradguard.result import UNCERTAINTY_KEYS, ScoreResult, Timings

if TYPE_CHECKING:
    from gradguard.batching import GenerationRequest, MicroBatcher
    from gradguard.loading import DEFAULT_MODEL, load_model
    from gradguard.scorer import GradScorer

_LAZY = {
    "GradScorer": "gradguard.scorer",
    "load_model": "gradguard.loading",
    "DEFAULT_MODEL": "gradguard.loading",
    "GenerationRequest": "gradguard.batching",
    "MicroBatcher": "gradguard.batching",
}

__all__ = [
    "__version__",
    "DEFAULT_MODEL",
    "GradScorer",
    "GenerationRequest",
    "MicroBatcher",
    "ScoreResult",
    "Timings",
    "UNCERTAINTY_KEYS",
    "load_model",
    "GradguardError",
    "ChatTemplateError",
    "ContextLengthError",
    "EmbeddedModelError",
    "GenerationCancelled",
    "InputError",
    "MissingExtraError",
    "ModelSourceError",
    "UnknownOffsetError",
    "UnsupportedModelError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradguard' has no attribute {name!r}")
