"""/v1/chat/completions keeps the integrations' semantics: reasoning out of the score, tool histories rendered
through a binding, sampling extensions honoured or refused by name, the context window reported."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fastapi.testclient import TestClient

from gradguard import GradScorer
from gradguard.integrations._core.backend import LocalBackend
from gradguard.serving.chat import ChatJob
from gradguard.serving.schema import ChatRequest
from gradguard.serving.settings import ServerSettings

from .conftest import QUESTION


def _job(scorer: GradScorer, **body: Any) -> ChatJob:
    engine = SimpleNamespace(settings=ServerSettings(), backend=LocalBackend(scorer=scorer))
    return ChatJob(engine, ChatRequest.model_validate({"messages": QUESTION, **body}), "tiny-qwen2", task=None)  # type: ignore[arg-type]


def test_a_think_section_is_kept_out_of_the_score_unless_asked(scorer: GradScorer) -> None:
    spans = _job(scorer).generation().spans
    assert spans is not None
    ids = scorer.tokenizer("<think>maybe Lyon</think>Paris", add_special_tokens=False)["input_ids"]
    main = spans(list(ids)).main
    answer = scorer.tokenizer.decode(ids[main[0] : main[1]], skip_special_tokens=True)
    assert answer == "Paris"  # the message-level score covers the answer after the reasoning only
    assert _job(scorer, score_reasoning=True).generation().spans is None


def test_a_tool_history_without_tools_goes_through_a_binding(client: TestClient) -> None:
    messages = [
        *QUESTION,
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Paris"},
    ]  # fmt: skip
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["gradguard"]["tool_calls"] == []  # a turn's metadata: no tool was bound, so no call
    assert "tool_calls" not in choice["message"]


def test_top_k_is_honoured_and_repetition_penalty_refused_by_name(client: TestClient, scorer: GradScorer) -> None:
    assert _job(scorer, temperature=0.7, top_k=5).generation().top_k == 5
    assert _job(scorer, top_k=5).generation().top_k is None  # greedy: no sampling setting applies
    r = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4, "temperature": 0.7,
                                                  "top_k": 3})  # fmt: skip
    assert r.status_code == 200, r.text
    r = client.post("/v1/chat/completions", json={"messages": QUESTION, "repetition_penalty": 1.3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "repetition_penalty"


def test_models_report_the_context_window(client: TestClient, scorer: GradScorer) -> None:
    assert client.get("/v1/models").json()["data"][0]["max_model_len"] == scorer.context_window


def test_messages_the_template_cannot_render_are_a_400_naming_messages() -> None:
    import copy

    from gradguard.testing import make_tiny_model

    model, tok = make_tiny_model("qwen2")
    strict = copy.deepcopy(tok)
    strict.chat_template = (
        "{% for m in messages %}{% if loop.index0 % 2 == 0 and m['role'] != 'user' %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    picky = GradScorer(model, strict, model_name="tiny-strict", spt_offset=-1)
    from gradguard.serving.app import create_app

    with TestClient(create_app(ServerSettings(max_wait_ms=0), backend=LocalBackend(scorer=picky))) as client:
        bad = [{"role": "assistant", "content": "hi"}]
        for path, body in (("/v1/chat/completions", {"messages": bad, "max_tokens": 2}),
                           ("/v1/score", {"messages": bad, "response": "x"})):  # fmt: skip
            r = client.post(path, json=body)
            assert r.status_code == 400, (path, r.text)
            error = r.json()["error"]
            assert error["param"] == "messages" and "alternate" in error["message"], error
