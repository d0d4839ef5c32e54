"""ChatGradguard: invoke/batch/stream/async, metadata, logprobs, stop strings, bad input, threads."""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import (  # noqa: E402
    AIMessage,
    AIMessageChunk,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from lc_support import tiny_scorer  # noqa: E402

from gradguard import UNCERTAINTY_KEYS, ModelSourceError  # noqa: E402
from gradguard.integrations._core import ToolMessageError  # noqa: E402
from gradguard.integrations.langchain import ChatGradguard, ChatInputError, UnknownOptionError, result_for  # noqa: E402
from gradguard.result import METADATA_KEYS  # noqa: E402

SCHEMA_KEYS = set(METADATA_KEYS)


@pytest.fixture(scope="module")
def chat() -> ChatGradguard:
    return ChatGradguard(scorer=tiny_scorer(), max_tokens=8)


def test_invoke_carries_the_shared_metadata_schema(chat: ChatGradguard) -> None:
    msg = chat.invoke("What is the capital of France?")
    meta = msg.response_metadata["gradguard"]
    assert set(meta) == SCHEMA_KEYS
    assert set(meta["uncertainty"]) == set(UNCERTAINTY_KEYS)
    assert meta["scored"] is True and meta["confidence"] is None  # tiny models are uncalibrated
    assert all(math.isfinite(v) and v >= 0 for k, v in meta["uncertainty"].items() if k != "g_nll")
    assert meta["model"] == "tiny-qwen2-0" and meta["spt_offset"] == -3
    # The metadata is the score of exactly this answer to exactly this prompt.
    result = result_for(msg)
    assert result is not None and result.response == msg.content
    assert meta["n_response_tokens"] == len(result.token_ids) == msg.usage_metadata["output_tokens"]
    tokens = meta["tokens"]  # per-token uncertainty of exactly this answer, from the scoring pass
    assert "".join(tokens["text"]) == msg.content and tokens["span"] == [0, len(result.token_ids)]
    assert tokens["logprob"] == pytest.approx(list(result.token_logprobs))
    assert tokens["entropy"] == pytest.approx(list(result.token_entropies))
    again = tiny_scorer().score([{"role": "user", "content": "What is the capital of France?"}], list(result.token_ids))
    assert again.hybridgrad == pytest.approx(meta["uncertainty"]["hybridgrad"], rel=1e-4)
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    assert "logprobs" not in msg.response_metadata


def test_system_prompt_and_history_reach_the_template(chat: ChatGradguard) -> None:
    scorer = tiny_scorer()
    history = [
        SystemMessage("Answer in one word."),
        HumanMessage("Capital of France?"),
        AIMessage("Paris"),
        HumanMessage("And of Italy?"),
    ]
    msg = chat.invoke(history)
    dicts = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert msg.usage_metadata["input_tokens"] == len(scorer.prompt_ids(dicts))
    # system_prompt is used only when the conversation has no system message.
    with_default = ChatGradguard(scorer=scorer, max_tokens=4, system_prompt="Be terse.")
    n_default = with_default.invoke("Hi").usage_metadata["input_tokens"]
    assert n_default == len(
        scorer.prompt_ids([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}])
    )
    n_own = with_default.invoke([SystemMessage("Own."), HumanMessage("Hi")]).usage_metadata["input_tokens"]
    assert n_own == len(scorer.prompt_ids([{"role": "system", "content": "Own."}, {"role": "user", "content": "Hi"}]))


def test_stream_last_chunk_carries_the_score_and_matches_invoke(chat: ChatGradguard) -> None:
    expected = chat.invoke("Name a color.")
    chunks = list(chat.stream("Name a color."))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last"
    assert all("gradguard" not in c.response_metadata for c in chunks[:-1])
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.content == expected.content
    meta = merged.response_metadata["gradguard"]
    assert meta["uncertainty"]["hybridgrad"] == pytest.approx(
        expected.response_metadata["gradguard"]["uncertainty"]["hybridgrad"], rel=1e-5
    )
    assert len({c.id for c in chunks}) == 1 and result_for(merged) is not None


