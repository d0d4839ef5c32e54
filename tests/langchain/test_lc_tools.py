"""ChatGradguard with tools: bind_tools, tool_calls / invalid_tool_calls, ToolMessages, streaming tool_call_chunks,
per-call scores, structured output (function calling, JSON schema, JSON mode) and bad input.

The model "generates" scripted answers: :func:`script` replaces the scorer's generation by teacher-forced scoring
of the given text (streamed token by token), so parsing and per-call scores are checked on known outputs with the
real scorer of a tiny model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("langchain_core")

import torch  # noqa: E402
from langchain_core.exceptions import OutputParserException  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from lc_support import tiny_scorer  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from typing_extensions import TypedDict  # noqa: E402

from gradguard import GradScorer  # noqa: E402
from gradguard.integrations._core import (  # noqa: E402
    ToolChoiceError,
    ToolMessageError,
    ToolSchemaError,
    ToolsUnsupportedError,
    UnknownOptionError,
)
from gradguard.integrations.langchain import ChatGradguard, result_for  # noqa: E402
from gradguard.integrations.langchain.structured import JSON_OUTPUT_INSTRUCTION  # noqa: E402
from gradguard.prompting import template_prompt  # noqa: E402
from gradguard.testing import make_score_result, make_tiny_model  # noqa: E402


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return f"22 degrees in {city}"


ADD = {
    "type": "function",
    "function": {
        "name": "math.add",
        "description": "Add.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


class Person(BaseModel):
    """A person."""

    name: str = Field(description="The person's name.")
    age: int


class PersonDict(TypedDict):
    """A person."""

    name: str
    age: int


PERSON_SCHEMA = {
    "title": "Person",
    "description": "A person.",
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def call(name: str, arguments: dict[str, Any]) -> str:
    """One call in the Hermes format of the tiny qwen2 template."""
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


class Script:
    """What the scripted model was asked (messages, tools, prefill) on each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def prompt(self, scorer: GradScorer, i: int = -1) -> str:
        """The rendered prompt of call ``i``."""
        asked = self.calls[i]
        return str(scorer.tokenizer.decode(template_prompt(scorer.tokenizer, asked["messages"], tools=asked["tools"])))


def script(monkeypatch: pytest.MonkeyPatch, scorer: GradScorer, *answers: str) -> Script:
    """Make ``scorer`` answer ``answers`` in turn (each after the prefill the call asks for), scored teacher-forced."""
    queue, record, score = list(answers), Script(), scorer.score

    def generate_and_score(
        messages: Any, *, streamer: Any = None, tools: Any = None, prefill: str = "", spans: Any = None,
        task: str | None = None, top_logprobs: int = 0, **_: Any,
    ) -> Any:
        record.calls.append({"messages": messages, "tools": tools, "prefill": prefill, "task": task})
        result = score(messages, prefill + queue.pop(0), tools=tools, prefill=prefill, spans=spans, task=task,
                       top_logprobs=top_logprobs)
        if streamer is not None:
            n_prefill = len(scorer.tokenizer(prefill, add_special_tokens=False)["input_ids"]) if prefill else 0
            streamer.put(torch.tensor([0]))  # the prompt
            for token in result.token_ids[n_prefill:]:
                streamer.put(torch.tensor([token]))
            streamer.end()
        return result

    monkeypatch.setattr(scorer, "generate_and_score", generate_and_score)
    return record


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    """The tiny qwen2 model (Hermes tool template) with room for the tools block and a few calls."""
    model, tok = make_tiny_model("qwen2")
    model.config.max_position_embeddings = 4096  # rotary positions: any length works; the default is 1024
    return GradScorer(model, tok, spt_offset=-2, model_name="tiny-qwen2-tools")


@pytest.fixture()
def chat(scorer: GradScorer) -> ChatGradguard:
    return ChatGradguard(scorer=scorer, max_tokens=8)


