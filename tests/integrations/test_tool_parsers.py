"""Tool-call formats and bindings of the integration core: parsers on recorded model outputs (Qwen2.5,
Llama 3.1/3.2, Mistral), spans, streamed prefixes, safe names, ``tool_choice``, argument checks and the
conversion of past calls and tool messages for the chat templates (tiny templates, and the embedded
model's own Qwen2.5 template when it is cached). Fast and offline."""

from __future__ import annotations

import glob
import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from gradguard.integrations._core.errors import IntegrationError
from gradguard.integrations._core.tools import (
    TOOL_CALL_FORMATS,
    HermesFormat,
    Llama3Format,
    MistralFormat,
    ParsedTurn,
    ToolBinding,
    ToolCall,
    ToolCallFormat,
    ToolChoice,
    ToolChoiceError,
    ToolMessageError,
    ToolNames,
    ToolSchemaError,
    ToolSpec,
    ToolsUnsupportedError,
    format_for,
    format_named,
    normalize_tools,
    parse_tool_choice,
    register_tool_call_format,
    validate_arguments,
)
from gradguard.testing import make_tiny_tokenizer

HERMES, LLAMA, MISTRAL = HermesFormat(), Llama3Format(), MistralFormat()

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
FACTORIAL = {
    "name": "math.factorial",
    "description": "n!",
    "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
}
TOOLS = [WEATHER, FACTORIAL]


def spans_of(text: str, turn: ParsedTurn) -> list[str]:
    return [text[c.span[0] : c.span[1]] for c in turn.calls]


def assert_span(text: str, call: ToolCall, written_name: str | None = None) -> None:
    """The span runs from the first char of the name to the closing brace of the arguments' JSON."""
    piece = text[call.span[0] : call.span[1]]
    assert piece.startswith(written_name or call.name)
    assert piece.endswith("}")
    args_text = piece[piece.index("{") :]
    assert json.loads(args_text) == call.arguments


# --- Hermes (Qwen2.5 / Qwen3 / Hermes) ---------------------------------------------------------------------

QWEN_ONE = (
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Boston, MA", "unit": "fahrenheit"}}'
    "\n</tool_call>"
)
QWEN_TWO = (
    "I'll check both cities for you.\n"
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}\n'
    "</tool_call>\n"
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Rome, Italy", "unit": "celsius"}}\n'
    "</tool_call>"
)


def test_hermes_single_call() -> None:
    turn = HERMES.parse(QWEN_ONE)
    assert turn.content == "" and not turn.invalid and not turn.pending
    [call] = turn.calls
    assert call.name == "get_current_weather"
    assert call.arguments == {"location": "Boston, MA", "unit": "fahrenheit"}
    assert call.id.startswith("call_") and len(call.id) == 29
    assert spans_of(QWEN_ONE, turn) == [
        'get_current_weather", "arguments": {"location": "Boston, MA", "unit": "fahrenheit"}'
    ]


def test_hermes_several_calls_and_text_around_them() -> None:
    text = QWEN_TWO + "\nLet me know if you need more."
    turn = HERMES.parse(text)
    assert [c.arguments["location"] for c in turn.calls] == ["Paris, France", "Rome, Italy"]
    assert turn.content == "I'll check both cities for you.\n\n\nLet me know if you need more."
    assert len({c.id for c in turn.calls}) == 2
    for call in turn.calls:
        assert_span(text, call)


def test_hermes_ids_can_be_given() -> None:
    turn = HERMES.parse(QWEN_TWO, ids=["call_a"])
    assert turn.calls[0].id == "call_a" and turn.calls[1].id != "call_a"


@pytest.mark.parametrize(
    ("text", "reason", "name"),
    [
        # a brace short (the model closed the tag too early)
        ('<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Boston"}\n</tool_call>',
         "unterminated JSON object", None),
        ('<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Boston",}}\n</tool_call>',
         "malformed JSON", "get_current_weather"),
        ('<tool_call>\n{"arguments": {"location": "Boston"}}\n</tool_call>', 'missing "name"', None),
        ('<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>', '"name" must be a non-empty string', None),
        ('<tool_call>\n{"name": "get_current_weather", "arguments": ["Boston"]}\n</tool_call>',
         '"arguments" must be a JSON object, got list', "get_current_weather"),
        ('<tool_call>\n{"name": "f", "arguments": "not json"}\n</tool_call>', "is a string that is not JSON", "f"),
        ("<tool_call>\nget_current_weather(location='Boston')\n</tool_call>", "expected a JSON object", None),
        ("<tool_call>\n</tool_call>", "empty <tool_call> block", None),
        ('<tool_call>\n{"name": "f", "arguments": {}} {"name": "g"}\n</tool_call>', "unexpected text after", None),
        # the turn ended inside the call: no closing tag and the JSON is cut off
        ('<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Bos',
         "the turn ended inside the call", "get_current_weather"),
    ],
)
def test_hermes_malformed_calls_are_invalid_never_raised(text: str, reason: str, name: str | None) -> None:
    turn = HERMES.parse(text)
    assert not turn.calls
    [bad] = turn.invalid
    assert reason in bad.error
    if name is not None:
        assert bad.name == name
    assert bad.arguments is not None and bad.span is not None and bad.id


