"""LangChain's standard unit-test suite for ChatGradguard (over a tiny config-built model)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402
from lc_support import tiny_scorer  # noqa: E402

from gradguard.integrations.langchain import ChatGradguard, ChatInputError  # noqa: E402


class TestChatGradguardStandard(ChatModelUnitTests):
    """The standard suite, tool calling and structured output included: ``bind_tools`` and
    ``with_structured_output`` are ChatGradguard's own (the tiny qwen2 model has a Hermes-style tool template),
    so ``has_tool_calling``, ``has_tool_choice`` and ``has_structured_output`` are True. No images (a text model)."""

    @property
    def chat_model_class(self) -> type[ChatGradguard]:
        return ChatGradguard

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"scorer": tiny_scorer()}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The suite passes api_key and max_retries, which a local model does not have: ChatGradguard
        # rejects unknown options (extra="forbid") so a typo never passes silently. Checked below.
        params = super().standard_chat_model_params
        return {k: v for k, v in params.items() if k not in ("api_key", "max_retries")}

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True


def test_the_suite_runs_the_tool_checks() -> None:
    """The capability flags the suite reads are on (its tool and structured-output tests do not return early)."""
    suite = TestChatGradguardStandard()
    assert suite.has_tool_calling and suite.has_tool_choice and suite.has_structured_output


def test_suite_only_drops_options_a_local_model_has_not() -> None:
    """The options the suite's params lose above are rejected with a message naming them."""
    with pytest.raises(ChatInputError, match="api_key"):
        ChatGradguard(scorer=tiny_scorer(), api_key="test")
    with pytest.raises(ChatInputError, match="max_retries"):
        ChatGradguard(scorer=tiny_scorer(), max_retries=2)
