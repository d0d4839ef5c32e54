"""Tool-call formats: how each chat-template family writes a tool call, and a parser for each.

A :class:`ToolCallFormat` knows one family's output syntax: :class:`HermesFormat` (Qwen2.5/3 and
Hermes, ``<tool_call>{"name", "arguments"}</tool_call>``), :class:`Llama3Format` (Llama 3.1+,
``<|python_tag|>{"name", "parameters"}``) and :class:`MistralFormat` (``[TOOL_CALLS][{"name",
"arguments"}, ...]``). :data:`TOOL_CALL_FORMATS` is the ordered registry :func:`format_for` searches
(the first format whose :meth:`~ToolCallFormat.detect` accepts the tokenizer's chat template wins);
:func:`register_tool_call_format` extends it. Parsing never raises: a malformed call becomes an
:class:`InvalidToolCall` with the reason. Framework-free (stdlib only).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gradguard.integrations._core.errors import IntegrationError

__all__ = [
    "HermesFormat", "InvalidToolCall", "Llama3Format", "MistralFormat", "ParsedTurn", "TOOL_CALL_FORMATS",
    "ToolCall", "ToolCallFormat", "ToolChoiceError", "ToolMessageError", "ToolSchemaError", "ToolsUnsupportedError",
    "chat_template_text", "format_for", "format_named", "register_tool_call_format",
]


class ToolSchemaError(IntegrationError):
    """A tool's definition is malformed, or the chat template cannot render it (the message names the tool)."""


class ToolsUnsupportedError(IntegrationError):
    """The model's chat template has no tool support, or no registered tool-call format recognises it."""


class ToolChoiceError(IntegrationError):
    """A ``tool_choice`` that names no bound tool, is not understood, or cannot be enforced by the template."""


class ToolMessageError(IntegrationError):
    """A tool message or past tool call in the conversation is malformed (e.g. an id that matches no call)."""


@dataclass(frozen=True)
class ToolCall:
    """One well-formed tool call parsed from generated text.

    ``span`` holds character offsets into the parsed text, from the first character of the function
    name to the end of the arguments' JSON (its closing brace included; end exclusive).
    """

    id: str
    name: str
    arguments: dict[str, Any]
    span: tuple[int, int]


@dataclass(frozen=True)
class InvalidToolCall:
    """A tool call the model attempted but that cannot be used; ``error`` says why.

    ``name`` is the function name when one could be read; ``arguments`` the raw arguments text
    (or the raw call text when the arguments could not be isolated); ``span`` the character range
    of the raw call text (None when unknown).
    """

    id: str
    name: str | None
    arguments: str | None
    error: str
    span: tuple[int, int] | None


@dataclass(frozen=True)
class ParsedTurn:
    """An assistant turn split into its text ``content``, its ``calls`` and its ``invalid`` calls.

    ``pending`` is True when a streamed prefix (``partial=True``) ends inside a call that is not
    finished yet; that call is in neither list.
    """

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    invalid: list[InvalidToolCall] = field(default_factory=list)
    pending: bool = False


# --- position-aware JSON helpers -------------------------------------------------------------------------

_WS = " \t\r\n"
_DECODER = json.JSONDecoder()


class _Bad(ValueError):
    """A call body that cannot be read; the message is the reason reported to the user."""


def _skip_ws(text: str, i: int, end: int | None = None) -> int:
    end = len(text) if end is None else end
    while i < end and text[i] in _WS:
        i += 1
    return i


def _json_extent(text: str, start: int, end: int | None = None) -> int | None:
    """Index just after the JSON object/array opening at ``text[start]``, or None if it is not closed by ``end``."""
    end = len(text) if end is None else end
    depth = 0
    in_str = False
    i = start
    while i < end:
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


@dataclass(frozen=True)
class _Member:
    value: Any
    start: int
    end: int