def test_hermes_arguments_as_json_string_and_missing_arguments() -> None:
    text = '<tool_call>\n{"name": "f", "arguments": "{\\"n\\": 5}"}\n</tool_call>'
    [call] = HERMES.parse(text).calls
    assert call.arguments == {"n": 5}
    [call] = HERMES.parse('<tool_call>\n{"name": "now"}\n</tool_call>').calls
    assert call.arguments == {} and call.span == (len('<tool_call>\n{"name": "'), len('<tool_call>\n{"name": "now'))


def test_hermes_complete_call_without_closing_tag_at_end_of_turn_is_accepted() -> None:
    text = '<tool_call>\n{"name": "f", "arguments": {"n": 5}}'
    [call] = HERMES.parse(text).calls
    assert call.arguments == {"n": 5}
    assert_span(text, call)


def test_hermes_valid_and_invalid_calls_in_one_turn_keep_their_order() -> None:
    text = QWEN_ONE + '\n<tool_call>\n{"name": "x", "arguments": {,}}\n</tool_call>\n' + QWEN_ONE
    turn = HERMES.parse(text, ids=["a", "b", "c"])
    assert [c.id for c in turn.calls] == ["a", "c"] and [c.id for c in turn.invalid] == ["b"]


def test_hermes_text_without_calls_is_content() -> None:
    turn = HERMES.parse("The weather in Boston is sunny. </tool_call> stray")
    assert turn == ParsedTurn("The weather in Boston is sunny. </tool_call> stray")


def prefixes(text: str) -> Iterator[str]:
    for n in range(len(text) + 1):
        yield text[:n]


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (HERMES, QWEN_TWO + "\nDone."),
        (LLAMA, '<|python_tag|>{"name": "get_current_weather", "parameters": {"location": "Paris"}}'),
        (LLAMA, '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {"y": [1, 2]}}'),
        (MISTRAL, 'Sure. [TOOL_CALLS] [{"name": "a", "arguments": {"x": "]"}}, {"name": "b", "arguments": {}}]'),
        (MISTRAL, ' [{"name": "a", "arguments": {"x": 1}}]'),
        (MISTRAL, '[TOOL_CALLS]a[ARGS]{"x": 1}[TOOL_CALLS]b[ARGS]{"y": 2}'),
    ],
)
def test_streamed_prefixes_never_report_invalid_calls_and_grow_monotonically(fmt: ToolCallFormat, text: str) -> None:
    final = fmt.parse(text)
    assert final.calls and not final.invalid
    ids = [c.id for c in final.calls]
    seen = 0
    for prefix in prefixes(text):
        turn = fmt.parse(prefix, partial=True, ids=ids)
        assert not turn.invalid, (prefix, turn)
        assert len(turn.calls) >= seen
        seen = len(turn.calls)
        assert turn.calls == final.calls[: len(turn.calls)], prefix
        assert final.content.startswith(turn.content), (prefix, turn.content)
    assert fmt.parse(text, partial=True, ids=ids).calls == final.calls


def test_hermes_partial_holds_back_a_possible_opening_tag() -> None:
    assert HERMES.parse("Let me check <tool_", partial=True) == ParsedTurn("Let me check")
    assert HERMES.parse("a < b", partial=True).content == "a < b"
    pending = HERMES.parse('Checking.\n<tool_call>\n{"name": "get_current_weather", "argu', partial=True)
    assert pending == ParsedTurn("Checking.", pending=True)
    # a finished JSON object without its closing tag is still pending while streaming
    assert HERMES.parse('<tool_call>\n{"name": "f", "arguments": {}}\n', partial=True).pending


# --- Llama 3.1+ --------------------------------------------------------------------------------------------

LLAMA_TAGGED = '<|python_tag|>{"name": "get_current_weather", "parameters": {"location": "San Francisco, CA"}}'


@pytest.mark.parametrize(
    "text", [LLAMA_TAGGED, LLAMA_TAGGED.removeprefix("<|python_tag|>"), "\n\n" + LLAMA_TAGGED[14:]]
)
def test_llama3_call_with_or_without_the_python_tag(text: str) -> None:
    turn = LLAMA.parse(text)
    [call] = turn.calls
    assert (call.name, call.arguments) == ("get_current_weather", {"location": "San Francisco, CA"})
    assert turn.content == "" and not turn.invalid
    assert spans_of(text, turn) == ['get_current_weather", "parameters": {"location": "San Francisco, CA"}']


