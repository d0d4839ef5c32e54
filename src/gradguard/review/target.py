"""An escalation target that sends answers to a human review queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradguard.result import ScoreResult
from gradguard.review.queue import ReviewQueue
from gradguard.routing.errors import RoutingInputError
from gradguard.routing.policy import DEFAULT_ABSTAIN_TEXT, read_confidence
from gradguard.routing.router import EscalationResult, EscalationTarget

__all__ = ["human_review_target"]


def human_review_target(
    queue: ReviewQueue,
    *,
    placeholder: str = DEFAULT_ABSTAIN_TEXT,
    metadata: Mapping[str, Any] | None = None,
) -> EscalationTarget:
    """An escalation target that enqueues the answer for human review.

    The target stores ``(question, answer, confidence, metadata)`` in ``queue``
    and returns ``EscalationResult(answer=placeholder, result=None,
    pending_review_id=<id>)``; the router then abstains with that ``review_id``.
    The stored metadata is ``metadata`` (fixed, e.g. the app name) plus
    ``"score"``: the result's :meth:`~gradguard.result.ScoreResult.metadata`
    (``None`` when the answer was not scored). The stored ``confidence`` is the
    result's calibrated confidence, ``None`` when it has none.

    Register it under the name the policy's escalate tier uses::

        router = Router(policy, targets={"human": human_review_target(SQLiteReviewQueue())})
    """
    if not isinstance(queue, ReviewQueue):
        raise RoutingInputError(
            f"queue={queue!r} is not a ReviewQueue (it needs enqueue/get/list/resolve); "
            "pass e.g. SQLiteReviewQueue(path)"
        )
    fixed = dict(metadata or {})
    if "score" in fixed:
        raise RoutingInputError(
            "metadata has a 'score' key, which human_review_target fills with the result's metadata; rename it"
        )

    def send_to_review(question: str, answer: str, result: ScoreResult | None) -> EscalationResult:
        confidence, _ = read_confidence(result)
        item_meta = {**fixed, "score": result.metadata() if result is not None else None}
        review_id = queue.enqueue(question, answer, confidence=confidence, metadata=item_meta)
        return EscalationResult(
            answer=placeholder, result=None, pending_review_id=review_id, metadata={"review_id": review_id}
        )

    send_to_review.__qualname__ = send_to_review.__name__ = "human_review_target"
    return send_to_review