def _decode_at(text: str, i: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, i)
    except json.JSONDecodeError as exc:
        raise _Bad(f"malformed JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise _Bad("malformed JSON: nested too deeply") from None


def _scan_object(text: str, start: int) -> dict[str, _Member]:
    """The members of the JSON object at ``text[start]`` with where each value lies (``text`` ends at the object)."""
    members: dict[str, _Member] = {}
    i = _skip_ws(text, start + 1)
    if text[i : i + 1] == "}":
        return members
    while True:
        if text[i : i + 1] != '"':
            raise _Bad(f"malformed JSON: expected a double-quoted key at char {i}")
        try:
            key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        except json.JSONDecodeError as exc:
            raise _Bad(f"malformed JSON: {exc.msg} at char {exc.pos}") from None
        i = _skip_ws(text, i)
        if text[i : i + 1] != ":":
            raise _Bad(f"malformed JSON: expected ':' after key {key!r} at char {i}")
        i = _skip_ws(text, i + 1)
        value, end = _decode_at(text, i)
        members[key] = _Member(value, i, end)
        i = _skip_ws(text, end)
        if text[i : i + 1] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if text[i : i + 1] == "}":
            return members
        raise _Bad(f"malformed JSON: expected ',' or '}}' at char {i}")


def _scan_array(text: str, start: int) -> list[_Member]:
    """The elements of the JSON array at ``text[start]`` with where each lies (``text`` ends at the array)."""
    items: list[_Member] = []
    i = _skip_ws(text, start + 1)
    if text[i : i + 1] == "]":
        return items
    while True:
        value, end = _decode_at(text, i)
        items.append(_Member(value, i, end))
        i = _skip_ws(text, end)
        if text[i : i + 1] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if text[i : i + 1] == "]":
            return items
        raise _Bad(f"malformed JSON: expected ',' or ']' at char {i}")


def _hold_back(text: str, *tags: str) -> str:
    """``text`` without a suffix that may be the start of one of ``tags`` (a streamed prefix)."""
    cut = len(text)
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), 0, -1):
            if text.endswith(tag[:n]):
                cut = min(cut, len(text) - n)
                break
    return text[:cut]


class _Collector:
    """Accumulates a turn's content, calls and invalid calls, handing out ids in order of appearance."""

    def __init__(self, fmt: ToolCallFormat, ids: Sequence[str]) -> None:
        self.fmt, self.ids = fmt, list(ids)
        self.content: list[str] = []
        self.calls: list[ToolCall] = []
        self.invalid: list[InvalidToolCall] = []
        self.pending = False

    def _next_id(self, own: Any = None) -> str:
        n = len(self.calls) + len(self.invalid)
        if isinstance(own, str) and own:
            return own
        return self.ids[n] if n < len(self.ids) else self.fmt.new_id()

    def bad(self, error: str, text: str, start: int, end: int, name: str | None = None,
            arguments: str | None = None, *, guess: bool = True) -> None:
        raw = text[start:end].strip()
        if name is None and guess and (m := re.search(r'"name"\s*:\s*"([^"\\]+)"', raw)):
            name = m.group(1)
        self.invalid.append(
            InvalidToolCall(self._next_id(), name, arguments if arguments is not None else raw, error, (start, end))
        )

    def call_from_object(self, text: str, start: int, args_keys: tuple[str, ...] = ("arguments", "parameters"),
                         members: dict[str, _Member] | None = None, *, end: int | None = None) -> None:
        """Record the call written as the JSON object at ``text[start:end]`` (valid or invalid)."""
        end = len(text) if end is None else end
        try:
            members = _scan_object(text[:end], start) if members is None else members
        except _Bad as exc:
            self.bad(str(exc), text, start, end)
            return
        name_m = members.get("name")
        args_m = next((members[k] for k in args_keys if k in members), None)
        id_m = members.get("id")
        raw_args = text[args_m.start : args_m.end] if args_m is not None else None
        name = name_m.value if name_m is not None and isinstance(name_m.value, str) and name_m.value else None
        if name_m is None or name is None:
            why = 'missing "name"' if name_m is None else f'"name" must be a non-empty string, got {name_m.value!r}'
            self.bad(f"{why}; a call is {{\"name\": ..., \"{args_keys[0]}\": {{...}}}}", text, start, end, None,
                     raw_args, guess=False)
            return
        assert name_m is not None
        args: Any = {} if args_m is None else args_m.value
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                self.bad(f'tool {name!r}: "{args_keys[0]}" is a string that is not JSON', text, start, end, name,
                         raw_args)
                return
        if not isinstance(args, dict):
            self.bad(f'tool {name!r}: "{args_keys[0]}" must be a JSON object, got {type(args).__name__}',
                     text, start, end, name, raw_args)
            return
        lo = name_m.start + 1
        hi = name_m.end - 1 if args_m is None else args_m.end
        if args_m is not None and args_m.start < name_m.start:
            lo, hi = args_m.start, name_m.end - 1
        own = id_m.value if id_m is not None else None
        self.calls.append(ToolCall(self._next_id(own), name, args, (lo, hi)))

    def turn(self) -> ParsedTurn:
        return ParsedTurn("".join(self.content).strip(), self.calls, self.invalid, self.pending)


