"""The review-queue interface: the :class:`ReviewItem` model and the :class:`ReviewQueue` protocol."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from gradguard.review.errors import ReviewInputError

__all__ = [
    "ReviewItem",
    "ReviewQueue",
    "ReviewStatus",
    "Verdict",
    "REVIEW_STATUSES",
    "VERDICTS",
    "check_verdict",
    "check_status",
]

#: The status of a review item: pending until a reviewer gives a verdict.
ReviewStatus = Literal["pending", "approved", "rejected", "edited"]
#: A reviewer's verdict: ``approved`` (the answer stands), ``rejected`` (it is wrong),
#: ``edited`` (the reviewer supplied a corrected answer).
Verdict = Literal["approved", "rejected", "edited"]

REVIEW_STATUSES: tuple[str, ...] = get_args(ReviewStatus)
VERDICTS: tuple[str, ...] = get_args(Verdict)


class ReviewItem(BaseModel):
    """One answer waiting for (or given) a human verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(..., description="uuid4 hex.")
    created_at: datetime = Field(..., description="When it was enqueued (UTC).")
    question: str
    answer: str = Field(..., description="The answer that was held back.")
    confidence: float | None = Field(None, description="Its calibrated confidence, None if there was none.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: ReviewStatus = "pending"
    verdict_note: str | None = None
    resolved_answer: str | None = Field(
        None,
        description="The answer to use: the original when approved, the reviewer's when edited, None when rejected.",
    )
    resolved_at: datetime | None = None

    @property
    def pending(self) -> bool:
        """True while no verdict has been given."""
        return self.status == "pending"


@runtime_checkable
class ReviewQueue(Protocol):
    """Where answers held back for human review go, and where reviewers resolve them."""

    def enqueue(
        self,
        question: str,
        answer: str,
        *,
        confidence: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store a new pending item durably and return its id."""
        ...

    def get(self, item_id: str) -> ReviewItem:
        """The item with this id; raises ``ReviewItemNotFoundError`` when there is none."""
        ...

    def list(self, status: str | None = None, limit: int | None = None) -> builtins.list[ReviewItem]:
        """Items, oldest first, optionally only those with ``status``, at most ``limit``."""
        ...

    def resolve(
        self, item_id: str, verdict: str, *, answer: str | None = None, note: str | None = None
    ) -> ReviewItem:
        """Give a pending item its verdict; raises ``ReviewAlreadyResolvedError`` on a second verdict."""
        ...


def check_verdict(verdict: str, answer: str | None) -> None:
    """Raise :class:`ReviewInputError` unless ``verdict`` (with ``answer``) is a valid verdict."""
    if verdict not in VERDICTS:
        raise ReviewInputError(f"verdict={verdict!r} is not one of {list(VERDICTS)}; pick one of them")
    if verdict == "edited" and (answer is None or not answer.strip()):
        raise ReviewInputError("verdict='edited' needs the corrected answer; pass answer='...' (--answer TEXT)")
    if verdict != "edited" and answer is not None:
        raise ReviewInputError(
            f"answer={answer!r} is only used with verdict='edited' (got verdict={verdict!r}); "
            "drop the answer or use verdict='edited'"
        )


def check_status(status: str | None) -> None:
    """Raise :class:`ReviewInputError` unless ``status`` is ``None`` or a review status."""
    if status is not None and status not in REVIEW_STATUSES:
        raise ReviewInputError(f"status={status!r} is not one of {list(REVIEW_STATUSES)}; pick one of them or None")
