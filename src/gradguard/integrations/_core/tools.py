"""Tools bound to a local model: their schemas, safe names, ``tool_choice``, and the binding that ties them to a format.

:func:`normalize_tools` reads tool definitions (OpenAI dicts, bare ``{"name", "description",
"parameters"}`` dicts, pydantic models) into :class:`ToolSpec`; :class:`ToolNames` maps names a
template or schema rejects (dots, spaces) to safe ones and back; :func:`parse_tool_choice` reads
``tool_choice``; :class:`ToolBinding` puts it together for one tokenizer: the tools to render, the
prefill that enforces ``tool_choice``, the parser (names mapped back, unbound tools and arguments
that fail the schema reported as invalid calls) and the conversion of past calls and tool messages
into what the chat template expects. Framework-free.

``tool_choice`` is enforced by what the template allows: ``"required"``/``"any"`` starts the
assistant turn with the format's call opening (e.g. ``<tool_call>\\n``), a tool name with the
opening up to that tool's arguments, ``"none"`` renders no tools (the model is not told about them
and its text is all content), ``"auto"`` leaves the choice to the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gradguard.integrations._core.tool_formats import (
    TOOL_CALL_FORMATS,
    HermesFormat,
    InvalidToolCall,
    Llama3Format,
    MistralFormat,
    ParsedTurn,
    ToolCall,
    ToolCallFormat,
    ToolChoiceError,
    ToolMessageError,
    ToolSchemaError,
    ToolsUnsupportedError,
    chat_template_text,
    format_for,
    format_named,
    register_tool_call_format,
)

__all__ = [
    "HermesFormat", "InvalidToolCall", "Llama3Format", "MistralFormat", "ParsedTurn", "TOOL_CALL_FORMATS",
    "ToolBinding", "ToolCall", "ToolCallFormat", "ToolChoice", "ToolChoiceError", "ToolMessageError", "ToolNames",
    "ToolSchemaError", "ToolSpec", "ToolsUnsupportedError", "chat_template_text", "format_for", "format_named",
    "normalize_tools", "parse_tool_choice", "register_tool_call_format", "validate_arguments",
]

_SAFE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its ``name``, ``description`` and ``parameters`` (a JSON-schema object)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_openai(self, name: str | None = None) -> dict[str, Any]:
        """The OpenAI tool dict ``{"type": "function", "function": {...}}``, optionally under another ``name``."""
        return {
            "type": "function",
            "function": {"name": name or self.name, "description": self.description,
                         "parameters": json.loads(json.dumps(self.parameters))},
        }


def _spec_from(tool: Any, i: int) -> ToolSpec:
    if isinstance(tool, ToolSpec):
        fields: Mapping[str, Any] = {"name": tool.name, "description": tool.description,
                                     "parameters": tool.parameters}
    elif isinstance(tool, type) and hasattr(tool, "model_json_schema"):  # a pydantic model class
        schema = dict(tool.model_json_schema())
        schema.pop("title", None)
        fields = {"name": tool.__name__, "description": schema.pop("description", None) or (tool.__doc__ or ""),
                  "parameters": schema}
    elif isinstance(tool, Mapping):
        fields = tool["function"] if tool.get("type") == "function" and isinstance(tool.get("function"), Mapping) \
            else tool
    else:
        raise ToolSchemaError(
            f"tool {i} is a {type(tool).__name__}; pass an OpenAI tool dict {{'type': 'function', 'function': "
            "{'name', 'description', 'parameters'}}, a {'name', 'description', 'parameters'} dict or a pydantic model"
        )
    name = fields.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolSchemaError(f"tool {i} has name {name!r}; give every tool a non-empty string name")
    description = fields.get("description") or ""
    if not isinstance(description, str):
        raise ToolSchemaError(f"tool {name!r}: description must be a string, got {type(description).__name__}")
    params = fields.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, Mapping) or params.get("type", "object") != "object":
        raise ToolSchemaError(
            f"tool {name!r}: parameters must be a JSON-schema object ({{'type': 'object', 'properties': {{...}}}}), "
            f"got {params!r}"
        )
    if "properties" in params and not isinstance(params["properties"], Mapping):
        raise ToolSchemaError(f"tool {name!r}: parameters.properties must be an object, got {params['properties']!r}")
    try:
        params = json.loads(json.dumps(params))
    except (TypeError, ValueError) as exc:
        raise ToolSchemaError(
            f"tool {name!r}: parameters are not JSON-serialisable ({exc}); use plain JSON values"
        ) from None
    return ToolSpec(name, description, params)


def normalize_tools(tools: Iterable[Any] | None) -> list[ToolSpec]:
    """Read tool definitions into :class:`ToolSpec` (raises :class:`ToolSchemaError` naming a bad tool).

    Accepts OpenAI tool dicts ``{"type": "function", "function": {"name", "description",
    "parameters"}}``, bare ``{"name", "description", "parameters"}`` dicts, :class:`ToolSpec` and
    pydantic model classes. Missing parameters mean a tool without arguments; names must be unique.
    """
    specs = [_spec_from(t, i) for i, t in enumerate(tools or [])]
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ToolSchemaError(f"tool {s.name!r} is given twice; tool names must be unique")
        seen.add(s.name)
    return specs


class ToolNames:
    """Two-way map between tool names and names every template and schema accepts.

    A name matching ``^[A-Za-z_][A-Za-z0-9_-]{0,63}$`` stays; any other has each disallowed character
    replaced by ``_`` (``math.factorial`` -> ``math_factorial``), is cut to 64 characters and, on a
    collision, gets a ``_2``, ``_3``... suffix.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._to_safe: dict[str, str] = {}
        self._to_original: dict[str, str] = {}
        names = list(names)
        for n in names:  # names already safe keep themselves first, so others never take them
            if _SAFE.match(n):
                self._add(n, n)
        for n in names:
            if n not in self._to_safe:
                base = self.sanitize(n)
                safe, k = base, 2
                while safe in self._to_original:
                    suffix = f"_{k}"
                    safe, k = base[: 64 - len(suffix)] + suffix, k + 1
                self._add(n, safe)

    def _add(self, name: str, safe: str) -> None:
        self._to_safe[name] = safe
        self._to_original[safe] = name

    @staticmethod
    def sanitize(name: str) -> str:
        """``name`` with disallowed characters replaced by ``_``, a leading ``_`` if it starts with a digit or
        ``-``, cut to 64 characters (no collision handling)."""
        s = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"
        if not re.match(r"[A-Za-z_]", s):
            s = "_" + s
        return s[:64]

    def safe(self, name: str) -> str:
        """The safe name of ``name`` (an unknown name is sanitised)."""
        return self._to_safe.get(name) or (name if _SAFE.match(name) else self.sanitize(name))

    def original(self, safe: str) -> str:
        """The original name behind a safe name (an unknown name is returned as it is)."""
        return self._to_original.get(safe, safe)

    def __contains__(self, name: object) -> bool:
        return name in self._to_safe

    def __iter__(self) -> Iterator[str]:
        return iter(self._to_safe)

    def __repr__(self) -> str:
        mapped = {k: v for k, v in self._to_safe.items() if k != v}
        return f"ToolNames({list(self._to_safe)}, mapped={mapped})"


