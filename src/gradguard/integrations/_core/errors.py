"""The errors both integrations raise."""

from __future__ import annotations

from typing import Any

from gradguard.errors import GradguardError, InputError, MissingExtraError
from gradguard.routing import RouteOutcome

__all__ = ["IntegrationError", "UnknownOptionError", "AnswerRejectedError", "MissingDependencyError"]


class IntegrationError(InputError):
    """An integration component was configured or called wrongly (the message names the value and the fix)."""


class UnknownOptionError(IntegrationError):
    """A call option the component does not support (the message lists the supported ones)."""


#: An integration's framework is not installed (the message names the extra that installs it).
MissingDependencyError = MissingExtraError


class AnswerRejectedError(GradguardError):
    """The routing policy rejected the answer and the component was asked to raise on a rejection.

    ``outcome`` is the :class:`~gradguard.routing.RouteOutcome` (decision, reason, trail);
    ``response`` the guarded framework response that would have been returned instead (its
    text is the policy's abstain text), when the framework has one.
    """

    def __init__(self, outcome: RouteOutcome, response: Any = None, message: str | None = None) -> None:
        super().__init__(message or f"the routing policy rejected the answer: {outcome.decision.reason}")
        self.outcome = outcome
        self.response = response
