"""Hand-built :class:`ScoreResult` objects for tests that need exact control over scores and confidence."""

from __future__ import annotations

import math
from typing import Any

from gradguard.result import ScoreResult, Timings

__all__ = ["make_score_result"]


def make_score_result(
    *,
    confidence: float | None = None,
    hybridgrad: float = 0.05,
    empty: bool = False,
    response: str = "Paris",
    **overrides: Any,
) -> ScoreResult:
    """A plausible ScoreResult; ``empty=True`` gives the empty-answer result (NaN scores, unscored).

    Every gradient score defaults to ``hybridgrad``; any field can be overridden by keyword.
    """
    g = math.nan if empty else hybridgrad
    fields: dict[str, Any] = {
        "hybridgrad": g,
        "semgrad": g,
        "paragrad": g,
        "exgrad": g,
        "alpha": math.nan if empty else 0.5,
        "mean_entropy": math.nan if empty else 1.0,
        "g_nll": math.nan if empty else 2.0,
        "mean_nll": math.nan if empty else 1.0,
        "max_nll": math.nan if empty else 1.5,
        "n_response_tokens": 0 if empty else 2,
        "spt_offset": -3,
        "spt_position": 7,
        "layer_span": (2, 4),
        "n_prompt_tokens": 10,
        "timings": Timings(generate_s=None, score_s=0.01),
        "response": "" if empty else response,
        "empty": empty,
        "confidence": confidence,
        "model": "hand-built",
    }
    fields.update(overrides)
    return ScoreResult(**fields)