def aggregate(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


# --- binding and rendering ---------------------------------------------------------------------------------


def test_bound_tools_are_rendered_by_the_chat_template(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                       scorer: GradScorer) -> None:
    asked = script(monkeypatch, scorer, "It is sunny.")
    msg = chat.bind_tools([get_weather, ADD]).invoke("Weather in Paris?")
    prompt = asked.prompt(scorer)
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt and "Weather in a city." in prompt
    assert '"name": "math_add"' in prompt  # a name the template rejects is mapped to a safe one
    assert asked.calls[0]["prefill"] == "" and asked.calls[0]["task"] == "tools"
    assert msg.content == "It is sunny." and msg.tool_calls == [] and msg.invalid_tool_calls == []
    assert msg.response_metadata["gradguard"]["tool_calls"] == []
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.usage_metadata["input_tokens"] == len(scorer.prompt_ids(asked.calls[0]["messages"],
                                                                       tools=asked.calls[0]["tools"]))


def test_tools_per_call_and_without_tools_unchanged(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                    scorer: GradScorer) -> None:
    asked = script(monkeypatch, scorer, "Hi.", "Hi.")
    chat.invoke("Hello", tools=[ADD])
    assert asked.calls[0]["tools"] is not None
    plain = chat.invoke("Hello")
    assert asked.calls[1]["tools"] is None and "tool_calls" not in plain.response_metadata["gradguard"]


def test_calls_are_parsed_with_one_score_per_call(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                  scorer: GradScorer) -> None:
    answer = "\n".join(["Let me check.", call("get_weather", {"city": "Paris"}), call("math_add", {"a": 1, "b": 2})])
    script(monkeypatch, scorer, answer)
    msg = chat.bind_tools([get_weather, ADD]).invoke("Weather in Paris, and 1+2?")
    assert msg.content == "Let me check." and msg.invalid_tool_calls == []
    assert [(c["name"], c["args"], c["type"]) for c in msg.tool_calls] == [
        ("get_weather", {"city": "Paris"}, "tool_call"), ("math.add", {"a": 1, "b": 2}, "tool_call"),
    ]  # the safe name the model wrote is mapped back
    meta = msg.response_metadata["gradguard"]
    assert [(e["id"], e["name"]) for e in meta["tool_calls"]] == [(c["id"], c["name"]) for c in msg.tool_calls]
    assert len({c["id"] for c in msg.tool_calls}) == 2
    for entry in meta["tool_calls"]:
        assert entry["scored"] is True and entry["confidence"] is None  # tiny models are uncalibrated
        assert entry["uncertainty"]["hybridgrad"] > 0 and entry["in_domain"] is None
    result = result_for(msg)
    assert result is not None and len(result.parts) == 2
    assert meta["tool_calls"][1]["uncertainty"]["hybridgrad"] == pytest.approx(result.parts[1].hybridgrad)
    assert meta["task"] == "tools" and msg.response_metadata["finish_reason"] == "tool_calls"


def test_bad_calls_go_to_invalid_tool_calls_with_the_reason(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                            scorer: GradScorer) -> None:
    answer = "\n".join([
        call("get_time", {}),  # not bound
        call("math_add", {"a": "1", "b": 2}),  # against the schema
        '<tool_call>\n{"name": "x", "arguments": {"a": }\n</tool_call>',  # malformed JSON
    ])
    script(monkeypatch, scorer, answer)
    msg = chat.bind_tools([ADD]).invoke("1+2?")
    assert msg.tool_calls == [] and msg.response_metadata["gradguard"]["tool_calls"] == []
    invalid = msg.invalid_tool_calls
    assert [c["type"] for c in invalid] == ["invalid_tool_call"] * 3 and len({c["id"] for c in invalid}) == 3
    assert invalid[0]["name"] == "get_time" and "not bound" in invalid[0]["error"]
    assert invalid[1]["name"] == "math.add" and "'a'" in invalid[1]["error"] and "integer" in invalid[1]["error"]
    assert invalid[2]["error"]
    assert msg.response_metadata["finish_reason"] == "stop"


def test_an_unscored_call_comes_back_with_no_confidence(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                        scorer: GradScorer) -> None:
    """Fail closed: a call whose span could not be scored is still returned; its entry says unscored."""
    real = scorer.score

    def no_parts(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **kwargs).model_copy(update={"parts": (make_score_result(empty=True),)})

    monkeypatch.setattr(scorer, "score", no_parts)
    script(monkeypatch, scorer, call("get_weather", {"city": "Oslo"}))
    msg = chat.bind_tools([get_weather]).invoke("Weather in Oslo?")
    assert msg.tool_calls[0]["args"] == {"city": "Oslo"}
    entry = msg.response_metadata["gradguard"]["tool_calls"][0]
    assert entry["id"] == msg.tool_calls[0]["id"] and entry["confidence"] is None and entry["scored"] is False


def test_tool_choice_starts_the_answer_with_the_call(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                     scorer: GradScorer) -> None:
    asked = script(monkeypatch, scorer, '{"city": "Rome"}}\n</tool_call>', 'get_weather", '
                   '"arguments": {"city": "Rome"}}\n</tool_call>', "Rome is warm.")
    named = chat.bind_tools([get_weather, ADD], tool_choice="get_weather").invoke("Rome?")
    assert asked.calls[0]["prefill"].startswith("<tool_call>") and "get_weather" in asked.calls[0]["prefill"]
    assert named.tool_calls[0]["name"] == "get_weather" and named.tool_calls[0]["args"] == {"city": "Rome"}
    anyone = chat.bind_tools([get_weather, ADD], tool_choice="any").invoke("Rome?")
    assert asked.calls[1]["prefill"] == '<tool_call>\n{"name": "' and anyone.tool_calls[0]["name"] == "get_weather"
    chat.bind_tools([get_weather], tool_choice="none").invoke("Rome?")
    assert asked.calls[2]["tools"] is None and asked.calls[2]["prefill"] == ""


def test_tool_messages_round_trip_through_the_template(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                       scorer: GradScorer) -> None:
    asked = script(monkeypatch, scorer, call("get_weather", {"city": "Paris"}), "It is 22 degrees in Paris.")
    model = chat.bind_tools([get_weather])
    question = HumanMessage("Weather in Paris?")
    first = model.invoke([question])
    result = get_weather.invoke(first.tool_calls[0])
    assert isinstance(result, ToolMessage) and result.tool_call_id == first.tool_calls[0]["id"]
    final = model.invoke([question, first, result])
    assert final.content == "It is 22 degrees in Paris." and final.tool_calls == []
    history = asked.calls[1]["messages"]
    assert history[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert history[2]["role"] == "tool" and history[2]["name"] == "get_weather"
    prompt = asked.prompt(scorer, 1)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt  # arguments rendered as a dict
    assert "<tool_response>\n22 degrees in Paris\n</tool_response>" in prompt


def test_tool_history_variants_render(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                      scorer: GradScorer) -> None:
    """Anthropic-style list content, an error ToolMessage answering an invalid call (create_agent adds those), and
    a tool history with no tools bound."""
    asked = script(monkeypatch, scorer, "ok", "ok", "ok")
    listed = AIMessage(
        [{"type": "text", "text": "some text"}, {"type": "tool_use", "id": "abc", "name": "get_weather",
                                                 "input": {"city": "Paris"}}],
        tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "abc", "type": "tool_call"}],
    )
    answer = ToolMessage('{"t": 22}', tool_call_id="abc")
    chat.bind_tools([get_weather]).invoke([HumanMessage("Paris?"), listed, answer])
    assert asked.calls[0]["messages"][1]["content"] == "some text"
    bad = AIMessage("", invalid_tool_calls=[{"name": "get_weather", "args": "{oops", "id": "x1", "error": "bad",
                                             "type": "invalid_tool_call"}])
    error = ToolMessage("Tool call get_weather with id x1 could not be executed", tool_call_id="x1", status="error")
    chat.bind_tools([get_weather]).invoke([HumanMessage("Paris?"), bad, error])
    assert asked.calls[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {}
    chat.invoke([HumanMessage("Paris?"), listed, ToolMessage("22", tool_call_id="abc")])  # no tools bound
    assert asked.calls[2]["tools"] is None and "<tool_response>" in asked.prompt(scorer, 2)


def test_streamed_tool_call_chunks_add_up_to_the_invoked_calls(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                               scorer: GradScorer) -> None:
    answer = "\n".join(["Checking.", call("get_weather", {"city": "Paris"}), call("math_add", {"a": 1, "b": 2}),
                        call("nope", {})])
    script(monkeypatch, scorer, answer, answer)
    model = chat.bind_tools([get_weather, ADD])
    invoked = model.invoke("Paris and 1+2?")
    chunks = list(model.stream("Paris and 1+2?"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks) and chunks[-1].chunk_position == "last"
    assert all("gradguard" not in c.response_metadata for c in chunks[:-1])
    full = aggregate(chunks)
    assert full.content == invoked.content == "Checking."
    strip = [(c["name"], c["args"]) for c in invoked.tool_calls]
    assert [(c["name"], c["args"]) for c in full.tool_calls] == strip
    assert [c["index"] for c in full.tool_call_chunks] == [0, 1]
    assert full.invalid_tool_calls == []  # invalid calls are not streamed as chunks ...
    invalid = full.response_metadata["invalid_tool_calls"]  # ... but listed on the last chunk
    assert [c["name"] for c in invalid] == [c["name"] for c in invoked.invalid_tool_calls] == ["nope"]
    meta = full.response_metadata["gradguard"]
    assert [e["id"] for e in meta["tool_calls"]] == [c["id"] for c in full.tool_calls]
    for streamed, plain in zip(meta["tool_calls"], invoked.response_metadata["gradguard"]["tool_calls"], strict=True):
        assert streamed["uncertainty"] == pytest.approx(plain["uncertainty"], rel=1e-5)


def test_a_reasoning_section_is_neither_parsed_nor_scored(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                          scorer: GradScorer) -> None:
    thinking = "<think>The user wants Paris weather; maybe call get_weather.</think>"
    script(monkeypatch, scorer, thinking + call("get_weather", {"city": "Paris"}), thinking + "Paris.",
           thinking + "Paris.")
    msg = chat.bind_tools([get_weather]).invoke("Paris?")
    assert msg.content == "" and msg.tool_calls[0]["args"] == {"city": "Paris"}
    assert msg.additional_kwargs["reasoning_content"].startswith("The user wants")
    result = result_for(msg)
    assert result is not None and result.span is not None and result.span[0] > 10
    plain = chat.invoke("Paris?")  # no tools: the content is unchanged, the score leaves the section out
    plain_result = result_for(plain)
    assert plain.content == thinking + "Paris." and plain_result is not None and plain_result.span is not None
    everything = ChatGradguard(scorer=scorer, score_reasoning=True).invoke("Paris?")
    assert result_for(everything).span is None  # type: ignore[union-attr]


# --- bad input ---------------------------------------------------------------------------------------------


def test_bad_tools_and_tool_choice_raise_when_bound(chat: ChatGradguard) -> None:
    with pytest.raises(ToolChoiceError, match="get_time.*not bound"):
        chat.bind_tools([get_weather], tool_choice="get_time")
    with pytest.raises(ToolChoiceError, match="no tools are bound"):
        chat.invoke("hi", tool_choice="any")
    with pytest.raises(ToolsUnsupportedError):
        ChatGradguard(scorer=tiny_scorer("gemma2")).bind_tools([get_weather])
    with pytest.raises(ToolSchemaError, match="given twice"):
        chat.bind_tools([ADD, {**ADD, "function": {**ADD["function"], "parameters": {"type": "object"}}}])
    with pytest.raises(UnknownOptionError, match="functions.*'tools', 'tool_choice', 'response_format'"):
        chat.invoke("hi", functions=[ADD])
    # The same tool given as a pydantic model and as its JSON schema is bound once.
    bound = chat.bind_tools([Person, Person.model_json_schema()])
    assert [t["function"]["name"] for t in bound.kwargs["tools"]] == ["Person"]  # type: ignore[attr-defined]


def test_a_tool_message_that_answers_no_call_raises(chat: ChatGradguard) -> None:
    history = [HumanMessage("hi"), ToolMessage("42", tool_call_id="nope")]
    with pytest.raises(ToolMessageError, match="nope"):
        chat.invoke(history)
    with pytest.raises(ToolMessageError, match="nope"):
        chat.bind_tools([get_weather]).invoke(history)


# --- structured output -------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [Person, PersonDict, PERSON_SCHEMA], ids=["pydantic", "typeddict", "json"])
def test_structured_output_by_function_calling(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                               scorer: GradScorer, schema: Any) -> None:
    name = "PersonDict" if schema is PersonDict else "Person"
    body = '{"name": "Ada", "age": 36}}\n</tool_call>'
    asked = script(monkeypatch, scorer, body, body)
    parsed = chat.with_structured_output(schema).invoke("Who wrote the first program?")
    assert asked.calls[0]["prefill"].startswith("<tool_call>") and name in asked.calls[0]["prefill"]
    expected = Person(name="Ada", age=36) if schema is Person else {"name": "Ada", "age": 36}
    assert parsed == expected
    out = chat.with_structured_output(schema, include_raw=True).invoke("Who wrote the first program?")
    assert out["parsed"] == expected and out["parsing_error"] is None
    meta = out["raw"].response_metadata["gradguard"]
    assert meta["tool_calls"][0]["id"] == out["raw"].tool_calls[0]["id"] and meta["tool_calls"][0]["scored"]


def test_a_structured_answer_that_fails_is_reported_the_langchain_way(monkeypatch: pytest.MonkeyPatch,
                                                                     chat: ChatGradguard, scorer: GradScorer) -> None:
    bad = '{"name": "Ada", "age": "old"}}\n</tool_call>'
    script(monkeypatch, scorer, bad, bad, "not json", "not json")
    with pytest.raises(OutputParserException, match="'age' must be integer"):
        chat.with_structured_output(Person).invoke("Who?")
    out = chat.with_structured_output(Person, include_raw=True).invoke("Who?")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)
    assert out["raw"].invalid_tool_calls and out["raw"].response_metadata["gradguard"]["scored"] is True
    with pytest.raises(OutputParserException, match="not a JSON object"):
        chat.with_structured_output(Person, method="json_schema").invoke("Who?")
    out = chat.with_structured_output(Person, method="json_schema", include_raw=True).invoke("Who?")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)
    assert out["raw"].content == "not json"