def test_llama3_semicolon_separated_calls_of_small_models() -> None:
    text = '{"name": "get_current_weather", "parameters": {"location": "Paris"}}; ' \
           '{"name": "get_current_weather", "parameters": {"location": "Rome"}}'
    turn = LLAMA.parse(text)
    assert [c.arguments["location"] for c in turn.calls] == ["Paris", "Rome"]
    for call in turn.calls:
        assert_span(text, call)


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        '{"location": "Paris", "temperature": 21}',  # a JSON answer, not a call
        '{"name": "Ada Lovelace", "born": 1815}',  # has "name" but no parameters
        "Here you go: {\"name\": \"f\", \"parameters\": {}}",  # untagged JSON not opening the turn
    ],
)
def test_llama3_plain_answers_are_content(text: str) -> None:
    assert LLAMA.parse(text) == ParsedTurn(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<|python_tag|>{"name": "get_current_weather", "parameters": {"location": "Paris"}', "cut off"),
        ('{"name": "get_current_weather", "parameters": {"location": "Paris"', "cut off"),
        ('<|python_tag|>{"name": "f", "parameters": {"a": 1,}}', "malformed JSON"),
        ('{"name": "f", "parameters": {"a": 1,}}', "malformed JSON"),
        ("<|python_tag|>brave_search.call(query=\"weather\")", "built-in tools"),
        ('<|python_tag|>{"name": "f", "parameters": 3}', '"parameters" must be a JSON object'),
        ("<|python_tag|>", "nothing follows"),
    ],
)
def test_llama3_malformed_calls_are_invalid(text: str, reason: str) -> None:
    turn = LLAMA.parse(text)
    assert not turn.calls
    [bad] = turn.invalid
    assert reason in bad.error


def test_llama3_text_before_the_tag_is_content_and_prefix_of_the_tag_is_held_back() -> None:
    turn = LLAMA.parse("Let me look that up. " + LLAMA_TAGGED)
    assert turn.content == "Let me look that up." and len(turn.calls) == 1
    assert LLAMA.parse("<|python", partial=True) == ParsedTurn("", pending=True)
    assert LLAMA.parse('{"name": "get_current', partial=True) == ParsedTurn("", pending=True)
    assert LLAMA.parse("Paris is", partial=True) == ParsedTurn("Paris is")


# --- Mistral -----------------------------------------------------------------------------------------------

MISTRAL_V03 = (
    '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris, France", "format": "celsius"}}, '
    '{"name": "get_current_weather", "arguments": {"location": "Rome, Italy", "format": "celsius"}}]'
)


@pytest.mark.parametrize(
    "text",
    [MISTRAL_V03, MISTRAL_V03.removeprefix("[TOOL_CALLS]"), MISTRAL_V03.replace("[TOOL_CALLS] [", "[TOOL_CALLS][")],
    ids=["v0.3", "special-token-decoded-away", "no-space"],
)
def test_mistral_array_of_calls(text: str) -> None:
    turn = MISTRAL.parse(text)
    assert [c.arguments["location"] for c in turn.calls] == ["Paris, France", "Rome, Italy"]
    assert turn.content == "" and not turn.invalid
    for call in turn.calls:
        assert len(call.id) == 9 and call.id.isalnum()
        assert_span(text, call)


def test_mistral_ids_written_by_the_model_are_kept() -> None:
    text = '[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}, "id": "Xy12abc9Z"}]'
    [call] = MISTRAL.parse(text).calls
    assert call.id == "Xy12abc9Z" and text[call.span[0] : call.span[1]] == 'f", "arguments": {"a": 1}'


def test_mistral_name_args_form_of_newer_models() -> None:
    text = 'Checking.[TOOL_CALLS]get_current_weather[ARGS]{"location": "Paris"}[TOOL_CALLS]now[ARGS]{}'
    turn = MISTRAL.parse(text)
    assert [(c.name, c.arguments) for c in turn.calls] == [("get_current_weather", {"location": "Paris"}),
                                                           ("now", {})]
    assert spans_of(text, turn) == ['get_current_weather[ARGS]{"location": "Paris"}', "now[ARGS]{}"]
    assert turn.content == "Checking."


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}}', "cut off"),
        ('[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}},]', "malformed JSON"),
        ('[TOOL_CALLS] ["f"]', "each call must be a JSON object"),
        ("[TOOL_CALLS] []", "empty list"),
        ("[TOOL_CALLS] get weather", "expected a JSON array"),
        ("[TOOL_CALLS]", "nothing follows"),
        ("[TOOL_CALLS]f[ARGS]{\"a\": ", "complete JSON object"),
    ],
)
def test_mistral_malformed_calls_are_invalid(text: str, reason: str) -> None:
    turn = MISTRAL.parse(text)
    assert not turn.calls
    assert [reason in b.error for b in turn.invalid] == [True]


def test_mistral_one_bad_element_leaves_the_others_valid() -> None:
    turn = MISTRAL.parse('[TOOL_CALLS] [{"name": "f", "arguments": {}}, {"arguments": {}}]')
    assert [c.name for c in turn.calls] == ["f"] and 'missing "name"' in turn.invalid[0].error


def test_mistral_plain_text_and_json_lists_are_content() -> None:
    assert MISTRAL.parse("Paris is sunny.") == ParsedTurn("Paris is sunny.")
    assert MISTRAL.parse("[1, 2, 3]") == ParsedTurn("[1, 2, 3]")
    assert MISTRAL.parse("[Note] sunny", partial=True) == ParsedTurn("[Note] sunny")


