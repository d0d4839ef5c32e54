"""Judges, the score table's calibration features, and task labels (right or wrong for the task)."""

from __future__ import annotations

import math

import pytest

from gradguard.calibration.judge import ContainmentJudge, TokenF1Judge, get_judge, normalize_answer, token_f1
from gradguard.calibration.labels import label_answer
from gradguard.calibration.model import scalar_features
from gradguard.errors import GradguardError
from gradguard.scores import FEATURES, GRADIENT_FEATURES, SCORES, TOKEN_FEATURES, UNCERTAINTY_KEYS, feature_value
from gradguard.tasks import BUILTIN_TASKS, DeclineRule
from gradguard.testing.results import make_score_result

# -- judges -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "golds", "expected"),
    [
        ("Charles Darwin proposed it.", ["darwin"], True),
        ("The Sun!", ["the sun"], True),
        ("iron-deficiency anemia", ["iron-def"], True),
        ("Nucleotides", ["nucleotide"], True),  # gold may end inside a word (plural)
        ("a lion", ["ion"], False),  # but must start at a word boundary
        ("Ångström", ["angstrom"], True),
        ("", ["darwin"], False),
        ("Lamarck", ["darwin", "wallace"], False),
        ("Alfred Wallace", ["darwin", "wallace"], True),
    ],
)
def test_containment_judge(response: str, golds: list[str], expected: bool) -> None:
    assert ContainmentJudge()(response, golds) is expected


def test_normalize_answer() -> None:
    assert normalize_answer("  The  Blood-Vessels! ") == "blood vessels"
    assert normalize_answer("An apple, a pear") == "apple pear"


def test_token_f1_judge_penalises_long_answers_that_containment_accepts() -> None:
    long = "Arteries, veins and capillaries are all examples of blood vessels in the body."
    assert ContainmentJudge()(long, ["blood vessels"])
    assert not TokenF1Judge()(long, ["blood vessels"])
    assert TokenF1Judge()("blood vessels", ["blood vessels"])
    assert token_f1("the blood vessel", "blood vessels") == pytest.approx(0.5)


def test_unknown_judge_names_the_choices() -> None:
    with pytest.raises(GradguardError, match="containment"):
        get_judge("bem")


# -- the score table --------------------------------------------------------------------------------


def test_feature_values_follow_the_table() -> None:
    r = make_score_result(
        hybridgrad=0.01, semgrad=0.02, paragrad=0.005, mean_entropy=1.2, n_response_tokens=8, token_entropies=(0.5, 2.5)
    )
    assert feature_value(r, "log_hybridgrad") == pytest.approx(math.log(0.01))
    assert feature_value(r, "log_semgrad") == pytest.approx(math.log(0.02))
    assert feature_value(r, "log_answer_length") == pytest.approx(math.log(8))
    assert feature_value(r, "mean_entropy") == 1.2
    assert feature_value(r, "max_entropy") == 2.5
    assert feature_value(make_score_result(hybridgrad=0.0), "log_hybridgrad") == pytest.approx(math.log(1e-30))
    assert scalar_features(make_score_result(empty=True), FEATURES) is None
    with pytest.raises(KeyError, match="unknown calibration feature"):
        feature_value(r, "log_bogus")


def test_the_table_declares_each_score_once() -> None:
    names = [s.name for s in SCORES]
    assert len(names) == len(set(names))
    assert set(GRADIENT_FEATURES) | set(TOKEN_FEATURES) == set(FEATURES)
    assert UNCERTAINTY_KEYS == ("hybridgrad", "semgrad", "paragrad", "exgrad", "g_nll", "mean_nll", "mean_entropy")


# -- labels ---------------------------------------------------------------------------------------------


def test_rag_labels_reward_declining_exactly_on_unanswerable_questions() -> None:
    rag = BUILTIN_TASKS["rag"]
    assert label_answer(rag, "unanswerable.", [], is_impossible=True)
    assert label_answer(rag, "I don\u2019t know", [], is_impossible=True)  # curly apostrophe
    assert not label_answer(rag, "Sky plc", [], is_impossible=True)
    assert not label_answer(rag, "unanswerable", ["Sky plc"], is_impossible=False)
    assert label_answer(rag, "Sky plc", ["Sky plc", "BSkyB"], is_impossible=False)
    assert not label_answer(rag, "It was Sky plc, a British broadcaster formed in 1990", ["Sky plc"])  # F1 < 0.5


def test_tasks_without_a_decline_rule_never_decline() -> None:
    chat = BUILTIN_TASKS["chat"]
    assert not chat.declined("I don't know")
    assert not label_answer(chat, "I don't know", [], is_impossible=True)
    assert label_answer(chat, "It was Charles Darwin.", ["darwin"])


def test_decline_rule_pattern_and_bad_pattern() -> None:
    rule = DeclineRule(phrases=(), pattern=r"^\s*n/?a\b")
    assert rule.declined("N/A") and not rule.declined("Nadal")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        DeclineRule(pattern="([")
