"""/v1/score: given answers scored teacher-forced, the metadata equal to scoring them directly."""

from __future__ import annotations

import json
import math

from fastapi.testclient import TestClient

from gradguard import GradScorer
from gradguard.serving.wire import RESULT_KEY, result_from_wire

from .conftest import QUESTION


def test_single_answer(client: TestClient, scorer: GradScorer) -> None:
    r = client.post("/v1/score", json={"messages": QUESTION, "response": "Paris.", "gradguard_result": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "gradguard.score" and body["model"] == "tiny-qwen2"
    (item,) = body["results"]
    assert item["index"] == 0
    for key, value in scorer.score(QUESTION, "Paris.").uncertainty().items():
        assert math.isclose(item["gradguard"]["uncertainty"][key], value, rel_tol=1e-4)
    assert result_from_wire(item[RESULT_KEY]).response == "Paris."


def test_several_answers_and_an_empty_one(client: TestClient) -> None:
    r = client.post("/v1/score", json={"messages": QUESTION, "responses": ["Paris.", "Lyon.", ""]})
    assert r.status_code == 200, r.text
    json.loads(r.text)  # valid JSON: no NaN
    results = r.json()["results"]
    assert [x["index"] for x in results] == [0, 1, 2]
    assert results[0]["gradguard"]["scored"] and results[1]["gradguard"]["scored"]
    assert results[2]["gradguard"]["scored"] is False
    assert results[2]["gradguard"]["uncertainty"]["hybridgrad"] is None


def test_exactly_one_of_response_and_responses(client: TestClient) -> None:
    for body in ({"messages": QUESTION}, {"messages": QUESTION, "response": "a", "responses": ["b"]}):
        r = client.post("/v1/score", json=body)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "response"
    r = client.post("/v1/score", json={"messages": QUESTION, "responses": ["a"] * 100})
    assert r.status_code == 400 and r.json()["error"]["param"] == "responses"


def test_unknown_task_is_400(client: TestClient) -> None:
    r = client.post("/v1/score", json={"messages": QUESTION, "response": "a", "task": "no-such-task"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "task"