def test_mistral_template_ids_are_nine_alphanumerics_and_stable() -> None:
    assert MISTRAL.template_id("abcDEF123") == "abcDEF123"
    mapped = MISTRAL.template_id("call_0123456789abcdef")
    assert len(mapped) == 9 and mapped.isalnum() and mapped == MISTRAL.template_id("call_0123456789abcdef")
    assert HERMES.template_id("call_x") == "call_x"


FRAGMENTS = [
    "<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "{", "}", "[", "]", '"',
    "\\", ":", ",", ";", '"name"', '"arguments"', '"parameters"', '"id"', '"f"', "1", "null", " ", "\n", "text",
    '{"name": "f", "arguments": {"a": 1}}', "[" * 3000,
]


@pytest.mark.parametrize("fmt", [HERMES, LLAMA, MISTRAL], ids=lambda f: f.name)
def test_parsers_never_raise_on_garbage(fmt: ToolCallFormat) -> None:
    rng = random.Random(0)
    for _ in range(1500):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12)))
        for partial in (False, True):
            turn = fmt.parse(text, partial=partial)
            for call in turn.calls:
                assert 0 <= call.span[0] <= call.span[1] <= len(text) and isinstance(call.arguments, dict)


def test_deeply_nested_arguments_are_invalid_not_a_crash() -> None:
    text = '<tool_call>\n{"name": "f", "arguments": {"a": ' + "[" * 5000 + "]" * 5000 + "}}\n</tool_call>"
    assert "nested too deeply" in HERMES.parse(text).invalid[0].error


# --- openings, registry, detection -------------------------------------------------------------------------


def test_openings() -> None:
    assert HERMES.opening(None) == '<tool_call>\n{"name": "'
    assert HERMES.opening("f") == '<tool_call>\n{"name": "f", "arguments": '
    assert LLAMA.opening("f") == '{"name": "f", "parameters": '
    assert MISTRAL.opening(None) == "[TOOL_CALLS]"
    for fmt in (HERMES, LLAMA, MISTRAL):  # a named opening completed by the model parses to that tool
        turn = fmt.parse(fmt.opening("f") + '{"a": 1}}' + ("]" if fmt is MISTRAL else ""))
        assert [(c.name, c.arguments) for c in turn.calls] == [("f", {"a": 1})]


@pytest.fixture()
def registry() -> Iterator[list[ToolCallFormat]]:
    saved = list(TOOL_CALL_FORMATS)
    yield TOOL_CALL_FORMATS
    TOOL_CALL_FORMATS[:] = saved


class PlainFormat(ToolCallFormat):
    """A format that cannot force a call (no opening)."""

    name = "plain"

    def detect(self, chat_template: str) -> bool:
        return "PLAIN-TOOLS" in chat_template

    def opening(self, name: str | None) -> str:
        return ""

    def parse(self, text: str, *, partial: bool = False, ids: Sequence[str] = ()) -> ParsedTurn:
        return ParsedTurn(text)


def test_format_detection_on_tiny_templates() -> None:
    assert [format_for(make_tiny_tokenizer(f)).name for f in ("qwen2", "llama", "mistral")] == [
        "hermes", "llama3", "mistral"
    ]
    with pytest.raises(ToolsUnsupportedError, match=r"has no tool support \(it never reads `tools`\).*Qwen2\.5"):
        format_for(make_tiny_tokenizer("gemma2"))
    with pytest.raises(ToolsUnsupportedError, match="has no chat template"):
        format_for(make_tiny_tokenizer("qwen2", chat_template=False))
    tok = make_tiny_tokenizer("gemma2")
    tok.chat_template = "{{ tools }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ToolsUnsupportedError, match="no registered tool-call format recognises it"):
        format_for(tok)
    assert issubclass(ToolsUnsupportedError, IntegrationError)


def test_registry_is_ordered_and_extensible(registry: list[ToolCallFormat]) -> None:
    tok = make_tiny_tokenizer("gemma2")
    tok.chat_template = "{# PLAIN-TOOLS #}{{ tools }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fmt = register_tool_call_format(PlainFormat())
    assert registry[0] is fmt and format_for(tok) is fmt and format_named("plain") is fmt
    register_tool_call_format(PlainFormat(), first=False)  # same name: replaced, now last
    assert registry[-1].name == "plain" and [f.name for f in registry].count("plain") == 1
    with pytest.raises(ToolChoiceError, match="cannot be enforced.*'plain'"):
        ToolBinding.create(tok, TOOLS, "required")
    assert ToolBinding.create(tok, TOOLS, "auto").prefill == ""
    with pytest.raises(ToolsUnsupportedError, match="no tool-call format named 'nope'"):
        format_named("nope")


# --- specs, names, tool_choice, argument checks ------------------------------------------------------------