@pytest.mark.parametrize("schema", [Person, PersonDict, PERSON_SCHEMA], ids=["pydantic", "typeddict", "json"])
def test_structured_output_by_json_schema(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard, scorer: GradScorer,
                                          schema: Any) -> None:
    answer = '<think>Ada Lovelace, born 1815.</think>```json\n{"name": "Ada", "age": 36}\n```'
    asked = script(monkeypatch, scorer, answer, answer)
    structured = chat.with_structured_output(schema, method="json_schema")
    expected = Person(name="Ada", age=36) if schema is Person else {"name": "Ada", "age": 36}
    assert structured.invoke([SystemMessage("Be exact."), HumanMessage("Who?")]) == expected
    system = asked.calls[0]["messages"][0]
    head = JSON_OUTPUT_INSTRUCTION.split("{schema}")[0]
    assert system["role"] == "system" and system["content"].startswith("Be exact.\n\n" + head)
    assert '"age"' in system["content"] and asked.calls[0]["tools"] is None
    assert [c for c in structured.stream("Who?")] == [expected]


def test_structured_output_by_json_mode_and_bad_arguments(monkeypatch: pytest.MonkeyPatch, chat: ChatGradguard,
                                                          scorer: GradScorer) -> None:
    asked = script(monkeypatch, scorer, '{"anything": [1, 2]}')
    assert chat.with_structured_output(method="json_mode").invoke("Some JSON?") == {"anything": [1, 2]}
    assert asked.calls[0]["messages"][0] == {"role": "system", "content": JSON_OUTPUT_INSTRUCTION.format(schema="")}
    with pytest.raises(ValueError, match="needs a schema"):
        chat.with_structured_output(None)
    with pytest.raises(ValueError, match="method="):
        chat.with_structured_output(Person, method="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported arguments"):
        chat.with_structured_output(Person, foo=1)
