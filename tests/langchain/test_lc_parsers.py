"""ConfidenceGuardParser: its three on_fail modes, raw-score signals, and failing closed."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from langchain_core.exceptions import OutputParserException  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402
from lc_support import scored_message, tiny_scorer  # noqa: E402

from gradguard import GradguardError  # noqa: E402
from gradguard.integrations.langchain import (  # noqa: E402
    ChatGradguard,
    ConfidenceGuardParser,
    GuardConfigError,
    GuardedText,
    LowConfidenceError,
    result_for,
)


def test_exception_mode_passes_confident_and_raises_on_unconfident() -> None:
    parser = ConfidenceGuardParser(min_confidence=0.7)
    ok = parser.invoke(scored_message("Paris", confidence=0.9))
    assert ok == "Paris" and isinstance(ok, GuardedText)
    assert ok.verdict.passed and ok.verdict.action == "pass" and ok.verdict.value == 0.9
    assert ok.gradguard["confidence"] == 0.9
    with pytest.raises(LowConfidenceError) as info:
        parser.invoke(scored_message("Lyon", confidence=0.4))
    err = info.value
    assert isinstance(err, OutputParserException) and isinstance(err, GradguardError)
    assert err.answer == "Lyon" and err.llm_output == "Lyon" and err.verdict.value == 0.4
    assert "confidence=0.4 fails confidence >= 0.7" in str(err)


def test_threshold_is_inclusive() -> None:
    assert ConfidenceGuardParser(min_confidence=0.7).invoke(scored_message("x", confidence=0.7)) == "x"


def test_abstain_mode_returns_the_abstention_text() -> None:
    parser = ConfidenceGuardParser(on_fail="abstain", min_confidence=0.5, abstain_text="Not sure.")
    assert parser.invoke(scored_message("Rome", confidence=0.2)) == "Not sure."
    assert parser.invoke(scored_message("Rome", confidence=0.8)) == "Rome"


def test_noop_mode_passes_the_answer_annotated() -> None:
    parser = ConfidenceGuardParser(on_fail="noop", min_confidence=0.5)
    out = parser.invoke(scored_message("Rome", confidence=0.2))
    assert out == "Rome" and not out.verdict.passed and out.verdict.action == "noop"


def test_message_output_carries_the_verdict() -> None:
    parser = ConfidenceGuardParser(on_fail="abstain", min_confidence=0.5, output="message")
    original = scored_message("Rome", confidence=0.2)
    out = parser.invoke(original)
    assert isinstance(out, AIMessage) and out.content == "I don't know."
    assert out.response_metadata["gradguard_guard"]["passed"] is False
    assert out.response_metadata["gradguard"] == original.response_metadata["gradguard"]


@pytest.mark.parametrize(
    "message, why",
    [
        (AIMessage("no metadata at all"), "no gradguard score"),
        (scored_message("", empty=True, confidence=0.99), "unscored"),  # NaN scores of an empty answer
        (scored_message("uncalibrated", confidence=None), "no calibrated confidence"),
        (AIMessage("bad", response_metadata={"gradguard": "not a dict"}), "no gradguard score"),
    ],
)
def test_fails_closed(message: AIMessage, why: str) -> None:
    with pytest.raises(LowConfidenceError, match=why):
        ConfidenceGuardParser(min_confidence=0.0).invoke(message)
    assert ConfidenceGuardParser(on_fail="abstain", min_confidence=0.0).invoke(message) == "I don't know."


def test_plain_text_fails_closed() -> None:
    assert ConfidenceGuardParser(on_fail="abstain").invoke("a string has no score") == "I don't know."


def test_raw_signal_on_an_uncalibrated_model() -> None:
    parser = ConfidenceGuardParser(signal="hybridgrad", max_uncertainty=0.05, on_fail="abstain")
    assert parser.invoke(scored_message("low", hybridgrad=0.01)) == "low"
    assert parser.invoke(scored_message("high", hybridgrad=0.2)) == "I don't know."
    nan = AIMessage(
        "nan",
        response_metadata={
            "gradguard": {
                **scored_message().response_metadata["gradguard"],
                "uncertainty": {"hybridgrad": None},
                "scored": True,
            }
        },
    )
    assert parser.invoke(nan) == "I don't know."


def test_in_a_chain_with_chat_gradguard() -> None:
    chat = ChatGradguard(scorer=tiny_scorer(), max_tokens=6)
    message = chat.invoke("Which planet is largest?")
    value = result_for(message).hybridgrad
    answer = RunnableLambda(lambda _: message)
    assert (answer | ConfidenceGuardParser(signal="hybridgrad", max_uncertainty=value * 1.01)).invoke(
        "q"
    ) == message.content
    with pytest.raises(LowConfidenceError):
        (answer | ConfidenceGuardParser(signal="hybridgrad", max_uncertainty=value * 0.99)).invoke("q")
    with pytest.raises(LowConfidenceError, match="no calibrated confidence"):  # uncalibrated: confidence is None
        (chat | ConfidenceGuardParser()).invoke("Which planet is largest?")
    streamed = (chat | ConfidenceGuardParser(on_fail="noop", signal="hybridgrad", max_uncertainty=1e9)).stream("Hi")
    outs = list(streamed)
    assert len(outs) == 1 and outs[0].verdict.passed  # the parser judges the whole streamed answer


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_confidence": 1.5}, r"outside \[0, 1\]"),
        ({"min_confidence": -0.1}, r"outside \[0, 1\]"),
        ({"min_confidence": float("nan")}, "not a finite number"),
        ({"on_fail": "explode"}, "on_fail='explode'"),
        ({"signal": "vibes", "max_uncertainty": 1.0}, "signal='vibes'"),
        ({"signal": "hybridgrad"}, "needs max_uncertainty"),
        ({"signal": "hybridgrad", "max_uncertainty": -1.0}, "negative"),
        ({"signal": "hybridgrad", "max_uncertainty": 0.1, "min_confidence": 0.5}, "set max_uncertainty"),
        ({"max_uncertainty": 0.1}, "set min_confidence instead"),
        ({"threshold": 0.5}, "no option 'threshold'"),
        ({"output": "json"}, "output='json'"),
    ],
)
def test_bad_configuration(kwargs: dict, match: str) -> None:
    with pytest.raises(GuardConfigError, match=match):
        ConfidenceGuardParser(**kwargs)