def test_normalize_tools_accepts_openai_bare_and_pydantic() -> None:
    class Lookup(BaseModel):
        """Look a word up."""

        word: str
        limit: int | None = None

    specs = normalize_tools([WEATHER, FACTORIAL, Lookup, ToolSpec("now")])
    assert [s.name for s in specs] == ["get_current_weather", "math.factorial", "Lookup", "now"]
    assert specs[2].description == "Look a word up." and specs[2].parameters["required"] == ["word"]
    assert specs[3].parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("tools", "match"),
    [
        ([{"name": "f", "parameters": {"type": "array"}}], r"tool 'f': parameters must be a JSON-schema object"),
        ([{"name": "f", "parameters": "x"}], r"tool 'f': parameters must be a JSON-schema object"),
        ([{"description": "d"}], r"tool 0 has name None"),
        ([FACTORIAL, FACTORIAL], r"tool 'math.factorial' is given twice"),
        ([42], r"tool 0 is a int"),
        ([{"name": "f", "parameters": {"type": "object", "properties": {"a": {"default": object()}}}}],
         "not JSON-serialisable"),
    ],
)
def test_normalize_tools_errors_name_the_tool(tools: list[Any], match: str) -> None:
    with pytest.raises(ToolSchemaError, match=match):
        normalize_tools(tools)


def test_tool_names_map_unsafe_names_and_back() -> None:
    long = "x" * 70
    names = ToolNames(["math.factorial", "math_factorial", "get weather", "ok-name_1", "3d.plot", long])
    assert names.safe("math_factorial") == "math_factorial"  # already safe: kept, and wins the collision
    assert names.safe("math.factorial") == "math_factorial_2"
    assert names.safe("get weather") == "get_weather"
    assert names.safe("ok-name_1") == "ok-name_1"
    assert names.safe("3d.plot") == "_3d_plot"
    assert names.safe(long) == "x" * 64
    for original in ["math.factorial", "math_factorial", "get weather", "ok-name_1", "3d.plot", long]:
        assert names.original(names.safe(original)) == original
    assert names.original("unknown") == "unknown" and names.safe("a.b") == "a_b"
    assert "math.factorial" in names and "nope" not in names


def test_tool_names_collisions_get_suffixes() -> None:
    names = ToolNames(["a.b", "a b", "a/b"])
    assert [names.safe(n) for n in ["a.b", "a b", "a/b"]] == ["a_b", "a_b_2", "a_b_3"]


SPECS = normalize_tools(TOOLS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ToolChoice("auto")),
        ("auto", ToolChoice("auto")),
        (False, ToolChoice("auto")),
        ("none", ToolChoice("none")),
        ("any", ToolChoice("required")),
        ("required", ToolChoice("required")),
        (True, ToolChoice("required")),
        ("get_current_weather", ToolChoice("tool", "get_current_weather")),
        ("math.factorial", ToolChoice("tool", "math.factorial")),
        ("math_factorial", ToolChoice("tool", "math.factorial")),  # the safe name works too
        ({"type": "function", "function": {"name": "math.factorial"}}, ToolChoice("tool", "math.factorial")),
        ({"name": "get_current_weather"}, ToolChoice("tool", "get_current_weather")),
    ],
)
def test_parse_tool_choice(value: Any, expected: ToolChoice) -> None:
    assert parse_tool_choice(value, SPECS) == expected


@pytest.mark.parametrize(
    ("value", "specs", "match"),
    [
        ("get_weather", SPECS, r"tool_choice names tool 'get_weather', which is not bound; bound tools: "
                               r"\['get_current_weather', 'math.factorial'\]"),
        ({"type": "function", "function": {"name": "nope"}}, SPECS, "'nope', which is not bound"),
        ({"type": "function"}, SPECS, "is not understood"),
        (3, SPECS, r"tool_choice=3 is not understood"),
        ("required", [], "no tools are bound"),
    ],
)
def test_parse_tool_choice_errors(value: Any, specs: list[ToolSpec], match: str) -> None:
    with pytest.raises(ToolChoiceError, match=match):
        parse_tool_choice(value, specs)


NESTED = {
    "type": "object",
    "properties": {
        "x": {"type": "number"},
        "n": {"type": "integer"},
        "flag": {"type": "boolean"},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "point": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"],
                  "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string"}},
        "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["x"],
}


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"x": 1}, None),  # an integer is a number
        ({"x": 1.5, "n": 3.0, "flag": True, "unit": "c", "point": {"lat": 2}, "tags": ["a"], "maybe": None}, None),
        ({"x": 1, "other": "extra keys are allowed"}, None),
        ({}, "missing required argument 'x'"),
        ({"x": "1"}, "argument 'x' must be number, got str"),
        ({"x": True}, "argument 'x' must be number, got bool"),
        ({"x": 1, "n": 1.5}, "argument 'n' must be integer"),
        ({"x": 1, "unit": "k"}, "argument 'unit' must be one of ['c', 'f']"),
        ({"x": 1, "point": {}}, "missing required argument 'point.lat'"),
        ({"x": 1, "point": {"lat": 1, "lon": 2}}, "unexpected argument 'point.lon'; allowed: ['lat']"),
        ({"x": 1, "tags": ["a", 2]}, "argument 'tags[1]' must be string"),
        ({"x": 1, "maybe": 3}, "argument 'maybe' matches none of the allowed forms"),
    ],
)
def test_validate_arguments(args: dict[str, Any], reason: str | None) -> None:
    err = validate_arguments(args, NESTED)
    if reason is None:
        assert err is None
    else:
        assert err is not None and reason in err