# --- formats ---------------------------------------------------------------------------------------------


class ToolCallFormat(ABC):
    """How one chat-template family writes tool calls. Subclass it and :func:`register_tool_call_format` it.

    ``max_calls`` is how many calls one assistant message of the template can hold (None = any);
    :meth:`~gradguard.integrations._core.tools.ToolBinding.template_messages` splits past messages
    with more calls than that.
    """

    name: str = ""
    max_calls: int | None = None

    @abstractmethod
    def detect(self, chat_template: str) -> bool:
        """Whether a chat template (its text) writes tool calls in this format."""

    @abstractmethod
    def opening(self, name: str | None) -> str:
        """Text that starts a call (``name`` None: any tool; else that tool); "" if the format cannot force one."""

    @abstractmethod
    def parse(self, text: str, *, partial: bool = False, ids: Sequence[str] = ()) -> ParsedTurn:
        """Split generated text into content, calls and invalid calls; never raises.

        ``partial=True``: ``text`` is a streamed prefix; finished calls parse, an unfinished trailing
        call is left out (``pending``), and a trailing fragment that may open a call is held back from
        ``content``. ``ids``: ids to give the first calls (valid or invalid, in order), e.g. those of
        an earlier parse of the same stream, so ids stay stable; more are made with :meth:`new_id`.
        """

    def template_call(self, call: ToolCall) -> dict[str, Any]:
        """A past call as the template expects it in an assistant message's ``tool_calls`` (arguments a dict)."""
        return {
            "id": self.template_id(call.id),
            "type": "function",
            "function": {"name": call.name, "arguments": dict(call.arguments)},
        }

    def template_id(self, call_id: str) -> str:
        """The id written into the template for a call id (the identity unless the template restricts ids)."""
        return call_id

    def new_id(self) -> str:
        """A fresh call id."""
        return "call_" + secrets.token_hex(12)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _reads_tools(chat_template: str) -> bool:
    return re.search(r"\btools\b", chat_template) is not None


