"""``human_review_target`` keeps what a reviewer and a refit need: messages, task, model, profile, reason, trail."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradguard import GradScorer
from gradguard.review import SQLiteReviewQueue, human_review_target
from gradguard.review.target import review_reason
from gradguard.routing import Action, Router, RoutingPolicy, Tier, TrailOutcome, current_route
from gradguard.testing import make_score_result, make_tiny_model

MESSAGES = [
    {"role": "system", "content": "Answer from the context only.\n\nContext: Lyon is in France."},
    {"role": "user", "content": "Where is Lyon?"},
]


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, spt_offset=-3, model_name="tiny-qwen2")


def review_policy() -> RoutingPolicy:
    return RoutingPolicy(
        [Tier(0.9, Action.ACCEPT), Tier(0.0, Action.ESCALATE, target="human")], abstain_text="Held for review."
    )


def test_a_routed_answer_is_queued_with_its_messages_tokens_reason_and_trail(tmp_path: Path, scorer) -> None:
    result = scorer.score(MESSAGES, "In France.")
    assert result.prompt_messages == tuple(MESSAGES)
    with SQLiteReviewQueue(tmp_path / "q.sqlite3") as queue:
        router = Router(review_policy(), targets={"human": human_review_target(queue, metadata={"app": "faq"})})
        outcome = router.route("Where is Lyon?", result.response, result)
        assert outcome.action is Action.ABSTAIN and outcome.review_id is not None
        item = queue.get(outcome.review_id)
    assert item.messages == MESSAGES  # the exact messages, system prompt and context included
    assert (item.model, item.profile, item.task) == ("tiny-qwen2", result.profile, result.task)
    assert item.reason == "uncalibrated"  # scored, but a tiny model has no calibration: no confidence
    assert item.metadata["app"] == "faq"
    tokens = item.metadata["score"]["tokens"]
    assert "".join(tokens["text"]) == "In France." and len(tokens["entropy"]) == len(result.token_ids)
    assert item.route is not None and [s["outcome"] for s in item.route] == [TrailOutcome.PENDING_REVIEW]
    assert item.route[-1]["target"] == "human" and item.route[-1]["tier_index"] == 1


def test_the_trail_holds_the_steps_before_the_hand_off(tmp_path: Path) -> None:
    def failing(question: str, answer: str, result: object) -> object:
        raise RuntimeError("retriever down")

    policy = RoutingPolicy(
        [
            Tier(0.9, Action.ACCEPT),
            Tier(0.5, Action.ESCALATE, target="retrieve"),
            Tier(0.0, Action.ESCALATE, target="human"),
        ],
        abstain_text="Held.",
    )
    with SQLiteReviewQueue(tmp_path / "q.sqlite3") as queue:
        targets = {"retrieve": failing, "human": human_review_target(queue)}
        outcome = Router(policy, targets=targets).route("Q?", "A.", make_score_result(confidence=0.7))
        item = queue.get(outcome.review_id or "")
    assert [s["outcome"] for s in item.route or []] == [TrailOutcome.TARGET_ERROR, TrailOutcome.PENDING_REVIEW]
    assert "retriever down" in (item.route or [])[0]["error"]
    assert item.confidence == pytest.approx(0.7) and item.messages is None  # a hand-built result has no messages


def test_reasons_and_no_route_outside_a_router(tmp_path: Path) -> None:
    assert review_reason(None) == "unscored"
    assert review_reason(make_score_result(empty=True)) == "unscored"
    assert review_reason(make_score_result(confidence=0.9, in_domain=False)) == "out_of_domain"
    assert review_reason({"scored": True, "in_domain": True, "confidence": 0.3}) == "low_confidence"
    assert review_reason({"scored": True, "in_domain": None, "confidence": None}) == "uncalibrated"
    assert review_reason(make_score_result(confidence=0.4)) == "low_confidence"
    assert review_reason({"scored": False}) == "unscored"
    assert current_route() is None
    with SQLiteReviewQueue(tmp_path / "q.sqlite3") as queue:
        target = human_review_target(queue)
        escalated = target("Q?", "A.", make_score_result(confidence=0.2, in_domain=False))
        item = queue.get(escalated.pending_review_id or "")
    assert item.reason == "out_of_domain" and item.route is None


def test_a_score_given_as_metadata_is_read_from_the_route(tmp_path: Path) -> None:
    meta = make_score_result(confidence=0.3).metadata()
    with SQLiteReviewQueue(tmp_path / "q.sqlite3") as queue:
        outcome = Router(review_policy(), targets={"human": human_review_target(queue)}).route("Q?", "A.", meta)
        item = queue.get(outcome.review_id or "")
    assert item.confidence == pytest.approx(0.3) and item.reason == "low_confidence"
    assert item.metadata["score"] == meta and item.model == meta["model"]