def test_validate_arguments_follows_local_refs() -> None:
    class Point(BaseModel):
        lat: float

    class Trip(BaseModel):
        start: Point
        stops: list[Point]

    schema = Trip.model_json_schema()
    assert validate_arguments({"start": {"lat": 1}, "stops": []}, schema) is None
    assert "argument 'stops[0].lat' must be number" in (
        validate_arguments({"start": {"lat": 1}, "stops": [{"lat": "n"}]}, schema) or ""
    )


# --- bindings on the tiny templates ------------------------------------------------------------------------

TOOL_FAMILIES = ["qwen2", "llama", "mistral"]


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_binding_renders_safe_names_and_enforces_tool_choice(family: str) -> None:
    tok = make_tiny_tokenizer(family)
    auto = ToolBinding.create(tok, TOOLS)
    assert auto.prefill == "" and auto.choice == ToolChoice("auto")
    names = [t["function"]["name"] for t in auto.template_tools()]
    assert names == ["get_current_weather", "math_factorial"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "5!?"}], tools=auto.template_tools(),
                                     tokenize=False, add_generation_prompt=True)
    assert "math_factorial" in prompt and "math.factorial" not in prompt

    required = ToolBinding.create(tok, TOOLS, "any")
    assert required.prefill == auto.fmt.opening(None) != ""
    named = ToolBinding.create(tok, TOOLS, "math.factorial")
    assert named.prefill == auto.fmt.opening("math_factorial")
    # parse() is given the text with the prefill; the name comes back as the original
    closing = {"hermes": "}\n</tool_call>", "llama3": "}", "mistral": "}]"}[auto.fmt.name]
    text = named.prefill + '{"n": 5}' + closing
    turn = named.parse(text)
    [call] = turn.calls
    assert (call.name, call.arguments) == ("math.factorial", {"n": 5}) and not turn.invalid
    assert_span(text, call, written_name="math_factorial")

    none = ToolBinding.create(tok, TOOLS, "none")
    assert none.template_tools() == [] and none.prefill == ""
    assert none.parse(text) == ParsedTurn(text.strip())


def test_binding_reports_unbound_tools_and_schema_mismatches_as_invalid() -> None:
    binding = ToolBinding.create(make_tiny_tokenizer("qwen2"), TOOLS)
    calls = [
        ("get_current_weather", {"location": "Paris", "unit": "celsius"}),
        ("send_email", {"to": "a@b.c"}),
        ("math_factorial", {"n": "five"}),
        ("get_current_weather", {"unit": "kelvin", "location": "Paris"}),
        ("get_current_weather", {}),
    ]
    text = "".join(f'<tool_call>\n{json.dumps({"name": n, "arguments": a})}\n</tool_call>\n' for n, a in calls)
    turn = binding.parse(text, ids=["c1", "c2", "c3", "c4", "c5"])
    assert [(c.id, c.name) for c in turn.calls] == [("c1", "get_current_weather")]
    assert [(c.id, c.name) for c in turn.invalid] == [
        ("c2", "send_email"), ("c3", "math.factorial"), ("c4", "get_current_weather"), ("c5", "get_current_weather")
    ]
    errors = [c.error for c in turn.invalid]
    assert errors[0] == "tool 'send_email' was not bound; bound: ['get_current_weather', 'math.factorial']"
    assert "tool 'math.factorial': argument 'n' must be integer, got str" in errors[1]
    assert "argument 'unit' must be one of ['celsius', 'fahrenheit']" in errors[2]
    assert "missing required argument 'location'" in errors[3]
    assert json.loads(turn.invalid[1].arguments or "") == {"n": "five"}
    for bad in turn.invalid:
        assert bad.span is not None and text[bad.span[0] : bad.span[1]].startswith(
            binding.names.safe(bad.name or "")
        )


def test_binding_on_a_template_without_tools_raises() -> None:
    with pytest.raises(ToolsUnsupportedError, match=r"no tool support.*set tokenizer\.chat_template"):
        ToolBinding.create(make_tiny_tokenizer("gemma2"), TOOLS)


def test_binding_with_an_explicit_format() -> None:
    binding = ToolBinding.create(make_tiny_tokenizer("qwen2"), TOOLS, fmt="hermes", check=False)
    assert binding.fmt.name == "hermes"