class HermesFormat(ToolCallFormat):
    """Qwen2.5/Qwen3 and Hermes: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, several per turn.

    A call whose ``</tool_call>`` is missing at the end of a finished turn is accepted when its JSON
    object is complete (the model ended the turn right after it) and invalid when it is cut off.
    """

    name = "hermes"
    OPEN = "<tool_call>"
    CLOSE = "</tool_call>"

    def detect(self, chat_template: str) -> bool:
        """True for templates that write ``<tool_call>`` and read ``tools``."""
        return self.OPEN in chat_template and _reads_tools(chat_template)

    def opening(self, name: str | None) -> str:
        """``<tool_call>\\n{"name": "`` (any tool: small models end the turn after a bare ``<tool_call>``) or
        ``<tool_call>\\n{"name": "NAME", "arguments": `` (that tool)."""
        if name is None:
            return self.OPEN + '\n{"name": "'
        return self.OPEN + "\n" + '{"name": ' + json.dumps(name) + ', "arguments": '

    #: Also read a turn that is nothing but call objects without the tags (bare or in a ```json fence), as small
    #: Qwen models often write them; set False on an instance for strict parsing.
    lenient: bool = True

    def parse(self, text: str, *, partial: bool = False, ids: Sequence[str] = ()) -> ParsedTurn:
        """Parse ``<tool_call>`` blocks; text outside them is content. With :attr:`lenient`, a turn without tags
        that consists only of ``{"name": ..., "arguments": {...}}`` objects (one after another, or in a JSON
        list, optionally fenced as ```json) is read as those calls."""
        if self.lenient and self.OPEN not in text:
            bare = _bare_calls(self, text, partial, ids)
            if bare is not None:
                return bare
        out = _Collector(self, ids)
        pos = 0
        while True:
            i = text.find(self.OPEN, pos)
            if i < 0:
                tail = text[pos:]
                out.content.append(_hold_back(tail, self.OPEN) if partial else tail)
                break
            out.content.append(text[pos:i])
            body = i + len(self.OPEN)
            j = text.find(self.CLOSE, body)
            if j < 0 and partial:
                out.pending = True
                break
            end = len(text) if j < 0 else j
            k = _skip_ws(text, body, end)
            if k == end:
                out.bad("empty <tool_call> block" if j >= 0 else "the turn ended right after <tool_call>",
                        text, body, end)
            elif text[k] != "{":
                out.bad(f"expected a JSON object after <tool_call>, got {text[k:end].strip()[:40]!r}", text, k, end)
            else:
                ext = _json_extent(text, k, end)
                if ext is None:
                    why = "unterminated JSON object" if j >= 0 else "the turn ended inside the call (no </tool_call>)"
                    out.bad(f"{why}; the call is cut off", text, k, end)
                elif j >= 0 and text[ext:end].strip():
                    out.bad(f"unexpected text after the call's JSON object: {text[ext:end].strip()[:40]!r}",
                            text, k, end)
                else:
                    out.call_from_object(text, k, end=ext)
                    if j < 0:
                        out.content.append(text[ext:])
            if j < 0:
                break
            pos = j + len(self.CLOSE)
        return out.turn()


def _bare_calls(fmt: ToolCallFormat, text: str, partial: bool, ids: Sequence[str]) -> ParsedTurn | None:
    """The turn read as untagged call objects, or None when it is not only that. While streaming (``partial``),
    a turn that may still become one (it starts with ``{``, ``[`` or a fence and is not finished) is pending."""
    k = _skip_ws(text, 0)
    fenced = text.startswith("```", k)
    if fenced:
        newline = text.find("\n", k)
        if newline < 0:
            return ParsedTurn("", pending=True) if partial else None
        label = text[k + 3 : newline].strip().lower()
        if label not in ("", "json"):
            return None
        k = _skip_ws(text, newline + 1)
    if k >= len(text):
        return ParsedTurn("", pending=True) if partial and (fenced or not text.strip()) and text else None
    if text[k] not in "{[":
        return None
    out = _Collector(fmt, ids)
    while k < len(text):
        if fenced and text.startswith("```", k):
            if text[k + 3 :].strip():
                return None  # text after the fence
            break
        ext = _json_extent(text, k)
        if ext is None:
            return ParsedTurn("", pending=True) if partial else None
        try:
            items = _scan_array(text[:ext], k) if text[k] == "[" else [_Member(None, k, ext)]
        except _Bad:
            return None
        for item in items:
            try:
                members = _scan_object(text[: item.end], item.start) if text[item.start] == "{" else {}
            except _Bad:
                return None
            if "name" not in members or not ({"arguments", "parameters"} & set(members)):
                return None  # a JSON answer, not a call
            out.call_from_object(text, item.start, members=members, end=item.end)
        k = _skip_ws(text, ext)
        if k < len(text) and text[k] not in "{[`":
            return None
    if partial and fenced and not text.rstrip().endswith("```"):
        return ParsedTurn("", pending=True)
    return out.turn()


