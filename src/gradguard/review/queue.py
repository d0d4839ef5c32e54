"""The review-queue interface: the :class:`ReviewItem` record, filters and pages, and the :class:`ReviewQueue` protocol.

Both stores (:class:`~gradguard.review.SQLiteReviewQueue`, :class:`~gradguard.review.PostgresReviewQueue`)
implement the protocol; :func:`~gradguard.review.open_review_queue` picks one by URL.
"""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from gradguard.review.errors import ReviewInputError

__all__ = [
    "ReviewItem",
    "ReviewQueue",
    "ReviewStore",
    "ReviewFilter",
    "ReviewPage",
    "ReviewStatus",
    "Verdict",
    "REVIEW_STATUSES",
    "VERDICTS",
    "MAX_TEXT_BYTES",
    "check_verdict",
    "check_status",
    "check_text",
    "enqueue_item",
    "ITEM_FIELDS",
]

#: The status of a review item: pending until a reviewer gives a verdict.
ReviewStatus = Literal["pending", "approved", "rejected", "edited"]
#: A reviewer's verdict: ``approved`` (the answer stands), ``rejected`` (it is wrong),
#: ``edited`` (the reviewer supplied a corrected answer).
Verdict = Literal["approved", "rejected", "edited"]

REVIEW_STATUSES: tuple[str, ...] = get_args(ReviewStatus)
VERDICTS: tuple[str, ...] = get_args(Verdict)

#: The largest note or edited answer a verdict may carry (UTF-8 bytes); longer ones are refused whole.
MAX_TEXT_BYTES = 64 * 1024


class ReviewItem(BaseModel):
    """One answer waiting for (or given) a human verdict.

    ``messages``, ``task``, ``model`` and ``profile`` are what a refit needs
    (``gradguard calibrate --from-review``): the exact chat messages the answer replied to (system
    prompt and retrieved context included), the calibration task, the model and its profile.
    ``reason`` is a short route reason (``low_confidence``, ``out_of_domain``, ``uncalibrated``, ``unscored``,
    ``tool_call``, or the enqueuer's own) and ``route`` the router's trail up to the hand-off.
    ``metadata["score"]``, when present, is the result's :meth:`~gradguard.result.ScoreResult.metadata`
    (per-token ``tokens`` included).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(..., description="uuid4 hex.")
    created_at: datetime = Field(..., description="When it was enqueued (UTC).")
    question: str
    answer: str = Field(..., description="The answer that was held back.")
    confidence: float | None = Field(None, description="Its calibrated confidence, None if there was none.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    messages: list[dict[str, Any]] | None = Field(
        None, description="The chat messages the answer replied to (system prompt and context included)."
    )
    task: str | None = Field(None, description="The calibration task the answer was scored under.")
    model: str | None = Field(None, description="The model that wrote the answer.")
    profile: str | None = Field(None, description="The model's gradguard profile.")
    reason: str | None = Field(None, description="Why it was held back: a short code such as 'low_confidence'.")
    route: list[dict[str, Any]] | None = Field(None, description="The router's trail steps up to the hand-off.")
    status: ReviewStatus = "pending"
    verdict_note: str | None = None
    resolved_answer: str | None = Field(
        None,
        description="The answer to use: the original when approved, the reviewer's when edited, None when rejected.",
    )
    resolved_at: datetime | None = None
    reviewer: str | None = Field(None, description="Who gave the verdict (the reviewer's name, from their token).")

    @property
    def pending(self) -> bool:
        """True while no verdict has been given."""
        return self.status == "pending"


class ReviewFilter(BaseModel):
    """Which items a :meth:`ReviewQueue.query` returns; ``None`` fields do not filter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: ReviewStatus | None = None
    task: str | None = None
    reason: str | None = None
    min_confidence: float | None = Field(None, ge=0.0, le=1.0, description="Confidence at least this (no-confidence "
                                         "items are left out when set).")
    max_confidence: float | None = Field(None, ge=0.0, le=1.0, description="Confidence at most this.")


class ReviewPage(BaseModel):
    """One page of a query: ``items`` (oldest first) and ``total``, the number of items matching the filter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    items: list[ReviewItem]
    total: int
    offset: int
    limit: int


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
        messages: Sequence[Mapping[str, Any]] | None = None,
        task: str | None = None,
        model: str | None = None,
        profile: str | None = None,
        reason: str | None = None,
        route: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Store a new pending item durably (one committed transaction) and return its id."""
        ...

    def get(self, item_id: str) -> ReviewItem:
        """The item with this id; raises ``ReviewItemNotFoundError`` when there is none."""
        ...

    def list(self, status: str | None = None, limit: int | None = None) -> builtins.list[ReviewItem]:
        """Items, oldest first, optionally only those with ``status``, at most ``limit``."""
        ...

    def resolve(
        self,
        item_id: str,
        verdict: str,
        *,
        answer: str | None = None,
        note: str | None = None,
        reviewer: str | None = None,
    ) -> ReviewItem:
        """Give a pending item its verdict; raises ``ReviewAlreadyResolvedError`` on a second verdict."""
        ...


