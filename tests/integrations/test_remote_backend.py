"""RemoteBackend against the wire format, with httpx.MockTransport (no server, no model)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gradguard.integrations._core import (
    GenerationOptions,
    RemoteBackend,
    RemoteServerError,
    RemoteToolBinding,
    ScoringBackend,
    StreamPiece,
    ToolChoiceError,
    score_foreign,
)
from gradguard.integrations._core.remote import DEFAULT_CONTEXT_WINDOW
from gradguard.serving.wire import RESULT_KEY, TURN_KEY, result_to_wire
from gradguard.testing import make_score_result
from gradguard.testing.server import free_port

URL = "http://gradguard.test:8000"
MESSAGES = [{"role": "user", "content": "Capital of France?"}]
LOGPROBS = {"content": [{"token": "Paris", "logprob": -0.1, "bytes": [80], "top_logprobs": []}], "refusal": None}

Handler = Callable[[httpx.Request], httpx.Response]


def backend(handler: Handler, **kwargs: Any) -> RemoteBackend:
    transport = httpx.MockTransport(handler)
    return RemoteBackend(URL, transport=transport, async_transport=transport, **kwargs)


def completion(result: Any, *, logprobs: Any = None, message: dict[str, Any] | None = None, **extra: Any) -> dict:
    choice = {
        "index": 0, "message": message or {"role": "assistant", "content": result.response},
        "finish_reason": "stop", "logprobs": logprobs, "gradguard": result.metadata(),
        RESULT_KEY: result_to_wire(result), **extra,
    }
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "served", "choices": [choice]}


def sse(*events: Any) -> bytes:
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    return "".join(lines).encode()


def chunk(delta: dict[str, Any], **choice: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None,
                                                             **choice}]}


def test_it_is_a_scoring_backend() -> None:
    assert isinstance(backend(lambda r: httpx.Response(500)), ScoringBackend)


def test_generate_rebuilds_the_result_and_keeps_the_logprobs() -> None:
    result = make_score_result(confidence=0.8, response="Paris", model="tiny")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion(result, logprobs=LOGPROBS))

    remote = backend(handler, api_key="sekrit")
    options = GenerationOptions(max_new_tokens=7, stop=("\n",), logprobs=True, top_logprobs=2)
    got = remote.generate(MESSAGES, options)
    assert got.metadata() == result.metadata() and got.response == "Paris"
    assert remote.logprobs(got) == LOGPROBS
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/v1/chat/completions" and seen[0].headers["authorization"] == "Bearer sekrit"
    assert body["gradguard_result"] is True and body["max_tokens"] == 7 and body["stop"] == ["\n"]
    assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["temperature"] == 0.0
    with pytest.raises(Exception, match="logprobs of this result are unknown"):
        remote.logprobs(make_score_result())


def test_the_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADGUARD_API_KEY", "from-env")
    assert RemoteBackend(URL + "/v1/").api_key == "from-env"
    assert RemoteBackend(URL + "/v1/").base_url == URL


def test_stream_yields_text_then_the_result_and_closes_the_response() -> None:
    result = make_score_result(response="Paris is", model="tiny")
    closed: list[bool] = []

    class Body(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Paris"}))
            yield sse(chunk({"content": " is"}))
            final = chunk({}, finish_reason="stop", gradguard=result.metadata(), logprobs=LOGPROBS)
            final["choices"][0][RESULT_KEY] = result_to_wire(result)
            yield sse(final, {"choices": [], "usage": {"prompt_tokens": 3}}, "[DONE]")

        def close(self) -> None:
            closed.append(True)

    remote = backend(lambda r: httpx.Response(200, stream=Body(), headers={"content-type": "text/event-stream"}))
    pieces = list(remote.stream(MESSAGES, GenerationOptions()))
    assert "".join(p.text for p in pieces) == "Paris is"
    assert all(p.result is None for p in pieces[:-1]) and pieces[-1].result is not None
    assert pieces[-1].result.metadata() == result.metadata()
    assert remote.logprobs(pieces[-1].result)["content"] == LOGPROBS["content"]
    assert closed

    closed.clear()  # leaving early closes the response (the server then cancels the generation)
    iterator = remote.stream(MESSAGES, GenerationOptions())
    assert next(iterator) == StreamPiece("Paris")
    iterator.close()  # type: ignore[attr-defined]
    assert closed


def test_a_stream_that_fails_mid_way_or_ends_early_raises() -> None:
    error = {"error": {"message": "generation failed: boom", "type": "server_error", "param": None, "code": None}}
    remote = backend(lambda r: httpx.Response(200, content=sse(chunk({"content": "Pa"}), error)))
    with pytest.raises(RemoteServerError, match="mid-stream: generation failed: boom"):
        list(remote.stream(MESSAGES, GenerationOptions()))
    remote = backend(lambda r: httpx.Response(200, content=sse(chunk({"content": "Pa"}), "[DONE]")))
    with pytest.raises(RemoteServerError, match="ended before its scored result"):
        list(remote.stream(MESSAGES, GenerationOptions()))


def test_score_posts_to_v1_score_and_an_unscorable_answer_fails_closed() -> None:
    result = make_score_result(response="Lyon", model="tiny")
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        item: dict[str, Any] = {"index": 0, "gradguard": result.metadata(), RESULT_KEY: result_to_wire(result)}
        if bodies[-1]["response"] == "":
            item = {"index": 0, "gradguard": {"scored": False, "error": "the answer is empty"}}
        return httpx.Response(200, json={"object": "gradguard.score", "model": "tiny", "results": [item]})

    remote = backend(handler)
    assert remote.score(MESSAGES, "Lyon", task="qa").metadata() == result.metadata()
    assert bodies[0] == {"messages": MESSAGES, "response": "Lyon", "gradguard_result": True, "task": "qa"}
    got, meta = score_foreign(remote, MESSAGES, "")
    assert got is None and meta["scored"] is False and "the answer is empty" in meta["error"]


def test_429_is_retried_after_retry_after_then_succeeds() -> None:
    result = make_score_result(model="tiny")
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            body = {"error": {"message": "the queue is full", "type": "rate_limit", "param": None,
                              "code": "queue_full"}}
            return httpx.Response(429 if len(calls) == 1 else 503, json=body, headers={"Retry-After": "0"})
        return httpx.Response(200, json=completion(result))

    assert backend(handler).generate(MESSAGES, GenerationOptions()).metadata() == result.metadata()
    assert len(calls) == 3


def test_429_past_the_retries_names_the_status_and_the_server_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": "the queue is full", "type": "rate_limit", "param": None, "code": "queue_full"}}
        return httpx.Response(429, json=body, headers={"Retry-After": "0"})

    with pytest.raises(RemoteServerError, match="answered 429.*the queue is full") as info:
        backend(handler, max_retries=1).generate(MESSAGES, GenerationOptions())
    assert info.value.status == 429 and info.value.code == "queue_full"
    assert info.value.url == f"{URL}/v1/chat/completions"


def test_401_says_to_pass_the_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        error = {"error": {"message": "invalid API key", "type": "authentication_error", "param": None,
                           "code": "invalid_api_key"}}
        return httpx.Response(401, json=error)

    with pytest.raises(RemoteServerError, match=r"answered 401.*invalid API key.*api_key=") as info:
        backend(handler, api_key="wrong").generate(MESSAGES, GenerationOptions())
    assert URL in str(info.value) and info.value.status == 401


def test_a_server_that_is_down_is_named_with_its_url() -> None:
    down = RemoteBackend(f"http://127.0.0.1:{free_port()}", max_retries=0, timeout=5)
    with pytest.raises(RemoteServerError, match=r"cannot connect to the gradguard server at http://127\.0\.0\.1.*"
                                                r"gradguard serve` running"):
        down.generate(MESSAGES, GenerationOptions())
    assert down.model_name.startswith("unknown (http://127.0.0.1")  # never raises
    _, meta = score_foreign(down, MESSAGES, "Paris")
    assert meta["scored"] is False and "is `gradguard serve` running" in meta["error"]


def test_connection_errors_before_an_answer_are_retried() -> None:
    result = make_score_result(model="tiny")
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=completion(result))

    remote = backend(handler)
    remote._delay = lambda attempt, retry_after=None: 0.0  # type: ignore[method-assign]
    assert remote.generate(MESSAGES, GenerationOptions()).response == result.response and len(calls) == 2


def test_model_name_and_context_window_come_from_v1_models() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(200, json={"object": "list", "data": [{"id": "served-model", "object": "model"}]})

    remote = backend(handler)
    assert remote.model_name == "served-model" and remote.context_window == DEFAULT_CONTEXT_WINDOW
    assert backend(handler, model="given").model_name == "given"


def test_tool_turns_are_rebuilt_with_one_result_per_call() -> None:
    part = make_score_result(confidence=0.7, response='{"name": "add"}', model="tiny")
    result = make_score_result(confidence=0.6, response="<tool_call>...", model="tiny", parts=(part,))
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    invalid = {"id": "call_2", "name": "nope", "arguments": "{}", "error": "tool 'nope' was not bound"}
    extra = {TURN_KEY: {"reasoning": "thinking", "invalid_tool_calls": [invalid]}}
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if bodies[-1].get("stream"):
            final = chunk({}, finish_reason="tool_calls", gradguard={}, **extra)
            final["choices"][0][RESULT_KEY] = result_to_wire(result)
            return httpx.Response(200, content=sse(chunk({"tool_calls": [{"index": 0, **call}]}), final, "[DONE]"))
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return httpx.Response(200, json=completion(result, message=message, **extra))

    remote = backend(handler)
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
    binding = remote.bind([tool], "add")
    assert isinstance(binding, RemoteToolBinding)
    history: list[dict[str, Any]] = [*MESSAGES, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c0", "type": "function", "function": {"name": "add", "arguments": {"a": 0}}}]},
        {"role": "tool", "content": "0", "tool_call_id": "c0"}]
    turn = remote.generate_turn(history, binding, GenerationOptions())
    assert bodies[0]["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert bodies[0]["tools"][0]["function"]["name"] == "add"
    assert bodies[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"a": 0}'  # JSON string on the wire
    assert [(c.call.id, c.call.name, c.call.arguments) for c in turn.calls] == [("call_1", "add", {"a": 1, "b": 2})]
    assert turn.calls[0].confidence == 0.7 and turn.content == "" and turn.reasoning == "thinking"
    assert turn.invalid[0].name == "nope" and "not bound" in turn.invalid[0].error
    assert turn.metadata()["tool_calls"][0]["confidence"] == 0.7

    pieces = list(remote.stream_turn(MESSAGES, binding, GenerationOptions()))
    assert [c.name for p in pieces for c in p.calls] == ["add"] and pieces[-1].turn is not None
    assert pieces[-1].turn.calls[0].confidence == 0.7 and pieces[-1].turn.invalid[0].id == "call_2"
    with pytest.raises(ToolChoiceError):
        remote.bind([tool], "missing")


def test_the_async_methods_speak_the_same_wire() -> None:
    result = make_score_result(response="Paris", model="tiny")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/score":
            item = {"index": 0, "gradguard": result.metadata(), RESULT_KEY: result_to_wire(result)}
            return httpx.Response(200, json={"results": [item]})
        if json.loads(request.content).get("stream"):
            final = chunk({}, finish_reason="stop", gradguard=result.metadata())
            final["choices"][0][RESULT_KEY] = result_to_wire(result)
            return httpx.Response(200, content=sse(chunk({"content": "Paris"}), final, "[DONE]"))
        return httpx.Response(200, json=completion(result))

    remote = backend(handler)

    async def run() -> tuple[Any, Any, list[StreamPiece]]:
        generated = await remote.agenerate(MESSAGES, GenerationOptions())
        scored = await remote.ascore(MESSAGES, "Paris")
        pieces = [p async for p in remote.astream(MESSAGES, GenerationOptions())]
        return generated, scored, pieces

    generated, scored, pieces = asyncio.run(run())
    assert generated.metadata() == scored.metadata() == result.metadata()
    assert "".join(p.text for p in pieces) == "Paris" and pieces[-1].result is not None


def test_a_plain_openai_server_is_told_apart() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"index": 0, "message": {"content": "hi"}}]})

    with pytest.raises(RemoteServerError, match="carries no gradguard result.*plain OpenAI-compatible"):
        backend(handler).generate(MESSAGES, GenerationOptions())
