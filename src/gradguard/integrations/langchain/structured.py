"""Structured output for ``ChatGradguard``: the tool-call and JSON methods, their parsers and the JSON instruction.

``method="function_calling"`` binds the schema as the one tool the model must call (enforced by starting the
answer with the template's call opening) and reads the call with LangChain's tool parsers.
``method="json_schema"`` / ``"json_mode"`` ask for a JSON object in a system instruction
(:data:`JSON_OUTPUT_INSTRUCTION`), then parse and validate the answer: prompting, not constrained decoding, so
a small model may answer with something else, reported as a parse failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.json import parse_json_markdown
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ValidationError

from gradguard.integrations._core.tool_turn import split_reasoning
from gradguard.integrations._core.tools import validate_arguments

__all__ = ["JSON_OUTPUT_INSTRUCTION", "StructuredMethod", "json_instruction", "structured_output"]

#: How ``with_structured_output`` steers the model.
StructuredMethod = Literal["function_calling", "json_schema", "json_mode"]

#: The system instruction of ``method="json_schema"`` and ``"json_mode"`` (``{schema}``: the JSON schema the
#: object must match, or nothing in ``json_mode``). Added to the conversation's system message (or as one).
JSON_OUTPUT_INSTRUCTION = "Answer with one JSON object and nothing else: no prose, no code fences.{schema}"
_SCHEMA_PART = " The object must match this JSON schema:\n{}"


def json_instruction(response_format: Any) -> str:
    """The system instruction for an OpenAI-style ``response_format``: ``{"type": "json_object"}`` or
    ``{"type": "json_schema", "json_schema": {"name", "schema"}}`` (raises ``ValueError`` for anything else)."""
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_object":
        return JSON_OUTPUT_INSTRUCTION.format(schema="")
    spec = response_format.get("json_schema") if kind == "json_schema" else None
    if isinstance(spec, Mapping) and isinstance(spec.get("schema"), Mapping):
        return JSON_OUTPUT_INSTRUCTION.format(schema=_SCHEMA_PART.format(json.dumps(spec["schema"])))
    raise ValueError(
        f"response_format={response_format!r} is not understood; use {{'type': 'json_object'}} or "
        "{'type': 'json_schema', 'json_schema': {'name': NAME, 'schema': {...}}}"
    )


def _is_pydantic(schema: Any) -> bool:
    return isinstance(schema, type) and is_basemodel_subclass(schema)


def _json_parser(schema: Any) -> Callable[[BaseMessage], Any]:
    """Parse an answer's JSON object (a ``<think>`` section and code fences skipped) and validate it: a pydantic
    model instance for a pydantic schema, else the dict, checked against the JSON schema when there is one."""
    json_schema = convert_to_json_schema(schema) if schema is not None and not _is_pydantic(schema) else None

    def parse(message: BaseMessage) -> Any:
        full = str(message.text)
        text = full[split_reasoning(full)[1] :]
        try:
            value = parse_json_markdown(text)
        except (json.JSONDecodeError, ValueError) as exc:
            raise OutputParserException(f"the answer is not a JSON object ({exc})", llm_output=text) from None
        if not isinstance(value, dict):
            raise OutputParserException(f"the answer is JSON but not an object: {text[:80]!r}", llm_output=text)
        if _is_pydantic(schema):
            try:
                return schema.model_validate(value)
            except ValidationError as exc:
                raise OutputParserException(
                    f"the answer does not match {schema.__name__}: {exc}", llm_output=text
                ) from None
        if json_schema is not None and (err := validate_arguments(value, json_schema)):
            raise OutputParserException(f"the answer does not match the schema: {err}", llm_output=text)
        return value

    return parse


def _require_call(name: str) -> Callable[[BaseMessage], BaseMessage]:
    """Pass a message with a call to ``name`` on; raise ``OutputParserException`` with the reason otherwise (LangChain's
    tool parsers return None for a message without calls, which hides that the structured answer failed)."""

    def check(message: BaseMessage) -> BaseMessage:
        if isinstance(message, AIMessage) and not any(c["name"] == name for c in message.tool_calls):
            errors = [str(c.get("error") or "malformed call") for c in message.invalid_tool_calls]
            if not errors:
                errors = [str(c.get("error")) for c in message.response_metadata.get("invalid_tool_calls", ())]
            reason = "; ".join(errors) or "the model made no call"
            raise OutputParserException(f"no structured answer ({name!r}): {reason}", llm_output=message.text)
        return message

    return check


def structured_output(
    model: Any,
    schema: Any,
    *,
    method: StructuredMethod,
    include_raw: bool,
    strict: bool | None = None,
) -> Runnable[LanguageModelInput, Any]:
    """``model.with_structured_output(...)`` for ``ChatGradguard`` (see its docstring)."""
    if method != "json_mode" and schema is None:
        raise ValueError(f"with_structured_output(method={method!r}) needs a schema; pass a pydantic model, a "
                         "TypedDict or a JSON schema (or use method='json_mode')")
    trace = {"kwargs": {"method": method}, "schema": schema}
    parser: Runnable[Any, Any]
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        llm = model.bind_tools([schema], tool_choice=name, strict=strict, ls_structured_output_format=trace)
        tools_parser = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)
            if _is_pydantic(schema)
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
        parser = RunnableLambda(_require_call(name)) | tools_parser
    elif method in ("json_schema", "json_mode"):
        if method == "json_schema":
            json_schema = convert_to_json_schema(schema)
            spec = {"name": json_schema.get("title", "answer"), "schema": json_schema}
            response_format: dict[str, Any] = {"type": "json_schema", "json_schema": spec}
        else:
            response_format = {"type": "json_object"}
        llm = model.bind(response_format=response_format, ls_structured_output_format=trace)
        parser = RunnableLambda(_json_parser(schema))
    else:
        raise ValueError(f"method={method!r} is not one of 'function_calling', 'json_schema', 'json_mode'")
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")
