"""The guard signal: which number of a score a guard or a routing policy decides on.

A :class:`GuardSignal` is one of

- ``"confidence"`` (default): the calibrated probability that the answer is correct
  (larger = more confident). On an uncalibrated model it is ``None``, so nothing passes;
- a raw uncertainty (``hybridgrad``, ``semgrad``, ``paragrad``, ``exgrad``, ``g_nll``,
  ``mean_nll``, ``mean_entropy``; larger = **less** confident) with ``max_uncertainty``,
  the largest acceptable value (choose it on held-out data);
- a function ``ScoreResult -> float | None`` returning a confidence in [0, 1].

It fails closed: no score, an unscored answer (``scored`` False, e.g. an empty answer), a
missing/NaN value, a function that raises or returns anything but a number in [0, 1]: all
count as unconfident. So does an answer flagged **out of domain** (``in_domain`` False: it lies
outside the data the task's calibration was fitted on, where its confidence means little),
unless the signal is built with ``allow_out_of_domain=True``. The integrations (LangChain's
``GuardSignal``, LlamaIndex's ``Signal``)
are thin subclasses of this class. Framework-free: no LangChain or LlamaIndex import.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from gradguard.result import UNCERTAINTY_KEYS, ScoreResult, unscored_metadata
from gradguard.routing._models import RoutingModel
from gradguard.routing.errors import GuardSignalError, RoutingInputError
from gradguard.routing.policy import UNSCORED_NO_SCORE, read_confidence

__all__ = [
    "SIGNALS",
    "DEFAULT_MIN_CONFIDENCE",
    "GuardSignal",
    "SignalFn",
    "SignalReading",
    "is_scored",
    "unscored_metadata",
]

logger = logging.getLogger(__name__)

#: The score names a signal can read: the calibrated confidence, or one raw uncertainty.
SIGNALS: tuple[str, ...] = ("confidence", *UNCERTAINTY_KEYS)

#: The pass line of :meth:`GuardSignal.check` for a confidence-like signal without ``min_confidence``.
DEFAULT_MIN_CONFIDENCE = 0.5

#: A function mapping a score to a confidence in [0, 1] (``None`` = unconfident).
SignalFn = Callable[[ScoreResult], "float | None"]

_NO_FINITE_SCORE = "the answer has no finite score (e.g. an empty answer)"
_NO_CALIBRATION = (
    "uncalibrated: no calibrated confidence (no calibration applies to this model and task); "
    "guard on a raw score instead, e.g. signal='hybridgrad' with max_uncertainty"
)


class SignalReading(NamedTuple):
    """What a signal read from one answer: whether it passes, the value read (``None``: none), and why."""

    passed: bool
    value: float | None
    reason: str


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def is_scored(meta: Mapping[str, Any] | None) -> bool:
    """True when ``meta`` (the shared metadata dict, :meth:`ScoreResult.metadata`) has finite gradient scores.

    Uses the ``scored`` flag when present, else checks that every gradient uncertainty is finite.
    """
    if not isinstance(meta, Mapping):
        return False
    if "scored" in meta:
        return meta["scored"] is True
    unc = meta.get("uncertainty")
    if not isinstance(unc, Mapping):
        return False
    return all(_finite(unc.get(k)) is not None for k in ("hybridgrad", "semgrad", "paragrad", "exgrad"))


def _function_name(function: Any) -> str:
    return getattr(function, "__name__", type(function).__name__)


class GuardSignal(RoutingModel):
    """The number a guard (or a routing policy) decides on, and the line drawn on it.

    Build it with :meth:`confidence`, :meth:`uncertainty`, :meth:`from_function`, or
    :meth:`from_options` (a component's ``signal=`` / ``max_uncertainty=`` options). Bad
    values raise :class:`~gradguard.routing.GuardSignalError` naming the value and the fix.

    - :meth:`confidence_of` gives the confidence in [0, 1] a routing policy sees (``None`` =
      unconfident): the calibrated confidence, the function's value, or for a raw uncertainty
      1.0 when ``value <= max_uncertainty`` and 0.0 otherwise (a raw score has no probability
      scale, only the line drawn on it). Calling the signal is the same.
    - :meth:`check` says whether an answer passes and why: ``confidence >= min_confidence``
      (default :data:`DEFAULT_MIN_CONFIDENCE`) or ``value <= max_uncertainty``.

    Both read a :class:`~gradguard.ScoreResult`, its metadata dict, or ``None`` (never scored),
    and fail closed.

    >>> GuardSignal.uncertainty("hybridgrad", 0.02).describe()
    'hybridgrad <= 0.02'
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    _error: ClassVar[type[GuardSignalError]] = GuardSignalError

    name: str = Field("confidence", description="'confidence' or a raw uncertainty score name (see SIGNALS).")
    min_confidence: float | None = Field(
        None, description="Pass line of check() for a confidence or function signal, in [0, 1]."
    )
    max_uncertainty: float | None = Field(
        None, description="Largest raw uncertainty still confident (>= 0); required for a raw signal."
    )
    function: Callable[[ScoreResult], Any] | None = Field(
        None, exclude=True, description="A function ScoreResult -> confidence in [0, 1] (replaces name)."
    )
    allow_out_of_domain: bool = Field(
        False, description="Decide on answers flagged out of domain too (default: they are unconfident)."
    )

    # --- validation -------------------------------------------------------------------------

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, v: Any) -> str:
        if not isinstance(v, str):
            raise cls._error(
                f"signal={v!r} is not a score name; use one of {list(SIGNALS)}, or pass a function as signal"
            )
        return v

    @field_validator("min_confidence", "max_uncertainty", mode="before")
    @classmethod
    def _check_number(cls, v: Any, info: Any) -> float | None:
        if v is None:
            return None
        field = info.field_name
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise cls._error(f"{field}={v!r} is not a number; pass a real number, e.g. {field}=0.5")
        v = float(v)
        if not math.isfinite(v):
            raise cls._error(f"{field}={v!r} is not a finite number; pass a real number, e.g. {field}=0.5")
        if field == "min_confidence" and not 0.0 <= v <= 1.0:
            raise cls._error(
                f"min_confidence={v!r} is outside [0, 1]; a confidence is a probability, pass e.g. 0.7"
            )
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> Self:
        err = type(self)._error
        if self.function is not None:
            if self.name != "confidence":
                raise err(
                    f"function={_function_name(self.function)} replaces signal={self.name!r}; pass one or the other"
                )
            if self.max_uncertainty is not None:
                raise err(
                    f"max_uncertainty={self.max_uncertainty!r} goes with signal='<score name>'; a function "
                    "signal returns a confidence in [0, 1] itself, so drop max_uncertainty"
                )
            return self
        if self.name not in SIGNALS:
            raise err(
                f"signal={self.name!r} is not known; use one of {list(SIGNALS)}, "
                "or a function ScoreResult -> float | None"
            )
        if self.name == "confidence":
            if self.max_uncertainty is not None:
                raise err(
                    f"max_uncertainty={self.max_uncertainty!r} applies to a raw uncertainty signal, but "
                    "signal='confidence'; choose signal='hybridgrad' (or another score), or drop max_uncertainty "
                    "(to draw a line on the confidence, set min_confidence instead)"
                )
            return self
        if self.min_confidence is not None:
            raise err(
                f"min_confidence={self.min_confidence!r} applies to signal='confidence', but "
                f"signal={self.name!r}; set max_uncertainty (the largest acceptable {self.name}) instead"
            )
        if self.max_uncertainty is None:
            raise err(
                f"signal={self.name!r} needs max_uncertainty (got None); a raw uncertainty signal needs a finite "
                f"max_uncertainty, the largest acceptable {self.name} (larger = less confident), "
                "chosen on held-out data"
            )
        if self.max_uncertainty < 0.0:
            raise err(
                f"max_uncertainty={self.max_uncertainty!r} for {self.name} is negative, but {self.name} is never "
                "negative; pass a threshold >= 0"
            )
        return self

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def confidence(cls, min_confidence: float | None = None, *, allow_out_of_domain: bool = False) -> Self:
        """Decide on the calibrated confidence; :meth:`check` passes it at ``>= min_confidence``."""
        return cls(name="confidence", min_confidence=min_confidence, allow_out_of_domain=allow_out_of_domain)

    @classmethod
    def uncertainty(cls, name: str, max_value: float) -> Self:
        """Decide on raw uncertainty ``name``: confident iff ``value <= max_value`` (larger = less confident)."""
        return cls(name=name, max_uncertainty=max_value)

    @classmethod
    def from_function(cls, function: SignalFn, min_confidence: float | None = None) -> Self:
        """Decide on ``function(result)``, a confidence in [0, 1] (anything else is unconfident)."""
        return cls(function=function, min_confidence=min_confidence)

    @classmethod
    def from_options(
        cls,
        signal: str | GuardSignal | SignalFn = "confidence",
        max_uncertainty: float | None = None,
        *,
        min_confidence: float | None = None,
        owner: str | None = None,
    ) -> Self:
        """Build from a component's options: ``signal`` is a score name (``"confidence"`` or a raw
        uncertainty, which needs ``max_uncertainty``), a ``GuardSignal``, or a function.

        ``owner`` (e.g. ``"ConfidenceGuardParser"``) prefixes error messages.
        """
        try:
            if isinstance(signal, GuardSignal):
                extra = {"max_uncertainty": max_uncertainty, "min_confidence": min_confidence}
                for option, value in extra.items():
                    if value is not None:
                        kind = type(signal).__name__
                        raise cls._error(
                            f"{option}={value!r} goes with signal='<score name>'; with a {kind} as signal, put the "
                            f"threshold in it (e.g. {kind}.uncertainty('hybridgrad', 0.02))"
                        )
                return signal if isinstance(signal, cls) else cls(**dict(signal))
            if isinstance(signal, str):
                return cls(name=signal, max_uncertainty=max_uncertainty, min_confidence=min_confidence)
            if callable(signal):
                return cls(function=signal, max_uncertainty=max_uncertainty, min_confidence=min_confidence)
            raise cls._error(
                f"signal={signal!r} is not usable; pass 'confidence', a score name with max_uncertainty, "
                "a GuardSignal, or a function ScoreResult -> float | None"
            )
        except GuardSignalError as exc:
            if owner:
                raise type(exc)(f"{owner}: {exc}") from None
            raise

    # --- description ------------------------------------------------------------------------

    @property
    def is_confidence(self) -> bool:
        """True when the signal is the calibrated confidence (larger = more confident)."""
        return self.function is None and self.name == "confidence"

    @property
    def is_raw(self) -> bool:
        """True when the signal is a raw uncertainty with ``max_uncertainty`` (larger = less confident)."""
        return self.function is None and self.name != "confidence"

    @property
    def label(self) -> str:
        """The signal's name: the score name, or the function's name."""
        return _function_name(self.function) if self.function is not None else self.name

    @property
    def threshold(self) -> float:
        """The line :meth:`check` draws: ``max_uncertainty`` for a raw signal, else ``min_confidence``
        (:data:`DEFAULT_MIN_CONFIDENCE` when not set)."""
        if self.is_raw:
            assert self.max_uncertainty is not None  # guaranteed by validation
            return self.max_uncertainty
        return DEFAULT_MIN_CONFIDENCE if self.min_confidence is None else self.min_confidence

    def describe(self) -> str:
        """A short rule for metadata: ``hybridgrad <= 0.02``, ``confidence >= 0.7``, or ``confidence``
        (a confidence or function whose line the routing policy draws)."""
        if self.is_raw:
            return f"{self.name} <= {self.threshold:g}"
        if self.min_confidence is None:
            return self.label
        return f"{self.label} >= {self.min_confidence:g}"

    # --- reading ----------------------------------------------------------------------------

    def _read(self, source: ScoreResult | Mapping[str, Any] | None) -> tuple[float | None, str]:
        """The signal's value in ``source``, or ``(None, why)`` (fail closed)."""
        if source is None:
            return None, f"{UNSCORED_NO_SCORE}: the answer was never scored"
        if isinstance(source, ScoreResult):
            if not source.scored:
                return None, f"unscored: {_NO_FINITE_SCORE}"
        elif isinstance(source, Mapping):
            if not is_scored(source):
                return None, f"unscored: {source.get('error') or _NO_FINITE_SCORE}"
        else:
            raise RoutingInputError(
                f"cannot read a signal from a {type(source).__name__}; pass a gradguard ScoreResult, its "
                "metadata dict, or None for an unscored answer"
            )

        in_domain = source.in_domain if isinstance(source, ScoreResult) else source.get("in_domain")
        if in_domain is False and not self.allow_out_of_domain:
            if isinstance(source, ScoreResult):
                task, pct = source.task, source.domain_percentile
            else:
                task, pct = source.get("task"), source.get("domain_percentile")
            real = isinstance(pct, numbers.Real)
            where = f" (farther than {pct:.1f}% of held-out calibration answers)" if real else ""
            return None, (
                f"out of domain: the answer lies outside the {task or 'task'} calibration data{where}, so its "
                "confidence is unreliable; calibrate on data like it, or pass allow_out_of_domain=True"
            )

        if self.is_raw:
            if isinstance(source, ScoreResult):
                value = _finite(getattr(source, self.name))
            else:
                unc = source.get("uncertainty")
                value = _finite(unc.get(self.name)) if isinstance(unc, Mapping) else None
            return (value, "") if value is not None else (None, f"{self.name} is missing or NaN")

        if self.function is None:
            raw = source.confidence if isinstance(source, ScoreResult) else source.get("confidence")
            if raw is None:
                return None, _NO_CALIBRATION
        elif not isinstance(source, ScoreResult):
            return None, f"signal function {self.label} needs the full ScoreResult, not only its metadata"
        else:
            try:
                raw = self.function(source)
            except Exception as exc:  # noqa: BLE001 - a broken signal must fail closed, never pass the answer
                logger.warning(
                    "signal function %s raised %s: %s; treating the answer as unconfident",
                    self.label, type(exc).__name__, exc,
                )
                return None, f"signal function {self.label} raised {type(exc).__name__}: {exc}"
            if raw is None:
                return None, f"signal function {self.label} returned None"
        # A confidence (calibrated or from the function) is read the way the routing policy reads one.
        if isinstance(raw, numbers.Real) and not isinstance(raw, bool):
            value, why = read_confidence(float(raw))
        else:
            value, why = None, f"invalid confidence {raw!r} (not a number)"
        if value is None:
            where = f"{self.label} gave {raw!r}: " if self.function is not None else ""
            return None, f"{where}{why}"
        return value, ""

    def value(self, source: ScoreResult | Mapping[str, Any] | None) -> float | None:
        """The signal's raw value in ``source`` (a confidence, a raw uncertainty, or the function's value),
        or ``None`` when it has none (unscored, missing, NaN, out of [0, 1] for a confidence)."""
        return self._read(source)[0]

    def check(self, source: ScoreResult | Mapping[str, Any] | None) -> SignalReading:
        """Whether ``source`` passes the line (``value <= max_uncertainty``, or ``confidence >= min_confidence``),
        the value read and why; no value never passes (fail closed)."""
        value, why = self._read(source)
        if value is None:
            return SignalReading(False, None, why)
        passed = value <= self.threshold if self.is_raw else value >= self.threshold
        rule = f"{self.label} {'<=' if self.is_raw else '>='} {self.threshold:g}"
        return SignalReading(passed, value, f"{self.label}={value:.6g} {'meets' if passed else 'fails'} {rule}")

    def confidence_of(self, source: ScoreResult | Mapping[str, Any] | None) -> float | None:
        """The confidence in [0, 1] a routing policy decides on; ``None`` means unconfident.

        The calibrated confidence or the function's value itself; for a raw uncertainty 1.0 when
        it passes ``max_uncertainty`` and 0.0 when it does not.
        """
        reading = self.check(source)
        if reading.value is None:
            return None
        if self.is_raw:
            return 1.0 if reading.passed else 0.0
        return reading.value

    def __call__(self, result: ScoreResult | Mapping[str, Any] | None) -> float | None:
        """Same as :meth:`confidence_of`."""
        return self.confidence_of(result)
