"""examples/review_loop.py: the disjoint split into rounds, the simulated reviewers, the Wilson interval,
the fallback threshold, and one cold-start round routed into a real SQLite queue on a tiny config-built model
(no embedded model is loaded here)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

from gradguard import GradScorer
from gradguard.calibration.thresholds import task_threshold
from gradguard.review import SQLiteReviewQueue

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "review_loop.py"


@pytest.fixture(scope="module")
def loop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("review_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _questions(loop: ModuleType, texts: list[str]) -> list:
    return [loop.Question(i, t, (f"gold {i}",)) for i, t in enumerate(texts)]


def test_split_is_disjoint_by_text_and_seeded(loop: ModuleType) -> None:
    texts = [f"Question {i}?" for i in range(30)] + ["question  3?", "QUESTION 4?"]  # repeats in case/spacing
    items = _questions(loop, texts)
    a0, a1 = loop.split_questions(items, 10, seed=1)
    b0, b1 = loop.split_questions(items, 10, seed=1)
    assert (a0, a1) == (b0, b1)
    assert len(a0) == len(a1) == 10
    keys0 = {loop.normalize_question(q.query) for q in a0}
    keys1 = {loop.normalize_question(q.query) for q in a1}
    assert len(keys0) == len(keys1) == 10 and not keys0 & keys1
    assert loop.split_questions(items, 10, seed=2) != (a0, a1)


def test_split_needs_enough_distinct_questions(loop: ModuleType) -> None:
    items = _questions(loop, ["same?", "Same?", "other?", "third?"])  # 3 distinct
    with pytest.raises(ValueError, match="3 distinct questions.*--n 1"):
        loop.split_questions(items, 2, seed=0)


def test_simulated_verdicts(loop: ModuleType) -> None:
    assert loop.simulated_verdict(True, ["darwin"]) == ("approved", None)
    assert loop.simulated_verdict(False, ["darwin", "charles darwin"]) == ("edited", "darwin")
    assert loop.simulated_verdict(False, []) == ("rejected", None)


def test_wilson_interval(loop: ModuleType) -> None:
    assert loop.wilson(0, 0) is None
    lo, hi = loop.wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = loop.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)


def test_best_bound_threshold_is_what_the_infeasible_message_names(loop: ModuleType) -> None:
    profile = "Qwen/Qwen2.5-Coder-0.5B-Instruct"  # built-in profile: its closed-qa calibration certifies no eps=0.3
    from gradguard.profiles.io import load_profile

    cal = load_profile(profile).calibrations["closed-qa"]
    r = task_threshold(load_profile(profile), "closed-qa", 0.3, 0.1)
    assert not r.feasible
    best = loop.best_bound_threshold(cal.holdout_confidence, cal.holdout_correct, 0.1)
    assert best["upper_bound"] == pytest.approx(r.upper_bound)
    assert f"threshold {best['threshold']:.3f}, {best['n_accepted']} of" in r.message


def test_missing_data_file_is_a_clear_error(loop: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        loop.parse_args(["--data", str(tmp_path / "nope.jsonl")])
    assert exc.value.code == 2
    assert "no such file" in capsys.readouterr().err


def test_cold_round_holds_everything_and_reviewers_resolve_it(loop: ModuleType, tmp_path: Path) -> None:
    from gradguard.testing import make_tiny_model

    model, tok = make_tiny_model("qwen2")
    queue = SQLiteReviewQueue(tmp_path / "review.sqlite3")
    questions = [loop.Question(0, "Who proposed evolution?", ("darwin",)), loop.Question(1, "2+2?", ())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny model's offset warning; "no calibration for closed-qa" is the point
        scorer = GradScorer(model, tok, model_name="tiny-qwen2")
        assert "closed-qa" not in scorer.profile.calibrations  # no calibration: the guard must fail closed
        rows = loop.run_round(scorer, questions, loop.router_for(0.5, queue, 0), 0, progress=False)
    assert [r.accepted for r in rows] == [False, False]
    assert all(r.review_id is not None and r.confidence is None for r in rows)
    rows[0].correct = True  # the tiny model never says "darwin"; pretend it did
    counts = loop.simulate_reviewers(queue, rows, {0: ("darwin",), 1: ()})
    assert counts == {"approved": 1, "edited": 0, "rejected": 1}
    first, second = queue.get(rows[0].review_id), queue.get(rows[1].review_id)
    assert (first.status, first.reviewer) == ("approved", "sim")
    assert second.status == "rejected"
    assert first.task == "closed-qa" and first.messages and first.model == "tiny-qwen2"
    summary = loop.summarize_round(rows)
    assert summary["held"] == 2 and summary["accepted"]["n"] == 0
    queue.close()
