"""The scorer applies the calibration of the task it is asked for — never another task's — and says so."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from gradguard import GradScorer
from gradguard.cli import main as cli_main
from gradguard.profiles import Profile, ProfileWarning, save_profile
from gradguard.routing.signal import GuardSignal
from gradguard.tasks import UnknownTaskError
from gradguard.testing import make_tiny_model, make_tiny_profile
from gradguard.testing.calibration import make_task_calibration
from gradguard.testing.results import make_score_result

MESSAGES = [{"role": "user", "content": "What is the boiling point of water?"}]


@pytest.fixture(scope="module")
def tiny() -> tuple[object, object, Profile]:
    model, tok = make_tiny_model("qwen2")
    profile = make_tiny_profile(
        tok,
        name="tiny-calibrated",
        calibrations={"closed-qa": make_task_calibration("closed-qa")},
        default_task="closed-qa",
    )
    return model, tok, profile


def test_the_calibrated_task_gives_a_confidence_with_its_provenance(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, tok, profile = tiny
    scorer = GradScorer(model, tok, profile=profile)
    result = scorer.score(MESSAGES, "one hundred degrees")
    assert result.task == "closed-qa" and result.confidence is not None and 0 < result.confidence < 1
    assert result.calibration is not None and result.calibration.data == "synthetic.jsonl"
    assert result.calibration.n == 240 and result.calibration.cv_auroc == profile.calibrations["closed-qa"].cv.auroc
    assert result.in_domain is not None and result.domain_percentile is not None
    assert result.hidden is None  # the probe read them; results stay small
    meta = result.metadata()
    assert meta["task"] == "closed-qa" and meta["calibration"]["judge"] == "containment"
    assert meta["in_domain"] == result.in_domain
    json.dumps(meta)


def test_another_task_is_never_given_this_tasks_calibration(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, tok, profile = tiny
    scorer = GradScorer(model, tok, profile=profile)
    with pytest.warns(ProfileWarning, match=r"no calibration for task 'rag'.*gradguard calibrate --task rag") as record:
        first = scorer.score(MESSAGES, "one hundred degrees", task="rag")
        second = scorer.score(MESSAGES, "ninety degrees", task="rag")
    assert len([w for w in record if "task 'rag'" in str(w.message)]) == 1  # one warning per (scorer, task)
    for r in (first, second):
        assert r.task == "rag" and r.confidence is None and r.calibration is None and r.in_domain is None
    assert scorer.score(MESSAGES, "one hundred degrees").confidence is not None  # the default task still applies


def test_unknown_task_names_are_errors_with_the_fix(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, tok, profile = tiny
    with pytest.raises(UnknownTaskError, match=r"unknown task 'summaries'.*calibrate --task summaries"):
        GradScorer(model, tok, profile=profile, task="summaries")
    scorer = GradScorer(model, tok, profile=profile)
    with pytest.raises(UnknownTaskError, match="not valid"):
        scorer.score(MESSAGES, "x", task="Bad Name")


def test_a_user_task_calibrated_in_the_profile_is_known(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, tok, profile = tiny
    cal = make_task_calibration("closed-qa")
    mine = cal.model_copy(update={"task": cal.task.model_copy(update={"name": "my-qa"})})
    custom = profile.model_copy(update={"calibrations": {"my-qa": mine}, "default_task": "my-qa"})
    result = GradScorer(model, tok, profile=custom).score(MESSAGES, "one hundred degrees")
    assert result.task == "my-qa" and result.confidence is not None


def test_an_offset_override_drops_the_calibration_with_a_warning(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, tok, profile = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer = GradScorer(model, tok, profile=profile, spt_offset=-3)
    with pytest.warns(ProfileWarning, match="recalibrate"):
        assert scorer.score(MESSAGES, "x").confidence is None


def test_generation_and_scoring_give_the_same_confidence(tiny: tuple) -> None:  # type: ignore[type-arg]
    model, tok, profile = tiny
    scorer = GradScorer(model, tok, profile=profile)
    generated = scorer.generate_and_score(MESSAGES, max_new_tokens=5)
    again = scorer.score(MESSAGES, list(generated.token_ids))
    assert generated.confidence == pytest.approx(again.confidence, rel=1e-4)
    assert generated.domain_distance == pytest.approx(again.domain_distance, rel=1e-4)


# -- the guard signal reads the domain flag ----------------------------------------------------------------


def test_out_of_domain_answers_are_unconfident_unless_allowed() -> None:
    far = make_score_result(confidence=0.95, in_domain=False, task="rag", domain_percentile=99.7)
    near = make_score_result(confidence=0.95, in_domain=True, task="rag", domain_percentile=40.0)
    strict = GuardSignal.confidence(0.8)
    reading = strict.check(far)
    assert not reading.passed and reading.value is None
    assert (
        "out of domain" in reading.reason and "rag" in reading.reason and "allow_out_of_domain=True" in reading.reason
    )
    assert strict.check(near).passed
    assert strict.check(far.metadata()).passed is False  # the metadata travels with a message
    lenient = GuardSignal.confidence(0.8, allow_out_of_domain=True)
    assert lenient.check(far).passed
    raw = GuardSignal.uncertainty("hybridgrad", 1.0)
    assert raw.confidence_of(far) is None and raw.confidence_of(near) == 1.0


# -- the command line ------------------------------------------------------------------------------------------


def test_ask_with_a_context_file_uses_the_rag_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, object] = {}

    class Recorder:
        def __init__(self, **kw: object) -> None:
            seen.update(kw)

        def generate_and_score(self, messages: list[dict[str, str]], **kw: object) -> object:
            seen["messages"] = messages
            return make_score_result(task=str(seen["task"]))

    monkeypatch.setattr(
        "gradguard.scorer.GradScorer.from_pretrained", classmethod(lambda cls, src, **kw: Recorder(**kw))
    )
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("The Rhine flows north.", encoding="utf-8")
    assert cli_main(["ask", "Where does the Rhine flow?", "--context", f"@{ctx}", "--json"]) == 0
    assert seen["task"] == "rag"
    assert seen["messages"][-1]["content"] == "Context: The Rhine flows north.\n\nQuestion: Where does the Rhine flow?"  # type: ignore[index]
    assert json.loads(capsys.readouterr().out)["task"] == "rag"
    assert cli_main(["ask", "Who proposed evolution?", "--json"]) == 0
    assert seen["task"] == "chat" and len(seen["messages"]) == 1  # type: ignore[arg-type]
    assert cli_main(["ask", "q?", "--context", "c", "--task", "chat"]) == 2
    assert "--context formats the rag prompt" in capsys.readouterr().err
    assert cli_main(["ask", "q?", "--context", f"@{tmp_path / 'missing.txt'}"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_profile_with_a_mismatched_probe_cannot_be_saved_and_loaded(tiny: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    _, _, profile = tiny
    path = save_profile(profile, tmp_path / "p.json")
    data = json.loads(path.read_text())
    data["num_layers"] = 2
    path.write_text(json.dumps(data))
    from gradguard.profiles import ProfileError, load_profile

    with pytest.raises(ProfileError, match="layer"):
        load_profile(path)
