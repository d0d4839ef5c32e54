"""The one table of scores: name, display label, direction and the calibration feature made from it.

Every score here is an **uncertainty** (larger = less confident) except where ``uncertainty``
is False. Metadata, tables, plots and calibration features all read this table; nothing else
lists score names.

=================  ==========================================================  =========
name               what it is                                                  feature
=================  ==========================================================  =========
``hybridgrad``     α·ParaGrad + (1−α)·SemGrad, the paper's headline score      log
``semgrad``        mean |∂ℓ_w/∂h_l[s]| over the top half of the layers         log
``paragrad``       mean |∂ℓ_w/∂W_head|                                          log
``exgrad``         mean |∂ℓ/∂W_head| (no entropy weights)                      log
``g_nll``          summed token NLL of the answer                              as is
``mean_nll``       length-normalised NLL                                       as is
``mean_entropy``   mean entropy of the predicting distributions                as is
``max_nll``        largest token NLL                                           as is
``max_entropy``    largest token entropy                                       as is
``first_nll``      NLL of the first answer token                               as is
``first_entropy``  entropy of the distribution over the first answer token     as is
``last_nll``       NLL of the last answer token                                as is
``nll_std``        spread (std) of the token NLLs                              as is
``entropy_std``    spread (std) of the token entropies                         as is
``unsure_share``   share of answer tokens predicted with entropy > 1 nat       as is
``answer_length``  number of scored answer tokens (not an uncertainty)         log
=================  ==========================================================  =========

Token statistics read the scored tokens only (``ScoreResult.span``: a prefill or a reasoning section
is not scored). Gradient scores are logged because they span orders of magnitude (a zero is clipped to 1e-30).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ScoreSpec",
    "SCORES",
    "SCORE_BY_NAME",
    "UNCERTAINTY_KEYS",
    "SCORE_LABELS",
    "FEATURES",
    "GRADIENT_FEATURES",
    "TOKEN_FEATURES",
    "feature_value",
]

_TINY = 1e-30


@dataclass(frozen=True)
class ScoreSpec:
    """One score: how to read it off a result, how to show it, and how calibration uses it."""

    name: str
    label: str
    group: Literal["gradient", "token", "length"]
    transform: Literal["log", "identity"]
    reported: bool  # listed under ``uncertainty`` in every integration's metadata
    read: Callable[[Any], float]
    uncertainty: bool = True  # larger = less confident

    @property
    def feature(self) -> str:
        """The calibration feature's name (``log_<name>`` for logged scores)."""
        return f"log_{self.name}" if self.transform == "log" else self.name

    def feature_of(self, result: Any) -> float:
        """The calibration feature's value for ``result`` (NaN when the score is not finite)."""
        v = float(self.read(result))
        if not math.isfinite(v):
            return math.nan
        return math.log(max(v, _TINY)) if self.transform == "log" else v


def _max(values: Any) -> float:
    return max(values) if values else math.nan


def _at(values: Any, i: int, sign: float = 1.0) -> float:
    return sign * values[i] if values else math.nan


def _std(values: Any, sign: float = 1.0) -> float:
    if not values:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((sign * v - sign * mean) ** 2 for v in values) / len(values))


def _share_above(values: Any, line: float) -> float:
    return sum(1 for v in values if v > line) / len(values) if values else math.nan


SCORES: tuple[ScoreSpec, ...] = (
    ScoreSpec("hybridgrad", "HybridGrad", "gradient", "log", True, lambda r: r.hybridgrad),
    ScoreSpec("semgrad", "SemGrad", "gradient", "log", True, lambda r: r.semgrad),
    ScoreSpec("paragrad", "ParaGrad", "gradient", "log", True, lambda r: r.paragrad),
    ScoreSpec("exgrad", "ExGrad", "gradient", "log", True, lambda r: r.exgrad),
    ScoreSpec("g_nll", "G-NLL", "token", "identity", True, lambda r: r.g_nll),
    ScoreSpec("mean_nll", "mean NLL", "token", "identity", True, lambda r: r.mean_nll),
    ScoreSpec("mean_entropy", "mean entropy", "token", "identity", True, lambda r: r.mean_entropy),
    ScoreSpec("max_nll", "max NLL", "token", "identity", False, lambda r: r.max_nll),
    ScoreSpec("max_entropy", "max entropy", "token", "identity", False, lambda r: _max(r.scored_entropies)),
    ScoreSpec("first_nll", "first-token NLL", "token", "identity", False, lambda r: _at(r.scored_logprobs, 0, -1.0)),
    ScoreSpec("first_entropy", "first-token entropy", "token", "identity", False, lambda r: _at(r.scored_entropies, 0)),
    ScoreSpec("last_nll", "last-token NLL", "token", "identity", False, lambda r: _at(r.scored_logprobs, -1, -1.0)),
    ScoreSpec("nll_std", "NLL spread", "token", "identity", False, lambda r: _std(r.scored_logprobs, -1.0)),
    ScoreSpec("entropy_std", "entropy spread", "token", "identity", False, lambda r: _std(r.scored_entropies)),
    ScoreSpec(
        "unsure_share",
        "share of unsure tokens",
        "token",
        "identity",
        False,
        lambda r: _share_above(r.scored_entropies, 1.0),
    ),
    ScoreSpec(
        "answer_length",
        "answer length",
        "length",
        "log",
        False,
        lambda r: max(r.n_scored_tokens, 1),
        uncertainty=False,
    ),
)

SCORE_BY_NAME: Mapping[str, ScoreSpec] = {s.name: s for s in SCORES}
#: The uncertainty scores reported in every integration's metadata, in this order.
UNCERTAINTY_KEYS: tuple[str, ...] = tuple(s.name for s in SCORES if s.reported)
#: Display names of the scores, for tables and plots.
SCORE_LABELS: Mapping[str, str] = {s.name: s.label for s in SCORES}
_BY_FEATURE: Mapping[str, ScoreSpec] = {s.feature: s for s in SCORES}
#: Every calibration feature name, in table order.
FEATURES: tuple[str, ...] = tuple(_BY_FEATURE)
#: The gradient features, and the token-statistic features (length included), for the ablation.
GRADIENT_FEATURES: tuple[str, ...] = tuple(s.feature for s in SCORES if s.group == "gradient")
TOKEN_FEATURES: tuple[str, ...] = tuple(s.feature for s in SCORES if s.group != "gradient")


def feature_value(result: Any, feature: str) -> float:
    """The value of calibration feature ``feature`` for ``result`` (NaN when not finite)."""
    try:
        spec = _BY_FEATURE[feature]
    except KeyError:
        raise KeyError(f"unknown calibration feature {feature!r}; known: {FEATURES}") from None
    return spec.feature_of(result)
