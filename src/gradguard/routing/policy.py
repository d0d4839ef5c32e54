"""Routing policies: confidence tiers, each with an action, and the decision they make."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator, model_validator

from gradguard.result import ScoreResult
from gradguard.routing._models import RoutingModel
from gradguard.routing.actions import Action
from gradguard.routing.errors import RoutingInputError, RoutingPolicyError, RoutingPolicyWarning

__all__ = ["Tier", "RoutingPolicy", "Decision", "DEFAULT_ABSTAIN_TEXT", "UNSCORED_NO_SCORE", "read_confidence"]

#: What an abstaining (or rejecting) guard returns instead of the answer.
DEFAULT_ABSTAIN_TEXT = "I don't know."

#: Why an answer that was never scored (``result=None``) has no usable confidence.
UNSCORED_NO_SCORE = "unscored (no score)"


class Tier(RoutingModel):
    """One band of a routing policy: answers with ``confidence >= min_confidence``
    (and below the tier above) get ``action``.

    ``Tier(0.8, Action.ACCEPT)``, ``Tier(0.5, Action.ESCALATE, "human")``,
    ``Tier(0.0, Action.ABSTAIN)``. ``target`` names an escalation target
    registered with the :class:`~gradguard.routing.Router`; it is required for
    ``ESCALATE`` and forbidden otherwise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    _positional: ClassVar[tuple[str, ...]] = ("min_confidence", "action", "target")
    _error: ClassVar[type[RoutingPolicyError]] = RoutingPolicyError

    min_confidence: float = Field(..., description="Lowest calibrated confidence, in [0, 1], this tier covers.")
    action: Action = Field(..., description="What to do with answers in this tier.")
    target: str | None = Field(None, description="Escalation target name; required iff action is escalate.")

    @field_validator("min_confidence", mode="before")
    @classmethod
    def _check_min_confidence(cls, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RoutingPolicyError(
                f"Tier min_confidence={v!r} is not a number; use a calibrated probability in [0, 1], e.g. 0.8"
            )
        v = float(v)
        if math.isnan(v):
            raise RoutingPolicyError("Tier min_confidence=nan is not a number; use a finite value in [0, 1], e.g. 0.8")
        if not 0.0 <= v <= 1.0:
            raise RoutingPolicyError(
                f"Tier min_confidence={v!r} is outside [0, 1]; confidences are calibrated probabilities, "
                "so use a value between 0.0 and 1.0 (e.g. 0.8)"
            )
        return v

    @model_validator(mode="after")
    def _check_target(self) -> Tier:
        where = f"Tier(min_confidence={self.min_confidence!r}, action={self.action.value!r})"
        if self.action is Action.ESCALATE:
            if self.target is None:
                raise RoutingPolicyError(
                    f"{where} has no target; name the escalation target, e.g. "
                    f"Tier({self.min_confidence!r}, Action.ESCALATE, target='human'), and register it "
                    "with Router(policy, targets={'human': ...})"
                )
            if not self.target.strip():
                raise RoutingPolicyError(f"{where} has target={self.target!r}; use a non-empty target name")
        elif self.target is not None:
            raise RoutingPolicyError(
                f"{where} has target={self.target!r}, but only escalate tiers use a target; "
                "drop target or use action=Action.ESCALATE"
            )
        return self


class Decision(RoutingModel):
    """What a policy decided for one answer.

    ``confidence`` is the answer's calibrated confidence (P(correct); ``None`` when it has
    none: unscored, uncalibrated, NaN or out of range). ``signal`` names the number the
    decision was made on and ``signal_value`` is its value (``None``: no usable value, so
    the policy decided as if the confidence were 0.0, and ``reason`` says why). With the
    default signal both are the confidence; with a raw uncertainty signal (e.g.
    ``hybridgrad <= 0.02``; larger = less confident) ``signal_value`` is that uncertainty.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    _error: ClassVar[type[RoutingPolicyError]] = RoutingPolicyError

    action: Action
    tier_index: int = Field(..., ge=0, description="Index into policy.tiers of the tier that decided.")
    confidence: float | None
    target: str | None
    reason: str
    signal: str = "confidence"
    signal_value: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_signal_value(cls, data: Any) -> Any:
        """With the default signal the value decided on is the confidence itself."""
        if isinstance(data, dict) and data.get("signal", "confidence") == "confidence" and "signal_value" not in data:
            data = {**data, "signal_value": data.get("confidence")}
        return data


def read_confidence(value: float | ScoreResult | None) -> tuple[float | None, str | None]:
    """The usable confidence in ``value``, or ``(None, why)`` when there is none.

    ``None`` comes back (fail closed) for ``None``, NaN, a confidence outside
    [0, 1], a :class:`ScoreResult` with ``scored`` False (empty response or
    non-finite scores), or one with ``confidence`` None (no calibrator). ``why``
    starts with ``"unscored"``, ``"uncalibrated"`` or ``"invalid"``.

    Raises :class:`RoutingInputError` for anything that is not a number, a
    ``ScoreResult`` or ``None``.
    """
    if isinstance(value, ScoreResult):
        if not value.scored:
            return None, "unscored (result.scored is False: empty response or non-finite gradient scores)"
        if value.confidence is None:
            return None, "uncalibrated (result.confidence is None: no calibrator was fitted for this model)"
        value = value.confidence
    if value is None:
        return None, "uncalibrated (no confidence given)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RoutingInputError(
            f"confidence={value!r} ({type(value).__name__}) is not usable; pass a float in [0, 1], "
            "a gradguard ScoreResult, or None"
        )
    c = float(value)
    if math.isnan(c):
        return None, "unscored (confidence is NaN)"
    if not 0.0 <= c <= 1.0:
        return None, f"invalid confidence {c!r} (outside [0, 1])"
    return c, None


class RoutingPolicy(RoutingModel):
    """Confidence tiers, highest first, that map a calibrated confidence to an action.

    Tiers are strictly descending by ``min_confidence`` and the last one starts at
    0.0, so every confidence falls in exactly one tier. The last (floor) tier also
    receives every answer without a usable confidence (fail closed), so it may not
    accept.

    >>> policy = RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.5, Action.ESCALATE, "human"),
    ...                         Tier(0.0, Action.ABSTAIN)])
    >>> policy.decide(0.9).action
    <Action.ACCEPT: 'accept'>

    ``tiers`` is stored as a tuple (the policy is an immutable value).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    _positional: ClassVar[tuple[str, ...]] = ("tiers", "abstain_text")
    _error: ClassVar[type[RoutingPolicyError]] = RoutingPolicyError

    tiers: tuple[Tier, ...] = Field(..., description="Tiers strictly descending by min_confidence; last at 0.0.")
    abstain_text: str = Field(DEFAULT_ABSTAIN_TEXT, description="Returned instead of an abstained or rejected answer.")

    @model_validator(mode="after")
    def _check_tiers(self) -> RoutingPolicy:
        tiers = self.tiers
        if not tiers:
            raise RoutingPolicyError(
                "RoutingPolicy(tiers=[]) has no tiers; give at least a floor tier, "
                "e.g. RoutingPolicy.threshold(0.8) or [Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ABSTAIN)]"
            )
        for i in range(1, len(tiers)):
            prev, cur = tiers[i - 1].min_confidence, tiers[i].min_confidence
            if cur == prev:
                raise RoutingPolicyError(
                    f"tiers {i - 1} and {i} both have min_confidence={cur!r} (overlapping tiers); "
                    "give each tier a distinct min_confidence or merge them"
                )
            if cur > prev:
                raise RoutingPolicyError(
                    f"tiers are not in descending order: tier {i} (min_confidence={cur!r}) comes after "
                    f"tier {i - 1} (min_confidence={prev!r}); sort the tiers from the highest "
                    "min_confidence to the lowest"
                )
        floor = tiers[-1]
        if floor.min_confidence != 0.0:
            raise RoutingPolicyError(
                f"the last tier has min_confidence={floor.min_confidence!r}, so lower confidences (and "
                "unscored answers) match no tier; end the tiers with a floor at 0.0, "
                "e.g. Tier(0.0, Action.ABSTAIN)"
            )
        if floor.action is Action.ACCEPT:
            raise RoutingPolicyError(
                "the floor tier (min_confidence=0.0) has action='accept', which accepts every answer, "
                "unscored and uncalibrated ones included; use abstain, reject or escalate for the floor tier"
            )
        return self

    @classmethod
    def threshold(
        cls, t: float, below: Action | str = Action.ABSTAIN, target: str | None = None
    ) -> RoutingPolicy:
        """Accept answers with ``confidence >= t``; give the rest ``below``.

        ``RoutingPolicy.threshold(0.8)`` abstains below 0.8;
        ``RoutingPolicy.threshold(0.8, Action.ESCALATE, "human")`` sends them to review.
        """
        if not isinstance(t, bool) and isinstance(t, (int, float)) and t == 0:
            raise RoutingPolicyError(
                "RoutingPolicy.threshold(t=0.0) would accept every answer, unscored ones included; "
                "use a threshold above 0, e.g. RoutingPolicy.threshold(0.8)"
            )
        accept = Tier(min_confidence=t, action=Action.ACCEPT)
        return cls(tiers=[accept, Tier(min_confidence=0.0, action=below, target=target)])

    def decide(
        self, confidence: float | ScoreResult | None, *, from_tier: int = 0, missing_reason: str | None = None
    ) -> Decision:
        """The decision for ``confidence`` (a calibrated probability, a ``ScoreResult`` or ``None``).

        Fails closed: ``None``, NaN, an out-of-range value, an unscored result
        (``result.scored`` False) or an uncalibrated one (``result.confidence``
        None) are decided as confidence 0.0, i.e. by the floor tier, and the
        reason starts with ``"unscored"``, ``"uncalibrated"`` or ``"invalid"``
        (or is ``missing_reason``, when given for a ``None`` confidence).

        ``from_tier`` skips the tiers above it (the router uses it when a tier's
        escalation could not run, so that the next tier down applies).
        """
        value, why = read_confidence(confidence)
        if confidence is None and missing_reason is not None:
            why = missing_reason
        if isinstance(from_tier, bool) or not isinstance(from_tier, int) or not 0 <= from_tier < len(self.tiers):
            raise RoutingPolicyError(
                f"from_tier={from_tier!r} is not a tier index of this policy; use 0..{len(self.tiers) - 1}"
            )
        effective = 0.0 if value is None else value
        natural = next(i for i, tier in enumerate(self.tiers) if effective >= tier.min_confidence)
        index = max(natural, from_tier)
        tier = self.tiers[index]
        if why is not None:
            basis = f"{why}; treated as confidence 0.0"
        else:
            basis = f"confidence {value:.4g} >= {self.tiers[natural].min_confidence:g}"
        if index != natural:
            skipped = f"tier {natural}" if from_tier - 1 == natural else f"tiers {natural}..{from_tier - 1}"
            basis += f", but {skipped} could not apply"
        reason = f"{basis}: tier {index} -> {tier.action.value}"
        if tier.target is not None:
            reason += f" {tier.target!r}"
        return Decision(
            action=tier.action, tier_index=index, confidence=value, target=tier.target, reason=reason
        )

    def targets(self) -> list[str]:
        """The escalation target names this policy uses, in tier order, without repeats."""
        return list(dict.fromkeys(t.target for t in self.tiers if t.target is not None))

    def to_json(self, *, indent: int | None = 2) -> str:
        """This policy as JSON with sorted keys (load it back with :meth:`from_json`)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> RoutingPolicy:
        """Load a policy saved by :meth:`to_json`.

        Unknown keys (at the top level or in a tier) are ignored with a
        :class:`~gradguard.routing.RoutingPolicyWarning`; invalid JSON or an
        invalid policy raises :class:`RoutingPolicyError`.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RoutingPolicyError(f"routing policy JSON could not be parsed: {exc}; fix the JSON text") from None
        if not isinstance(data, dict):
            raise RoutingPolicyError(
                f"routing policy JSON must be an object with a 'tiers' list, got {type(data).__name__}"
            )
        data = _drop_unknown(data, set(cls.model_fields), "routing policy")
        tiers = data.get("tiers")
        if isinstance(tiers, list):
            data["tiers"] = [
                _drop_unknown(t, set(Tier.model_fields), f"tier {i}") if isinstance(t, dict) else t
                for i, t in enumerate(tiers)
            ]
        return cls(**data)


def _drop_unknown(data: dict[str, Any], known: set[str], where: str) -> dict[str, Any]:
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        warnings.warn(
            f"{where} JSON has unknown keys {unknown}; they were ignored (known keys: {sorted(known)})",
            RoutingPolicyWarning,
            stacklevel=3,
        )
    return {k: v for k, v in data.items() if k in known}