def test_tool_schema_the_template_cannot_render_names_the_tool() -> None:
    tok = make_tiny_tokenizer("qwen2")
    # a template that concatenates each parameter's type, as some templates do; an anyOf property has none
    tok.chat_template = tok.chat_template.replace(
        "{{ tool | tojson }}",
        "{{ tool | tojson }}{% for k, p in tool.function.parameters.properties.items() %}{{ k + ': ' + p.type }}"
        "{% endfor %}",
    )
    optional = {"name": "lookup", "parameters": {"type": "object", "properties": {
        "word": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}}
    ToolBinding.create(tok, TOOLS)  # renders
    with pytest.raises(ToolSchemaError, match=r"tool 'lookup': the chat template .* cannot render it"):
        ToolBinding.create(tok, [*TOOLS, optional])
    ToolBinding.create(tok, [*TOOLS, optional], check=False)


# --- past calls and tool messages --------------------------------------------------------------------------


def history(arguments_as_string: bool = False) -> list[dict[str, Any]]:
    def args(a: dict[str, Any]) -> Any:
        return json.dumps(a) if arguments_as_string else a

    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris, and 5!?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w1", "type": "function",
             "function": {"name": "get_current_weather", "arguments": args({"location": "Paris"})}},
            {"id": "call_f1", "type": "function", "function": {"name": "math.factorial", "arguments": args({"n": 5})}},
        ]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"},
        {"role": "tool", "tool_call_id": "call_f1", "content": {"result": 120}},
    ]


@pytest.mark.parametrize("as_string", [False, True])
def test_template_messages_converts_calls_and_tool_messages(as_string: bool) -> None:
    binding = ToolBinding.create(make_tiny_tokenizer("qwen2"), TOOLS)
    out = binding.template_messages(history(as_string))
    assert out[2]["content"] == ""
    assert out[2]["tool_calls"] == [
        {"id": "call_w1", "type": "function",
         "function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}},
        {"id": "call_f1", "type": "function", "function": {"name": "math_factorial", "arguments": {"n": 5}}},
    ]
    assert out[3] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C",
                      "name": "get_current_weather"}
    assert out[4]["content"] == '{"result": 120}' and out[4]["name"] == "math_factorial"
    assert history(as_string)[2]["tool_calls"][1]["function"]["name"] == "math.factorial"  # input untouched


def test_template_messages_splits_calls_for_one_call_templates_and_maps_mistral_ids() -> None:
    llama = ToolBinding.create(make_tiny_tokenizer("llama"), TOOLS).template_messages(history())
    assert [len(m.get("tool_calls") or []) for m in llama] == [0, 0, 1, 1, 0, 0]
    mistral = ToolBinding.create(make_tiny_tokenizer("mistral"), TOOLS).template_messages(history())
    ids = [tc["id"] for tc in mistral[2]["tool_calls"]]
    assert all(len(i) == 9 and i.isalnum() for i in ids)
    assert [mistral[3]["tool_call_id"], mistral[4]["tool_call_id"]] == ids


def test_template_messages_accepts_langchain_style_calls() -> None:
    binding = ToolBinding.create(make_tiny_tokenizer("qwen2"), TOOLS)
    msgs = [{"role": "user", "content": "5!"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"id": "x", "name": "math.factorial", "args": {"n": 5}}]},
            {"role": "tool", "tool_call_id": "x", "content": "120"}]
    out = binding.template_messages(msgs)
    assert out[1]["tool_calls"][0]["function"] == {"name": "math_factorial", "arguments": {"n": 5}}
    assert binding.template_messages([{"role": "assistant", "content": None, "tool_calls": []}])[0]["content"] == ""


@pytest.mark.parametrize(
    ("messages", "error", "match"),
    [
        ([{"role": "tool", "tool_call_id": "call_9", "content": "x"}], ToolMessageError,
         r"tool message 0 has tool_call_id 'call_9', which matches no earlier assistant tool call; "
         r"known call ids: \[\]"),
        ([*history()[:3], {"role": "tool", "tool_call_id": "call_zz", "content": "x"}], ToolMessageError,
         r"'call_zz'.*known call ids: \['call_w1', 'call_f1'\]"),
        ([{"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": "{bad"}}]}], ToolMessageError, "not valid JSON"),
        ([{"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": [1]}}]}], ToolMessageError, "pass a dict"),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}],
         ToolMessageError, "has no id"),
    ],
)
def test_template_messages_errors(messages: list[dict[str, Any]], error: type[Exception], match: str) -> None:
    binding = ToolBinding.create(make_tiny_tokenizer("qwen2"), TOOLS)
    with pytest.raises(error, match=match):
        binding.template_messages(messages)
    assert issubclass(error, IntegrationError)


def assistant_text(tok: Any, binding: ToolBinding, messages: list[dict[str, Any]]) -> str:
    """The text the template writes for the last assistant message (what the model would have generated)."""
    upto = binding.template_messages(messages)
    before = tok.apply_chat_template(upto[:-1], tools=binding.template_tools(), tokenize=False,
                                     add_generation_prompt=True)
    full = tok.apply_chat_template(upto, tools=binding.template_tools(), tokenize=False)
    assert full.startswith(before)
    return str(full[len(before) :])


