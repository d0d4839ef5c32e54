"""Router: every routing outcome, the escalation trail, and fail-closed behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gradguard.result import ScoreResult
from gradguard.review import SQLiteReviewQueue, human_review_target
from gradguard.routing import (
    Action,
    EscalationResult,
    GuardSignal,
    RouteOutcome,
    Router,
    RoutingInputError,
    RoutingPolicy,
    Tier,
    TrailStep,
)
from gradguard.testing.results import make_score_result

Q = "What is the capital of France?"
A = "Lyon"
ABSTAIN = "I can't answer that reliably."


def make_result(confidence: float | None = 0.9, *, scored: bool = True, response: str = "Lyon") -> ScoreResult:
    """A ScoreResult built by hand; ``scored=False`` gives an empty response with NaN scores."""
    return make_score_result(confidence=confidence, empty=not scored, response=response)


def policy(*tiers: Tier) -> RoutingPolicy:
    return RoutingPolicy(list(tiers), abstain_text=ABSTAIN)


class FakeTarget:
    """An escalation target returning a fixed answer and confidence (or raising), recording its calls."""

    def __init__(self, answer: str = "Paris", confidence: float | None = 0.95, raises: BaseException | None = None):
        self.answer, self.confidence, self.raises = answer, confidence, raises
        self.calls: list[tuple[str, str, ScoreResult | None]] = []

    def __call__(self, question: str, answer: str, result: ScoreResult | None) -> EscalationResult:
        self.calls.append((question, answer, result))
        if self.raises is not None:
            raise self.raises
        return EscalationResult(self.answer, make_result(self.confidence, response=self.answer))


def outcomes(out: RouteOutcome) -> list[str]:
    return [s.outcome for s in out.trail]


def assert_well_formed(out: RouteOutcome) -> None:
    """Invariants of every outcome: numbered trail, JSON-able metadata, never an unguarded non-accept."""
    assert [s.step for s in out.trail] == list(range(len(out.trail)))
    assert out.decision.action is out.action and out.action is not Action.ESCALATE
    if out.action is not Action.ACCEPT:
        assert out.answer == ABSTAIN
    meta = json.loads(json.dumps(out.metadata()))
    assert set(meta) == {"action", "reason", "confidence", "signal", "signal_value", "tier", "trail", "review_id"}
    assert meta["action"] == out.action.value and len(meta["trail"]) == len(out.trail)


# -- single-step outcomes --------------------------------------------------------------------


def test_accept_returns_the_answer() -> None:
    out = Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ABSTAIN))).route(Q, A, make_result(0.9))
    assert_well_formed(out)
    assert (out.action, out.answer, out.review_id) == (Action.ACCEPT, A, None)
    assert out.accepted and outcomes(out) == ["accepted"]
    step = out.trail[0]
    assert (step.action, step.confidence, step.tier_index, step.error) == (Action.ACCEPT, 0.9, 0, None)
    assert out.metadata()["confidence"] == 0.9 and out.metadata()["tier"] == 0


def test_abstain_returns_abstain_text() -> None:
    out = Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ABSTAIN))).route(Q, A, make_result(0.4))
    assert_well_formed(out)
    assert (out.action, out.answer) == (Action.ABSTAIN, ABSTAIN)
    assert outcomes(out) == ["abstained"] and out.metadata()["tier"] == 1


def test_reject_never_carries_the_unguarded_answer() -> None:
    out = Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.0, Action.REJECT))).route(Q, A, make_result(0.1))
    assert_well_formed(out)
    assert out.action is Action.REJECT and out.answer == ABSTAIN and A not in out.answer
    assert outcomes(out) == ["rejected"]


@pytest.mark.parametrize(
    ("result", "word"),
    [(None, "unscored (no score)"), (make_result(0.99, scored=False), "unscored"), (make_result(None), "uncalibrated"),
     (make_result(math.nan), "unscored")],
)
def test_routing_fails_closed_without_a_usable_confidence(result: ScoreResult | None, word: str) -> None:
    out = Router(policy(Tier(0.5, Action.ACCEPT), Tier(0.0, Action.REJECT))).route(Q, A, result)
    assert_well_formed(out)
    assert out.action is Action.REJECT and out.answer == ABSTAIN
    assert out.metadata()["confidence"] is None and out.metadata()["reason"].startswith(word)


# -- escalation ------------------------------------------------------------------------------


def test_escalate_then_accept_returns_the_new_answer() -> None:
    big = FakeTarget("Paris", 0.95)
    first = make_result(0.6)
    router = Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.5, Action.ESCALATE, "big"), Tier(0.0, Action.ABSTAIN)),
                    {"big": big})
    out = router.route(Q, A, first)
    assert_well_formed(out)
    assert big.calls == [(Q, A, first)]
    assert (out.action, out.answer) == (Action.ACCEPT, "Paris")
    assert out.result is not None and out.result.confidence == 0.95
    assert outcomes(out) == ["escalated", "accepted"]
    assert (out.trail[0].action, out.trail[0].target, out.trail[0].confidence) == (Action.ESCALATE, "big", 0.6)
    assert out.trail[1].confidence == 0.95


def test_escalate_then_still_low_falls_to_the_next_tier() -> None:
    big = FakeTarget("Marseille", 0.55)
    router = Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.5, Action.ESCALATE, "big"), Tier(0.0, Action.REJECT)),
                    {"big": big})
    out = router.route(Q, A, make_result(0.6))
    assert_well_formed(out)
    assert len(big.calls) == 1  # each target runs at most once
    assert out.action is Action.REJECT and out.answer == ABSTAIN
    assert outcomes(out) == ["escalated", "target_used", "rejected"]
    assert out.trail[1].target == "big" and "already ran" in (out.trail[1].error or "")
    assert out.result is not None and out.result.response == "Marseille"  # the last answer considered


def test_escalation_chain_through_two_targets() -> None:
    big, bigger = FakeTarget("Nice", 0.3), FakeTarget("Paris", 0.9)
    router = Router(
        policy(Tier(0.8, Action.ACCEPT), Tier(0.5, Action.ESCALATE, "big"), Tier(0.0, Action.ESCALATE, "bigger")),
        {"big": big, "bigger": bigger},
    )
    out = router.route(Q, A, make_result(0.6))
    assert_well_formed(out)
    assert bigger.calls[0][1] == "Nice"  # the second target sees the first target's answer
    assert (out.action, out.answer) == (Action.ACCEPT, "Paris")
    assert outcomes(out) == ["escalated", "escalated", "accepted"]


def test_same_target_on_two_tiers_runs_once() -> None:
    big = FakeTarget("Nice", 0.4)
    router = Router(
        policy(Tier(0.8, Action.ACCEPT), Tier(0.6, Action.ESCALATE, "big"), Tier(0.3, Action.ESCALATE, "big"),
               Tier(0.0, Action.ABSTAIN)),
        {"big": big},
    )
    out = router.route(Q, A, make_result(0.7))
    assert_well_formed(out)
    assert len(big.calls) == 1
    assert outcomes(out) == ["escalated", "target_used", "abstained"]


def test_target_that_raises_falls_to_next_tier_with_error_in_trail() -> None:
    big = FakeTarget(raises=RuntimeError("GPU on fire"))
    router = Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.5, Action.ESCALATE, "big"), Tier(0.0, Action.REJECT)),
                    {"big": big})
    out = router.route(Q, A, make_result(0.6))
    assert_well_formed(out)
    assert out.action is Action.REJECT and out.answer == ABSTAIN
    assert outcomes(out) == ["target_error", "rejected"]
    assert out.trail[0].error == "RuntimeError: GPU on fire"
    assert out.metadata()["trail"][0]["error"] == "RuntimeError: GPU on fire"


def test_target_returning_garbage_is_treated_as_a_failure() -> None:
    router = Router(
        policy(Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "bad")), {"bad": lambda q, a, r: "Paris"}
    )
    out = router.route(Q, A, make_result(0.2))
    assert_well_formed(out)
    assert out.action is Action.ABSTAIN
    assert outcomes(out) == ["target_error", "exhausted"] and "str" in (out.trail[0].error or "")


def test_keyboard_interrupt_in_a_target_is_not_swallowed() -> None:
    router = Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "big")),
                    {"big": FakeTarget(raises=KeyboardInterrupt())})
    with pytest.raises(KeyboardInterrupt):
        router.route(Q, A, make_result(0.2))


def test_an_unregistered_target_raises_at_construction() -> None:
    with pytest.raises(RoutingInputError, match="'nowhere'.*targets="):
        Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.5, Action.ESCALATE, "nowhere"), Tier(0.0, Action.ABSTAIN)))


def test_raw_signal_records_its_value_and_the_real_confidence() -> None:
    """D2: a threshold test on a raw score is never reported as a confidence."""
    router = Router(RoutingPolicy.threshold(0.8), signal=GuardSignal.uncertainty("hybridgrad", 0.02))
    uncalibrated = make_result(None).model_copy(update={"hybridgrad": 0.01})
    out = router.route(Q, A, uncalibrated)
    assert out.action is Action.ACCEPT
    meta = out.metadata()
    assert meta["confidence"] is None and meta["signal_value"] == pytest.approx(0.01)
    assert meta["signal"] == "hybridgrad <= 0.02" and "counted as confidence 1" in meta["reason"]
    calibrated = make_result(0.37).model_copy(update={"hybridgrad": 0.5})
    out = router.route(Q, A, calibrated)
    assert out.action is Action.ABSTAIN
    assert out.metadata()["confidence"] == pytest.approx(0.37) and out.metadata()["signal_value"] == pytest.approx(0.5)
    assert out.trail[0].confidence == pytest.approx(0.37) and out.trail[0].signal_value == pytest.approx(0.5)


def test_routes_from_the_metadata_of_a_message_scored_elsewhere() -> None:
    router = Router(RoutingPolicy.threshold(0.8))
    meta = json.loads(json.dumps(make_result(0.9).metadata()))
    out = router.route(Q, A, meta)
    assert out.action is Action.ACCEPT and out.metadata()["confidence"] == pytest.approx(0.9)
    low = {**meta, "confidence": 0.3}
    assert router.route(Q, A, low).action is Action.ABSTAIN
    unscored = {**meta, "scored": False}
    assert router.route(Q, A, unscored).action is Action.ABSTAIN


def test_every_tier_exhausted_abstains() -> None:
    router = Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "big")),
                    {"big": FakeTarget(raises=TimeoutError("slow"))})
    out = router.route(Q, A, make_result(0.2))
    assert_well_formed(out)
    assert (out.action, out.answer) == (Action.ABSTAIN, ABSTAIN)
    assert outcomes(out) == ["target_error", "exhausted"] and "exhausted" not in out.trail[0].outcome
    assert "every tier" in out.decision.reason


def test_unscored_escalation_result_is_treated_as_unconfident() -> None:
    router = Router(policy(Tier(0.8, Action.ACCEPT), Tier(0.5, Action.ESCALATE, "big"), Tier(0.0, Action.REJECT)),
                    {"big": lambda q, a, r: EscalationResult(answer="Paris", result=None)})
    out = router.route(Q, A, make_result(0.6))
    assert_well_formed(out)
    assert out.action is Action.REJECT and outcomes(out) == ["escalated", "rejected"]
    assert out.trail[1].confidence is None and out.trail[1].reason.startswith("unscored (no score)")


# -- human review ----------------------------------------------------------------------------


def test_human_review_abstains_with_review_id_and_queues_the_item(tmp_path: Path) -> None:
    with SQLiteReviewQueue(tmp_path / "review.sqlite3") as queue:
        router = Router(
            policy(Tier(0.8, Action.ACCEPT), Tier(0.4, Action.ESCALATE, "human"), Tier(0.0, Action.REJECT)),
            {"human": human_review_target(queue)},
        )
        out = router.route(Q, A, make_result(0.6))
        assert_well_formed(out)
        assert out.action is Action.ABSTAIN and out.answer == ABSTAIN
        assert out.review_id is not None and out.metadata()["review_id"] == out.review_id
        assert outcomes(out) == ["pending_review"]
        item = queue.get(out.review_id)
        assert (item.question, item.answer, item.confidence, item.status) == (Q, A, 0.6, "pending")
        assert item.metadata["score"]["confidence"] == 0.6
        assert [i.id for i in queue.list()] == [out.review_id]


def test_high_confidence_answer_is_not_queued(tmp_path: Path) -> None:
    with SQLiteReviewQueue(tmp_path / "review.sqlite3") as queue:
        router = Router(RoutingPolicy.threshold(0.7, Action.ESCALATE, "human"), {"human": human_review_target(queue)})
        assert router.route(Q, A, make_result(0.9)).review_id is None
        assert queue.list() == []


# -- input checks ----------------------------------------------------------------------------


def test_router_input_errors_name_the_bad_value() -> None:
    with pytest.raises(RoutingInputError, match="not a RoutingPolicy"):
        Router({"tiers": []})  # type: ignore[arg-type]
    with pytest.raises(RoutingInputError, match="targets\\['big'\\]"):
        Router(RoutingPolicy.threshold(0.5), {"big": "not callable"})  # type: ignore[dict-item]
    with pytest.raises(RoutingInputError, match="not a ScoreResult"):
        Router(RoutingPolicy.threshold(0.5)).route(Q, A, 0.9)  # type: ignore[arg-type]


def test_route_outcome_cannot_end_in_escalate() -> None:
    d = RoutingPolicy.threshold(0.5, Action.ESCALATE, "x").decide(0.1)
    with pytest.raises(RoutingInputError, match="escalate"):
        RouteOutcome(action=Action.ESCALATE, answer="", result=None, decision=d, trail=[], review_id=None)


def test_trail_step_round_trips_through_json() -> None:
    step = TrailStep(step=0, action=Action.ESCALATE, target="big", confidence=0.5, outcome="target_error", error="x")
    assert TrailStep.model_validate(json.loads(step.model_dump_json())) == step
