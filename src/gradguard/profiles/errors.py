"""Errors and warnings raised by profile loading, lookup and building."""

from __future__ import annotations

from gradguard.errors import GradguardError, UnknownOffsetError

__all__ = [
    "ProfileError",
    "ProfileMismatchError",
    "ProfileNotFoundError",
    "CalibrationMissingError",
    "ProfileWarning",
]


class ProfileError(GradguardError):
    """A profile file is unreadable, malformed, or lacks a required key."""


class ProfileMismatchError(ProfileError):
    """A profile was measured on a different model (layers, hidden size, model type or chat template)."""


class ProfileNotFoundError(ProfileError, UnknownOffsetError):
    """No profile applies to this model; the message gives the ``gradguard profile build`` command."""


class CalibrationMissingError(ProfileError):
    """The profile holds no calibration, so no threshold can be chosen from it."""


class ProfileWarning(UserWarning):
    """A profile loaded, but something about it deserves attention (unknown keys, template drift)."""
