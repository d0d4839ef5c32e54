"""The router: applies a policy to an answer, running escalations, and records every step."""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, model_validator

from gradguard.result import ScoreResult
from gradguard.routing._models import RoutingModel
from gradguard.routing.actions import Action
from gradguard.routing.errors import RoutingInputError
from gradguard.routing.policy import Decision, RoutingPolicy, read_confidence
from gradguard.routing.signal import GuardSignal, SignalFn

__all__ = [
    "TrailStep",
    "EscalationResult",
    "EscalationTarget",
    "RouteOutcome",
    "Router",
    "Score",
    "TrailOutcome",
    "current_route",
]

logger = logging.getLogger(__name__)


class TrailOutcome:
    """The ``outcome`` strings a :class:`TrailStep` can carry."""

    ACCEPTED = "accepted"  #: the answer was returned
    ABSTAINED = "abstained"  #: abstain_text was returned
    REJECTED = "rejected"  #: the answer was rejected
    ESCALATED = "escalated"  #: the target returned a new answer; the policy decides again
    PENDING_REVIEW = "pending_review"  #: the target queued the answer for human review
    TARGET_ERROR = "target_error"  #: the target raised (or returned garbage); next tier down
    TARGET_MISSING = "target_missing"  #: kept for old trails: a missing target now raises when the Router is built
    TARGET_USED = "target_used"  #: the target already ran for this question; next tier down
    EXHAUSTED = "exhausted"  #: no tier was left to try; abstain


class TrailStep(RoutingModel):
    """One step of a routing run: a decision and what came of it.

    ``confidence`` is the answer's calibrated confidence (``None`` when it has none) and
    ``signal_value`` the value of the router's signal the step was decided on; ``error`` holds the
    text of a target's exception (or why it could
    not run). ``tier_index`` and ``reason`` (additions to the base schema) say which
    tier decided and why.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    _error: ClassVar[type[RoutingInputError]] = RoutingInputError

    step: int = Field(..., ge=0)
    action: Action
    target: str | None
    confidence: float | None
    outcome: str
    error: str | None = None
    signal_value: float | None = None
    tier_index: int | None = None
    reason: str = ""


class EscalationResult(RoutingModel):
    """What an escalation target returns: a new answer and its score.

    ``result`` is the new answer's score: the full :class:`ScoreResult`, or its metadata
    dict (:meth:`ScoreResult.metadata`) when the answer was scored in another process, or
    ``None`` when it was not scored (the policy then treats it as unconfident). A human-review target sets
    ``pending_review_id`` and the router abstains with that review id.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    _positional: ClassVar[tuple[str, ...]] = ("answer", "result", "pending_review_id", "metadata")
    _error: ClassVar[type[RoutingInputError]] = RoutingInputError

    answer: str
    result: ScoreResult | dict[str, Any] | None = None
    pending_review_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def score(self) -> ScoreResult | dict[str, Any] | None:
        """The new answer's score as the router reads it."""
        return self.result


#: ``(question, current_answer, current_result) -> EscalationResult``: produce a new,
#: re-scored answer (a bigger model, more retrieval, a human review queue).
EscalationTarget = Callable[[str, str, ScoreResult | None], EscalationResult]

_ROUTE: contextvars.ContextVar[tuple[Decision, tuple[TrailStep, ...], Any] | None] = contextvars.ContextVar(
    "gradguard_route", default=None
)


def current_route() -> tuple[Decision, tuple[TrailStep, ...], Any] | None:
    """Inside an escalation target the router is running: ``(decision, trail, score)``, else ``None``.

    ``decision`` is the decision that escalated to the target, ``trail`` the steps recorded before
    it, and ``score`` the answer's score as the router read it (a :class:`ScoreResult`, its
    metadata dict, or ``None``). A target such as :func:`gradguard.review.human_review_target`
    keeps them with what it stores; any other target may ignore them.
    """
    return _ROUTE.get()


@contextmanager
def _routing(decision: Decision, trail: list[TrailStep], score: Any) -> Iterator[None]:
    token = _ROUTE.set((decision, tuple(trail), score))
    try:
        yield
    finally:
        _ROUTE.reset(token)


