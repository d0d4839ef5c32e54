"""Refused requests: OpenAI's error object naming the field, auth, body size, the loopback rule, a full queue."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gradguard import GradScorer
from gradguard.integrations._core.backend import LocalBackend
from gradguard.serving.app import create_app
from gradguard.serving.settings import InsecureBindError, ServerSettings, check_bind

from .conftest import QUESTION


def chat(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4, **body})


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return dict(err)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"seed": 1}, "seed"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": 1}, "presence_penalty"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"n": 9}, "n"),
        ({"n": 0}, "n"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"max_completion_tokens": 5000}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"task": "no-such-task"}, "task"),
        ({"messages": [{"role": "banana", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content"),
    ],
)
def test_bad_request_names_the_field(client: TestClient, body: dict[str, Any], param: str) -> None:
    err = error(chat(client, **body), 400)
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"


def test_zero_penalty_and_text_format_are_fine(client: TestClient) -> None:
    assert chat(client, frequency_penalty=0, response_format={"type": "text"}).status_code == 200


def test_bad_json_is_400(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    error(r, 400)


def test_api_key(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="s3cret")
    assert error(chat(client), 401)["type"] == "authentication_error"
    wrong = client.post("/v1/chat/completions", json={"messages": QUESTION}, headers={"Authorization": "Bearer wrong"})
    error(wrong, 401)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4},
                     headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200, ok.text


def test_non_loopback_without_key_is_refused(scorer: GradScorer) -> None:
    with pytest.raises(InsecureBindError, match="--api-key"):
        check_bind(ServerSettings(host="0.0.0.0"))
    with pytest.raises(InsecureBindError, match="--insecure"):
        create_app(ServerSettings(host="0.0.0.0"), backend=LocalBackend(scorer=scorer))
    check_bind(ServerSettings(host="0.0.0.0", api_key="k"))
    check_bind(ServerSettings(host="0.0.0.0", insecure=True))
    check_bind(ServerSettings(host="localhost"))
    check_bind(ServerSettings(host="::1"))


def test_body_too_large_is_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=200)
    big = [{"role": "user", "content": "x" * 500}]
    assert error(client.post("/v1/chat/completions", json={"messages": big}), 413)["code"] == "request_too_large"


def test_queue_full_is_429_with_retry_after(make_client: Callable[..., TestClient], scorer: GradScorer) -> None:
    client = make_client(max_queue=1, max_batch=1, max_wait_ms=0)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    outcome: dict[str, Any] = {}
    with scorer.lock:  # the model is busy: the first request runs (blocked), the next one waits, a third is refused
        threads = [threading.Thread(target=lambda i=i: outcome.__setitem__(i, chat(client))) for i in range(2)]
        for t in threads:
            t.start()
            for _ in range(200):  # until it is queued or running
                if engine.depth + engine.batcher.running >= threads.index(t) + 1:
                    break
                threading.Event().wait(0.05)
        r = chat(client)
        err = error(r, 429)
        assert err["code"] == "queue_full" and err["type"] == "server_overloaded"
        assert int(r.headers["retry-after"]) >= 1
        tool = client.post("/v1/score", json={"messages": QUESTION, "response": "a"})
        assert tool.status_code == 429
    for t in threads:
        t.join(120)
    assert all(o.status_code == 200 for o in outcome.values())


def test_request_timeout_is_504(make_client: Callable[..., TestClient], scorer: GradScorer) -> None:
    client = make_client(request_timeout_s=0.3, max_wait_ms=0)
    with scorer.lock:  # the model stays busy past the request's deadline
        err = error(chat(client), 504)
        stream = chat(client, stream=True)
    assert err["code"] == "request_timeout"
    assert stream.status_code == 504
    assert chat(client).status_code == 200  # the cancelled requests left the model free
