"""GradguardEventHandler with HuggingFaceLLM over a tiny model."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("llama_index.llms.huggingface")

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.llms.callbacks import llm_chat_callback  # noqa: E402
from llama_index.llms.huggingface import HuggingFaceLLM  # noqa: E402

from gradguard import GradScorer  # noqa: E402
from gradguard.integrations.llama_index import (  # noqa: E402
    GradguardEventHandler,
    GradguardLlamaIndexError,
    GradguardLLM,
    capture_scores,
)
from gradguard.result import METADATA_KEYS  # noqa: E402
from gradguard.testing import make_tiny_model  # noqa: E402

PROMPT = "Name a prime number."
MESSAGES = [ChatMessage(role="user", content=PROMPT)]


@pytest.fixture(scope="module")
def hf_llm() -> HuggingFaceLLM:
    model, tok = make_tiny_model("qwen2", seed=3)
    return HuggingFaceLLM(
        model=model, tokenizer=tok, max_new_tokens=6, is_chat_model=True, context_window=1024, device_map="cpu"
    )


@pytest.fixture()
def handler(hf_llm: HuggingFaceLLM):
    h = GradguardEventHandler.from_llm(hf_llm).attach()
    try:
        yield h
    finally:
        h.detach()


def test_completion_is_scored_against_the_prompt(hf_llm: HuggingFaceLLM, handler: GradguardEventHandler) -> None:
    response = hf_llm.complete(PROMPT)
    meta = response.additional_kwargs["gradguard"]
    assert meta["scored"] is True
    expected = handler.scorer.score([{"role": "user", "content": PROMPT}], response.text)
    assert meta == expected.metadata()
    [record] = handler.records
    assert record.kind == "completion" and record.text == response.text and record.scored
    assert record.messages == [{"role": "user", "content": PROMPT}]


def test_chat_is_scored_once_against_the_messages(hf_llm: HuggingFaceLLM, handler: GradguardEventHandler) -> None:
    response = hf_llm.chat(MESSAGES)
    meta = response.message.additional_kwargs["gradguard"]
    assert response.additional_kwargs["gradguard"] == meta
    expected = handler.scorer.score([{"role": "user", "content": PROMPT}], response.message.content)
    assert meta == expected.metadata()
    # HuggingFaceLLM runs chat as an inner complete(formatted=True): still one record, of kind chat.
    assert [r.kind for r in handler.records] == ["chat"]


def test_streams_get_the_score_on_the_last_chunk(hf_llm: HuggingFaceLLM, handler: GradguardEventHandler) -> None:
    chunks = list(hf_llm.stream_chat(MESSAGES))
    last = chunks[-1]
    assert last.message.additional_kwargs["gradguard"]["scored"] is True
    assert handler.last is not None and handler.last.text == last.message.content
    completion_chunks = list(hf_llm.stream_complete(PROMPT))
    assert completion_chunks[-1].additional_kwargs["gradguard"]["scored"] is True
    assert [r.kind for r in handler.records] == ["chat", "completion"]


def test_async_wrappers_are_not_recorded_twice(hf_llm: HuggingFaceLLM, handler: GradguardEventHandler) -> None:
    async def run() -> tuple[Any, Any]:
        return await hf_llm.acomplete(PROMPT), await hf_llm.achat(MESSAGES)

    completion, chat = asyncio.run(run())
    assert completion.additional_kwargs["gradguard"]["scored"] is True
    assert chat.message.additional_kwargs["gradguard"]["scored"] is True
    assert [r.kind for r in handler.records] == ["completion", "chat"]


def test_scores_are_published_to_an_open_capture(hf_llm: HuggingFaceLLM, handler: GradguardEventHandler) -> None:
    with capture_scores() as captured:
        response = hf_llm.chat(MESSAGES)
    assert [(c.text, c.source) for c in captured] == [(response.message.content, "handler")]


def test_preformatted_completion_is_recorded_unscored(hf_llm: HuggingFaceLLM, handler: GradguardEventHandler) -> None:
    response = hf_llm.complete("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", formatted=True)
    meta = response.additional_kwargs["gradguard"]
    assert meta["scored"] is False and meta["confidence"] is None
    assert "formatted" in meta["error"]
    assert handler.last is not None and handler.last.error and not handler.last.scored


def test_formatted_completion_during_another_threads_chat_is_recorded(
    hf_llm: HuggingFaceLLM, handler: GradguardEventHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # D3: a chat held open in one thread must not swallow another thread's complete(formatted=True)
    in_chat, release = threading.Event(), threading.Event()
    generate = hf_llm._model.generate

    def gated_generate(*a: Any, **k: Any) -> Any:
        if threading.current_thread().name == "chatter":
            in_chat.set()
            release.wait(60)
        return generate(*a, **k)

    monkeypatch.setattr(hf_llm._model, "generate", gated_generate)
    chatter = threading.Thread(target=hf_llm.chat, args=(MESSAGES,), name="chatter")
    chatter.start()
    try:
        assert in_chat.wait(60)
        prompt = hf_llm.messages_to_prompt(MESSAGES)  # even the very prompt of the open chat
        response = hf_llm.complete(prompt, formatted=True)
    finally:
        release.set()
        chatter.join(60)
    assert response.additional_kwargs["gradguard"]["scored"] is False
    records = handler.records
    assert [r.kind for r in records] == ["completion", "chat"]
    assert records[0].text == response.text and "formatted" in (records[0].error or "")
    assert records[1].messages == [{"role": "user", "content": PROMPT}]


class _AskLastLLM(MockLLM):
    """A chat that runs an inner plain complete() on the last message (not the rendered prompt)."""

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        answer = self.complete(messages[-1].content)
        return ChatResponse(message=ChatMessage(role="assistant", content=answer.text))


def test_the_inner_completion_of_a_chat_is_not_recorded_twice(hf_llm: HuggingFaceLLM) -> None:
    llm = _AskLastLLM()
    with GradguardEventHandler(GradScorer(hf_llm._model, hf_llm._tokenizer), llm=llm) as h:
        response = llm.chat(MESSAGES)
        list(hf_llm.stream_chat(MESSAGES))  # another LLM: ignored
    assert response.message.additional_kwargs["gradguard"]["scored"] is True
    [record] = h.records
    assert record.kind == "chat" and record.messages == [{"role": "user", "content": PROMPT}]


def test_another_instance_with_the_same_config_is_ignored(
    hf_llm: HuggingFaceLLM, handler: GradguardEventHandler
) -> None:
    # D7: attribution is by LLM instance, not by equal payloads
    twin = HuggingFaceLLM(
        model=hf_llm._model,
        tokenizer=hf_llm._tokenizer,
        max_new_tokens=6,
        is_chat_model=True,
        context_window=1024,
        device_map="cpu",
    )
    assert twin.to_payload() == hf_llm.to_payload()
    completion, chat = twin.complete(PROMPT), twin.chat(MESSAGES)
    assert "gradguard" not in completion.additional_kwargs and "gradguard" not in chat.additional_kwargs
    assert handler.records == []


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("span_id", ["made-up-span", None])
def test_an_unattributed_end_event_is_recorded_unscored(
    handler: GradguardEventHandler, kind: str, span_id: str | None
) -> None:
    # D7: an end event whose span the handler never saw is neither scored blind nor passed silently
    if kind == "chat":
        response: Any = ChatResponse(message=ChatMessage(role="assistant", content="7"))
        event: Any = LLMChatEndEvent(messages=MESSAGES, response=response, span_id=span_id)
    else:
        response = CompletionResponse(text="7")
        event = LLMCompletionEndEvent(prompt=PROMPT, response=response, span_id=span_id)
    get_dispatcher().event(event)
    meta = response.additional_kwargs["gradguard"]
    assert meta["scored"] is False and "attributed" in meta["error"]
    [record] = handler.records
    assert record.kind == kind and record.text == "7" and not record.scored and record.error == meta["error"]


def test_handler_never_raises_into_the_application(hf_llm: HuggingFaceLLM) -> None:
    scorer = GradScorer(hf_llm._model, hf_llm._tokenizer)

    def explode(*a: Any, **k: Any) -> Any:
        raise RuntimeError("scorer exploded")

    scorer.score = explode  # type: ignore[method-assign]
    with GradguardEventHandler(scorer, llm=hf_llm) as h:
        response = hf_llm.chat(MESSAGES)  # must not raise
    meta = response.message.additional_kwargs["gradguard"]
    assert meta["scored"] is False and "scorer exploded" in meta["error"]
    assert set(meta) >= set(METADATA_KEYS)
    assert all(v is None for v in meta["uncertainty"].values())
    assert [r.kind for r in h.records] == ["chat"]
    assert h.last is not None and "scorer exploded" in (h.last.error or "") and not h.last.scored


def test_a_failure_while_handling_is_recorded_unscored(hf_llm: HuggingFaceLLM) -> None:
    # a tool message cannot be scored: messages_to_dicts raises inside the handler, the app sees nothing
    with GradguardEventHandler(GradScorer(hf_llm._model, hf_llm._tokenizer)) as h:
        response = MockLLM().chat([*MESSAGES, ChatMessage(role="tool", content="42")])
    assert response.message.additional_kwargs["gradguard"]["scored"] is False
    assert h.last is not None and h.last.kind == "chat" and "tool" in (h.last.error or "")


def test_only_the_given_llm_is_scored(hf_llm: HuggingFaceLLM, handler: GradguardEventHandler) -> None:
    other = MockLLM(max_tokens=4)
    response = other.complete("hello there")
    assert "gradguard" not in response.additional_kwargs
    assert handler.records == []


def test_without_llm_filter_every_llm_is_scored(hf_llm: HuggingFaceLLM) -> None:
    h = GradguardEventHandler(GradScorer(hf_llm._model, hf_llm._tokenizer)).attach()
    try:
        response = MockLLM().complete("hello there")  # MockLLM echoes the prompt
    finally:
        h.detach()
    assert response.additional_kwargs["gradguard"]["scored"] is True
    assert [r.text for r in h.records] == [response.text]


def test_gradguard_llm_responses_are_recorded_not_rescored(hf_llm: HuggingFaceLLM) -> None:
    scorer = GradScorer(hf_llm._model, hf_llm._tokenizer)
    calls = {"n": 0}
    original = scorer.score

    def counting_score(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        return original(*a, **k)

    scorer.score = counting_score  # type: ignore[method-assign]
    h = GradguardEventHandler(scorer).attach()
    try:
        response = GradguardLLM(scorer=scorer, max_new_tokens=4).complete(PROMPT)
    finally:
        h.detach()
    assert calls["n"] == 0
    assert h.last is not None and h.last.metadata == response.additional_kwargs["gradguard"]
    assert h.last.result is response.raw


def test_records_are_thread_safe_and_bounded(hf_llm: HuggingFaceLLM) -> None:
    h = GradguardEventHandler.from_llm(hf_llm, max_records=3).attach()
    try:
        threads = [
            threading.Thread(target=hf_llm.chat, args=([ChatMessage(role="user", content=f"q{i}")],)) for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        h.detach()
    records = h.records
    assert len(records) == 3
    assert all(r.scored for r in records)
    assert len({r.messages[0]["content"] for r in records}) == 3  # each record names its own question
    h.clear()
    assert h.records == [] and h.last is None


def test_detach_stops_scoring(hf_llm: HuggingFaceLLM) -> None:
    h = GradguardEventHandler.from_llm(hf_llm).attach()
    h.detach()
    response = hf_llm.complete(PROMPT)
    assert "gradguard" not in response.additional_kwargs
    assert h.records == []


def test_bad_construction(hf_llm: HuggingFaceLLM) -> None:
    with pytest.raises(GradguardLlamaIndexError, match="not a gradguard GradScorer"):
        GradguardEventHandler(object())  # type: ignore[arg-type]
    with pytest.raises(GradguardLlamaIndexError, match="_model/_tokenizer"):
        GradguardEventHandler.from_llm(MockLLM())
    with pytest.raises(GradguardLlamaIndexError, match="max_records=0"):
        GradguardEventHandler.from_llm(hf_llm, max_records=0)