class Llama3Format(ToolCallFormat):
    """Llama 3.1+: ``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``.

    Without the tag, the call must open the turn and have both ``name`` and ``parameters`` (or
    ``arguments``), else the text is content. Calls joined by ``;`` (as small Llama 3.2 models write
    them) all parse; the template holds one call per assistant message (``max_calls = 1``).
    """

    name = "llama3"
    TAG = "<|python_tag|>"
    max_calls = 1

    def detect(self, chat_template: str) -> bool:
        """True for ``<|eot_id|>``-style templates that read ``tools`` and write ``<|python_tag|>`` or "parameters"."""
        return (
            _reads_tools(chat_template)
            and "<|eot_id|>" in chat_template
            and (self.TAG in chat_template or '"parameters"' in chat_template)
        )

    def opening(self, name: str | None) -> str:
        """``{"name": "`` (any tool) or ``{"name": "NAME", "parameters": `` (that tool)."""
        if name is None:
            return '{"name": "'
        return '{"name": ' + json.dumps(name) + ', "parameters": '

    def parse(self, text: str, *, partial: bool = False, ids: Sequence[str] = ()) -> ParsedTurn:
        """Parse a JSON call (after ``<|python_tag|>`` anywhere, or opening the turn); the rest is content."""
        out = _Collector(self, ids)
        t = text.find(self.TAG)
        if t >= 0:
            out.content.append(text[:t])
            start, tagged = t + len(self.TAG), True
        else:
            k = _skip_ws(text, 0)
            if k == len(text) or (partial and self.TAG.startswith(text[k:])):
                out.pending = partial and k < len(text)
                return out.turn()
            if text[k] != "{":
                out.content.append(_hold_back(text, self.TAG) if partial else text)
                return out.turn()
            start, tagged = k, False
        pos = start
        while True:
            k = _skip_ws(text, pos)
            if k == len(text):
                if not out.calls and not out.invalid and not partial:
                    out.bad("nothing follows <|python_tag|>", text, start, len(text))
                break
            if text[k] != "{":
                if tagged and not out.calls and not out.invalid:
                    out.bad(f"not a JSON call (built-in tools such as code are not supported): "
                            f"{text[k:].strip()[:40]!r}", text, k, len(text))
                else:
                    out.content.append(text[k:])
                break
            ext = _json_extent(text, k)
            if ext is None:
                if partial:
                    out.pending = True
                elif tagged or out.calls or re.match(r'\{\s*"name"', text[k:]):
                    out.bad("the turn ended inside the call (its JSON object is cut off)", text, k, len(text))
                else:
                    out.content.append(text[k:])
                break
            try:
                members = _scan_object(text[:ext], k)
            except _Bad as exc:
                if not tagged and not out.calls and not re.match(r'\{\s*"name"', text[k:]):
                    out.content.append(text[k:])
                    break
                out.bad(str(exc), text, k, ext)
            else:
                is_call = "name" in members and ("parameters" in members or "arguments" in members)
                if not tagged and not out.calls and not out.invalid and not is_call:
                    out.content.append(text[k:])  # a JSON answer, not a call
                    break
                out.call_from_object(text, k, ("parameters", "arguments"), members, end=ext)
            j = _skip_ws(text, ext)
            if text[j : j + 1] == ";":
                pos = j + 1
                continue
            out.content.append(text[ext:])
            break
        return out.turn()


_ALNUM = string.ascii_letters + string.digits


