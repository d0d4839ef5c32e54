"""Human review of held-back answers: a durable queue, an escalation target and a CLI.

Two stores implement :class:`ReviewStore`: ``SQLiteReviewQueue`` (one SQLite file,
``$GRADGUARD_REVIEW_DB`` or ``review.sqlite3`` in gradguard's cache folder) and
``PostgresReviewQueue`` (a PostgreSQL database shared by several processes and machines;
``pip install 'gradguard[postgres]'``). ``open_review_queue(url)`` picks one by URL (a file path,
``sqlite:///PATH`` or ``postgresql://...``). ``human_review_target(queue)`` is the
escalation target a :class:`~gradguard.routing.Router` calls to enqueue an answer;
``gradguard review list|show|resolve|delete|export`` (:mod:`gradguard.review.cli`) works on them.
See ``docs/routing.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradguard.review.errors import (
    ReviewAlreadyResolvedError,
    ReviewError,
    ReviewInputError,
    ReviewItemNotFoundError,
    ReviewStoreError,
)
from gradguard.review.queue import (
    REVIEW_STATUSES,
    VERDICTS,
    ReviewFilter,
    ReviewItem,
    ReviewPage,
    ReviewQueue,
    ReviewStatus,
    ReviewStore,
    Verdict,
)
from gradguard.review.sqlite import REVIEW_DB_ENV, SQLiteReviewQueue, default_review_db_path
from gradguard.review.target import human_review_target
from gradguard.review.urls import open_review_queue

if TYPE_CHECKING:
    from gradguard.review.postgres import PostgresReviewQueue

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
    "SQLiteReviewQueue",
    "PostgresReviewQueue",
    "open_review_queue",
    "default_review_db_path",
    "REVIEW_DB_ENV",
    "human_review_target",
    "ReviewError",
    "ReviewInputError",
    "ReviewItemNotFoundError",
    "ReviewAlreadyResolvedError",
    "ReviewStoreError",
]


def __getattr__(name: str) -> Any:
    """``PostgresReviewQueue`` is imported on first use (its module needs nothing, psycopg is imported later)."""
    if name == "PostgresReviewQueue":
        from gradguard.review.postgres import PostgresReviewQueue

        return PostgresReviewQueue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