def single_call_history() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "5!?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "abcDEF123", "type": "function", "function": {"name": "math.factorial", "arguments": '{"n": 5}'}}
        ]},
    ]


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_round_trip_through_the_tiny_templates(family: str) -> None:
    """A past call rendered by the template parses back to the same call (the template's and the model's syntax)."""
    tok = make_tiny_tokenizer(family)
    binding = ToolBinding.create(tok, TOOLS)
    text = assistant_text(tok, binding, single_call_history())
    for end in ("<|im_end|>\n", "<|eot_id|>", "</s>"):
        text = text.removesuffix(end)
    turn = binding.parse(text)
    assert [(c.name, c.arguments) for c in turn.calls] == [("math.factorial", {"n": 5})], text
    assert not turn.invalid and turn.content == ""
    # and the whole conversation, tool results included, renders
    full = tok.apply_chat_template(binding.template_messages(history()), tools=binding.template_tools(),
                                   tokenize=False, add_generation_prompt=True)
    assert "sunny, 21 C" in full and "120" in full


def test_tiny_tool_tokens_are_single_tokens() -> None:
    qwen = make_tiny_tokenizer("qwen2", tool_tokens=True)
    assert qwen.tokenize("<tool_call>\n{}\n</tool_call>")[0] == "<tool_call>"
    assert qwen.decode(qwen.encode("<tool_call>x"), skip_special_tokens=True) == "<tool_call>x"  # not special
    mistral = make_tiny_tokenizer("mistral", tool_tokens=True)
    assert mistral.tokenize("[TOOL_CALLS] [")[0] == "[TOOL_CALLS]"
    decoded = mistral.decode(mistral.encode(MISTRAL_V03), skip_special_tokens=True)
    assert decoded == MISTRAL_V03.removeprefix("[TOOL_CALLS]")  # special: decoded away, and still parses
    assert len(MISTRAL.parse(decoded).calls) == 2
    assert len(make_tiny_tokenizer("qwen2")) == len(qwen) - 2  # the default vocabulary is unchanged


# --- the embedded model's own template (Qwen2.5), when cached ----------------------------------------------


@pytest.fixture(scope="module")
def qwen_tokenizer() -> Any:
    paths = sorted(glob.glob("/root/.cache/gradguard/models/*/tokenizer.json"))
    if not paths:
        pytest.skip("the embedded model is not cached")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(paths[0].rsplit("/", 1)[0])


def test_embedded_qwen_template_round_trip(qwen_tokenizer: Any) -> None:
    binding = ToolBinding.create(qwen_tokenizer, TOOLS)
    assert binding.fmt.name == "hermes"
    text = assistant_text(qwen_tokenizer, binding, single_call_history()).removesuffix("<|im_end|>\n")
    assert text == '<tool_call>\n{"name": "math_factorial", "arguments": {"n": 5}}\n</tool_call>'
    [call] = binding.parse(text).calls
    assert (call.name, call.arguments) == ("math.factorial", {"n": 5})
    full = qwen_tokenizer.apply_chat_template(binding.template_messages(history()), tools=binding.template_tools(),
                                              tokenize=False, add_generation_prompt=True)
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in full
    assert '{"name": "math_factorial", "arguments": {"n": 5}}' in full


def test_tiny_qwen_template_matches_the_real_one(qwen_tokenizer: Any) -> None:
    tok = make_tiny_tokenizer("qwen2")
    binding = ToolBinding.create(tok, TOOLS)
    messages = binding.template_messages(history())
    for tools in (binding.template_tools(), None):
        assert tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True) == (
            qwen_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        )


# --- untagged calls (what Qwen2.5-Coder-0.5B often writes) -----------------------------------------------


@pytest.mark.parametrize(
    "text, names",
    [
        ('```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```', ["get_weather"]),
        ('{"name": "a", "arguments": {"x": 1}}\n{"name": "b", "arguments": {}}', ["a", "b"]),
        ('[{"name": "a", "arguments": {}}, {"name": "b", "parameters": {"x": 1}}]', ["a", "b"]),
    ],
)
def test_hermes_reads_untagged_calls(text: str, names: list[str]) -> None:
    from gradguard.integrations._core.tool_formats import HermesFormat

    turn = HermesFormat().parse(text)
    assert [c.name for c in turn.calls] == names and turn.content == "" and not turn.invalid
    for call in turn.calls:
        assert text[call.span[0] :].startswith(call.name) and text[call.span[1] - 1] == "}"


@pytest.mark.parametrize(
    "text", ['{"answer": 3}', "The answer is 3.", "```python\nprint(1)\n```", '{"name": "a", "arguments": {}} and more']
)
def test_hermes_leaves_other_json_and_prose_as_content(text: str) -> None:
    from gradguard.integrations._core.tool_formats import HermesFormat

    turn = HermesFormat().parse(text)
    assert turn.calls == [] and turn.invalid == [] and turn.content == text


def test_hermes_strict_mode_and_streamed_untagged_prefix() -> None:
    from gradguard.integrations._core.tool_formats import HermesFormat

    strict = HermesFormat()
    strict.lenient = False
    assert strict.parse('{"name": "a", "arguments": {}}').calls == []
    streamed = HermesFormat().parse('```json\n{"name": "a", "argu', partial=True)
    assert streamed.pending and streamed.content == "" and streamed.calls == []
