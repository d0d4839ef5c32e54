"""RoutingPolicy and Tier: validation, decisions, fail-closed handling, JSON."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from pydantic import ValidationError

from gradguard.errors import GradguardError
from gradguard.result import ScoreResult
from gradguard.routing import (
    Action,
    Decision,
    RoutingInputError,
    RoutingPolicy,
    RoutingPolicyError,
    RoutingPolicyWarning,
    Tier,
)
from gradguard.testing import make_score_result


def make_result(confidence: float | None = 0.9, *, scored: bool = True) -> ScoreResult:
    """A ScoreResult built by hand; ``scored=False`` gives an empty response with NaN scores."""
    return make_score_result(confidence=confidence, empty=not scored)


def three_tier() -> RoutingPolicy:
    return RoutingPolicy(
        [Tier(0.8, Action.ACCEPT), Tier(0.5, Action.ESCALATE, "human"), Tier(0.0, Action.REJECT)]
    )


# -- Tier validation ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, 1.01, 5])
def test_tier_threshold_outside_unit_interval_is_rejected(bad: float) -> None:
    with pytest.raises(RoutingPolicyError, match=r"outside \[0, 1\]") as info:
        Tier(bad, Action.ACCEPT)
    assert repr(float(bad)) in str(info.value)
    assert isinstance(info.value, GradguardError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [math.nan, math.inf, "0.8", True, None])
def test_tier_threshold_must_be_a_finite_number(bad: object) -> None:
    with pytest.raises(RoutingPolicyError, match="min_confidence"):
        Tier(bad, Action.ACCEPT)  # type: ignore[arg-type]


def test_escalate_tier_requires_a_target() -> None:
    with pytest.raises(RoutingPolicyError, match="has no target.*target='human'"):
        Tier(0.5, Action.ESCALATE)
    with pytest.raises(RoutingPolicyError, match="non-empty"):
        Tier(0.5, Action.ESCALATE, "  ")


def test_non_escalate_tier_rejects_a_target() -> None:
    with pytest.raises(RoutingPolicyError, match="target='human'.*only escalate tiers"):
        Tier(0.5, Action.ABSTAIN, "human")


def test_unknown_action_names_the_value() -> None:
    with pytest.raises(RoutingPolicyError, match="action='bogus'"):
        Tier(0.5, "bogus")  # type: ignore[arg-type]


def test_tier_accepts_positional_keyword_and_string_action() -> None:
    a = Tier(0.5, Action.ESCALATE, "human")
    b = Tier(min_confidence=0.5, action="escalate", target="human")
    assert a == b and a.action is Action.ESCALATE
    with pytest.raises(RoutingPolicyError, match="at most 3 positional"):
        Tier(0.5, Action.ESCALATE, "human", "extra")  # type: ignore[call-arg]


# -- RoutingPolicy validation ------------------------------------------------------------


def test_unordered_tiers_are_rejected() -> None:
    with pytest.raises(RoutingPolicyError, match=r"not in descending order: tier 1 \(min_confidence=0.9\)"):
        RoutingPolicy([Tier(0.5, Action.ACCEPT), Tier(0.9, Action.ACCEPT), Tier(0.0, Action.ABSTAIN)])


def test_duplicate_thresholds_are_rejected() -> None:
    with pytest.raises(RoutingPolicyError, match="both have min_confidence=0.5"):
        RoutingPolicy([Tier(0.5, Action.ACCEPT), Tier(0.5, Action.REJECT), Tier(0.0, Action.ABSTAIN)])


def test_missing_zero_floor_is_rejected() -> None:
    with pytest.raises(RoutingPolicyError, match=r"min_confidence=0.3.*Tier\(0.0, Action.ABSTAIN\)"):
        RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.3, Action.ABSTAIN)])


def test_empty_policy_is_rejected() -> None:
    with pytest.raises(RoutingPolicyError, match="no tiers"):
        RoutingPolicy([])


def test_floor_tier_may_not_accept() -> None:
    """The floor also catches unscored answers, so accepting there would fail open."""
    with pytest.raises(RoutingPolicyError, match="floor tier"):
        RoutingPolicy([Tier(0.0, Action.ACCEPT)])
    with pytest.raises(RoutingPolicyError, match="floor tier"):
        RoutingPolicy.threshold(0.7, below=Action.ACCEPT)
    with pytest.raises(RoutingPolicyError, match="threshold above 0"):
        RoutingPolicy.threshold(0.0)


def test_invalid_tier_given_as_dict_raises_policy_error_not_pydantic() -> None:
    with pytest.raises(RoutingPolicyError, match="outside"):
        RoutingPolicy(tiers=[{"min_confidence": 2, "action": "accept"}, {"min_confidence": 0, "action": "abstain"}])


def test_policy_is_immutable() -> None:
    policy = three_tier()
    with pytest.raises(ValidationError, match="frozen"):
        policy.abstain_text = "changed"  # type: ignore[misc]
    assert policy.abstain_text == "I don't know."
    assert isinstance(policy.tiers, tuple)


# -- decisions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "action", "tier"),
    [(1.0, Action.ACCEPT, 0), (0.8, Action.ACCEPT, 0), (0.7999, Action.ESCALATE, 1), (0.5, Action.ESCALATE, 1),
     (0.49, Action.REJECT, 2), (0.0, Action.REJECT, 2)],
)
def test_decide_picks_the_tier_containing_the_confidence(confidence: float, action: Action, tier: int) -> None:
    d = three_tier().decide(confidence)
    assert (d.action, d.tier_index, d.confidence) == (action, tier, confidence)
    assert d.target == ("human" if action is Action.ESCALATE else None)
    assert f"tier {tier}" in d.reason


def test_decide_reads_the_confidence_of_a_scored_result() -> None:
    d = three_tier().decide(make_result(0.85))
    assert d.action is Action.ACCEPT and d.confidence == 0.85


@pytest.mark.parametrize(
    ("value", "word"),
    [
        (None, "uncalibrated"),
        (math.nan, "unscored"),
        (1.5, "invalid"),
        (-0.2, "invalid"),
        (make_result(0.99, scored=False), "unscored"),
        (make_result(None), "uncalibrated"),
        (make_result(math.nan), "unscored"),
    ],
)
def test_missing_or_unusable_confidence_fails_closed(value: object, word: str) -> None:
    d = three_tier().decide(value)  # type: ignore[arg-type]
    assert d.action is Action.REJECT and d.tier_index == 2
    assert d.confidence is None
    assert d.reason.startswith(word) and "treated as confidence 0.0" in d.reason


def test_decide_rejects_a_non_numeric_confidence() -> None:
    with pytest.raises(RoutingInputError, match="confidence='0.9'"):
        three_tier().decide("0.9")  # type: ignore[arg-type]


def test_from_tier_skips_the_tiers_above() -> None:
    policy = three_tier()
    d = policy.decide(0.95, from_tier=1)
    assert d.tier_index == 1 and d.action is Action.ESCALATE and "tier 0 could not apply" in d.reason
    assert policy.decide(0.1, from_tier=1).tier_index == 2  # a lower natural tier wins
    with pytest.raises(RoutingPolicyError, match="from_tier=3"):
        policy.decide(0.5, from_tier=3)


def test_threshold_builds_two_tiers() -> None:
    policy = RoutingPolicy.threshold(0.7, below=Action.ESCALATE, target="review")
    assert [(t.min_confidence, t.action, t.target) for t in policy.tiers] == [
        (0.7, Action.ACCEPT, None),
        (0.0, Action.ESCALATE, "review"),
    ]
    assert RoutingPolicy.threshold(0.7).decide(0.69).action is Action.ABSTAIN
    assert RoutingPolicy.threshold(0.7).decide(0.7).action is Action.ACCEPT
    with pytest.raises(RoutingPolicyError, match="has no target"):
        RoutingPolicy.threshold(0.7, below=Action.ESCALATE)


def test_targets_lists_escalation_names_once_in_order() -> None:
    policy = RoutingPolicy(
        [Tier(0.9, Action.ACCEPT), Tier(0.6, Action.ESCALATE, "big"), Tier(0.3, Action.ESCALATE, "human"),
         Tier(0.1, Action.ESCALATE, "big"), Tier(0.0, Action.ABSTAIN)]
    )
    assert policy.targets() == ["big", "human"]


def test_decision_is_a_frozen_value() -> None:
    d = three_tier().decide(0.9)
    assert isinstance(d, Decision)
    with pytest.raises(ValidationError, match="frozen"):
        d.action = Action.REJECT  # type: ignore[misc]


# -- JSON ----------------------------------------------------------------------------------


def test_json_round_trip_with_sorted_keys() -> None:
    policy = RoutingPolicy(
        [Tier(0.8, Action.ACCEPT), Tier(0.5, Action.ESCALATE, "human"), Tier(0.0, Action.REJECT)],
        abstain_text="Not sure.",
    )
    text = policy.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2)
    assert json.loads(text)["tiers"][1] == {"action": "escalate", "min_confidence": 0.5, "target": "human"}
    loaded = RoutingPolicy.from_json(text)
    assert loaded == policy
    assert loaded.decide(0.6).target == "human" and loaded.abstain_text == "Not sure."


def test_unknown_json_keys_load_with_a_warning() -> None:
    text = json.dumps(
        {
            "comment": "prod policy",
            "abstain_text": "Nope.",
            "tiers": [
                {"min_confidence": 0.6, "action": "accept", "note": "x"},
                {"min_confidence": 0.0, "action": "abstain"},
            ],
        }
    )
    with pytest.warns(RoutingPolicyWarning) as record:
        policy = RoutingPolicy.from_json(text)
    messages = " ".join(str(w.message) for w in record)
    assert "'comment'" in messages and "'note'" in messages
    assert policy == RoutingPolicy.threshold(0.6).model_copy(update={"abstain_text": "Nope."})


def test_known_keys_load_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RoutingPolicy.from_json(three_tier().to_json())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "could not be parsed"),
        ("[1, 2]", "must be an object"),
        ('{"tiers": [{"min_confidence": 0.5, "action": "accept"}]}', "floor at 0.0"),
        ('{"abstain_text": "x"}', "tiers is required"),
    ],
)
def test_bad_json_raises_policy_error(text: str, match: str) -> None:
    with pytest.raises(RoutingPolicyError, match=match):
        RoutingPolicy.from_json(text)


def test_model_validate_raises_policy_error_too() -> None:
    bad = {"tiers": [{"min_confidence": 0.5, "action": "accept"}, {"min_confidence": 0.5, "action": "abstain"}]}
    with pytest.raises(RoutingPolicyError, match="both have min_confidence=0.5"):
        RoutingPolicy.model_validate(bad)
    with pytest.raises(RoutingPolicyError, match="both have min_confidence=0.5"):
        RoutingPolicy.model_validate_json(json.dumps(bad))
    good = RoutingPolicy.model_validate({"tiers": [bad["tiers"][0], {"min_confidence": 0, "action": "abstain"}]})
    assert good == RoutingPolicy.threshold(0.5)
