"""GradguardLLM: the four methods, their async forms, metadata, instrumentation, bad input."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, MessageRole  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers.base import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.events.llm import (  # noqa: E402
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)

from gradguard import GradScorer, ScoreResult  # noqa: E402
from gradguard.errors import ContextLengthError, InputError  # noqa: E402
from gradguard.integrations.llama_index import (  # noqa: E402
    GradguardLlamaIndexError,
    GradguardLLM,
    UnknownOptionError,
    capture_scores,
)
from gradguard.result import METADATA_KEYS  # noqa: E402

PROMPT = "What is the capital of France?"
MESSAGES = [ChatMessage(role=MessageRole.USER, content=PROMPT)]


def _meta_ok(meta: dict[str, Any], raw: ScoreResult) -> None:
    assert meta == raw.metadata()
    assert set(meta) == set(METADATA_KEYS)
    assert meta["scored"] is True
    assert meta["confidence"] is None  # tiny models are uncalibrated: never a made-up number
    assert all(isinstance(v, float) and v >= 0 for v in meta["uncertainty"].values())
    assert "".join(meta["tokens"]["text"]) == raw.response
    assert len(meta["tokens"]["entropy"]) == len(raw.token_ids) and all(v >= 0 for v in meta["tokens"]["entropy"])


class _Collector(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Collector"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture()
def collector():
    handler = _Collector(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        yield handler
    finally:
        root.event_handlers = [h for h in root.event_handlers if h is not handler]


def _count(events: list, cls: type) -> int:
    return sum(isinstance(e, cls) for e in events)


# ---------------------------------------------------------------------------- sync


def test_complete_carries_the_score_of_its_own_answer(tiny_llm: GradguardLLM, li_scorer: GradScorer) -> None:
    response = tiny_llm.complete(PROMPT)
    raw = response.raw
    assert isinstance(raw, ScoreResult)
    assert response.text == raw.response
    _meta_ok(response.additional_kwargs["gradguard"], raw)
    assert 0 < raw.n_response_tokens <= 6
    # The attached score is the teacher-forced score of exactly this answer to exactly this prompt.
    again = li_scorer.score([{"role": "user", "content": PROMPT}], raw.token_ids)
    assert again.hybridgrad == pytest.approx(raw.hybridgrad, rel=1e-4)
    assert again.semgrad == pytest.approx(raw.semgrad, rel=1e-4)


def test_chat_puts_the_score_on_the_response_and_the_message(tiny_llm: GradguardLLM) -> None:
    response = tiny_llm.chat(MESSAGES)
    raw = response.raw
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == raw.response
    _meta_ok(response.additional_kwargs["gradguard"], raw)
    _meta_ok(response.message.additional_kwargs["gradguard"], raw)
    # Independent copies: editing one does not change the other.
    response.additional_kwargs["gradguard"]["scored"] = "edited"
    assert response.message.additional_kwargs["gradguard"]["scored"] is True


def test_system_prompt_is_part_of_the_scored_prompt(li_scorer: GradScorer) -> None:
    plain = GradguardLLM(scorer=li_scorer, max_new_tokens=4).complete(PROMPT).raw
    with_system = GradguardLLM(scorer=li_scorer, max_new_tokens=4, system_prompt="Answer briefly.").complete(PROMPT).raw
    expected = len(
        li_scorer.prompt_ids([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPT}])
    )
    assert with_system.n_prompt_tokens == expected > plain.n_prompt_tokens
    # chat() does not add a second system message when one is present.
    chat = GradguardLLM(scorer=li_scorer, max_new_tokens=4, system_prompt="ignored")
    msgs = [ChatMessage(role="system", content="Answer briefly."), ChatMessage(role="user", content=PROMPT)]
    assert chat.chat(msgs).raw.n_prompt_tokens == expected


def test_stream_complete_yields_deltas_and_scores_the_last_chunk(tiny_llm: GradguardLLM) -> None:
    chunks = list(tiny_llm.stream_complete(PROMPT))
    assert chunks, "the stream yielded nothing"
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].text
    assert all("gradguard" not in c.additional_kwargs for c in chunks[:-1])
    last = chunks[-1]
    _meta_ok(last.additional_kwargs["gradguard"], last.raw)
    assert last.text == last.raw.response
    # Greedy decoding: the stream gives the same answer (and score) as complete().
    full = tiny_llm.complete(PROMPT)
    assert last.text == full.text
    assert last.raw.hybridgrad == pytest.approx(full.raw.hybridgrad, rel=1e-5)


def test_stream_chat_scores_the_last_chunk(tiny_llm: GradguardLLM) -> None:
    chunks = list(tiny_llm.stream_chat(MESSAGES))
    last = chunks[-1]
    assert "".join(c.delta or "" for c in chunks) == last.message.content
    _meta_ok(last.message.additional_kwargs["gradguard"], last.raw)
    _meta_ok(last.additional_kwargs["gradguard"], last.raw)
    assert last.message.content == tiny_llm.chat(MESSAGES).message.content


def test_stream_that_fails_raises_instead_of_hanging(tiny_llm: GradguardLLM) -> None:
    box: dict[str, Any] = {}

    def consume() -> None:
        try:
            list(tiny_llm.stream_complete("x" * 1100))  # the tiny model's window is 1024 tokens
        except Exception as exc:  # noqa: BLE001
            box["error"] = exc

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the stream hung after generation failed"
    assert isinstance(box.get("error"), ContextLengthError)


# ---------------------------------------------------------------------------- async


def test_async_forms_match_the_sync_ones(tiny_llm: GradguardLLM) -> None:
    sync_c = tiny_llm.complete(PROMPT)
    sync_ch = tiny_llm.chat(MESSAGES)

    async def run() -> tuple[Any, Any, list, list]:
        c = await tiny_llm.acomplete(PROMPT)
        ch = await tiny_llm.achat(MESSAGES)
        sc = [x async for x in await tiny_llm.astream_complete(PROMPT)]
        sch = [x async for x in await tiny_llm.astream_chat(MESSAGES)]
        return c, ch, sc, sch

    c, ch, sc, sch = asyncio.run(run())
    assert c.text == sync_c.text
    _meta_ok(c.additional_kwargs["gradguard"], c.raw)
    assert c.raw.hybridgrad == pytest.approx(sync_c.raw.hybridgrad, rel=1e-5)
    assert ch.message.content == sync_ch.message.content
    _meta_ok(ch.message.additional_kwargs["gradguard"], ch.raw)
    assert sc[-1].text == sync_c.text
    _meta_ok(sc[-1].additional_kwargs["gradguard"], sc[-1].raw)
    assert sch[-1].message.content == sync_ch.message.content
    _meta_ok(sch[-1].message.additional_kwargs["gradguard"], sch[-1].raw)


def test_async_calls_do_not_block_the_event_loop(tiny_llm: GradguardLLM) -> None:
    ticks: list[int] = []

    async def ticker() -> None:
        for i in range(1000):
            ticks.append(i)
            await asyncio.sleep(0)

    async def run() -> None:
        task = asyncio.create_task(ticker())
        await tiny_llm.acomplete(PROMPT)
        task.cancel()

    asyncio.run(run())
    assert len(ticks) > 1  # the loop kept running while the model generated in a worker thread


def test_async_scores_are_captured_in_the_callers_context(tiny_llm: GradguardLLM) -> None:
    async def run() -> list:
        with capture_scores() as captured:
            r = await tiny_llm.achat(MESSAGES)
            chunks = [x async for x in await tiny_llm.astream_complete(PROMPT)]
        return [captured, r, chunks]

    captured, r, chunks = asyncio.run(run())
    assert [c.text for c in captured] == [r.message.content, chunks[-1].text]
    assert all(c.source == "llm" and c.result is not None for c in captured)


# ---------------------------------------------------------------------------- instrumentation


def test_each_call_fires_exactly_one_start_and_end_event(tiny_llm: GradguardLLM, collector: _Collector) -> None:
    tiny_llm.complete(PROMPT)
    list(tiny_llm.stream_complete(PROMPT))
    asyncio.run(tiny_llm.acomplete(PROMPT))
    assert _count(collector.events, LLMCompletionStartEvent) == 3
    ends = [e for e in collector.events if isinstance(e, LLMCompletionEndEvent)]
    assert len(ends) == 3
    assert all(e.response.additional_kwargs["gradguard"]["scored"] for e in ends)

    collector.events.clear()
    tiny_llm.chat(MESSAGES)
    list(tiny_llm.stream_chat(MESSAGES))

    async def achats() -> None:
        await tiny_llm.achat(MESSAGES)
        [x async for x in await tiny_llm.astream_chat(MESSAGES)]

    asyncio.run(achats())
    assert _count(collector.events, LLMChatStartEvent) == 4
    chat_ends = [e for e in collector.events if isinstance(e, LLMChatEndEvent)]
    assert len(chat_ends) == 4
    assert all(e.response.message.additional_kwargs["gradguard"]["scored"] for e in chat_ends)
    assert _count(collector.events, LLMCompletionEndEvent) == 0  # chat is not routed through complete
    start = next(e for e in collector.events if isinstance(e, LLMChatStartEvent))
    assert start.model_dict["class_name"] == "GradguardLLM" and start.model_dict["is_chat_model"] is True


# ---------------------------------------------------------------------------- metadata, options, loading


def test_metadata_reports_the_model_config(tiny_llm: GradguardLLM, li_scorer: GradScorer) -> None:
    meta = tiny_llm.metadata
    assert meta.is_chat_model is True
    assert meta.context_window == li_scorer.model.config.max_position_embeddings == 1024
    assert meta.num_output == 6
    assert meta.model_name == li_scorer.model_name
    assert GradguardLLM(scorer=li_scorer, context_window=512).metadata.context_window == 512


def test_generation_options_are_forwarded_and_unknown_ones_raise(tiny_llm: GradguardLLM) -> None:
    short = tiny_llm.complete(PROMPT, max_new_tokens=2)
    assert 0 < short.raw.n_response_tokens <= 2
    assert tiny_llm.complete(PROMPT).raw.n_response_tokens > 2
    with pytest.raises(UnknownOptionError, match=r"\['not_a_generation_option'\].*max_new_tokens"):
        tiny_llm.complete(PROMPT, not_a_generation_option=True)
    with pytest.raises(UnknownOptionError, match="do_samplee"):
        GradguardLLM(scorer=tiny_llm.scorer, generate_kwargs={"do_samplee": True})


def test_model_source_is_loaded_lazily_once(monkeypatch: pytest.MonkeyPatch, li_scorer: GradScorer) -> None:
    calls: list[Any] = []

    def fake_from_pretrained(source: Any = None, **kw: Any) -> GradScorer:
        calls.append(source)
        return li_scorer

    monkeypatch.setattr(GradScorer, "from_pretrained", staticmethod(fake_from_pretrained))
    llm = GradguardLLM("some/local-model", max_new_tokens=3, context_window=2048)
    assert llm.metadata.context_window == 2048 and llm.metadata.model_name == "some/local-model"
    assert calls == []  # nothing loaded yet
    llm.complete(PROMPT)
    llm.chat(MESSAGES)
    assert calls == ["some/local-model"]


def test_serialization_excludes_the_scorer(tiny_llm: GradguardLLM) -> None:
    dumped = tiny_llm.model_dump()
    assert "scorer" not in dumped and "_scorer" not in dumped
    assert dumped["max_new_tokens"] == 6
    assert "GradguardLLM" in tiny_llm.to_json()


def test_concurrent_calls_on_one_model_are_serialised(tiny_llm: GradguardLLM, li_scorer: GradScorer) -> None:
    model = li_scorer.model
    original = model.generate
    state = {"active": 0, "max": 0}
    guard = threading.Lock()

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        with guard:
            state["active"] += 1
            state["max"] = max(state["max"], state["active"])
        try:
            return original(*args, **kwargs)
        finally:
            with guard:
                state["active"] -= 1

    expected = {p: tiny_llm.complete(p).text for p in ("a?", "b?", "c?", "d?")}
    model.generate = counting_generate
    try:
        results: dict[str, str] = {}
        threads = [
            threading.Thread(target=lambda p=p: results.__setitem__(p, tiny_llm.complete(p).text)) for p in expected
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        del model.generate
    assert results == expected
    assert state["max"] == 1


# ---------------------------------------------------------------------------- bad input


def test_bad_construction_names_the_value_and_the_fix(li_scorer: GradScorer) -> None:
    with pytest.raises(GradguardLlamaIndexError, match="only one"):
        GradguardLLM("some/model", scorer=li_scorer)
    with pytest.raises(GradguardLlamaIndexError, match="max_new_tokens=0"):
        GradguardLLM(scorer=li_scorer, max_new_tokens=0)
    with pytest.raises(GradguardLlamaIndexError, match="not a gradguard GradScorer"):
        GradguardLLM(scorer=object())  # type: ignore[arg-type]


def test_a_tool_message_needs_an_earlier_call(tiny_llm: GradguardLLM) -> None:
    # tool messages go into the template (tests/llama_index/test_llamaindex_tools.py); one answering no call raises
    with pytest.raises(InputError, match="tool_call_id None, which matches no earlier"):
        tiny_llm.chat([ChatMessage(role="user", content="hi"), ChatMessage(role="tool", content="42")])


def test_importing_gradguard_does_not_import_llama_index() -> None:
    code = "import sys, gradguard; assert not any(m.startswith('llama_index') for m in sys.modules), 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_tiny_family_works(tiny_scorer: GradScorer) -> None:
    """The top-level ``tiny_scorer`` fixture runs this for qwen2, llama, mistral and gemma2."""
    llm = GradguardLLM(scorer=tiny_scorer, max_new_tokens=4)
    completion = llm.complete(PROMPT)
    chunks = list(llm.stream_chat(MESSAGES))
    for meta, raw in (
        (completion.additional_kwargs["gradguard"], completion.raw),
        (chunks[-1].message.additional_kwargs["gradguard"], chunks[-1].raw),
    ):
        assert meta == raw.metadata() and meta["model"] == tiny_scorer.model_name
        assert meta["spt_offset"] == tiny_scorer.spt_offset
    assert llm.metadata.context_window == tiny_scorer.context_window
