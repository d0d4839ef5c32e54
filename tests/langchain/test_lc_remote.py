"""ChatGradguard(base_url=...) and the side-car GradguardCallbackHandler(scorer_url=...) against a real
`gradguard serve` app (uvicorn in a thread, on a free loopback port) hosting a tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("gradguard.serving.app")

from langchain_core.language_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402

from gradguard import GradScorer  # noqa: E402
from gradguard.integrations._core import RemoteServerError  # noqa: E402
from gradguard.integrations.langchain import ChatGradguard, GradguardCallbackHandler  # noqa: E402
from gradguard.integrations.langchain.chat_model import ChatInputError  # noqa: E402
from gradguard.testing import make_tiny_model  # noqa: E402
from gradguard.testing.server import free_port, serve_in_thread  # noqa: E402

KEY = "test-key"
QUESTION = "Who proposed natural selection?"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, GradScorer]]:
    """``(base_url, scorer)``: the server hosts ``scorer``'s tiny model (the same object local models use)."""
    model, tok = make_tiny_model("qwen2")
    scorer = GradScorer(model, tok, model_name="tiny-qwen2")
    with serve_in_thread(scorer, api_key=KEY) as url:
        yield url, scorer


def same_scores(remote: dict[str, Any], local: dict[str, Any]) -> None:
    assert remote["scored"] == local["scored"]
    for key in ("confidence", "task", "model", "in_domain", "n_response_tokens", "spt_offset"):
        assert remote[key] == local[key], key
    for name, value in local["uncertainty"].items():
        assert remote["uncertainty"][name] == pytest.approx(value, abs=1e-4), name


def pair(served: tuple[str, GradScorer], **kwargs: Any) -> tuple[ChatGradguard, ChatGradguard]:
    url, scorer = served
    return (ChatGradguard(base_url=url, api_key=KEY, max_new_tokens=6, **kwargs),
            ChatGradguard(scorer=scorer, max_new_tokens=6, **kwargs))


def test_invoke_gives_the_local_metadata(served: tuple[str, GradScorer]) -> None:
    remote, local = pair(served)
    got, want = remote.invoke(QUESTION), local.invoke(QUESTION)
    assert got.content == want.content
    same_scores(got.response_metadata["gradguard"], want.response_metadata["gradguard"])
    assert got.response_metadata["model_name"] == want.response_metadata["model_name"] == "tiny-qwen2"
    assert got.usage_metadata == want.usage_metadata
    assert remote.model_name == "tiny-qwen2"


def test_stream_gives_the_local_text_and_metadata(served: tuple[str, GradScorer]) -> None:
    remote, local = pair(served)
    got_chunks, want_chunks = list(remote.stream(QUESTION)), list(local.stream(QUESTION))
    assert "".join(str(c.content) for c in got_chunks) == "".join(str(c.content) for c in want_chunks)
    same_scores(got_chunks[-1].response_metadata["gradguard"], want_chunks[-1].response_metadata["gradguard"])


def test_logprobs_come_from_the_server(served: tuple[str, GradScorer]) -> None:
    remote, local = pair(served, logprobs=True, top_logprobs=2)
    got, want = remote.invoke(QUESTION), local.invoke(QUESTION)
    tokens = [t["token"] for t in got.response_metadata["logprobs"]["content"]]
    assert tokens == [t["token"] for t in want.response_metadata["logprobs"]["content"]]
    streamed = list(remote.stream(QUESTION))[-1].response_metadata["logprobs"]["content"]
    assert [t["token"] for t in streamed] == tokens


def test_async_invoke_and_stream(served: tuple[str, GradScorer]) -> None:
    remote, local = pair(served)

    async def run() -> tuple[AIMessage, list[Any]]:
        return await remote.ainvoke(QUESTION), [c async for c in remote.astream(QUESTION)]

    got, chunks = asyncio.run(run())
    want = local.invoke(QUESTION)
    same_scores(got.response_metadata["gradguard"], want.response_metadata["gradguard"])
    assert "".join(str(c.content) for c in chunks) == want.content
    same_scores(chunks[-1].response_metadata["gradguard"], want.response_metadata["gradguard"])


def test_tools_are_handled_by_the_server(served: tuple[str, GradScorer]) -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    remote, local = pair(served)
    got = remote.bind_tools([add], tool_choice="required").invoke("What is 2 + 3?")
    want = local.bind_tools([add], tool_choice="required").invoke("What is 2 + 3?")
    assert got.content == want.content and got.tool_calls == [
        {**c, "id": g["id"]} for c, g in zip(want.tool_calls, got.tool_calls, strict=True)
    ]
    assert [c["name"] for c in got.invalid_tool_calls] == [c["name"] for c in want.invalid_tool_calls]
    same_scores(got.response_metadata["gradguard"], want.response_metadata["gradguard"])
    got_calls = got.response_metadata["gradguard"]["tool_calls"]
    assert [c["name"] for c in got_calls] == [c["name"] for c in want.response_metadata["gradguard"]["tool_calls"]]
    chunks = list(remote.bind_tools([add], tool_choice="required").stream("What is 2 + 3?"))
    same_scores(chunks[-1].response_metadata["gradguard"], want.response_metadata["gradguard"])


