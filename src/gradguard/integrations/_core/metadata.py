"""The metadata keys, reading and attaching the score metadata, and OpenAI-style logprobs.

Every scored answer carries :meth:`gradguard.ScoreResult.metadata` (versioned by its
``schema_version``) under :data:`METADATA_KEY`: in LangChain's ``response_metadata``, in
LlamaIndex's ``additional_kwargs`` (LLM responses) and ``Response.metadata`` (query engines).
An answer that could not be scored carries the same keys with ``scored=False`` and ``error``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, MutableMapping
from typing import Any

from gradguard.logprobs import openai_logprobs
from gradguard.result import ScoreResult
from gradguard.routing.signal import unscored_metadata

__all__ = [
    "METADATA_KEY", "ROUTE_KEY", "GUARD_KEY", "ROUTE_EVENT", "attach_metadata", "find_metadata", "metadata_of",
    "openai_logprobs", "unscored_metadata",
]

#: Key of an answer's score metadata (:meth:`gradguard.ScoreResult.metadata`).
METADATA_KEY = "gradguard"
#: Key of a routing outcome (:meth:`gradguard.routing.RouteOutcome.metadata`).
ROUTE_KEY = "gradguard_route"
#: Key of a guard verdict (LangChain's ``ConfidenceGuardParser``).
GUARD_KEY = "gradguard_guard"
#: Name of the callback / instrumentation event carrying a routing outcome.
ROUTE_EVENT = "gradguard_route"


def metadata_of(result: ScoreResult | None, error: str | None = None, *, model: str | None = None) -> dict[str, Any]:
    """The metadata of ``result``, or the unscored metadata with ``error`` when there is no result."""
    if result is not None:
        return result.metadata()
    return unscored_metadata(error or "the answer was not scored", model=model)


def attach_metadata(bag: MutableMapping[str, Any], metadata: Mapping[str, Any], key: str = METADATA_KEY) -> None:
    """Put a copy of ``metadata`` in ``bag[key]`` (e.g. a message's ``response_metadata``)."""
    bag[key] = copy.deepcopy(dict(metadata))


def find_metadata(*bags: Any, key: str = METADATA_KEY) -> dict[str, Any] | None:
    """The first ``bag[key]`` that is a mapping, among ``bags`` (mappings or anything else, skipped)."""
    for bag in bags:
        if isinstance(bag, Mapping) and isinstance(bag.get(key), Mapping):
            return dict(bag[key])
    return None
