"""An escalation target that sends answers to a human review queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradguard.result import ScoreResult
from gradguard.review.queue import ReviewQueue, enqueue_item
from gradguard.routing.errors import RoutingInputError
from gradguard.routing.policy import DEFAULT_ABSTAIN_TEXT, read_confidence
from gradguard.routing.router import EscalationResult, EscalationTarget, TrailOutcome, TrailStep, current_route

__all__ = ["human_review_target", "review_reason", "REVIEW_REASONS"]

#: The route reasons :func:`human_review_target` records (the review app filters on them).
REVIEW_REASONS: tuple[str, ...] = ("unscored", "uncalibrated", "out_of_domain", "low_confidence")


def review_reason(score: ScoreResult | Mapping[str, Any] | None) -> str:
    """Why an answer with this score was held back: ``unscored`` (no usable score), ``uncalibrated`` (scored,
    but the task has no calibration, so there is no confidence: the guard fails closed), ``out_of_domain``
    (outside the calibration data) or ``low_confidence`` (below the policy's bar)."""
    if score is None:
        return "unscored"
    if isinstance(score, ScoreResult):
        scored, in_domain, confidence = score.scored, score.in_domain, score.confidence
    else:
        scored, in_domain, confidence = score.get("scored") is True, score.get("in_domain"), score.get("confidence")
    if not scored:
        return "unscored"
    if in_domain is False:
        return "out_of_domain"
    return "uncalibrated" if confidence is None else "low_confidence"


def human_review_target(
    queue: ReviewQueue,
    *,
    placeholder: str = DEFAULT_ABSTAIN_TEXT,
    metadata: Mapping[str, Any] | None = None,
) -> EscalationTarget:
    """An escalation target that enqueues the answer for human review.

    The target stores the question, the answer, its calibrated confidence (``None`` when it has
    none) and ``metadata`` (fixed, e.g. the app name) plus ``"score"``: the result's
    :meth:`~gradguard.result.ScoreResult.metadata` (per-token ``tokens`` included; ``None`` when the
    answer was not scored). It also stores what a refit needs — the exact chat messages the answer
    replied to (:attr:`~gradguard.result.ScoreResult.prompt_messages`), the task, model and profile —
    and, when a :class:`~gradguard.routing.Router` runs it, the route reason
    (:func:`review_reason`) and the trail up to the hand-off. It returns
    ``EscalationResult(answer=placeholder, result=None, pending_review_id=<id>)``; the router then
    abstains with that ``review_id``.

    Register it under the name the policy's escalate tier uses::

        router = Router(policy, targets={"human": human_review_target(open_review_queue(url))})
    """
    if not isinstance(queue, ReviewQueue):
        raise RoutingInputError(
            f"queue={queue!r} is not a ReviewQueue (it needs enqueue/get/list/resolve); "
            "pass e.g. open_review_queue('sqlite:///review.sqlite3')"
        )
    fixed = dict(metadata or {})
    if "score" in fixed:
        raise RoutingInputError(
            "metadata has a 'score' key, which human_review_target fills with the result's metadata; rename it"
        )

    def send_to_review(question: str, answer: str, result: ScoreResult | None) -> EscalationResult:
        route = current_route()
        score: ScoreResult | Mapping[str, Any] | None = result if result is not None or route is None else route[2]
        confidence = route[0].confidence if route is not None else read_confidence(result)[0]
        meta = score.metadata() if isinstance(score, ScoreResult) else (dict(score) if score is not None else None)
        trail: list[dict[str, Any]] | None = None
        if route is not None:
            decision, steps, _ = route
            handoff = TrailStep(
                step=len(steps), action=decision.action, target=decision.target, confidence=decision.confidence,
                signal_value=decision.signal_value, outcome=TrailOutcome.PENDING_REVIEW,
                tier_index=decision.tier_index, reason=decision.reason,
            )
            trail = [step.model_dump(mode="json") for step in (*steps, handoff)]
        review_id = enqueue_item(
            queue,
            question,
            answer,
            confidence=confidence,
            metadata={**fixed, "score": meta},
            messages=list(result.prompt_messages) if result is not None and result.prompt_messages else None,
            task=_field(score, "task"),
            model=_field(score, "model"),
            profile=_field(score, "profile"),
            reason=review_reason(score),
            route=trail,
        )
        return EscalationResult(
            answer=placeholder, result=None, pending_review_id=review_id, metadata={"review_id": review_id}
        )

    send_to_review.__qualname__ = send_to_review.__name__ = "human_review_target"
    return send_to_review


def _field(score: ScoreResult | Mapping[str, Any] | None, name: str) -> str | None:
    value = getattr(score, name, None) if isinstance(score, ScoreResult) else (score or {}).get(name)
    return value if isinstance(value, str) else None
