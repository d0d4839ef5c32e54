"""Errors raised by :mod:`gradguard.review`."""

from __future__ import annotations

from gradguard.errors import GradguardError

__all__ = [
    "ReviewError",
    "ReviewInputError",
    "ReviewItemNotFoundError",
    "ReviewAlreadyResolvedError",
    "ReviewStoreError",
]


class ReviewError(GradguardError):
    """Base class of every error raised by :mod:`gradguard.review`."""


class ReviewInputError(ReviewError, ValueError):
    """A value given to the review queue is not usable (a bad verdict, status or limit)."""


class ReviewItemNotFoundError(ReviewError, LookupError):
    """No review item has the given id."""

    def __init__(self, item_id: str, where: str = "the review queue") -> None:
        super().__init__(
            f"no review item with id {item_id!r} in {where}; list the ids with `gradguard review list`"
        )
        self.item_id = item_id


class ReviewAlreadyResolvedError(ReviewError):
    """The review item was already resolved; a verdict is final."""

    def __init__(self, item_id: str, status: str) -> None:
        super().__init__(
            f"review item {item_id!r} is already resolved ({status}); a verdict is final, "
            "enqueue the question again to review it anew"
        )
        self.item_id = item_id
        self.status = status


class ReviewStoreError(ReviewError):
    """The review database could not be opened, read or written."""
