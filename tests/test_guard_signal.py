"""gradguard.routing.GuardSignal: validation, fail-closed reading, and the lines it draws."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest

from gradguard import GradguardError
from gradguard.result import ScoreResult
from gradguard.routing import GuardSignal, GuardSignalError, RoutingInputError, RoutingPolicyError
from gradguard.routing.signal import DEFAULT_MIN_CONFIDENCE, is_scored, unscored_metadata
from test_router import make_result as make_router_result


def make_result(confidence: float | None = 0.7, *, scored: bool = True, hybridgrad: float = 0.03) -> ScoreResult:
    """test_router's hand-built ScoreResult with a chosen HybridGrad (NaN when ``scored=False``)."""
    result = make_router_result(confidence, scored=scored)
    return result.model_copy(update={"hybridgrad": hybridgrad}) if scored else result


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"signal": "vibes", "max_uncertainty": 1.0}, r"signal='vibes' is not known; use one of \['confidence'"),
        ({"signal": "hybridgrad"}, r"signal='hybridgrad' needs max_uncertainty \(got None\).*held-out data"),
        ({"signal": "hybridgrad", "max_uncertainty": -0.1}, r"max_uncertainty=-0.1 .*negative.*>= 0"),
        ({"signal": "hybridgrad", "max_uncertainty": math.nan}, r"max_uncertainty=nan is not a finite number"),
        ({"signal": "hybridgrad", "max_uncertainty": math.inf}, r"max_uncertainty=inf is not a finite number"),
        ({"signal": "hybridgrad", "max_uncertainty": True}, r"max_uncertainty=True is not a number"),
        ({"signal": "hybridgrad", "max_uncertainty": "0.1"}, r"max_uncertainty='0.1' is not a number"),
        ({"min_confidence": 1.5}, r"min_confidence=1.5 is outside \[0, 1\]"),
        ({"min_confidence": -0.1}, r"min_confidence=-0.1 is outside \[0, 1\]"),
        ({"min_confidence": math.nan}, r"min_confidence=nan is not a finite number"),
        ({"signal": "hybridgrad", "max_uncertainty": 0.1, "min_confidence": 0.5}, r"set max_uncertainty .* instead"),
        (
            {"signal": "confidence", "max_uncertainty": 0.1},
            r"max_uncertainty=0.1 .*signal='confidence'.*signal='hybridgrad'",
        ),
        ({"signal": lambda r: 0.9, "max_uncertainty": 0.1}, r"max_uncertainty=0.1 goes with signal='<score name>'"),
        ({"signal": 3}, r"signal=3 is not usable"),
    ],
)
def test_bad_options_raise_naming_the_value_and_the_fix(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(GuardSignalError, match=match) as info:
        GuardSignal.from_options(**kwargs)
    err = info.value
    assert isinstance(err, RoutingPolicyError) and isinstance(err, GradguardError) and isinstance(err, ValueError)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(GuardSignalError, match="needs max_uncertainty"):
        GuardSignal(name="semgrad")
    with pytest.raises(GuardSignalError, match="replaces signal='hybridgrad'"):
        GuardSignal(name="hybridgrad", function=lambda r: 1.0)
    with pytest.raises(GuardSignalError, match="threshold=0.5 is not a field of GuardSignal"):
        GuardSignal(threshold=0.5)  # extra="forbid"
    with pytest.raises(GuardSignalError, match="signal=1 is not a score name"):
        GuardSignal(name=1)
    with pytest.raises(GuardSignalError, match="positional"):
        GuardSignal("hybridgrad")  # type: ignore[misc]


def test_owner_prefixes_the_message_and_keeps_the_error_class() -> None:
    with pytest.raises(GuardSignalError, match=r"^MyGuard: signal='semgrad' needs max_uncertainty"):
        GuardSignal.from_options("semgrad", owner="MyGuard")


def test_a_subclass_raises_its_own_error_class() -> None:
    class MyError(GuardSignalError):
        pass

    class MySignal(GuardSignal):
        _error = MyError

    with pytest.raises(MyError, match="needs max_uncertainty"):
        MySignal.from_options("hybridgrad")
    with pytest.raises(MyError, match="outside"):
        MySignal.confidence(2.0)
    assert isinstance(MySignal.from_options(GuardSignal.uncertainty("semgrad", 0.1)), MySignal)


def test_a_signal_given_as_signal_keeps_its_threshold() -> None:
    sig = GuardSignal.uncertainty("semgrad", 0.1)
    assert GuardSignal.from_options(sig) is sig
    with pytest.raises(GuardSignalError, match="max_uncertainty=0.2 goes with signal='<score name>'"):
        GuardSignal.from_options(sig, 0.2)
    with pytest.raises(GuardSignalError, match="min_confidence=0.5 goes with"):
        GuardSignal.from_options(sig, min_confidence=0.5)


def test_signals_are_frozen() -> None:
    sig = GuardSignal.uncertainty("hybridgrad", 0.02)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        sig.max_uncertainty = 1.0  # type: ignore[misc]


# -- fail closed -----------------------------------------------------------------------------------

SIGNALS_UNDER_TEST = [
    GuardSignal.confidence(0.0),
    GuardSignal.uncertainty("hybridgrad", 1e9),
    GuardSignal.from_function(lambda r: 1.0, min_confidence=0.0),
]


@pytest.mark.parametrize("sig", SIGNALS_UNDER_TEST, ids=["confidence", "raw", "function"])
@pytest.mark.parametrize(
    ("source", "why"),
    [
        (None, "unscored (no score)"),
        (make_result(0.99, scored=False), "unscored: the answer has no finite score"),
        (unscored_metadata("scoring failed: boom"), "unscored: scoring failed: boom"),
        ({"confidence": 0.99, "uncertainty": {"hybridgrad": None}}, "unscored"),  # no scored flag, NaN scores
    ],
)
def test_no_score_never_passes_even_with_the_loosest_line(sig: GuardSignal, source: Any, why: str) -> None:
    reading = sig.check(source)
    assert reading.passed is False and reading.value is None and reading.reason.startswith(why)
    assert sig.confidence_of(source) is None and sig(source) is None and sig.value(source) is None


@pytest.mark.parametrize(
    ("confidence", "why"),
    [
        (None, "uncalibrated: no calibrated confidence"),
        (math.nan, "unscored (confidence is NaN)"),
        (1.5, "invalid confidence 1.5"),
    ],
)
def test_confidence_signal_without_a_usable_confidence_fails(confidence: float | None, why: str) -> None:
    sig = GuardSignal.confidence(0.0)
    result = make_result(confidence)
    reading = sig.check(result)
    assert not reading.passed and reading.value is None and why in reading.reason
    assert sig.confidence_of(result) is None
    meta_reading = sig.check(result.metadata())
    assert not meta_reading.passed and meta_reading.value is None


def test_a_non_number_confidence_in_metadata_fails_closed() -> None:
    meta = {**make_result().metadata(), "confidence": "high"}
    assert GuardSignal.confidence(0.0).check(meta) == (False, None, "invalid confidence 'high' (not a number)")


def test_nan_raw_score_fails() -> None:
    meta = {**make_result().metadata(), "uncertainty": {"hybridgrad": None}, "scored": True}
    reading = GuardSignal.uncertainty("hybridgrad", 1e9).check(meta)
    assert reading == (False, None, "hybridgrad is missing or NaN")
    assert GuardSignal.uncertainty("hybridgrad", 1e9).confidence_of(meta) is None


def test_a_function_that_raises_is_unconfident(caplog: pytest.LogCaptureFixture) -> None:
    def broken(result: ScoreResult) -> float:
        raise ValueError("boom")

    sig = GuardSignal.from_function(broken, min_confidence=0.0)
    reading = sig.check(make_result(0.99))
    assert not reading.passed and reading.value is None
    assert "broken raised ValueError: boom" in reading.reason
    assert sig.confidence_of(make_result(0.99)) is None
    assert "treating the answer as unconfident" in caplog.text


@pytest.mark.parametrize("returned", [None, math.nan, math.inf, "high", True, 7.0, -1.0, make_result()])
def test_a_function_returning_anything_but_a_confidence_is_unconfident(returned: Any) -> None:
    sig = GuardSignal.from_function(lambda r: returned, min_confidence=0.0)
    assert sig.confidence_of(make_result(0.99)) is None
    assert sig.check(make_result(0.99)).passed is False


def test_a_function_is_not_called_on_an_unscored_answer_or_on_bare_metadata() -> None:
    calls: list[ScoreResult] = []

    def fn(result: ScoreResult) -> float:
        calls.append(result)
        return 1.0

    sig = GuardSignal.from_function(fn)
    assert sig.confidence_of(make_result(scored=False)) is None
    reading = sig.check(make_result().metadata())
    assert reading.value is None and "needs the full ScoreResult" in reading.reason
    assert calls == []


def test_an_unreadable_source_is_a_type_error() -> None:
    with pytest.raises(RoutingInputError, match="cannot read a signal from a str"):
        GuardSignal.confidence().check("0.9")  # type: ignore[arg-type]


# -- the lines -------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_metadata", [False, True])
def test_raw_threshold_is_inclusive(as_metadata: bool) -> None:
    value = 0.03
    result = make_result(None, hybridgrad=value)
    source: Any = result.metadata() if as_metadata else result
    at = GuardSignal.uncertainty("hybridgrad", value)
    below = GuardSignal.uncertainty("hybridgrad", math.nextafter(value, 0.0))
    assert at.check(source) == (True, value, "hybridgrad=0.03 meets hybridgrad <= 0.03")
    assert at.confidence_of(source) == 1.0
    reading = below.check(source)
    assert not reading.passed and reading.value == value and "fails hybridgrad <=" in reading.reason
    assert below.confidence_of(source) == 0.0  # scored but over the line: decided, not unknown
    assert at.value(source) == value


def test_raw_threshold_zero_is_allowed() -> None:
    assert GuardSignal.uncertainty("hybridgrad", 0.0).confidence_of(make_result(hybridgrad=0.0)) == 1.0


@pytest.mark.parametrize("as_metadata", [False, True])
def test_confidence_line_is_inclusive(as_metadata: bool) -> None:
    sig = GuardSignal.confidence(0.7)
    ok, low = make_result(0.7), make_result(0.69)
    ok_src: Any = ok.metadata() if as_metadata else ok
    low_src: Any = low.metadata() if as_metadata else low
    assert sig.check(ok_src) == (True, 0.7, "confidence=0.7 meets confidence >= 0.7")
    assert sig.check(low_src) == (False, 0.69, "confidence=0.69 fails confidence >= 0.7")
    # For routing, the confidence itself (not the pass/fail) is what the policy sees.
    assert sig.confidence_of(ok_src) == 0.7 and sig.confidence_of(low_src) == 0.69


def test_default_confidence_line() -> None:
    sig = GuardSignal()
    assert sig.is_confidence and sig.threshold == DEFAULT_MIN_CONFIDENCE == 0.5
    assert sig.check(make_result(0.5)).passed and not sig.check(make_result(0.49)).passed


def test_function_signal_values_and_line() -> None:
    def grade(result: ScoreResult) -> float:
        return 0.8 if result.hybridgrad < 0.05 else 0.1

    sig = GuardSignal.from_options(grade, min_confidence=0.75)
    assert sig.confidence_of(make_result(hybridgrad=0.01)) == 0.8
    assert sig.check(make_result(hybridgrad=0.01)).reason == "grade=0.8 meets grade >= 0.75"
    assert sig.confidence_of(make_result(hybridgrad=0.2)) == pytest.approx(0.1)
    assert not sig.check(make_result(hybridgrad=0.2)).passed
    assert GuardSignal.from_function(lambda r: 1).confidence_of(make_result()) == 1.0  # an int is a number


def test_describe_and_flags() -> None:
    assert GuardSignal.uncertainty("hybridgrad", 0.02).describe() == "hybridgrad <= 0.02"
    assert GuardSignal.confidence().describe() == "confidence"
    assert GuardSignal.confidence(0.7).describe() == "confidence >= 0.7"

    def grade(result: ScoreResult) -> float:
        return 1.0

    fn = GuardSignal.from_function(grade)
    assert fn.describe() == "grade" and fn.label == "grade"
    assert (fn.is_confidence, fn.is_raw) == (False, False)
    raw = GuardSignal.uncertainty("semgrad", 0.1)
    assert (raw.is_confidence, raw.is_raw, raw.threshold) == (False, True, 0.1)


def test_is_scored() -> None:
    assert is_scored(make_result().metadata()) and not is_scored(make_result(scored=False).metadata())
    assert not is_scored(None) and not is_scored({"scored": "yes"})
    assert is_scored({"uncertainty": {"hybridgrad": 1.0, "semgrad": 1.0, "paragrad": 1.0, "exgrad": 1.0}})


def test_importing_routing_does_not_import_torch() -> None:
    code = "import sys, gradguard.routing; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