def test_a_remote_model_has_no_local_scorer_and_takes_no_model(served: tuple[str, GradScorer]) -> None:
    url, scorer = served
    with pytest.raises(ChatInputError, match="no scorer in this process"):
        _ = ChatGradguard(base_url=url).gradscorer
    with pytest.raises(ChatInputError, match=r"base_url=.*scorer=.*pass only one"):
        ChatGradguard(base_url=url, scorer=scorer)
    with pytest.raises(ChatInputError, match=r"base_url=.*model=.*pass only one"):
        ChatGradguard(base_url=url, model="Qwen/Qwen2.5-0.5B-Instruct")


def test_a_wrong_key_and_a_server_that_is_down_raise_naming_the_url(served: tuple[str, GradScorer]) -> None:
    url, _ = served
    with pytest.raises(RemoteServerError, match=r"answered 401.*api_key=") as info:
        ChatGradguard(base_url=url, api_key="wrong").invoke(QUESTION)
    assert url in str(info.value)
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteServerError, match=r"cannot connect .*127\.0\.0\.1.*gradguard serve` running"):
        ChatGradguard(base_url=down, timeout=5).invoke(QUESTION)


def fake(text: str, name: str | None) -> GenericFakeChatModel:
    meta = {"model_name": name} if name else {}
    return GenericFakeChatModel(messages=iter([AIMessage(content=text, response_metadata=meta)]))


def test_side_car_scores_another_models_answer(served: tuple[str, GradScorer]) -> None:
    url, scorer = served
    handler = GradguardCallbackHandler(scorer_url=url, api_key=KEY)
    message = fake("Charles Darwin", None).invoke([HumanMessage(QUESTION)], config={"callbacks": [handler]})
    meta = message.response_metadata["gradguard"]
    want = scorer.score([{"role": "user", "content": QUESTION}], "Charles Darwin").metadata()
    same_scores(meta, want)
    assert "warnings" not in meta and handler.all_records()[0].result is not None


def test_side_car_warns_on_a_model_mismatch_and_not_with_a_matching_alias(served: tuple[str, GradScorer]) -> None:
    url, _ = served
    handler = GradguardCallbackHandler(scorer_url=url, api_key=KEY)
    meta = fake("Darwin", "llama3").invoke(QUESTION, config={"callbacks": [handler]}).response_metadata["gradguard"]
    assert meta["scored"] and any("'llama3'" in w and "tiny-qwen2" in w for w in meta["warnings"])

    aliased = GradguardCallbackHandler(scorer_url=url, api_key=KEY, expected_model={"qwen2:tiny": "tiny-qwen2"})
    meta = fake("Darwin", "qwen2:tiny").invoke(QUESTION, config={"callbacks": [aliased]}).response_metadata["gradguard"]
    assert meta["scored"] and "warnings" not in meta
    meta = fake("Darwin", "other").invoke(QUESTION, config={"callbacks": [aliased]}).response_metadata["gradguard"]
    assert any("not in expected_model" in w for w in meta["warnings"])
    meta = fake("Darwin", None).invoke(QUESTION, config={"callbacks": [aliased]}).response_metadata["gradguard"]
    assert any("name is unknown" in w for w in meta["warnings"])

    single = GradguardCallbackHandler(scorer_url=url, api_key=KEY, expected_model="some-other-model")
    meta = fake("Darwin", "x").invoke(QUESTION, config={"callbacks": [single]}).response_metadata["gradguard"]
    assert any("not the expected model 'some-other-model'" in w for w in meta["warnings"])


def test_side_car_fails_closed_when_the_server_is_down_or_refuses(served: tuple[str, GradScorer]) -> None:
    url, scorer = served
    down = f"http://127.0.0.1:{free_port()}"
    handler = GradguardCallbackHandler(scorer_url=down, timeout=5)
    meta = fake("Darwin", None).invoke(QUESTION, config={"callbacks": [handler]}).response_metadata["gradguard"]
    assert meta["scored"] is False and down in meta["error"] and "gradguard serve" in meta["error"]
    wrong = GradguardCallbackHandler(scorer_url=url, api_key="wrong")
    meta = fake("Darwin", None).invoke(QUESTION, config={"callbacks": [wrong]}).response_metadata["gradguard"]
    assert meta["scored"] is False and "401" in meta["error"]
    with pytest.raises(Exception, match="pass only one"):
        GradguardCallbackHandler(scorer, scorer_url=url)