@runtime_checkable
class ReviewStore(ReviewQueue, Protocol):
    """A :class:`ReviewQueue` that reviewers browse and that retention applies to (both built-in stores).

    ``url`` is where it lives with any password masked (safe to print).
    """

    url: str

    def query(self, where: ReviewFilter | None = None, *, offset: int = 0, limit: int = 50) -> ReviewPage:
        """One page of the items matching ``where``, oldest first, and how many match in all."""
        ...

    def facets(self) -> dict[str, builtins.list[str]]:
        """The distinct values the filters can take: ``{"task": [...], "reason": [...]}``, sorted."""
        ...

    def delete(self, *, ids: Sequence[str] | None = None, before: datetime | None = None) -> int:
        """Delete the items with these ids and/or enqueued before ``before`` (UTC); returns how many went.

        At least one of ``ids`` and ``before`` is required (``ReviewInputError`` otherwise); both given
        means items matching both.
        """
        ...

    def export(self, *, ids: Sequence[str] | None = None, before: datetime | None = None) -> builtins.list[ReviewItem]:
        """The items :meth:`delete` with the same arguments would delete (``ids=None, before=None``: all)."""
        ...

    def close(self) -> None:
        """Release the connection(s); the store cannot be used afterwards."""
        ...

    def __enter__(self) -> ReviewStore: ...

    def __exit__(self, *exc: object) -> None: ...


def _check_size(name: str, text: str | None) -> None:
    if text is not None and len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise ReviewInputError(
            f"the {name} is {len(text.encode('utf-8', 'surrogatepass'))} bytes, over the limit of {MAX_TEXT_BYTES} "
            f"bytes (64 KiB); shorten it (nothing was stored)"
        )


def check_text(name: str, text: str | None) -> None:
    """Raise :class:`ReviewInputError` unless ``text`` is ``None`` or a string of at most :data:`MAX_TEXT_BYTES`."""
    if text is not None and not isinstance(text, str):
        raise ReviewInputError(f"{name}={text!r} is not a string; pass text or None")
    _check_size(name, text)


def check_verdict(verdict: str, answer: str | None, note: str | None = None) -> None:
    """Raise :class:`ReviewInputError` unless ``verdict`` (with ``answer`` and ``note``) is a valid verdict."""
    if verdict not in VERDICTS:
        raise ReviewInputError(f"verdict={verdict!r} is not one of {list(VERDICTS)}; pick one of them")
    if verdict == "edited" and (answer is None or not answer.strip()):
        raise ReviewInputError("verdict='edited' needs the corrected answer; pass answer='...' (--answer TEXT)")
    if verdict != "edited" and answer is not None:
        raise ReviewInputError(
            f"answer={answer!r} is only used with verdict='edited' (got verdict={verdict!r}); "
            "drop the answer or use verdict='edited'"
        )
    check_text("edited answer", answer)
    check_text("note", note)


def check_status(status: str | None) -> None:
    """Raise :class:`ReviewInputError` unless ``status`` is ``None`` or a review status."""
    if status is not None and status not in REVIEW_STATUSES:
        raise ReviewInputError(f"status={status!r} is not one of {list(REVIEW_STATUSES)}; pick one of them or None")


#: The keyword fields :meth:`ReviewQueue.enqueue` takes beyond question, answer, confidence and metadata.
ITEM_FIELDS: tuple[str, ...] = ("messages", "task", "model", "profile", "reason", "route")


def enqueue_item(
    queue: ReviewQueue,
    question: str,
    answer: str,
    *,
    confidence: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    **fields: Any,
) -> str:
    """``queue.enqueue(...)`` with the :data:`ITEM_FIELDS` it takes; for a queue written against the older
    protocol (``enqueue(question, answer, *, confidence, metadata)``) the fields it does not take go into
    ``metadata["item"]``, so nothing is lost."""
    unknown = set(fields) - set(ITEM_FIELDS)
    if unknown:
        raise ReviewInputError(f"unknown review item fields {sorted(unknown)}; the fields are {list(ITEM_FIELDS)}")
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(queue.enqueue).parameters
    except (TypeError, ValueError):  # a builtin or C callable: assume the current protocol
        params = {}
    takes_all = not params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in fields.items() if takes_all or k in params}
    folded = {k: v for k, v in fields.items() if k not in given and v is not None}
    meta = dict(metadata or {})
    if folded:
        meta["item"] = {**meta.get("item", {}), **folded}
    return queue.enqueue(question, answer, confidence=confidence, metadata=meta, **given)
