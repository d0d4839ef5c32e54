"""Human review of held-back answers: a durable queue, an escalation target and a CLI.

``SQLiteReviewQueue`` stores items in one SQLite file (``$GRADGUARD_REVIEW_DB`` or
``review.sqlite3`` in gradguard's cache folder); ``human_review_target(queue)`` is the
escalation target a :class:`~gradguard.routing.Router` calls to enqueue an answer;
``gradguard review list|show|resolve`` (:mod:`gradguard.review.cli`) resolves them.
See ``docs/routing.md``.
"""

from gradguard.review.errors import (
    ReviewAlreadyResolvedError,
    ReviewError,
    ReviewInputError,
    ReviewItemNotFoundError,
    ReviewStoreError,
)
from gradguard.review.queue import REVIEW_STATUSES, VERDICTS, ReviewItem, ReviewQueue, ReviewStatus, Verdict
from gradguard.review.sqlite import REVIEW_DB_ENV, SQLiteReviewQueue, default_review_db_path
from gradguard.review.target import human_review_target

__all__ = [
    "ReviewItem",
    "ReviewQueue",
    "ReviewStatus",
    "Verdict",
    "REVIEW_STATUSES",
    "VERDICTS",
    "SQLiteReviewQueue",
    "default_review_db_path",
    "REVIEW_DB_ENV",
    "human_review_target",
    "ReviewError",
    "ReviewInputError",
    "ReviewItemNotFoundError",
    "ReviewAlreadyResolvedError",
    "ReviewStoreError",
]
