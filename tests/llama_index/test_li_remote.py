"""GradguardLLM(base_url=...) and the side-car GradguardEventHandler(scorer_url=...) against a real `gradguard serve`
app (uvicorn in a thread, on a free loopback port) hosting a tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("gradguard.serving.app")

from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402

from gradguard import GradScorer, ScoreResult  # noqa: E402
from gradguard.integrations._core import RemoteServerError  # noqa: E402
from gradguard.integrations.llama_index import GradguardEventHandler, GradguardLLM  # noqa: E402
from gradguard.integrations.llama_index.utils import GradguardLlamaIndexError  # noqa: E402
from gradguard.testing import make_tiny_model  # noqa: E402
from gradguard.testing.server import free_port, serve_in_thread  # noqa: E402

KEY = "li-key"
PROMPT = "Who proposed natural selection?"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, GradScorer]]:
    """``(base_url, scorer)``: the server hosts ``scorer``'s tiny model."""
    model, tok = make_tiny_model("qwen2")
    scorer = GradScorer(model, tok, model_name="tiny-qwen2")
    with serve_in_thread(scorer, api_key=KEY) as url:
        yield url, scorer


def same_scores(remote: dict[str, Any], local: dict[str, Any]) -> None:
    assert remote["scored"] == local["scored"]
    for key in ("confidence", "task", "model", "in_domain", "n_response_tokens"):
        assert remote[key] == local[key], key
    for name, value in local["uncertainty"].items():
        assert remote["uncertainty"][name] == pytest.approx(value, abs=1e-4), name


def pair(served: tuple[str, GradScorer]) -> tuple[GradguardLLM, GradguardLLM]:
    url, scorer = served
    return GradguardLLM(base_url=url, api_key=KEY, max_new_tokens=6), GradguardLLM(scorer=scorer, max_new_tokens=6)


def test_complete_stream_and_chat_give_the_local_metadata(served: tuple[str, GradScorer]) -> None:
    remote, local = pair(served)
    got, want = remote.complete(PROMPT), local.complete(PROMPT)
    assert got.text == want.text and isinstance(got.raw, ScoreResult)
    same_scores(got.additional_kwargs["gradguard"], want.additional_kwargs["gradguard"])

    chunks = list(remote.stream_complete(PROMPT))
    assert chunks[-1].text == want.text
    same_scores(chunks[-1].additional_kwargs["gradguard"], want.additional_kwargs["gradguard"])

    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content=PROMPT)]
    got_chat, want_chat = remote.chat(messages), local.chat(messages)
    assert got_chat.message.content == want_chat.message.content
    same_scores(got_chat.message.additional_kwargs["gradguard"], want_chat.message.additional_kwargs["gradguard"])

    async def run() -> Any:
        return await remote.achat(messages), [c async for c in await remote.astream_complete(PROMPT)]

    achat, astream = asyncio.run(run())
    same_scores(achat.message.additional_kwargs["gradguard"], want_chat.message.additional_kwargs["gradguard"])
    same_scores(astream[-1].additional_kwargs["gradguard"], want.additional_kwargs["gradguard"])


def test_metadata_and_construction(served: tuple[str, GradScorer]) -> None:
    url, scorer = served
    remote = GradguardLLM(base_url=url, api_key=KEY)
    assert remote.metadata.model_name == "tiny-qwen2" and remote.metadata.context_window == scorer.context_window
    with pytest.raises(GradguardLlamaIndexError, match="no scorer in this process"):
        _ = remote.scorer
    with pytest.raises(GradguardLlamaIndexError, match=r"base_url=.*scorer=.*pass only one"):
        GradguardLLM(base_url=url, scorer=scorer)


def test_errors_name_the_url(served: tuple[str, GradScorer]) -> None:
    url, _ = served
    with pytest.raises(RemoteServerError, match=r"answered 401.*api_key="):
        GradguardLLM(base_url=url, api_key="wrong").complete(PROMPT)
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteServerError, match=r"cannot connect .*127\.0\.0\.1.*gradguard serve` running"):
        GradguardLLM(base_url=down, timeout=5).complete(PROMPT)


class NamedMock(MockLLM):
    model: str = "llama3"


def test_side_car_handler_scores_and_checks_the_model(served: tuple[str, GradScorer]) -> None:
    url, scorer = served
    with GradguardEventHandler(scorer_url=url, api_key=KEY) as handler:
        response = MockLLM(max_tokens=4).complete("hello there")  # MockLLM echoes the prompt
    record = handler.last
    assert record is not None and record.scored and "warnings" not in record.metadata
    want = scorer.score([{"role": "user", "content": "hello there"}], response.text).metadata()
    same_scores(response.additional_kwargs["gradguard"], want)

    with GradguardEventHandler(scorer_url=url, api_key=KEY) as handler:
        NamedMock(max_tokens=4).complete("hello there")
    assert handler.last is not None and any("'llama3'" in w for w in handler.last.metadata["warnings"])

    aliased = GradguardEventHandler(scorer_url=url, api_key=KEY, expected_model={"llama3": "tiny-qwen2"})
    with aliased:
        NamedMock(max_tokens=4).complete("hello there")
        MockLLM(max_tokens=4).complete("hello there")
    named, unnamed = aliased.records
    assert named.scored and "warnings" not in named.metadata
    assert any("name is unknown" in w for w in unnamed.metadata["warnings"])


def test_side_car_handler_fails_closed(served: tuple[str, GradScorer]) -> None:
    url, scorer = served
    down = f"http://127.0.0.1:{free_port()}"
    with GradguardEventHandler(scorer_url=down, timeout=5) as handler:
        response = MockLLM(max_tokens=4).complete("hello there")
    assert response.additional_kwargs["gradguard"]["scored"] is False
    assert handler.last is not None and handler.last.error is not None and down in handler.last.error
    with pytest.raises(GradguardLlamaIndexError, match="exactly one of scorer= .* and scorer_url="):
        GradguardEventHandler(scorer, scorer_url=url)
    with pytest.raises(GradguardLlamaIndexError, match="exactly one"):
        GradguardEventHandler()