@dataclass(frozen=True)
class ToolChoice:
    """What the model must do: ``mode`` ``"auto"``, ``"none"``, ``"required"`` (call some tool) or ``"tool"``
    (call the tool ``name``)."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None


def parse_tool_choice(value: Any, specs: Sequence[ToolSpec]) -> ToolChoice:
    """Read a ``tool_choice`` value (raises :class:`ToolChoiceError` naming the value and the bound tools).

    ``None``/``"auto"``/``False`` -> auto; ``"none"``; ``"any"``/``"required"``/``True`` -> required; a
    bound tool's name (original or safe), ``{"type": "function", "function": {"name": ...}}`` or
    ``{"name": ...}`` -> that tool. The modes take precedence over a tool with the same name.
    """
    bound = [s.name for s in specs]
    names = ToolNames(bound)
    if value is None or value is False or value == "auto":
        return ToolChoice("auto")
    if value == "none":
        return ToolChoice("none")
    if value is True or value in ("any", "required"):
        if not specs:
            raise ToolChoiceError(f"tool_choice={value!r} requires a tool call, but no tools are bound; bind tools")
        return ToolChoice("required")
    name: Any = value
    if isinstance(value, Mapping):
        fn = value.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else value.get("name")
        if not isinstance(name, str):
            raise ToolChoiceError(
                f"tool_choice={value!r} is not understood; use {{'type': 'function', 'function': {{'name': NAME}}}}"
                f" with NAME one of {bound}, or 'auto', 'none', 'any', 'required'"
            )
    if not isinstance(name, str):
        raise ToolChoiceError(
            f"tool_choice={value!r} is not understood; use 'auto', 'none', 'any', 'required' or a bound tool's "
            f"name: {bound}"
        )
    if name in bound:
        return ToolChoice("tool", name)
    if names.original(name) in bound:
        return ToolChoice("tool", names.original(name))
    raise ToolChoiceError(
        f"tool_choice names tool {name!r}, which is not bound; bound tools: {bound} "
        "(or use 'auto', 'none', 'any', 'required')"
    )


# --- a small JSON-schema validator -----------------------------------------------------------------------

_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)
    or isinstance(v, float) and v.is_integer(),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _where(path: str) -> str:
    return f"argument {path!r}" if path else "the arguments"


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping):
            return node
    return schema


def _check(value: Any, schema: Any, path: str, root: Mapping[str, Any], depth: int = 0) -> str | None:
    if not isinstance(schema, Mapping) or depth > 32:
        return None
    schema = _resolve(schema, root)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            errors = [_check(value, s, path, root, depth + 1) for s in options]
            if all(errors):
                return f"{_where(path)} matches none of the allowed forms ({'; '.join(e for e in errors if e)})"
    for sub in schema.get("allOf") or []:
        if err := _check(value, sub, path, root, depth + 1):
            return err
    types = schema.get("type")
    if isinstance(types, str):
        types = [types]
    if isinstance(types, list) and types and not any(_TYPES.get(t, lambda v: True)(value) for t in types):
        want = " or ".join(str(t) for t in types)
        return f"{_where(path)} must be {want}, got {type(value).__name__} {json.dumps(value)[:40]}"
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        return f"{_where(path)} must be one of {schema['enum']}, got {json.dumps(value)[:40]}"
    if "const" in schema and value != schema["const"]:
        return f"{_where(path)} must be {json.dumps(schema['const'])}, got {json.dumps(value)[:40]}"
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
        assert isinstance(props, Mapping)
        for req in schema.get("required") or []:
            if req not in value:
                return f"missing required argument {(path + '.' if path else '') + str(req)!r}"
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            sub_path = f"{path}.{k}" if path else str(k)
            if k in props:
                if err := _check(v, props[k], sub_path, root, depth + 1):
                    return err
            elif extra is False:
                return f"unexpected argument {sub_path!r}; allowed: {sorted(props)}"
            elif isinstance(extra, Mapping) and (err := _check(v, extra, sub_path, root, depth + 1)):
                return err
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, v in enumerate(value):
            if err := _check(v, schema["items"], f"{path}[{i}]", root, depth + 1):
                return err
    return None


def validate_arguments(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> str | None:
    """Why ``arguments`` do not match the JSON-schema ``schema``, or None when they do.

    Checks ``type`` (an integer is accepted for ``number``), ``enum``/``const``, ``required``,
    ``properties`` and ``additionalProperties``, ``items``, ``anyOf``/``oneOf``/``allOf`` and local
    ``$ref``; other keywords are ignored. Extra arguments are allowed unless ``additionalProperties``
    is false.
    """
    return _check(dict(arguments), schema, "", schema)


# --- the binding -----------------------------------------------------------------------------------------


@dataclass
class ToolBinding:
    """Tools bound to one model: render them, enforce ``tool_choice``, parse and check the model's calls.

    Build it with :meth:`create`. ``specs`` are the tools, ``choice`` the parsed ``tool_choice``,
    ``fmt`` the template's :class:`ToolCallFormat`, ``names`` the name map.
    """

    specs: list[ToolSpec]
    choice: ToolChoice
    fmt: ToolCallFormat
    names: ToolNames

    @classmethod
    def create(
        cls,
        tokenizer: Any,
        tools: Iterable[Any] | None,
        tool_choice: Any = None,
        *,
        fmt: ToolCallFormat | str | None = None,
        check: bool = True,
    ) -> ToolBinding:
        """Bind ``tools`` for ``tokenizer``'s chat template.

        Raises :class:`ToolsUnsupportedError` (template without tool support), :class:`ToolSchemaError`
        (a malformed tool, or one the template cannot render; ``check=False`` skips the render check) and
        :class:`ToolChoiceError` (unknown tool, or a choice the format cannot enforce). ``fmt`` overrides
        the detected format (an instance or a registered name).
        """
        fmt = format_named(fmt) if isinstance(fmt, str) else fmt or format_for(tokenizer)
        specs = normalize_tools(tools)
        binding = cls(specs, parse_tool_choice(tool_choice, specs), fmt, ToolNames(s.name for s in specs))
        if binding.choice.mode in ("required", "tool") and not binding.prefill:
            raise ToolChoiceError(
                f"tool_choice={tool_choice!r} cannot be enforced: the {fmt.name!r} tool-call format has no call "
                "opening to start the answer with; use tool_choice='auto'"
            )
        if check:
            binding.check_render(tokenizer)
        return binding

    def _spec(self, name: str) -> ToolSpec | None:
        return next((s for s in self.specs if s.name == name), None)

    def template_tools(self) -> list[dict[str, Any]]:
        """The tools as OpenAI dicts under their safe names, for the template's ``tools`` ([] for ``"none"``)."""
        if self.choice.mode == "none":
            return []
        return [s.to_openai(self.names.safe(s.name)) for s in self.specs]

    @property
    def prefill(self) -> str:
        """Text the assistant turn starts with to enforce ``tool_choice`` ("" for auto and none)."""
        if self.choice.mode == "required" and len(self.specs) == 1:
            return self.fmt.opening(self.names.safe(self.specs[0].name))  # the one tool there is to call
        if self.choice.mode == "required":
            return self.fmt.opening(None)
        if self.choice.mode == "tool" and self.choice.name is not None:
            return self.fmt.opening(self.names.safe(self.choice.name))
        return ""

    def parse(self, text: str, partial: bool = False, *, ids: Sequence[str] = ()) -> ParsedTurn:
        """Parse a generated turn (prefill included): calls under their original names, checked against the tools.

        A call to a tool that is not bound, or whose arguments do not match the tool's schema, is
        moved to ``invalid`` with the reason. With ``tool_choice="none"`` all text is content.
        """
        if self.choice.mode == "none":
            return ParsedTurn(text.strip())
        turn = self.fmt.parse(text, partial=partial, ids=ids)
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        bound = [s.name for s in self.specs]
        for inv in turn.invalid:
            name = self.names.original(inv.name) if inv.name is not None else None
            invalid.append(InvalidToolCall(inv.id, name, inv.arguments, inv.error, inv.span))
        for call in turn.calls:
            name = self.names.original(call.name)
            spec = self._spec(name)
            args_text = json.dumps(call.arguments, ensure_ascii=False)
            if spec is None:
                invalid.append(InvalidToolCall(call.id, name, args_text,
                                               f"tool {name!r} was not bound; bound: {bound}", call.span))
            elif err := validate_arguments(call.arguments, spec.parameters):
                invalid.append(InvalidToolCall(call.id, name, args_text,
                                               f"tool {name!r}: {err} (arguments do not match its schema)", call.span))
            else:
                calls.append(ToolCall(call.id, name, call.arguments, call.span))
        invalid.sort(key=lambda c: (c.span or (0, 0))[0])
        return ParsedTurn(turn.content, calls, invalid, turn.pending)

    def template_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """OpenAI-style messages as the chat template expects them.

        Assistant ``tool_calls`` (``{"id", "type", "function": {"name", "arguments"}}``, arguments a dict
        or a JSON string; LangChain's ``{"id", "name", "args"}`` also works) become the format's
        :meth:`~ToolCallFormat.template_call` form with safe names and dict arguments; a message with
        more calls than the format's ``max_calls`` is split. Each tool message's ``tool_call_id`` must
        match an earlier call (else :class:`ToolMessageError`); its id is mapped like the call's, its
        ``name`` filled in and non-text content JSON-encoded.
        """
        out: list[dict[str, Any]] = []
        known: dict[str, str] = {}  # call id -> safe tool name
        for i, msg in enumerate(messages):
            if not isinstance(msg, Mapping):
                raise ToolMessageError(f"message {i} is {msg!r}; each message must be a dict with 'role'")
            m = dict(msg)
            role = m.get("role")
            if role == "assistant" and m.get("tool_calls"):
                calls = [self._past_call(i, j, tc) for j, tc in enumerate(m["tool_calls"])]
                for c in calls:
                    known[c.id] = c.name
                rendered = [self.fmt.template_call(c) for c in calls]
                step = self.fmt.max_calls or len(rendered)
                for k in range(0, len(rendered), step):
                    part = dict(m, tool_calls=rendered[k : k + step])
                    if k:
                        part["content"] = ""
                    elif part.get("content") is None:
                        part["content"] = ""
                    out.append(part)
            elif role == "assistant" and m.get("content") is None:
                out.append(dict(m, content=""))
            elif role == "tool":
                call_id = m.get("tool_call_id")
                if not isinstance(call_id, str) or call_id not in known:
                    raise ToolMessageError(
                        f"tool message {i} has tool_call_id {call_id!r}, which matches no earlier assistant tool call; "
                        f"known call ids: {list(known)}"
                    )
                m["tool_call_id"] = self.fmt.template_id(call_id)
                m["name"] = known[call_id]
                content = m.get("content")
                if not isinstance(content, str):
                    m["content"] = json.dumps(content, ensure_ascii=False, default=str)
                out.append(m)
            else:
                out.append(m)
        return out

    def _past_call(self, i: int, j: int, tc: Any) -> ToolCall:
        if not isinstance(tc, Mapping):
            raise ToolMessageError(f"message {i}: tool call {j} is {tc!r}; expected a dict")
        fn: Mapping[str, Any] = tc["function"] if isinstance(tc.get("function"), Mapping) else tc
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ToolMessageError(f"message {i}: tool call {j} has no function name ({tc!r})")
        args = fn.get("arguments", fn.get("args", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise ToolMessageError(
                    f"message {i}: tool call {j} ({name!r}) has arguments that are not valid JSON: {exc}; "
                    "pass a dict or a JSON object string"
                ) from None
        if not isinstance(args, Mapping):
            raise ToolMessageError(
                f"message {i}: tool call {j} ({name!r}) has arguments {args!r}; pass a dict or a JSON object string"
            )
        call_id = tc.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise ToolMessageError(f"message {i}: tool call {j} ({name!r}) has no id; give each past call an id")
        return ToolCall(call_id, self.names.safe(name), dict(args), (0, 0))

    def check_render(self, tokenizer: Any) -> None:
        """Render all tools with ``tokenizer``'s template; raise :class:`ToolSchemaError` naming a tool it rejects."""
        tools = [s.to_openai(self.names.safe(s.name)) for s in self.specs]
        if not tools:
            return
        try:
            self._render(tokenizer, tools)
            return
        except Exception as exc:  # noqa: BLE001 - any template error is reported as a schema error
            first = exc
        for spec, tool in zip(self.specs, tools, strict=True):
            try:
                self._render(tokenizer, [tool])
            except Exception as exc:  # noqa: BLE001
                raise ToolSchemaError(
                    f"tool {spec.name!r}: the chat template of {getattr(tokenizer, 'name_or_path', '?')!r} cannot "
                    f"render it ({type(exc).__name__}: {exc}); simplify its parameters schema or rename it"
                ) from exc
        raise ToolSchemaError(
            f"the chat template cannot render the tools {[s.name for s in self.specs]} together "
            f"({type(first).__name__}: {first}); each renders alone, so bind fewer tools at once"
        ) from first

    @staticmethod
    def _render(tokenizer: Any, tools: list[dict[str, Any]]) -> str:
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tools=tools, tokenize=False, add_generation_prompt=True
        )
        return str(out)
