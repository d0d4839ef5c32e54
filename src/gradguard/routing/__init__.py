"""Framework-free routing of scored answers: accept, abstain, reject or escalate.

A :class:`RoutingPolicy` maps a calibrated confidence to an :class:`Action` through
descending :class:`Tier` s; a :class:`Router` applies it to an answer, running
escalation targets (a bigger model, a human review queue) and recording every step
in the outcome's trail. Routing fails closed: an answer without a usable confidence
is treated as confidence 0.0. A :class:`GuardSignal` says which number of a score is
decided on (the calibrated confidence, a raw uncertainty with a threshold, or a
function). See ``docs/routing.md``.
"""

from gradguard.routing.actions import Action
from gradguard.routing.errors import (
    GuardSignalError,
    RoutingError,
    RoutingInputError,
    RoutingPolicyError,
    RoutingPolicyWarning,
)
from gradguard.routing.policy import DEFAULT_ABSTAIN_TEXT, Decision, RoutingPolicy, Tier, read_confidence
from gradguard.routing.router import (
    EscalationResult,
    EscalationTarget,
    RouteOutcome,
    Router,
    TrailOutcome,
    TrailStep,
    current_route,
)
from gradguard.routing.signal import SIGNALS, GuardSignal, SignalReading

__all__ = [
    "Action",
    "Tier",
    "RoutingPolicy",
    "Decision",
    "TrailStep",
    "TrailOutcome",
    "RouteOutcome",
    "Router",
    "EscalationResult",
    "EscalationTarget",
    "current_route",
    "RoutingError",
    "RoutingPolicyError",
    "RoutingInputError",
    "RoutingPolicyWarning",
    "GuardSignal",
    "GuardSignalError",
    "SignalReading",
    "SIGNALS",
    "DEFAULT_ABSTAIN_TEXT",
    "read_confidence",
]