class MistralFormat(ToolCallFormat):
    """Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` with 9-character alphanumeric ids.

    Also reads the newer ``[TOOL_CALLS]name[ARGS]{...}`` form, and a leading bare JSON array of calls
    (what is left when the special ``[TOOL_CALLS]`` token is decoded away).
    """

    name = "mistral"
    TAG = "[TOOL_CALLS]"
    _NAMED = re.compile(r"([A-Za-z0-9_.:\-]+)(?:\[CALL_ID\]([A-Za-z0-9]+))?\[ARGS\]")
    _BARE = re.compile(r'\[\s*\{\s*"(?:name|id|arguments)"')

    def detect(self, chat_template: str) -> bool:
        """True for templates that write ``[TOOL_CALLS]`` and read ``tools``."""
        return self.TAG in chat_template and _reads_tools(chat_template)

    def opening(self, name: str | None) -> str:
        """``[TOOL_CALLS]`` (any tool) or ``[TOOL_CALLS] [{"name": "NAME", "arguments": `` (that tool)."""
        if name is None:
            return self.TAG
        return self.TAG + ' [{"name": ' + json.dumps(name) + ', "arguments": '

    def template_id(self, call_id: str) -> str:
        """The id itself if it is 9 alphanumeric characters (the template requires that), else one derived from it."""
        if re.fullmatch(r"[A-Za-z0-9]{9}", call_id):
            return call_id
        n = int.from_bytes(hashlib.sha256(call_id.encode("utf-8")).digest()[:8], "big")
        chars = []
        for _ in range(9):
            n, r = divmod(n, len(_ALNUM))
            chars.append(_ALNUM[r])
        return "".join(chars)

    def new_id(self) -> str:
        """Nine random alphanumeric characters."""
        return "".join(secrets.choice(_ALNUM) for _ in range(9))

    def parse(self, text: str, *, partial: bool = False, ids: Sequence[str] = ()) -> ParsedTurn:
        """Parse ``[TOOL_CALLS]`` blocks (a JSON array, one object, or ``name[ARGS]{...}``); the rest is content."""
        out = _Collector(self, ids)
        pos = 0
        k0 = _skip_ws(text, 0)
        bare = self._BARE.match(text, k0) is not None or (partial and text[k0:] and self._may_be_bare(text[k0:]))
        while True:
            if bare:
                i, body = k0, k0
                bare = False
            else:
                i = text.find(self.TAG, pos)
                if i < 0:
                    tail = text[pos:]
                    out.content.append(_hold_back(tail, self.TAG) if partial else tail)
                    break
                body = i + len(self.TAG)
            out.content.append(text[pos:i])
            k = _skip_ws(text, body)
            if k == len(text):
                if partial:
                    out.pending = True
                else:
                    out.bad("nothing follows [TOOL_CALLS]", text, body, len(text))
                break
            if text[k] in "[{":
                ext = _json_extent(text, k)
                if ext is None:
                    if partial:
                        out.pending = True
                    else:
                        out.bad("the turn ended inside the call (its JSON is cut off)", text, k, len(text))
                    break
                self._json_calls(out, text, k, ext)
                pos = ext
            else:
                m = self._NAMED.match(text, k)
                if m is None:
                    if partial and re.fullmatch(r"[A-Za-z0-9_.:\-]*(\[[A-Z_]*)?(\][A-Za-z0-9]*)?(\[[A-Z]*)?",
                                                text[k:]):
                        out.pending = True
                    else:
                        out.bad(f"expected a JSON array of calls after [TOOL_CALLS], got {text[k:k + 40]!r}",
                                text, k, len(text))
                    break
                a = _skip_ws(text, m.end())
                ext = _json_extent(text, a) if text[a : a + 1] == "{" else None
                if ext is None:
                    if partial and (a == len(text) or text[a] == "{"):
                        out.pending = True
                    else:
                        out.bad(f"tool {m.group(1)!r}: [ARGS] must be followed by a complete JSON object",
                                text, k, len(text), m.group(1))
                    break
                self._named_call(out, text, m, a, ext)
                pos = ext
        return out.turn()

    @staticmethod
    def _may_be_bare(text: str) -> bool:
        return re.fullmatch(r'\[\s*(\{\s*("[a-z]*)?)?', text) is not None or (
            MistralFormat._BARE.match(text) is not None)

    def _json_calls(self, out: _Collector, text: str, k: int, ext: int) -> None:
        if text[k] == "{":
            out.call_from_object(text, k, end=ext)
            return
        try:
            items = _scan_array(text[:ext], k)
        except _Bad as exc:
            out.bad(str(exc), text, k, ext)
            return
        if not items:
            out.bad("empty list of calls after [TOOL_CALLS]", text, k, ext)
        for item in items:
            if isinstance(item.value, dict):
                out.call_from_object(text, item.start, end=item.end)
            else:
                out.bad(f"each call must be a JSON object, got {type(item.value).__name__}",
                        text, item.start, item.end)

    def _named_call(self, out: _Collector, text: str, m: re.Match[str], a: int, ext: int) -> None:
        name, own_id = m.group(1), m.group(2)
        try:
            args, _ = _decode_at(text[:ext], a)
        except _Bad as exc:
            out.bad(f"tool {name!r}: {exc}", text, m.start(), ext, name, text[a:ext])
            return
        if not isinstance(args, dict):
            out.bad(f"tool {name!r}: arguments must be a JSON object", text, m.start(), ext, name, text[a:ext])
            return
        out.calls.append(ToolCall(out._next_id(own_id), name, args, (m.start(1), ext)))


