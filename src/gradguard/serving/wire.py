"""The wire format of gradguard's own fields in OpenAI-style responses (framework-free).

Every choice (and every ``/v1/score`` result) carries :data:`~gradguard.integrations._core.METADATA_KEY`
(``"gradguard"``): :meth:`gradguard.ScoreResult.metadata`, the same dict the LangChain and LlamaIndex
integrations publish. A client that needs the whole result (gradguard's own clients do, so their metadata
and routing are identical to a local model's) asks for it with the request field :data:`RESULT_FIELD`
(``"gradguard_result": true``) and reads it back with :func:`result_from_wire`. A turn with tools also carries
:data:`TURN_KEY`: its unscored reasoning section and the calls that could not be used.

JSON has no NaN: a score that is NaN (an unscorable answer) travels as ``null`` and comes back as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradguard.errors import GradguardError
from gradguard.result import ScoreResult

__all__ = [
    "RESULT_FIELD", "RESULT_KEY", "TURN_KEY", "WireFormatError", "json_safe", "result_to_wire", "result_from_wire",
]

#: The request field that asks for the whole result in every choice (a gradguard extension; OpenAI clients omit it).
RESULT_FIELD = "gradguard_result"
#: The choice key holding the whole :class:`~gradguard.ScoreResult` (:func:`result_to_wire`), when asked for.
RESULT_KEY = "gradguard_result"
#: The choice key of a turn with tools: ``{"reasoning": str, "invalid_tool_calls": [{id, name, arguments, error}]}``.
TURN_KEY = "gradguard_turn"

#: ScoreResult fields that are floats and may be NaN (sent as null).
_FLOAT_FIELDS = ("hybridgrad", "semgrad", "paragrad", "exgrad", "alpha", "mean_entropy", "g_nll", "mean_nll", "max_nll")


class WireFormatError(GradguardError, ValueError):
    """A server's response does not hold what gradguard's wire format promises (a different server, or a version
    mismatch)."""


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (recursively), so it is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def result_to_wire(result: ScoreResult) -> dict[str, Any]:
    """``result`` as a JSON-safe dict (its ``parts`` included; hidden states and ``top_logprobs`` are not sent:
    the choice's OpenAI ``logprobs`` carry the alternatives)."""
    return dict(json_safe(result.model_dump(mode="python")))


def result_from_wire(data: Any) -> ScoreResult:
    """The :class:`~gradguard.ScoreResult` that :func:`result_to_wire` sent (``null`` scores come back as NaN).

    Keys this version does not know are dropped (a newer server may send more); a payload that is not a result
    raises :class:`WireFormatError`.
    """
    if not isinstance(data, Mapping):
        raise WireFormatError(f"expected a gradguard result object, got {type(data).__name__}: {data!r:.200}")
    known = set(ScoreResult.model_fields) - {"hidden", "top_logprobs"}
    fields = {k: v for k, v in data.items() if k in known}
    for name in _FLOAT_FIELDS:
        if fields.get(name) is None:
            fields[name] = math.nan
    fields["parts"] = tuple(result_from_wire(p) for p in fields.get("parts") or ())
    try:
        return ScoreResult.model_validate(fields)
    except Exception as exc:  # pydantic's ValidationError, named for the reader
        raise WireFormatError(f"the server's gradguard result does not validate: {exc}") from exc
