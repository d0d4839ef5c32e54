"""/v1/chat/completions: OpenAI's schema, each choice's gradguard metadata equal to scoring the answer alone."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.testclient import TestClient

from gradguard import GradScorer
from gradguard.serving.wire import RESULT_KEY, TURN_KEY, result_from_wire

from .conftest import QUESTION

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9)


def same_scores(meta: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(close(meta["uncertainty"][k], v) for k, v in expected["uncertainty"].items())


def chat(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 8, **body})


def sse(text: str) -> list[Any]:
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_non_streaming_choice_carries_its_score(client: TestClient, scorer: GradScorer) -> None:
    r = chat(client, **{"gradguard_result": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-qwen2"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    answer = choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    result = result_from_wire(choice[RESULT_KEY])
    assert result.response == answer
    # The tiny model's random text need not survive decode/encode: re-score the very tokens it generated.
    expected = scorer.score(QUESTION, list(result.token_ids)).metadata()
    meta = choice["gradguard"]
    assert set(meta) == set(expected)
    assert same_scores(meta, expected)
    assert meta["scored"] is True
    usage = body["usage"]
    assert usage["completion_tokens"] == result.n_response_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_matches_non_streaming(client: TestClient) -> None:
    plain = chat(client).json()["choices"][0]
    r = chat(client, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200, r.text
    chunks = sse(r.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain["message"]["content"]
    final = chunks[-2]["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] == plain["finish_reason"]
    assert same_scores(final["gradguard"], plain["gradguard"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_logprobs_and_top_logprobs(client: TestClient) -> None:
    body = chat(client, logprobs=True, top_logprobs=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert content and all(len(t["top_logprobs"]) == 3 for t in content)
    assert len(content) == body["usage"]["completion_tokens"]
    assert chat(client).json()["choices"][0]["logprobs"] is None


def test_n_two_choices(client: TestClient) -> None:
    body = chat(client, n=2).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["gradguard"]["scored"] for c in body["choices"])
    chunks = sse(chat(client, n=2, stream=True).text)
    finals = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [f["index"] for f in finals] == [0, 1]


def test_unknown_fields_are_ignored_and_parts_are_joined(client: TestClient) -> None:
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]}]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4, "user": "x", "foo": 1})
    assert r.status_code == 200, r.text


def test_tool_turn(client: TestClient) -> None:
    r = chat(client, tools=[ADD], **{"gradguard_result": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert "tool_calls" in choice["gradguard"]
    assert set(choice[TURN_KEY]) == {"reasoning", "invalid_tool_calls"}
    assert choice[RESULT_KEY]["response"] is not None
    for call in choice["message"].get("tool_calls") or []:
        assert call["type"] == "function" and isinstance(call["function"]["arguments"], str)
    chunks = sse(chat(client, tools=[ADD], stream=True).text)
    assert "tool_calls" in chunks[-1]["choices"][0]["gradguard"]


def test_tool_choice_for_unknown_tool_is_400(client: TestClient) -> None:
    r = chat(client, tools=[ADD], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tool_choice"


def test_models_health_ready(client: TestClient) -> None:
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-qwen2"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_unknown_model_is_404(client: TestClient) -> None:
    r = chat(client, model="gpt-4o")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert chat(client, model="tiny-qwen2").status_code == 200
