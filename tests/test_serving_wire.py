"""The wire format round-trips a ScoreResult, NaN scores and parts included."""

from __future__ import annotations

import json
import math

import pytest

from gradguard import GradScorer
from gradguard.scorer import SpanPlan
from gradguard.serving.wire import WireFormatError, json_safe, result_from_wire, result_to_wire


def test_a_result_round_trips_through_json(qwen_scorer: GradScorer) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    result = qwen_scorer.score(messages, "red and blue", spans=lambda ids: SpanPlan(parts=[(0, 1)]))
    back = result_from_wire(json.loads(json.dumps(result_to_wire(result), allow_nan=False)))
    assert back.metadata() == result.metadata()
    assert back.token_ids == result.token_ids and back.span == result.span
    assert len(back.parts) == 1 and back.parts[0].semgrad == pytest.approx(result.parts[0].semgrad)


def test_an_empty_answer_travels_as_null_and_comes_back_unscored(qwen_scorer: GradScorer) -> None:
    result = qwen_scorer.score([{"role": "user", "content": "Hi"}], "")
    wire = result_to_wire(result)
    assert wire["hybridgrad"] is None
    json.dumps(wire, allow_nan=False)  # valid JSON: no NaN literal
    back = result_from_wire(wire)
    assert math.isnan(back.hybridgrad) and not back.scored and back.metadata()["scored"] is False


def test_unknown_keys_are_dropped_and_garbage_is_named() -> None:
    assert json_safe({"a": [1.0, float("inf")], "b": "x"}) == {"a": [1.0, None], "b": "x"}
    with pytest.raises(WireFormatError, match="expected a gradguard result"):
        result_from_wire(["not", "a", "result"])
    with pytest.raises(WireFormatError, match="does not validate"):
        result_from_wire({"semgrad": 1.0, "from_the_future": 1})
