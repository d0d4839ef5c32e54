"""The profile schema: sorted JSON round trip, tolerant loading, clear errors, compatibility, per-task calibrations."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from gradguard.calibration.thresholds import task_threshold
from gradguard.errors import GradguardError
from gradguard.profiles import (
    CalibrationMissingError,
    Profile,
    ProfileError,
    ProfileMismatchError,
    ProfileWarning,
    check_compatible,
    load_profile,
    profile_json,
    save_profile,
)
from gradguard.profiles.fingerprint import chat_template_fingerprint
from gradguard.profiles.io import profile_from_dict
from gradguard.profiles.schema import SCHEMA_VERSION, library_version
from gradguard.testing import make_tiny_model, make_tiny_profile, make_tiny_tokenizer
from gradguard.testing.calibration import make_task_calibration


def tiny_profile(**kw: object) -> Profile:
    return make_tiny_profile(**kw)


def calibrated(profile: Profile) -> Profile:
    """The profile with a ``closed-qa`` calibration fitted on synthetic answers (gradguard.testing.calibration)."""
    return profile.model_copy(
        update={"calibrations": {"closed-qa": make_task_calibration()}, "default_task": "closed-qa"}
    )


def test_round_trip_is_sorted_and_stamped(tmp_path: Path) -> None:
    p = tiny_profile()
    path = save_profile(p, tmp_path / "p.json")
    text = path.read_text()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["gradguard_version"] == library_version() != "unknown"
    again = load_profile(path)
    assert again.model_dump() == p.model_copy(update={"gradguard_version": library_version()}).model_dump()
    assert again.source == str(path)
    assert save_profile(again, tmp_path / "q.json").read_text() == text  # stable bytes


def test_unknown_keys_load_with_a_warning(tmp_path: Path) -> None:
    data = json.loads(profile_json(tiny_profile()))
    data["future_field"] = {"x": 1}
    data["schema_version"] = SCHEMA_VERSION + 1
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.warns(ProfileWarning) as record:
        p = load_profile(path)
    messages = " ".join(str(w.message) for w in record)
    assert "future_field" in messages and "schema version" in messages
    assert p.spt_offset == -2


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    data = json.loads(profile_json(tiny_profile()))
    del data["spt_offset"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="missing required key 'spt_offset'"):
        load_profile(path)


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        "!!python/object/apply:os.system ['echo pwned']",  # YAML tag: never interpreted
        "cos\nsystem\n(S'echo pwned'\ntR.",  # a pickle: never unpickled
    ],
)
def test_loading_parses_json_only(tmp_path: Path, content: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(path)


def test_bad_values_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        tiny_profile(spt_offset=1)
    with pytest.raises(ValueError):
        tiny_profile(layer_span=(2, 9))
    with pytest.raises(ProfileError, match="neither a file nor a built-in"):
        load_profile(tmp_path / "missing.json")


def test_layer_or_hidden_mismatch_is_an_error() -> None:
    model, tok = make_tiny_model("qwen2", num_layers=6)
    with pytest.raises(ProfileMismatchError, match="4 layers but the model has 6"):
        check_compatible(tiny_profile(), model, tok)
    model, tok = make_tiny_model("qwen2", hidden_size=64)
    with pytest.raises(ProfileMismatchError, match="hidden size 32"):
        check_compatible(tiny_profile(), model, tok, strict=False)
    model, tok = make_tiny_model("llama")
    with pytest.raises(ProfileMismatchError, match="model_type 'qwen2'"):
        check_compatible(tiny_profile(), model, tok)


def test_template_fingerprint_mismatch_strict_and_lenient() -> None:
    model, tok = make_tiny_model("qwen2")
    check_compatible(tiny_profile(), model, tok)  # same template: fine
    tok.chat_template = tok.chat_template.replace("assistant", "bot")
    with pytest.raises(ProfileMismatchError, match="strict=False"):
        check_compatible(tiny_profile(), model, tok)
    with pytest.warns(ProfileWarning, match="chat template"):
        check_compatible(tiny_profile(), model, tok, strict=False)


def test_fingerprint_is_stable_and_template_sensitive() -> None:
    a, b = make_tiny_tokenizer("qwen2"), make_tiny_tokenizer("qwen2")
    assert chat_template_fingerprint(a) == chat_template_fingerprint(b)
    assert chat_template_fingerprint(a) != chat_template_fingerprint(make_tiny_tokenizer("llama"))
    assert chat_template_fingerprint(make_tiny_tokenizer("qwen2", chat_template=False)) is None


def test_uncalibrated_profile_has_no_threshold() -> None:
    with pytest.raises(CalibrationMissingError, match="gradguard calibrate --task chat"):
        task_threshold(tiny_profile(), None, 0.2)


def test_calibrations_round_trip_per_task(tmp_path: Path) -> None:
    p = calibrated(tiny_profile())
    again = load_profile(save_profile(p, tmp_path / "cal.json"))
    assert again.model_dump() == p.model_copy(update={"gradguard_version": library_version()}).model_dump()
    assert set(again.calibrations) == {"closed-qa"} and again.default_task == "closed-qa"
    with pytest.raises(CalibrationMissingError, match="no calibration for task 'rag'.*closed-qa"):
        task_threshold(again, "rag", 0.2)


def test_threshold_from_stored_calibration() -> None:
    p = calibrated(tiny_profile())
    cal = p.calibrations["closed-qa"]
    loose = task_threshold(p, "closed-qa", 0.45, 0.1)
    assert loose.feasible and loose.threshold is not None
    assert loose.upper_bound is not None and loose.upper_bound <= 0.45
    assert loose.n_calibration == cal.n + cal.n_unscored
    strict = task_threshold(p, None, 0.001, 0.1)
    assert not strict.feasible and strict.threshold is None


def test_probe_that_does_not_fit_the_model_is_an_error() -> None:
    data = calibrated(tiny_profile()).model_dump(mode="json")
    with pytest.raises(ProfileError, match="probe reads hidden size 32 but the profile's model has 64.*calibrate"):
        profile_from_dict({**data, "hidden_size": 64}, source="p.json")
    data["calibrations"]["closed-qa"]["calibrator"]["probes"][0]["layer"] = 9
    with pytest.raises(ProfileError, match="probe reads layer 9 but the model has 4 layers"):
        profile_from_dict(data, source="p.json")


def test_a_schema_1_profile_loads_as_closed_qa_with_one_warning() -> None:
    old = tiny_profile().model_dump(mode="json")
    del old["calibrations"], old["default_task"]
    old["schema_version"] = 1
    n = 4
    old["calibration"] = {
        "chosen": "logistic",
        "selection_rule": "highest cross-validated AUROC",
        "isotonic": {
            "kind": "isotonic",
            "feature": "log_hybridgrad",
            "x": [-8.0, -2.0],
            "y": [0.9, 0.1],
            "cv": {"auroc": 0.6, "brier": 0.2, "ece": 0.05, "aurc": 0.4},
        },
        "logistic": {
            "kind": "logistic",
            "features": ["log_semgrad", "mean_nll"],
            "mean": [-5.0, 1.0],
            "scale": [1.0, 1.0],
            "coef": [-1.0, -0.5],
            "intercept": 0.1,
            "C": 0.1,
            "cv": {"auroc": 0.66, "auroc_ci": [0.6, 0.7], "brier": 0.2, "ece": 0.04, "aurc": 0.4},
        },
        "n": n,
        "n_unscored": 0,
        "n_correct": 2,
        "folds": 5,
        "seed": 0,
        "auroc": 0.66,
        "aurc": 0.4,
        "ece": 0.04,
        "baselines_auroc": {"hybridgrad": 0.54},
        "data": {
            "path": "/somewhere/sciq/test.jsonl",
            "sha256": "ab",
            "n_questions": n,
            "system_prompt": "Answer briefly.",
            "max_new_tokens": 24,
            "judge": "containment",
            "spt_offset": -2,
            "layer_span": [2, 4],
        },
        "holdout_confidence": [0.1, 0.2, 0.3, 0.4],
        "holdout_correct": [0, 0, 1, 1],
    }
    with pytest.warns(ProfileWarning, match="schema version 1.*closed-qa") as record:
        p = profile_from_dict(old, source="old.json")
    assert len([w for w in record if issubclass(w.category, ProfileWarning)]) == 1
    cal = p.calibrations["closed-qa"]
    assert cal.calibrator.kind == "logistic" and cal.calibrator.coef == (-1.0, -0.5)
    assert cal.task.system_prompt == "Answer briefly." and cal.data.file == "test.jsonl"
    assert cal.cv.auroc == 0.66 and p.default_task == "closed-qa" and p.schema_version == SCHEMA_VERSION


def test_errors_derive_from_gradguard_error() -> None:
    for cls in (ProfileError, ProfileMismatchError, CalibrationMissingError):
        assert issubclass(cls, GradguardError)


def test_profile_json_has_no_nan(tmp_path: Path) -> None:
    p = calibrated(tiny_profile())
    text = profile_json(p)
    assert "NaN" not in text and "Infinity" not in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        json.loads(text)