# --- registry --------------------------------------------------------------------------------------------

#: The ordered registry :func:`format_for` searches; the first format that detects the template wins.
TOOL_CALL_FORMATS: list[ToolCallFormat] = [HermesFormat(), MistralFormat(), Llama3Format()]


def register_tool_call_format(fmt: ToolCallFormat, *, first: bool = True) -> ToolCallFormat:
    """Add a format to :data:`TOOL_CALL_FORMATS` (before the built-in ones unless ``first=False``).

    A format with the same ``name`` already registered is replaced. Returns ``fmt``.
    """
    if not isinstance(fmt, ToolCallFormat):
        raise ToolsUnsupportedError(
            f"register_tool_call_format got {fmt!r}; pass an instance of a ToolCallFormat subclass"
        )
    if not fmt.name:
        raise ToolsUnsupportedError(f"tool-call format {fmt!r} has no name; set the class attribute `name`")
    TOOL_CALL_FORMATS[:] = [f for f in TOOL_CALL_FORMATS if f.name != fmt.name]
    if first:
        TOOL_CALL_FORMATS.insert(0, fmt)
    else:
        TOOL_CALL_FORMATS.append(fmt)
    return fmt


def format_named(name: str) -> ToolCallFormat:
    """The registered format called ``name`` (``"hermes"``, ``"llama3"``, ``"mistral"`` or one registered)."""
    for fmt in TOOL_CALL_FORMATS:
        if fmt.name == name:
            return fmt
    raise ToolsUnsupportedError(
        f"no tool-call format named {name!r}; registered: {[f.name for f in TOOL_CALL_FORMATS]}"
    )


def chat_template_text(tokenizer: Any) -> str | None:
    """The tokenizer's chat template as text: a named ``tool_use`` template when present, else all of them joined."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    if isinstance(template, str):
        return template
    if isinstance(template, dict):
        named = {str(k): str(v) for k, v in template.items()}
    elif isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        named = {str(t.get("name")): str(t.get("template")) for t in template if isinstance(t, dict)}
    else:
        return str(template)
    return named.get("tool_use") or "\n".join(named[k] for k in sorted(named))


def _model_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "")
    return f"model {name!r}" if name else f"this tokenizer ({type(tokenizer).__name__})"


def format_for(tokenizer: Any) -> ToolCallFormat:
    """The first registered format whose ``detect`` accepts the tokenizer's chat template.

    Raises :class:`ToolsUnsupportedError` when the template never reads ``tools`` (or is missing),
    or when no registered format recognises it.
    """
    model = _model_name(tokenizer)
    template = chat_template_text(tokenizer)
    fix = ("use a model whose template renders tools (Qwen2.5/3, Llama 3.1+, Mistral, Hermes) or set "
           "tokenizer.chat_template")
    if template is None:
        raise ToolsUnsupportedError(f"{model} has no chat template, so it has no tool support; {fix}")
    if not _reads_tools(template):
        raise ToolsUnsupportedError(
            f"the chat template of {model} has no tool support (it never reads `tools`); {fix}"
        )
    for fmt in TOOL_CALL_FORMATS:
        if fmt.detect(template):
            return fmt
    raise ToolsUnsupportedError(
        f"the chat template of {model} reads `tools` but no registered tool-call format recognises it "
        f"(registered: {[f.name for f in TOOL_CALL_FORMATS]}); register one with register_tool_call_format(...) "
        "or pass a format explicitly"
    )
