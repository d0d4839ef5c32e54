"""Tool calling on the embedded Qwen2.5-Coder-0.5B-Instruct: the tool tests of LangChain's integration suite
(``ChatModelIntegrationTests``, restricted to them) and a weather call answered from its ToolMessage.

Slow (the model runs on the CPU: ~10-30 s per answer); marked ``embedded``. The tests a 0.5B model does not pass
are expected failures here, with the reason, and listed in docs/langchain.md.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402

from gradguard import GradScorer  # noqa: E402
from gradguard.integrations.langchain import ChatGradguard  # noqa: E402

pytestmark = pytest.mark.embedded

#: The suite's tests that exercise tools or structured output (one sync variant each; the async ones repeat them).
TOOL_TESTS = {
    "test_tool_calling", "test_tool_choice", "test_tool_calling_with_no_arguments",
    "test_tool_message_histories_string_content", "test_tool_message_histories_list_content",
    "test_tool_message_error_status", "test_structured_few_shot_examples", "test_structured_output",
    "test_bind_runnables_as_tools", "test_agent_loop", "test_unicode_tool_call_integration",
}


#: Expected failures of the 0.5B model (not strict: they pass once the model or the format's opening changes).
ANY_ENDS_THE_TURN = pytest.mark.xfail(
    reason="tool_choice='any' starts the answer with '<tool_call>\\n', after which Qwen2.5-Coder-0.5B ends its turn "
    "(greedy: P(end of turn) ~0.77), so there is no call; a named tool_choice, whose opening includes the name, works",
    strict=False,
)


@functools.cache
def embedded_scorer() -> GradScorer:
    return GradScorer.from_pretrained()


class TestEmbeddedToolCalling(ChatModelIntegrationTests):
    """The integration suite's tool tests on ``ChatGradguard()`` (the embedded model; one scorer for all)."""

    @property
    def chat_model_class(self) -> type[ChatGradguard]:
        return ChatGradguard

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"scorer": embedded_scorer(), "max_tokens": 64}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params  # no api_key or retries for a local model
        return {k: v for k, v in params.items() if k not in ("api_key", "max_retries", "max_tokens")}

    @pytest.mark.parametrize("schema_type", ["pydantic"])
    def test_structured_output(self, model: Any, schema_type: Any) -> None:
        """One schema kind (the parsers for all three are tested on the tiny model in test_lc_tools.py)."""
        super().test_structured_output(model, schema_type)

    @pytest.mark.parametrize("model", [{}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        """Once (output_version v1 only changes the content's form, tested on the tiny model)."""
        super().test_agent_loop(model)

    @ANY_ENDS_THE_TURN
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @ANY_ENDS_THE_TURN
    def test_tool_calling_with_no_arguments(self, model: Any) -> None:
        super().test_tool_calling_with_no_arguments(model)

    @ANY_ENDS_THE_TURN
    def test_bind_runnables_as_tools(self, model: Any) -> None:
        super().test_bind_runnables_as_tools(model)

    @ANY_ENDS_THE_TURN
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)

    @pytest.mark.xfail(
        reason="tool_choice='any' as above; and 'Hello!' gives a 0.5B model no call to make: with the tool's name "
        "left open it invents one (a 'hello' tool), an invalid call", strict=False,
    )
    def test_tool_choice(self, model: Any) -> None:
        super().test_tool_choice(model)


for _name in dir(ChatModelIntegrationTests):  # everything but the tool tests is covered on the tiny models
    if _name.startswith("test_") and _name not in TOOL_TESTS:
        setattr(TestEmbeddedToolCalling, _name, None)


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 degrees Celsius in {city}."


def test_a_weather_call_with_the_right_arguments_is_answered_from_its_result() -> None:
    """tool_choice auto: the model calls the tool with the right arguments; the follow-up with the result answers
    from it. The follow-up has tool_choice='none': with the tool still offered, the 0.5B model calls it again."""
    chat = ChatGradguard(scorer=embedded_scorer(), max_tokens=64)
    question = HumanMessage("What is the weather in Paris right now?")
    first = chat.bind_tools([get_weather]).invoke([question])
    assert isinstance(first, AIMessage)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", {"city": "Paris"})]
    entry = first.response_metadata["gradguard"]["tool_calls"][0]
    assert entry["id"] == first.tool_calls[0]["id"] and entry["scored"] is True
    result = get_weather.invoke(first.tool_calls[0])
    assert isinstance(result, ToolMessage)
    final = chat.bind_tools([get_weather], tool_choice="none").invoke([question, first, result])
    assert final.tool_calls == [] and "22" in str(final.content)
    assert final.response_metadata["gradguard"]["scored"] is True
