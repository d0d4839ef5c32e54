"""GradguardCallbackHandler over ChatHuggingFace + HuggingFacePipeline on a tiny config-built model."""

from __future__ import annotations

import uuid

import pytest

pytest.importorskip("langchain_core")
langchain_huggingface = pytest.importorskip("langchain_huggingface")

from lc_support import tiny_scorer  # noqa: E402
from transformers import pipeline  # noqa: E402

from gradguard.integrations.langchain import (  # noqa: E402
    ChatGradguard,
    GradguardCallbackHandler,
    GuardSignal,
    UnknownRunError,
    gradguard_callback,
    result_for,
)
from gradguard.testing import make_tiny_model  # noqa: E402

ChatHuggingFace = langchain_huggingface.ChatHuggingFace
HuggingFacePipeline = langchain_huggingface.HuggingFacePipeline


def _chat_hf(return_full_text: bool = False) -> object:
    model, tok = make_tiny_model("qwen2", seed=3)
    pipe = pipeline(
        "text-generation",
        model=model,
        tokenizer=tok,
        max_new_tokens=8,
        do_sample=False,
        return_full_text=return_full_text,
    )
    llm = HuggingFacePipeline(pipeline=pipe, model_id="tiny-qwen2-hf")
    return ChatHuggingFace(llm=llm, tokenizer=tok, model_id="tiny-qwen2-hf")


@pytest.fixture(scope="module")
def chat_hf() -> object:
    return _chat_hf()


def test_handler_scores_and_attaches_metadata(chat_hf: object) -> None:
    handler = GradguardCallbackHandler.from_chat_model(chat_hf)
    run_id = uuid.uuid4()
    msg = chat_hf.invoke("What is 2 + 2?", config={"callbacks": [handler], "run_id": run_id})
    meta = msg.response_metadata["gradguard"]
    assert meta["scored"] is True and meta["model"] == "tiny-qwen2-hf"
    record = handler.record(run_id)
    assert record.messages == [{"role": "user", "content": "What is 2 + 2?"}]
    assert record.response == msg.content and record.metadata == meta
    # Same score as scoring the answer directly.
    direct = handler.scorer.score(record.messages, msg.content)
    assert meta["uncertainty"]["hybridgrad"] == pytest.approx(direct.hybridgrad, rel=1e-5)
    assert result_for(msg) is record.result
    with pytest.raises(UnknownRunError, match="no completion of run"):
        handler.record(uuid.uuid4())


def test_handler_strips_an_echoed_prompt() -> None:
    chat = _chat_hf(return_full_text=True)
    handler = GradguardCallbackHandler.from_chat_model(chat)
    msg = chat.invoke("Hello?", config={"callbacks": [handler]})
    (record,) = handler.all_records()
    prompt_text = handler.scorer.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello?"}], tokenize=False, add_generation_prompt=True
    )
    assert msg.content.startswith(prompt_text)
    assert record.response == msg.content[len(prompt_text) :]
    assert record.result.n_prompt_tokens == len(handler.scorer.prompt_ids(record.messages))


def test_context_manager_scores_every_run_of_a_batch(chat_hf: object) -> None:
    with gradguard_callback(llm=chat_hf) as cb:
        outs = chat_hf.batch(["a?", "bb?", "ccc?"], config={"max_concurrency": 3})
    records = cb.all_records()
    assert len(records) == 3 and len(cb.records) == 3
    assert sorted(r.messages[0]["content"] for r in records) == ["a?", "bb?", "ccc?"]
    by_question = {r.messages[0]["content"]: r for r in records}
    for question, out in zip(["a?", "bb?", "ccc?"], outs, strict=True):
        assert out.response_metadata["gradguard"] == by_question[question].metadata
    chat_hf.invoke("after the block")
    assert len(cb.all_records()) == 3  # the handler is gone once the block ends


def test_stream_is_recorded_by_run_id(chat_hf: object) -> None:
    handler = GradguardCallbackHandler.from_chat_model(chat_hf)
    run_id = uuid.uuid4()
    text = "".join(c.content for c in chat_hf.stream("Stream me.", config={"callbacks": [handler], "run_id": run_id}))
    record = handler.record(run_id)
    assert record.scored and record.response == text


def test_a_scoring_failure_never_raises_and_is_unscored(chat_hf: object, monkeypatch: pytest.MonkeyPatch) -> None:
    handler = GradguardCallbackHandler.from_chat_model(chat_hf)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("scorer exploded")

    monkeypatch.setattr(handler.scorer, "score", broken)
    run_id = uuid.uuid4()
    msg = chat_hf.invoke("Still answer me.", config={"callbacks": [handler], "run_id": run_id})
    assert isinstance(msg.content, str) and msg.content
    meta = msg.response_metadata["gradguard"]
    assert meta["scored"] is False and "scorer exploded" in meta["error"]
    record = handler.record(run_id)
    assert not record.scored and record.result is None and "RuntimeError" in record.error
    assert GuardSignal.uncertainty("hybridgrad", 1e9).read(msg).passed is False  # fails closed downstream


def test_handler_without_scorer_records_the_failure(chat_hf: object) -> None:
    handler = GradguardCallbackHandler()
    run_id = uuid.uuid4()
    chat_hf.invoke("x", config={"callbacks": [handler], "run_id": run_id})
    assert "no scorer" in handler.record(run_id).error


def test_handler_does_not_rescore_chat_gradguard(monkeypatch: pytest.MonkeyPatch) -> None:
    chat = ChatGradguard(scorer=tiny_scorer(), max_tokens=5)
    handler = GradguardCallbackHandler(tiny_scorer())
    monkeypatch.setattr(handler.scorer, "score", lambda *a, **k: pytest.fail("scored twice"))
    run_id = uuid.uuid4()
    msg = chat.invoke("hi", config={"callbacks": [handler], "run_id": run_id})
    record = handler.record(run_id)
    assert record.metadata == msg.response_metadata["gradguard"] and record.result is result_for(msg)


def test_from_chat_model_rejects_a_remote_model() -> None:
    from gradguard import GradguardError

    with pytest.raises(GradguardError, match="local Hugging Face model"):
        GradguardCallbackHandler.from_chat_model(object())