@pytest.mark.asyncio
async def test_ainvoke_and_astream(chat: ChatGradguard) -> None:
    sync = chat.invoke("Say hi.")
    got = await chat.ainvoke("Say hi.")
    assert got.content == sync.content
    assert got.response_metadata["gradguard"]["uncertainty"] == pytest.approx(
        sync.response_metadata["gradguard"]["uncertainty"]
    )
    chunks = [c async for c in chat.astream("Say hi.")]
    assert "".join(c.content for c in chunks) == sync.content
    assert chunks[-1].response_metadata["gradguard"]["scored"] is True


def test_batch_with_max_concurrency_4_equals_sequential_calls(chat: ChatGradguard) -> None:
    questions = [f"Question number {i}?" for i in range(6)]
    sequential = [chat.invoke(q) for q in questions]
    batched = chat.batch(questions, config={"max_concurrency": 4})
    for s, b in zip(sequential, batched, strict=True):
        assert b.content == s.content
        assert b.response_metadata["gradguard"]["uncertainty"] == pytest.approx(
            s.response_metadata["gradguard"]["uncertainty"], rel=1e-5
        )


def test_threads_are_serialised_on_one_model(chat: ChatGradguard) -> None:
    """Concurrent callers never run the model at the same time (no interleaved graphs)."""
    model = chat.gradscorer.model
    active, peak, guard = [0], [0], threading.Lock()
    original = model.forward

    def counting_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return original(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    model.forward = counting_forward
    try:
        results: dict[int, AIMessage] = {}

        def ask(i: int) -> None:
            results[i] = chat.invoke(f"Thread {i % 2}?", logprobs=True, top_logprobs=2)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del model.forward
    assert peak[0] == 1
    assert results[0].content == results[2].content and results[1].content == results[3].content
    assert results[0].response_metadata["gradguard"] == results[2].response_metadata["gradguard"]


def test_openai_style_logprobs(chat: ChatGradguard) -> None:
    msg = chat.invoke("Spell cat.", logprobs=True, top_logprobs=3)
    result = result_for(msg)
    content = msg.response_metadata["logprobs"]["content"]
    assert len(content) == len(result.token_ids) > 0
    assert [c["logprob"] for c in content] == pytest.approx(list(result.token_logprobs), abs=1e-4)
    assert b"".join(bytes(c["bytes"]) for c in content).decode("utf-8", "replace") == msg.content
    for c in content:
        tops = [t["logprob"] for t in c["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        # Greedy decoding picks the most likely token, from a separate forward pass.
        assert c["top_logprobs"][0]["bytes"] == c["bytes"]
        assert tops[0] == pytest.approx(c["logprob"], abs=1e-4)
    plain = chat.invoke("Spell cat.", logprobs=True)
    assert all(c["top_logprobs"] == [] for c in plain.response_metadata["logprobs"]["content"])
    streamed = list(chat.stream("Spell cat.", logprobs=True))
    assert len(streamed[-1].response_metadata["logprobs"]["content"]) == len(content)


def test_stop_string_cuts_the_answer_and_the_score_is_of_the_cut_answer(chat: ChatGradguard) -> None:
    full = chat.invoke("Tell me something.", max_tokens=12).content
    assert len(full) >= 4
    stop = full[2:4]
    msg = chat.invoke("Tell me something.", max_tokens=12, stop=[stop])
    # The answer is the tokens before the first one overlapping the stop string (their exact text).
    assert stop not in msg.content and full[: full.find(stop)].startswith(msg.content)
    result = result_for(msg)
    assert result is not None and result.finish_reason == "stop"
    rescored = tiny_scorer().score([{"role": "user", "content": "Tell me something."}], list(result.token_ids))
    assert msg.response_metadata["gradguard"]["uncertainty"]["hybridgrad"] == pytest.approx(
        rescored.hybridgrad, rel=1e-5
    )
    streamed = "".join(c.content for c in chat.stream("Tell me something.", max_tokens=12, stop=[stop]))
    assert streamed == msg.content


def test_max_tokens_limits_the_answer(chat: ChatGradguard) -> None:
    msg = chat.invoke("Count.", max_tokens=3)
    assert msg.response_metadata["gradguard"]["n_response_tokens"] <= 3
    assert msg.response_metadata["finish_reason"] == ("length" if msg.usage_metadata["output_tokens"] == 3 else "stop")


def test_bad_input_names_the_value_and_the_fix(chat: ChatGradguard) -> None:
    with pytest.raises(ToolMessageError, match="'x', which matches no earlier assistant tool call"):
        chat.invoke([HumanMessage("hi"), ToolMessage("42", tool_call_id="x")])
    with pytest.raises(ChatInputError, match="FunctionMessage"):
        chat.invoke([HumanMessage("hi"), FunctionMessage("42", name="f")])
    with pytest.raises(ChatInputError, match="image"):
        chat.invoke([HumanMessage(content=[{"type": "image", "url": "http://x/y.png"}])])
    with pytest.raises(UnknownOptionError, match="'functions'.*also takes.*'tools'"):
        chat.invoke("hi", functions=[{"name": "f"}])
    with pytest.raises(ChatInputError, match="response_format"):
        chat.invoke("hi", response_format={"type": "xml"})
    with pytest.raises(ChatInputError, match="max_tokens=0"):
        chat.invoke("hi", max_tokens=0)
    with pytest.raises(ChatInputError, match="top_logprobs=99"):
        ChatGradguard(scorer=tiny_scorer(), top_logprobs=99)
    with pytest.raises(ChatInputError, match="model='other'"):
        chat.invoke("hi", model="other")


def test_model_source_loads_lazily_and_reports_a_bad_source() -> None:
    lazy = ChatGradguard(model="/nonexistent/model-folder.gguf")
    assert lazy._identifying_params["model_name"] == "/nonexistent/model-folder.gguf"
    with pytest.raises(ModelSourceError, match="does not exist"):
        lazy.invoke("hi")


def test_default_model_name_without_loading() -> None:
    assert ChatGradguard().model_name == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
def test_other_families(family: str) -> None:
    msg = ChatGradguard(scorer=tiny_scorer(family), max_tokens=5).invoke([SystemMessage("s"), HumanMessage("hi")])
    assert msg.response_metadata["gradguard"]["model"] == f"tiny-{family}-0"
    assert msg.response_metadata["gradguard"]["scored"] is (msg.response_metadata["gradguard"]["n_response_tokens"] > 0)


def test_import_gradguard_does_not_import_langchain() -> None:
    code = "import sys, gradguard; print(any(m.split('.')[0].startswith('langchain') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_empty_answer_is_unscored_with_none_scores(chat: ChatGradguard) -> None:
    full = chat.invoke("Say something.").content
    msg = chat.invoke("Say something.", stop=[full[0]])  # the answer is cut to nothing
    meta = msg.response_metadata["gradguard"]
    assert msg.content == "" and meta["scored"] is False and meta["n_response_tokens"] == 0
    assert all(v is None for v in meta["uncertainty"].values())  # NaN is reported as None (valid JSON)


def test_streaming_flag_makes_invoke_stream(chat: ChatGradguard) -> None:
    streaming = ChatGradguard(scorer=tiny_scorer(), max_tokens=8, streaming=True)
    got, expected = streaming.invoke("Name a color."), chat.invoke("Name a color.")
    assert got.content == expected.content
    assert got.response_metadata["gradguard"]["uncertainty"] == pytest.approx(
        expected.response_metadata["gradguard"]["uncertainty"]
    )