class RouteOutcome(RoutingModel):
    """The result of routing one answer.

    ``action`` is ``ACCEPT``, ``ABSTAIN`` or ``REJECT`` (never ``ESCALATE``; the
    escalations are in ``trail``). ``answer`` is the (possibly escalated) answer
    when accepted, and the policy's ``abstain_text`` otherwise, never an unguarded
    answer. ``result`` is the score of the last answer considered. ``decision``
    is the final decision (``decision.action == action``). ``review_id`` is set
    when the answer was queued for human review.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    _error: ClassVar[type[RoutingInputError]] = RoutingInputError

    action: Action
    answer: str
    result: ScoreResult | dict[str, Any] | None
    decision: Decision
    trail: list[TrailStep]
    review_id: str | None = None

    @model_validator(mode="after")
    def _check_final(self) -> RouteOutcome:
        if self.action is Action.ESCALATE:
            raise RoutingInputError(
                "a RouteOutcome cannot end in action='escalate'; it ends in accept, abstain or reject"
            )
        return self

    @property
    def accepted(self) -> bool:
        """True when the answer was accepted."""
        return self.action is Action.ACCEPT

    def metadata(self) -> dict[str, Any]:
        """JSON-able summary: ``{"action", "reason", "confidence", "signal", "signal_value", "tier",
        "trail", "review_id"}``. ``confidence`` is the calibrated confidence of the last answer
        considered (``None`` when it has none), never the outcome of a threshold test; ``signal``
        and ``signal_value`` say what the decision was made on."""
        conf, value = self.decision.confidence, self.decision.signal_value
        return {
            "action": self.action.value,
            "reason": self.decision.reason,
            "confidence": conf if conf is not None and math.isfinite(conf) else None,
            "signal": self.decision.signal,
            "signal_value": value if value is not None and math.isfinite(value) else None,
            "tier": self.decision.tier_index,
            "trail": [step.model_dump(mode="json") for step in self.trail],
            "review_id": self.review_id,
        }


#: What the router reads an answer's score from: the full result, the metadata dict that travels
#: with a message (:meth:`gradguard.ScoreResult.metadata`), or ``None`` (never scored).
Score = ScoreResult | Mapping[str, Any] | None


class Router:
    """Applies a :class:`RoutingPolicy` to answers on a :class:`GuardSignal`, running escalation targets.

    ``signal`` says which number of an answer's score the policy decides on (default: the
    calibrated confidence; a raw uncertainty such as ``GuardSignal.uncertainty("hybridgrad", 0.02)``
    counts as confidence 1.0 when it passes its line and 0.0 when not; larger uncertainty = less
    confident). Every decision and trail step records both ``signal_value`` (what was read) and
    ``confidence`` (the calibrated one, or ``None``): a threshold test is never passed off as a
    confidence.

    ``targets`` maps the target names used by the policy's escalate tiers to callables
    ``(question, answer, result) -> EscalationResult``; a name the policy uses but ``targets``
    lacks raises :class:`RoutingInputError` here. A router holds no per-call state and may be
    shared between threads (if its targets can).

    Routing fails closed: no score, an unscored answer, an out-of-domain one (unless the signal
    allows it) or a missing value decides as confidence 0.0; an escalation target that raises
    or was already used for this question is recorded in the trail and the next tier down
    applies; when no tier is left the router abstains.
    """

    def __init__(
        self,
        policy: RoutingPolicy,
        targets: Mapping[str, EscalationTarget] | None = None,
        *,
        signal: GuardSignal | str | SignalFn | None = None,
        max_uncertainty: float | None = None,
    ) -> None:
        if not isinstance(policy, RoutingPolicy):
            raise RoutingInputError(
                f"policy={policy!r} is not a RoutingPolicy; build one with RoutingPolicy([...]) "
                "or RoutingPolicy.threshold(0.8)"
            )
        targets = dict(targets or {})
        for name, target in targets.items():
            if not isinstance(name, str) or not callable(target):
                raise RoutingInputError(
                    f"targets[{name!r}]={target!r} is not a callable escalation target; map each target "
                    "name to a function (question, answer, result) -> EscalationResult"
                )
        missing = [name for name in policy.targets() if name not in targets]
        if missing:
            raise RoutingInputError(
                f"the routing policy escalates to {missing} but no such target is registered (registered: "
                f"{sorted(targets)}); pass each one in targets={{name: target}}, or drop those tiers"
            )
        self.policy = policy
        self.targets: dict[str, EscalationTarget] = targets
        self.signal: GuardSignal = GuardSignal.from_options(
            "confidence" if signal is None else signal, max_uncertainty, owner="Router"
        )

    def decide(self, score: Score, *, from_tier: int = 0) -> Decision:
        """The policy's decision for one answer's ``score`` on this router's signal (no escalation run)."""
        if score is not None and not isinstance(score, (ScoreResult, Mapping)):
            raise RoutingInputError(
                f"result={score!r} is not a ScoreResult or its metadata dict; pass the scorer's ScoreResult, "
                "the 'gradguard' metadata of a message, or None for an unscored answer"
            )
        signal = self.signal
        reading = signal.check(score)
        confidence = _calibrated(score)
        if reading.value is None:
            policy_value, why = None, reading.reason
        elif signal.is_raw:
            policy_value, why = (1.0 if reading.passed else 0.0), None
        else:
            policy_value, why = reading.value, None
        decision = self.policy.decide(policy_value, from_tier=from_tier, missing_reason=why)
        reason = decision.reason
        if signal.is_raw and reading.value is not None:
            reason = f"{reading.reason}, counted as confidence {policy_value:g}; {reason}"
        return decision.model_copy(
            update={
                "confidence": confidence, "signal": signal.describe(), "signal_value": reading.value, "reason": reason
            }
        )

    def route(self, question: str, answer: str, result: Score) -> RouteOutcome:
        """Decide what to do with ``answer`` to ``question`` given its score.

        ``result`` is the scorer's :class:`ScoreResult`, or the metadata dict that travels with
        a message when the full result is not in this process (another process, an old
        message), or ``None`` for an answer that was never scored.
        """
        policy = self.policy
        trail: list[TrailStep] = []
        used: set[str] = set()
        from_tier = 0

        def record(decision: Decision, outcome: str, error: str | None = None) -> None:
            trail.append(
                TrailStep(
                    step=len(trail),
                    action=decision.action,
                    target=decision.target,
                    confidence=decision.confidence,
                    signal_value=decision.signal_value,
                    outcome=outcome,
                    error=error,
                    tier_index=decision.tier_index,
                    reason=decision.reason,
                )
            )

        def finish(action: Action, decision: Decision, review_id: str | None = None) -> RouteOutcome:
            text = answer if action is Action.ACCEPT else policy.abstain_text
            return RouteOutcome(
                action=action, answer=text, result=result, decision=decision, trail=trail, review_id=review_id
            )

        while True:
            if from_tier >= len(policy.tiers):
                last = policy.tiers[-1]
                decision = Decision(
                    action=Action.ABSTAIN,
                    tier_index=len(policy.tiers) - 1,
                    confidence=trail[-1].confidence if trail else None,
                    signal=self.signal.describe(),
                    signal_value=trail[-1].signal_value if trail else None,
                    target=None,
                    reason=f"every tier was tried and none could apply (the floor tier escalates to "
                    f"{last.target!r}); abstaining",
                )
                record(decision, TrailOutcome.EXHAUSTED)
                return finish(Action.ABSTAIN, decision)

            decision = self.decide(result, from_tier=from_tier)
            if decision.action is Action.ACCEPT:
                record(decision, TrailOutcome.ACCEPTED)
                return finish(Action.ACCEPT, decision)
            if decision.action is Action.ABSTAIN:
                record(decision, TrailOutcome.ABSTAINED)
                return finish(Action.ABSTAIN, decision)
            if decision.action is Action.REJECT:
                record(decision, TrailOutcome.REJECTED)
                return finish(Action.REJECT, decision)

            # ESCALATE
            name = decision.target
            assert name is not None  # guaranteed by Tier validation
            if name in used:
                record(decision, TrailOutcome.TARGET_USED, f"target {name!r} already ran for this question")
                from_tier = decision.tier_index + 1
                continue
            target = self.targets[name]
            used.add(name)
            try:
                with _routing(decision, trail, result):
                    escalated = target(question, answer, result if isinstance(result, ScoreResult) else None)
            except Exception as exc:  # noqa: BLE001 - any target failure falls to the next tier (fail closed)
                logger.warning("escalation target %r raised %s: %s", name, type(exc).__name__, exc)
                record(decision, TrailOutcome.TARGET_ERROR, f"{type(exc).__name__}: {exc}")
                from_tier = decision.tier_index + 1
                continue
            if not isinstance(escalated, EscalationResult):
                record(
                    decision,
                    TrailOutcome.TARGET_ERROR,
                    f"target {name!r} returned {type(escalated).__name__}, not an EscalationResult",
                )
                from_tier = decision.tier_index + 1
                continue
            if escalated.pending_review_id is not None:
                record(decision, TrailOutcome.PENDING_REVIEW)
                final = decision.model_copy(
                    update={
                        "action": Action.ABSTAIN,
                        "reason": f"{decision.reason}; queued for human review as {escalated.pending_review_id}",
                    }
                )
                return finish(Action.ABSTAIN, final, review_id=escalated.pending_review_id)
            record(decision, TrailOutcome.ESCALATED)
            answer, result = escalated.answer, escalated.score
            from_tier = 0


def _calibrated(score: Score) -> float | None:
    """The calibrated confidence in ``score`` (a usable probability), or ``None``."""
    if isinstance(score, ScoreResult):
        return read_confidence(score)[0]
    if isinstance(score, Mapping):
        raw = score.get("confidence")
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and score.get("scored") is not False:
            return read_confidence(float(raw))[0]
    return None
