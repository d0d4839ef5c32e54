"""The profile schema: sorted JSON round trip, tolerant loading, clear errors, compatibility checks, confidence."""

from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from gradguard.calibration.calibrators import fit_calibrators
from gradguard.calibration.features import ALL_FEATURES, feature_vector
from gradguard.calibration.fit import calibration_from_fit
from gradguard.errors import GradguardError
from gradguard.profiles import (
    CalibrationMissingError,
    Profile,
    ProfileError,
    ProfileMismatchError,
    ProfileWarning,
    load_profile,
    save_profile,
)
from gradguard.profiles.fingerprint import chat_template_fingerprint
from gradguard.profiles.schema import SCHEMA_VERSION, Calibration, CalibrationData, library_version
from gradguard.result import ScoreResult, Timings
from gradguard.testing import make_tiny_model, make_tiny_tokenizer


def make_result(log_h: float, *, spt_offset: int = -2, layer_span: tuple[int, int] = (2, 4), empty: bool = False) -> ScoreResult:
    h = math.exp(log_h)
    nan = math.nan
    return ScoreResult(
        hybridgrad=nan if empty else h,
        semgrad=nan if empty else 2 * h,
        paragrad=nan if empty else h / 2,
        exgrad=nan if empty else h / 3,
        alpha=0.5,
        mean_entropy=1.0,
        g_nll=2.0,
        mean_nll=0.5,
        max_nll=1.0,
        n_response_tokens=0 if empty else 4,
        spt_offset=spt_offset,
        spt_position=10 + spt_offset,
        layer_span=layer_span,
        n_prompt_tokens=10,
        timings=Timings(score_s=0.0),
        empty=empty,
    )


def tiny_profile(**kw: object) -> Profile:
    model, tok = make_tiny_model("qwen2")
    base: dict[str, object] = dict(
        name="tiny-qwen2",
        kind="measured",
        model_id="test/tiny-qwen2",
        model_type="qwen2",
        num_layers=4,
        hidden_size=32,
        chat_template_fingerprint=chat_template_fingerprint(tok),
        spt_offset=-2,
        layer_span=(2, 4),
    )
    base.update(kw)
    return Profile(**base)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=None)
def _calibration(seed: int = 0) -> Calibration:
    rng = np.random.default_rng(seed)
    log_h = rng.uniform(-8, -2, 400)
    y = (rng.uniform(size=400) < 1 / (1 + np.exp(2 * (log_h + 5)))).astype(int)
    X = np.vstack([feature_vector(make_result(v)) for v in log_h])
    fit = fit_calibrators(X, y, features=ALL_FEATURES, n_boot=100)
    data = CalibrationData(
        path="synthetic.jsonl", n_questions=410, system_prompt=None, max_new_tokens=8, judge="containment",
        spt_offset=-2, layer_span=(2, 4),
    )
    return calibration_from_fit(fit, y, n_unscored=10, data=data, baselines_auroc={})


def calibrated(profile: Profile, seed: int = 0) -> Profile:
    """The profile with a calibration fitted on synthetic answers whose P(correct) falls with log HybridGrad."""
    return profile.model_copy(update={"calibration": _calibration(seed)})


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
    data = json.loads(tiny_profile().to_json())
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
    data = json.loads(tiny_profile().to_json())
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
        tiny_profile().check_compatible(model, tok)
    model, tok = make_tiny_model("qwen2", hidden_size=64)
    with pytest.raises(ProfileMismatchError, match="hidden size 32"):
        tiny_profile().check_compatible(model, tok, strict=False)
    model, tok = make_tiny_model("llama")
    with pytest.raises(ProfileMismatchError, match="model_type 'qwen2'"):
        tiny_profile().check_compatible(model, tok)


def test_template_fingerprint_mismatch_strict_and_lenient() -> None:
    model, tok = make_tiny_model("qwen2")
    tiny_profile().check_compatible(model, tok)  # same template: fine
    tok.chat_template = tok.chat_template.replace("assistant", "bot")
    with pytest.raises(ProfileMismatchError, match="strict=False"):
        tiny_profile().check_compatible(model, tok)
    with pytest.warns(ProfileWarning, match="chat template"):
        tiny_profile().check_compatible(model, tok, strict=False)


def test_fingerprint_is_stable_and_template_sensitive() -> None:
    a, b = make_tiny_tokenizer("qwen2"), make_tiny_tokenizer("qwen2")
    assert chat_template_fingerprint(a) == chat_template_fingerprint(b)
    assert chat_template_fingerprint(a) != chat_template_fingerprint(make_tiny_tokenizer("llama"))
    assert chat_template_fingerprint(make_tiny_tokenizer("qwen2", chat_template=False)) is None


def test_uncalibrated_profile_gives_no_confidence_and_no_threshold() -> None:
    p = tiny_profile()
    assert p.confidence(make_result(-5.0)) == (None, None)
    with pytest.raises(CalibrationMissingError, match="gradguard calibrate"):
        p.threshold(0.2)


def test_calibrated_confidence_decreases_with_hybridgrad_and_round_trips(tmp_path: Path) -> None:
    p = calibrated(tiny_profile())
    confs = [p.confidence(make_result(v))[0] for v in (-7.5, -5.0, -2.5)]
    assert all(c is not None and 0 <= c <= 1 for c in confs)
    assert confs[0] > confs[1] > confs[2]  # larger HybridGrad = less confident
    name = p.confidence(make_result(-5.0))[1]
    assert name == p.calibration.chosen  # type: ignore[union-attr]
    again = load_profile(save_profile(p, tmp_path / "cal.json"))
    assert [again.confidence(make_result(v))[0] for v in (-7.5, -5.0, -2.5)] == pytest.approx(confs)
    assert again.calibration is not None and again.calibration.n == 400 and again.calibration.n_unscored == 10


def test_confidence_is_none_for_unscored_or_other_settings() -> None:
    p = calibrated(tiny_profile())
    assert p.confidence(make_result(0.0, empty=True)) == (None, None)
    with pytest.warns(ProfileWarning, match="recalibrate"):
        assert p.confidence(make_result(-5.0, spt_offset=-3)) == (None, None)
    with pytest.warns(ProfileWarning):
        assert p.confidence(make_result(-5.0, layer_span=(1, 4))) == (None, None)


def test_threshold_from_stored_calibration() -> None:
    p = calibrated(tiny_profile())
    cal = p.calibration
    assert cal is not None
    loose = p.threshold(0.45, 0.1)
    assert loose.feasible and loose.threshold is not None
    assert loose.upper_bound is not None and loose.upper_bound <= 0.45
    assert loose.n_calibration == cal.n + cal.n_unscored
    strict = p.threshold(0.001, 0.1)
    assert not strict.feasible and strict.threshold is None


def test_errors_derive_from_gradguard_error() -> None:
    for cls in (ProfileError, ProfileMismatchError, CalibrationMissingError):
        assert issubclass(cls, GradguardError)


def test_profile_json_has_no_nan(tmp_path: Path) -> None:
    p = calibrated(tiny_profile())
    text = p.to_json()
    assert "NaN" not in text and "Infinity" not in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        json.loads(text)
