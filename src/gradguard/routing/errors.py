"""Errors and warnings raised by :mod:`gradguard.routing`."""

from __future__ import annotations

from gradguard.errors import GradguardError

__all__ = ["RoutingError", "RoutingPolicyError", "RoutingInputError", "RoutingPolicyWarning", "GuardSignalError"]


class RoutingError(GradguardError):
    """Base class of every error raised by :mod:`gradguard.routing`."""


class RoutingPolicyError(RoutingError, ValueError):
    """A routing policy or one of its tiers is invalid (the message names the bad value and the fix)."""


class RoutingInputError(RoutingError, TypeError):
    """A value handed to a policy or router has the wrong type (e.g. a string as confidence)."""


class RoutingPolicyWarning(UserWarning):
    """A saved policy had keys this version does not know; they were ignored."""


class GuardSignalError(RoutingPolicyError):
    """A guard signal was configured wrongly: an unknown score name, a raw uncertainty without
    ``max_uncertainty``, or an unusable threshold (the message names the bad value and the fix)."""
