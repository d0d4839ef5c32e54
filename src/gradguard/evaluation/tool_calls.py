"""The ``tools`` task: BFCL-format questions, BFCL's checker rules, and per-call scores, labels and metrics.

**Data** (:func:`load_tool_items`): one JSON object per line, the format of ``../shared/data/bfcl/``::

    {"id": str, "messages": [{"role", "content"}, ...], "tools": [{"type": "function", "function": {...}}],
     "ground_truth": [{function_name: {argument: [acceptable values, ...]}}], "category": str}

``ground_truth: []`` marks an *irrelevant* question: no tool fits, and the right answer is no call.

**Checker** (:func:`check_call`), the rules of BFCL's AST checker (``bfcl_eval/eval_checker/ast_eval/
ast_checker.py``, ``simple_function_checker``) for Python-typed schemas:

- the function name must be the expected one (the :class:`~gradguard.integrations._core.tools.ToolBinding`
  has already mapped any safe name back);
- every ``required`` argument is present, no argument outside the schema or the ground truth is given, and an
  argument the ground truth lists without ``""`` among its values may not be omitted (``""`` = may be omitted);
- types: an ``integer`` needs an int (a bool is not one), a ``number`` takes a float **or an int** (BFCL's
  int → float promotion; here also inside arrays of numbers), ``string`` a str, ``boolean`` a bool, ``array``
  a list (elements checked against ``items``), ``object`` a dict. A value of the ground truth's own type is
  accepted where that differs from the schema's (BFCL's *variable* case) and then compared exactly;
- values: strings are compared after BFCL's :func:`standardize_string` (lower case; spaces and ``,./-_*^``
  removed; ``'`` → ``"``); lists and dicts elementwise with the same rules; numbers by value.

An answer to a relevant question is right when it makes exactly as many calls as the ground truth has, each
matching a different ground-truth call, and no malformed call. An answer to an irrelevant question is right
when it makes no call at all (a malformed attempt counts as a call). **Per call**, a call is right when it
matches a ground-truth call no earlier call of the answer matched; every call on an irrelevant question, and
every malformed call, is wrong.

**Harness** (:func:`run_tool_harness`): each question's tools are bound with
:class:`~gradguard.integrations._core.tools.ToolBinding`, the answer is generated and scored in one pass with one
:class:`~gradguard.scorer.SpanPlan` part per call, and the record (answer, calls, per-call results) is cached and
resumable. :func:`json_call_format` (``--tool-format hermes-json``) also reads calls written as bare or fenced
JSON. **Report** (:func:`evaluate_tools`): call accuracy, the no-call rate on irrelevant questions, per-call and
per-answer AUROC/AURC/PRR of every score and of the confidence, the scoring/generation time ratio.
**Calibration** (:func:`cmd_calibrate_tools`): one row per call made (:func:`tool_fit_data`), the fit of
:mod:`gradguard.calibration.fit` with folds grouped by item id, stored in the profile as task ``tools``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from gradguard.calibration.harness import HarnessSettings, KeyedRecord, encode_hidden, generation_key, scoring_key
from gradguard.calibration.model import scalar_features
from gradguard.data import DataFormatError, file_sha256, iter_jsonl
from gradguard.errors import GradguardError
from gradguard.result import HIDDEN_POSITIONS, HiddenStates, ScoreResult
from gradguard.scores import FEATURES
from gradguard.tasks import Task, builtin_task

if TYPE_CHECKING:
    from gradguard.calibration.probe_fit import FitData

__all__ = [
    "ToolItem",
    "load_tool_items",
    "files_sha256",
    "standardize_string",
    "CallCheck",
    "check_call",
    "label_calls",
    "answer_correct",
    "json_call_format",
    "resolve_tool_format",
    "TOOL_CACHE_FILE",
    "CallRecord",
    "ToolRecord",
    "ToolScorerLike",
    "run_tool_harness",
    "ToolOutcome",
    "judge_tool_records",
    "CallRow",
    "call_rows",
    "tool_fit_data",
    "ToolsSummary",
    "evaluate_tools",
    "call_method_confidences",
    "calibrated_call_confidences",
    "format_tools_table",
    "tool_result_rows",
    "write_tools_report",
    "data_label",
    "cmd_eval_tools",
    "cmd_calibrate_tools",
]


# --------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ToolItem:
    """One tool-calling question: the chat so far, the tools offered, and the acceptable calls.

    ``ground_truth`` holds one ``{function_name: {argument: [acceptable values]}}`` per expected call; it is
    empty for an *irrelevant* question (the right answer makes no call). ``index`` is the position among all
    items read; ``group`` (the item id) is the cross-validation fold key.
    """

    index: int
    id: str
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...]
    ground_truth: tuple[dict[str, dict[str, list[Any]]], ...]
    category: str
    source: str = ""

    @property
    def irrelevant(self) -> bool:
        """True when no tool fits: the right answer makes no call."""
        return not self.ground_truth

    @property
    def group(self) -> str:
        """The fold key: one item never lies on both sides of a split."""
        return f"id:{self.id}"

    def schema(self, name: str) -> dict[str, Any] | None:
        """The ``parameters`` schema of the offered tool ``name``, or None when no tool has that name."""
        for tool in self.tools:
            fn = tool["function"]
            if fn["name"] == name:
                params = fn.get("parameters") or {}
                return dict(params)
        return None


def _tool_dict(where: str, tool: Any) -> dict[str, Any]:
    """An OpenAI tool dict from an OpenAI dict or a bare ``{"name", "description", "parameters"}``."""
    if not isinstance(tool, dict):
        raise DataFormatError(f"{where}: each tool must be a JSON object, got {tool!r}")
    fn = tool.get("function") if tool.get("type") == "function" else tool
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise DataFormatError(f'{where}: a tool needs a non-empty "name" (got {tool!r})')
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise DataFormatError(f'{where}: tool {fn["name"]!r} has "parameters" {params!r}; pass a JSON schema object')
    return {"type": "function", "function": {**fn, "parameters": params}}


def _ground_truth(where: str, value: Any, names: set[str]) -> tuple[dict[str, dict[str, list[Any]]], ...]:
    if not isinstance(value, list):
        raise DataFormatError(f'{where}: "ground_truth" must be a list of calls ([] = no call is right)')
    out = []
    for call in value:
        if not isinstance(call, dict) or len(call) != 1:
            raise DataFormatError(f"{where}: each ground-truth call must be {{function_name: {{argument: [values]}}}}")
        ((name, args),) = call.items()
        if name not in names:
            raise DataFormatError(f"{where}: ground truth calls {name!r}, which is not among the tools {sorted(names)}")
        if not isinstance(args, dict) or not all(isinstance(v, list) for v in args.values()):
            raise DataFormatError(
                f"{where}: ground truth of {name!r} must map each argument to a list of acceptable values"
            )
        out.append({name: {k: list(v) for k, v in args.items()}})
    return tuple(out)


def load_tool_items(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    n: int | None = None,
    *,
    shuffle_seed: int | None = None,
) -> list[ToolItem]:
    """The items of one or more BFCL-format JSONL files, in file order (``n`` of them; all if None).

    With ``shuffle_seed`` the items of all files are shuffled before ``n`` are taken. A malformed line raises
    :class:`~gradguard.data.DataFormatError` naming the file and line; an id seen twice is an error too (ids
    are the cross-validation groups).
    """
    if n is not None and n < 1:
        raise DataFormatError(f"n={n} must be a positive number of questions (or None for all)")
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not files:
        raise DataFormatError("no data file given; pass at least one BFCL-format JSONL file")
    items: list[ToolItem] = []
    seen: dict[str, str] = {}
    for path in files:
        for lineno, obj in iter_jsonl(path):
            where = f"{path}:{lineno}"
            ident = obj.get("id")
            ident = str(ident) if ident is not None else f"{Path(path).stem}_{lineno}"
            if ident in seen:
                raise DataFormatError(f"{where}: id {ident!r} was already used at {seen[ident]}; ids must be unique")
            seen[ident] = where
            messages = obj.get("messages")
            if (
                not isinstance(messages, list)
                or not messages
                or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
            ):
                raise DataFormatError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}}')
            tools = obj.get("tools")
            if not isinstance(tools, list) or not tools:
                raise DataFormatError(f'{where}: "tools" must be a non-empty list of tool schemas')
            tool_dicts = tuple(_tool_dict(where, t) for t in tools)
            names = {t["function"]["name"] for t in tool_dicts}
            if "ground_truth" not in obj:
                raise DataFormatError(f'{where}: no "ground_truth"; give the acceptable calls ([] = no call)')
            category = obj.get("category", "")
            items.append(
                ToolItem(
                    index=len(items),
                    id=ident,
                    messages=tuple(dict(m) for m in messages),
                    tools=tool_dicts,
                    ground_truth=_ground_truth(where, obj["ground_truth"], names),
                    category=str(category) if category else ("irrelevance" if not obj["ground_truth"] else ""),
                    source=Path(path).name,
                )
            )
    if not items:
        raise DataFormatError(f"{', '.join(map(str, files))} hold no questions; pass BFCL-format JSONL files")
    if shuffle_seed is not None:
        import random

        random.Random(shuffle_seed).shuffle(items)
    if n is not None:
        items = items[:n]
    return [ToolItem(**{**item.__dict__, "index": i}) for i, item in enumerate(items)]


def files_sha256(paths: Sequence[str | os.PathLike[str]]) -> str:
    """The SHA-256 of one file, or of the newline-joined SHA-256s of several (in order)."""
    digests = [file_sha256(p) for p in paths]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


# ------------------------------------------------------------------------------------------------ checker


def standardize_string(text: str) -> str:
    """BFCL's string normalisation: spaces and ``,./-_*^`` removed, lower case, ``'`` → ``"``."""
    return re.sub(r"[ ,./\-_*^]", "", text).lower().replace("'", '"')


@dataclass(frozen=True)
class CallCheck:
    """The verdict on one call: ``valid`` and, when not, BFCL's error type and a readable reason."""

    valid: bool
    error: str = ""
    error_type: str = ""


_OK = CallCheck(True)

#: JSON-schema (and BFCL's own) type names → the Python type a value must have.
_PY_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "number": float,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "object": dict,
    "dict": dict,
    "any": str,
}
_NUMBER = ("number", "float")


def _type_name(schema: Mapping[str, Any] | None) -> str | None:
    if not schema:
        return None
    t = schema.get("type")
    if isinstance(t, list):  # ["number", "null"] and the like: the first non-null type
        t = next((x for x in t if x != "null"), None)
    return t if isinstance(t, str) and t in _PY_TYPES else None


def _is(value: Any, py: type) -> bool:
    """``type(value) is py`` — exact, as BFCL checks (a bool is not an int)."""
    return type(value) is py


def _promote(value: Any, type_name: str | None) -> Any:
    """BFCL's int → float promotion for a number parameter."""
    if type_name in _NUMBER and _is(value, int):
        return float(value)
    return value


def _answer_type(acceptable: Sequence[Any]) -> type | None:
    """The type of the first acceptable value that is not the omission marker ``""``."""
    return next((type(a) for a in acceptable if a != ""), None)


def _same(value: Any, expected: Any) -> bool:
    """Elementwise equality with BFCL's string normalisation; a bool only equals a bool; numbers by value."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(value, (int, float)) and isinstance(expected, (int, float)):
        return float(value) == float(expected)
    if isinstance(value, str) and isinstance(expected, str):
        return standardize_string(value) == standardize_string(expected)
    if isinstance(value, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(value) == len(expected) and all(_same(v, e) for v, e in zip(value, expected, strict=True))
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(_same(value[k], expected[k]) for k in value)
    return bool(value == expected)


def _element_type_ok(item: Any, items_type: str | None, acceptable_list: Sequence[Any]) -> bool:
    if items_type is None:
        return True
    py = _PY_TYPES[items_type]
    if _is(_promote(item, items_type), py):
        return True
    own = _answer_type(acceptable_list)
    return own is not None and _is(item, own)


def _type_check(
    param: str, value: Any, acceptable: Sequence[Any], type_name: str, items_type: str | None
) -> tuple[CallCheck, bool]:
    """``(verdict, is_variable)`` by BFCL's ``type_checker`` (nested: one level, arrays only)."""
    py = _PY_TYPES[type_name]
    own = _answer_type(acceptable)
    is_variable = own is not None and own is not py
    if _is(value, py):
        if type_name not in ("array", "tuple") or items_type is None:
            return _OK, is_variable
        lists = [a for a in acceptable if isinstance(a, list)]
        if not lists or any(all(_element_type_ok(v, items_type, a) for v in value) for a in lists):
            return _OK, is_variable
    if own is not None and _is(value, own):
        return _OK, True
    return (
        CallCheck(
            False,
            f"argument {param!r} has type {type(value).__name__}, expected {type_name}"
            + (f" of {items_type}" if items_type else "")
            + f" (value {value!r})",
            "type_error",
        ),
        False,
    )


def _dict_ok(value: Mapping[str, Any], acceptable: Sequence[Any]) -> bool:
    """BFCL's ``dict_checker``: some acceptable dict accepts every key given and every key left out."""
    for option in acceptable:
        if not isinstance(option, dict):
            continue
        given_ok = all(
            key in option and any(_same(v, a) for a in option[key] if isinstance(option[key], list))
            for key, v in value.items()
        )
        omitted_ok = all(key in value or "" in vals for key, vals in option.items())
        if given_ok and omitted_ok:
            return True
    return False


def _list_of_dicts_ok(value: Sequence[Any], acceptable: Sequence[Any]) -> bool:
    """BFCL's ``list_dict_checker``: same length as an acceptable list, each dict accepted in order."""
    for option in acceptable:
        if not isinstance(option, list) or len(option) != len(value):
            continue
        if all(isinstance(v, dict) and _dict_ok(v, [o]) for v, o in zip(value, option, strict=True)):
            return True
    return False


def check_call(
    name: str,
    arguments: Mapping[str, Any],
    expected: Mapping[str, Mapping[str, Sequence[Any]]],
    schema: Mapping[str, Any] | None,
) -> CallCheck:
    """Check one call against one ground-truth call ``{function_name: {argument: [acceptable]}}``.

    ``schema`` is the expected function's ``parameters`` JSON schema (``properties``, ``required``). The rules
    are listed in the module docstring.
    """
    ((want, acceptable_args),) = expected.items()
    if name != want:
        return CallCheck(False, f"called {name!r}, expected {want!r}", "wrong_func_name")
    schema = schema or {}
    properties: Mapping[str, Any] = schema.get("properties") or {}
    for param in schema.get("required") or ():
        if param not in arguments:
            return CallCheck(False, f"required argument {param!r} is missing", "missing_required")
    for param, raw in arguments.items():
        if param not in properties or param not in acceptable_args:
            return CallCheck(False, f"unexpected argument {param!r}", "unexpected_param")
        acceptable = list(acceptable_args[param])
        prop = properties[param] if isinstance(properties[param], Mapping) else {}
        type_name = _type_name(prop)
        items_type = _type_name(prop.get("items")) if type_name in ("array", "tuple") else None
        value = _promote(raw, type_name)
        is_variable = False
        if type_name is not None:
            verdict, is_variable = _type_check(param, value, acceptable, type_name, items_type)
            if not verdict.valid:
                return verdict
        if is_variable:
            ok = any(value == a and type(value) is type(a) for a in acceptable)
        elif type_name in ("object", "dict"):
            ok = _dict_ok(value, acceptable)
        elif type_name in ("array", "tuple") and items_type in ("object", "dict"):
            ok = _list_of_dicts_ok(value, acceptable)
        else:
            ok = any(_same(value, a) for a in acceptable)
        if not ok:
            shown = [a for a in acceptable if a != ""]
            return CallCheck(False, f"argument {param!r} = {raw!r} is not one of {shown!r}", "value_error")
    for param, values in acceptable_args.items():
        if param not in arguments and "" not in values:
            return CallCheck(False, f"argument {param!r} was left out but has no default", "missing_optional")
    return _OK


def label_calls(item: ToolItem, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> list[CallCheck]:
    """Per-call verdicts for the ``(name, arguments)`` calls one answer made to ``item``, in order.

    A call is right when it matches a ground-truth call that no earlier call matched; any call to an
    irrelevant question is wrong. For a wrong call the reason given is the first ground-truth call's.
    """
    if item.irrelevant:
        return [CallCheck(False, "a call was made, but no tool fits the question", "irrelevance") for _ in calls]
    free = list(range(len(item.ground_truth)))
    out = []
    for name, arguments in calls:
        first: CallCheck | None = None
        for k in free:
            expected = item.ground_truth[k]
            (want,) = expected
            verdict = check_call(name, arguments, expected, item.schema(want))
            if verdict.valid:
                free.remove(k)
                first = verdict
                break
            first = first or verdict
        out.append(first or CallCheck(False, "more calls than the question needs", "wrong_count"))
    return out


def answer_correct(item: ToolItem, calls: Sequence[tuple[str, Mapping[str, Any]]], n_invalid: int = 0) -> bool:
    """Whether an answer that made ``calls`` (and ``n_invalid`` malformed ones) is right for ``item``."""
    if item.irrelevant:
        return not calls and n_invalid == 0
    if n_invalid or len(calls) != len(item.ground_truth):
        return False
    return all(c.valid for c in label_calls(item, calls))


# ------------------------------------------------------------------------------------------- lenient format

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n")
_WRAP_OPEN = "<tool_call>\n"


def resolve_tool_format(name: str | None) -> Any:
    """The tool-call format called ``name``: None or ``"auto"`` = detected from the chat template (None),
    ``"hermes-json"`` = :func:`json_call_format`, else a registered format (``hermes``, ``llama3``, ``mistral``)."""
    if name is None or name == "auto":
        return None
    if name == "hermes-json":
        return json_call_format()
    from gradguard.integrations._core.tool_formats import format_named

    return format_named(name)


def _json_call(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("name"), str) and ("arguments" in obj or "parameters" in obj)


def json_call_format() -> Any:
    """A :class:`~gradguard.integrations._core.tool_formats.HermesFormat` that reads more calls written as JSON.

    Small Qwen models (the embedded Qwen2.5-Coder-0.5B-Instruct among them) answer a tools prompt with
    ``{"name": ..., "arguments": {...}}``, bare or in a Markdown code fence (```` ```json ````), not inside
    ``<tool_call>`` tags. The Hermes format reads a turn made only of such objects; this one (name
    ``hermes-json``) also reads, in a finished turn without tags, a call object (or an array of them) that
    opens a code fence anywhere in the turn — text around it is content — and records one that does not decode
    as an invalid call. Spans follow the Hermes rule (name to end of arguments).
    """
    from gradguard.integrations._core.tool_formats import HermesFormat, ParsedTurn

    class JsonCallHermesFormat(HermesFormat):
        name = "hermes-json"

        def parse(self, text: str, *, partial: bool = False, ids: Sequence[str] = ()) -> Any:
            if partial or self.OPEN in text:
                return super().parse(text, partial=partial, ids=ids)
            regions = _json_call_regions(text)
            if not regions:
                return super().parse(text, partial=partial, ids=ids)
            calls: list[Any] = []
            invalid: list[Any] = []
            content: list[str] = []
            pos = 0
            ids = list(ids)
            for outer, objects in regions:
                content.append(text[pos : outer[0]])
                pos = outer[1]
                for start, end in objects:
                    n = len(calls) + len(invalid)
                    wrapped = _WRAP_OPEN + text[start:end] + "\n" + self.CLOSE
                    turn = super().parse(wrapped, ids=ids[n : n + 1])
                    shift = start - len(_WRAP_OPEN)
                    calls += [replace(c, span=(c.span[0] + shift, c.span[1] + shift)) for c in turn.calls]
                    invalid += [
                        replace(c, span=None if c.span is None else (c.span[0] + shift, c.span[1] + shift))
                        for c in turn.invalid
                    ]
            content.append(text[pos:])
            return ParsedTurn("".join(content).strip(), calls, invalid)

    return JsonCallHermesFormat()


def _json_call_regions(text: str) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """``[((outer start, outer end), [(object start, object end), ...])]`` of the JSON calls in ``text``.

    Candidates open the text or a code fence; the outer range covers the fence. A candidate that does not
    decode but names a ``"name"`` is returned whole (it parses as an invalid call).
    """
    decoder = json.JSONDecoder()
    anchors: list[tuple[int, int, int | None]] = []  # (outer start, object start, closing fence end)
    first = len(text) - len(text.lstrip())
    if text[first : first + 1] in ("{", "["):
        anchors.append((first, first, None))
    for m in _FENCE.finditer(text):
        k = m.end() + (len(text[m.end() :]) - len(text[m.end() :].lstrip()))
        if text[k : k + 1] in ("{", "["):
            close = text.find("```", k)
            anchors.append((m.start(), k, close + 3 if close >= 0 else None))
    out: list[tuple[tuple[int, int], list[tuple[int, int]]]] = []
    last = -1
    for outer_start, k, fence_end in anchors:
        if k <= last:
            continue
        limit = fence_end - 3 if fence_end is not None else len(text)
        try:
            obj, end = decoder.raw_decode(text[:limit], k)
        except json.JSONDecodeError:
            raw = text[k:limit]
            if '"name"' in raw:
                out.append(((outer_start, fence_end or len(text)), [(k, len(raw.rstrip()) + k)]))
                last = limit
            continue
        if _json_call(obj):
            objects = [(k, end)]
        elif isinstance(obj, list) and obj and all(_json_call(o) for o in obj):
            objects = _array_elements(text, k, end)
        else:
            continue
        out.append(((outer_start, fence_end if fence_end is not None else end), objects))
        last = end
    return out


def _array_elements(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Where each element of the (valid) JSON array ``text[start:end]`` lies."""
    decoder = json.JSONDecoder()
    spans: list[tuple[int, int]] = []
    i = start + 1
    while True:
        while i < end and text[i] in " \t\r\n,":
            i += 1
        if i >= end or text[i] == "]":
            return spans
        _, j = decoder.raw_decode(text[:end], i)
        spans.append((i, j))
        i = j


# ------------------------------------------------------------------------------------------------ harness

#: The tools harness's cache file, beside the QA harness's ``records.jsonl`` in the same cache folder.
TOOL_CACHE_FILE = "tool_records.jsonl"
#: Bumped when tool records change shape or the span plan changes, so older records are re-scored.
TOOL_SCORING_FORMAT = 1


def _decode_hidden(hidden: str | None, layers: tuple[int, ...], d: int | None) -> NDArray[np.float32] | None:
    if hidden is None or d is None:
        return None
    flat = np.frombuffer(base64.b64decode(hidden), dtype=np.float16).astype(np.float32)
    return flat.reshape(len(HIDDEN_POSITIONS), len(layers), d)


def _hidden_fields(result: ScoreResult | None) -> dict[str, Any]:
    if result is None or result.hidden is None:
        return {}
    hidden, d = encode_hidden(result.hidden)
    return {"hidden": hidden, "hidden_d": d, "hidden_layers": result.hidden.layers}


class CallRecord(BaseModel):
    """One call an answer made — parsed and checked against the tool (``valid``) or malformed — with its scores.

    ``result`` is the call's own :class:`~gradguard.result.ScoreResult` (its ``span`` the call's tokens, from the
    first name token to the last argument token); None when the call could not be located in the tokens.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str | None
    arguments: dict[str, Any] | None = None
    raw_arguments: str | None = None
    valid: bool
    error: str | None = None
    char_span: tuple[int, int] | None = None
    token_span: tuple[int, int] | None = None
    result: ScoreResult | None = None
    hidden_layers: tuple[int, ...] = ()
    hidden: str | None = Field(None, repr=False, description="base64 float16 array [positions, layers, d].")
    hidden_d: int | None = None

    def hidden_array(self) -> NDArray[np.float32] | None:
        """The call's hidden states as ``[len(HIDDEN_POSITIONS), len(hidden_layers), d]`` fp32, or None."""
        return _decode_hidden(self.hidden, self.hidden_layers, self.hidden_d)

    def live_result(self) -> ScoreResult | None:
        """``result`` with its hidden states restored (what a calibration reads), or None."""
        arr = self.hidden_array()
        if self.result is None or arr is None:
            return self.result
        states = {p: arr[i] for i, p in enumerate(HIDDEN_POSITIONS)}
        return self.result.model_copy(update={"hidden": HiddenStates(layers=self.hidden_layers, states=states)})


class ToolRecord(KeyedRecord):
    """One tool question's cached outcome: the message-level result, the text content and every call made."""

    index: int
    item_id: str
    category: str = ""
    irrelevant: bool = False
    group: str | None = None
    result: ScoreResult | None = None
    content: str = ""
    calls: tuple[CallRecord, ...] = ()
    error: str | None = None
    hidden_layers: tuple[int, ...] = ()
    hidden: str | None = Field(None, repr=False, description="base64 float16 array [positions, layers, d].")
    hidden_d: int | None = None

    @property
    def has_answer(self) -> bool:
        """True when the answer was generated and scored (its tokens can be re-scored)."""
        return self.result is not None

    def live_result(self) -> ScoreResult | None:
        """The message-level ``result`` with its hidden states restored, or None."""
        arr = _decode_hidden(self.hidden, self.hidden_layers, self.hidden_d)
        if self.result is None or arr is None:
            return self.result
        states = {p: arr[i] for i, p in enumerate(HIDDEN_POSITIONS)}
        return self.result.model_copy(update={"hidden": HiddenStates(layers=self.hidden_layers, states=states)})


class ToolScorerLike(Protocol):
    """What the tools harness needs from :class:`gradguard.GradScorer` (its tools, prefill and spans support)."""

    model_name: str
    spt_offset: int
    layer_span: tuple[int, int]
    hidden_layers: tuple[int, ...]
    tokenizer: Any

    def generate_and_score(self, messages: Any, **kw: Any) -> ScoreResult: ...

    def score(self, messages: Any, response: Any, **kw: Any) -> ScoreResult: ...


#: Makes the binding of one item's tools (default: ``ToolBinding.create(scorer.tokenizer, tools, "auto")``).
BindingFactory = Callable[[Sequence[dict[str, Any]]], Any]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:24]


@dataclass
class _Plan:
    """The span callback handed to the scorer, and what it parsed (reused to build the call records)."""

    binding: Any
    tokenizer: Any
    ids: list[int] | None = None
    turn: Any = None
    entries: list[tuple[Any, bool, tuple[int, int] | None]] = field(default_factory=list)

    def __call__(self, ids: list[int]) -> Any:
        from gradguard.scorer import SpanPlan

        self.parse(ids)
        return SpanPlan(None, [span for _, _, span in self.entries if span is not None])

    def parse(self, ids: Sequence[int]) -> None:
        """Parse the answer ``ids`` and locate each call's tokens (``token_span`` of its character span)."""
        from gradguard.prompting import token_span

        self.ids = [int(i) for i in ids]
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        self.turn = self.binding.parse(text)
        calls = [(c, True) for c in self.turn.calls] + [(c, False) for c in self.turn.invalid]
        calls.sort(key=lambda cv: (cv[0].span or (len(text), len(text)))[0])
        self.entries = []
        for call, valid in calls:
            span = None
            if call.span is not None and 0 <= call.span[0] < call.span[1] <= len(text):
                try:
                    span = token_span(self.tokenizer, self.ids, call.span[0], call.span[1])
                except GradguardError:
                    span = None
            self.entries.append((call, valid, span))


def _call_records(plan: _Plan, result: ScoreResult | None) -> tuple[CallRecord, ...]:
    parts = list(result.parts) if result is not None else []
    out = []
    j = 0
    for call, valid, span in plan.entries:
        part = None
        if span is not None and j < len(parts):
            part = parts[j]
            j += 1
        out.append(
            CallRecord(
                id=str(call.id),
                name=call.name,
                arguments=dict(call.arguments) if valid else None,
                raw_arguments=None if valid else call.arguments,
                valid=valid,
                error=None if valid else str(call.error),
                char_span=tuple(call.span) if call.span is not None else None,
                token_span=span,
                result=part,
                **_hidden_fields(part),
            )
        )
    return tuple(out)


def _same_spans(
    previous: ToolRecord, plan: _Plan, settings: HarnessSettings, wanted: set[int]
) -> tuple[CallRecord, ...] | None:
    """The calls of ``previous``'s answer as ``plan``'s parser reads them, with ``previous``'s per-call results,
    when every call ``plan`` locates was scored there at the same token span and the same settings; else None."""
    res = previous.result
    if res is None or res.spt_offset != settings.spt_offset or tuple(res.layer_span) != tuple(settings.layer_span):
        return None
    if not wanted <= set(previous.hidden_layers):
        return None
    plan.parse(res.token_ids)
    old = {c.token_span: c for c in previous.calls if c.token_span is not None and c.result is not None}
    spans = [span for _, _, span in plan.entries]
    if any(span is None or span not in old or not wanted <= set(old[span].hidden_layers) for span in spans):
        return None
    out = []
    for (call, valid, _), span in zip(plan.entries, spans, strict=True):
        assert span is not None
        was = old[span]
        out.append(
            was.model_copy(
                update={
                    "id": str(call.id),
                    "name": call.name,
                    "arguments": dict(call.arguments) if valid else None,
                    "raw_arguments": None if valid else call.arguments,
                    "valid": valid,
                    "error": None if valid else str(call.error),
                    "char_span": tuple(call.span) if call.span is not None else None,
                }
            )
        )
    return tuple(out)


def run_tool_harness(
    scorer: ToolScorerLike,
    items: Sequence[ToolItem],
    *,
    cache_dir: str | os.PathLike[str],
    task: Task | None = None,
    max_new_tokens: int | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    hidden_layers: Sequence[int] = (),
    tool_choice: Any = "auto",
    tool_format: Any = None,
    binding_factory: BindingFactory | None = None,
    progress: bool = True,
) -> list[ToolRecord]:
    """One scored answer per tool question, each call scored on its own span; cached and resumable.

    For each item the tools are bound with :class:`~gradguard.integrations._core.tools.ToolBinding` (rendered by
    the model's chat template, calls parsed by its format, safe names mapped back), the answer is generated
    greedily and scored in one pass with one :class:`~gradguard.scorer.SpanPlan` part per call (the call's
    character span mapped to tokens by :func:`gradguard.prompting.token_span`). Records go to
    ``cache_dir/tool_records.jsonl`` as they finish (the cache of :mod:`gradguard.calibration.harness`): a
    record scored at the same settings is reused, one generated at the same settings is re-scored from its
    tokens — unless another parser found calls at the same token spans, whose scores are then taken as they are
    (the scores depend on the tokens, the spans and the settings only). An item whose binding or scoring fails
    with a gradguard error is recorded with ``error``.
    ``tool_format`` overrides the format detected from the chat template (a format, or a name for
    :func:`resolve_tool_format`, e.g. ``"hermes-json"``).
    """
    from gradguard.calibration.harness import RecordCache

    task = task or builtin_task("tools")
    hidden_layers = tuple(int(layer) for layer in hidden_layers)
    settings = HarnessSettings(
        model=scorer.model_name,
        task=task,
        max_new_tokens=max_new_tokens if max_new_tokens is not None else task.max_new_tokens,
        generate_kwargs=dict(generate_kwargs or {}),
        spt_offset=int(scorer.spt_offset),
        layer_span=tuple(scorer.layer_span),
    )
    if binding_factory is None:
        from gradguard.integrations._core.tools import ToolBinding

        fmt = resolve_tool_format(tool_format) if isinstance(tool_format, str) else tool_format

        def binding_factory(tools: Sequence[dict[str, Any]]) -> Any:
            return ToolBinding.create(scorer.tokenizer, list(tools), tool_choice, fmt=fmt)

    cache: RecordCache[ToolRecord] = RecordCache(cache_dir, ToolRecord, TOOL_CACHE_FILE)
    records: list[ToolRecord] = []
    hits = reused = rescored = generated = n_calls = 0
    wanted = set(hidden_layers)
    previous_layers = tuple(getattr(scorer, "hidden_layers", ()))
    if hidden_layers:
        scorer.hidden_layers = tuple(sorted(set(previous_layers) | wanted))
    bar = tqdm(items, desc=task.name, unit="q", disable=not progress)
    try:
        for item in bar:
            update = {
                "index": item.index,
                "item_id": item.id,
                "category": item.category,
                "irrelevant": item.irrelevant,
                "group": item.group,
            }
            binding = None
            error: str | None = None
            messages: list[dict[str, Any]] = [dict(m) for m in item.messages]
            tools: list[dict[str, Any]] = [dict(t) for t in item.tools]
            prefill = ""
            try:
                binding = binding_factory(item.tools)
                messages = binding.template_messages(item.messages)
                tools = binding.template_tools()
                prefill = binding.prefill
            except GradguardError as exc:
                error = f"{type(exc).__name__}: {exc}"
            gk = _digest(
                {"gen": generation_key(messages, settings), "tools": tools, "prefill": prefill, "task": task.name}
            )
            fmt_used = getattr(binding, "fmt", None)
            parser = getattr(fmt_used, "name", None)
            if parser is not None and getattr(fmt_used, "lenient", True) is False:
                parser += ":strict"  # HermesFormat with lenient=False reads fewer calls under the same name
            sk = _digest({"score": scoring_key(gk, settings), "tool_format": TOOL_SCORING_FORMAT, "parser": parser})
            cached = cache.by_score.get(sk)
            if cached is not None and (cached.result is None or wanted <= set(cached.hidden_layers)):
                records.append(cached.model_copy(update=update))
                hits += 1
                n_calls += len(cached.calls)
                bar.set_postfix(cached=hits, reused=reused, rescored=rescored, generated=generated, refresh=False)
                continue
            result: ScoreResult | None = None
            plan = _Plan(binding, scorer.tokenizer)
            previous = cached if cached is not None and cached.result is not None else cache.by_gen.get(gk)
            if binding is not None and previous is not None:
                same = _same_spans(previous, plan, settings, wanted)
                if same is not None:  # another parser found the same calls: their scores are these
                    rec = previous.model_copy(
                        update={"score_key": sk, "content": str(plan.turn.content), "calls": same, **update}
                    )
                    cache.add(rec)
                    records.append(rec)
                    reused += 1
                    n_calls += len(same)
                    bar.set_postfix(cached=hits, reused=reused, rescored=rescored, generated=generated, refresh=False)
                    continue
            if binding is not None:
                kw: dict[str, Any] = {"tools": tools or None, "prefill": prefill, "spans": plan}
                try:
                    if previous is not None and previous.result is not None:
                        result = scorer.score(messages, list(previous.result.token_ids), **kw)
                        rescored += 1
                    else:
                        result = scorer.generate_and_score(
                            messages, max_new_tokens=settings.max_new_tokens, **kw, **settings.generate_kwargs
                        )
                        generated += 1
                except GradguardError as exc:
                    error = f"{type(exc).__name__}: {exc}"
            if result is not None and plan.ids != [int(i) for i in result.token_ids]:
                plan.parse(result.token_ids)  # the scorer planned other ids (should not happen): no per-call scores
                result = result.model_copy(update={"parts": ()})
            calls = _call_records(plan, result) if result is not None else ()
            rec = ToolRecord(
                gen_key=gk,
                score_key=sk,
                result=result.model_copy(update={"parts": ()}) if result is not None else None,
                content=str(plan.turn.content) if plan.turn is not None else "",
                calls=calls,
                error=error,
                **_hidden_fields(result),
                **update,
            )
            cache.add(rec)
            records.append(rec)
            n_calls += len(calls)
            bar.set_postfix(cached=hits, reused=reused, rescored=rescored, generated=generated, refresh=False)
    finally:
        if hidden_layers:
            scorer.hidden_layers = previous_layers
    return records


# ------------------------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class ToolOutcome:
    """One item's record judged: a verdict per call (``checks``, in ``record.calls`` order) and for the answer."""

    item: ToolItem
    record: ToolRecord
    checks: tuple[CallCheck, ...]
    correct: bool

    @property
    def made_call(self) -> bool:
        """True when the answer made a call (a malformed one included)."""
        return bool(self.record.calls)


def judge_tool_records(items: Sequence[ToolItem], records: Sequence[ToolRecord]) -> list[ToolOutcome]:
    """Judge every record against its item (same order): per-call verdicts and the answer's correctness.

    An answer that could not be generated or scored is wrong.
    """
    if len(items) != len(records):
        raise ValueError(f"{len(items)} items but {len(records)} records; pass one record per item")
    out = []
    for item, rec in zip(items, records, strict=True):
        valid = [(c.name or "", c.arguments or {}) for c in rec.calls if c.valid]
        verdicts = iter(label_calls(item, valid))
        checks = tuple(
            next(verdicts) if c.valid else CallCheck(False, c.error or "malformed call", "invalid_call")
            for c in rec.calls
        )
        n_invalid = sum(1 for c in rec.calls if not c.valid)
        correct = rec.result is not None and answer_correct(item, valid, n_invalid)
        out.append(ToolOutcome(item, rec, checks, correct))
    return out


@dataclass(frozen=True)
class CallRow:
    """One call of one answer, with its verdict: the unit the per-call confidence is calibrated on."""

    outcome: ToolOutcome
    call: CallRecord
    check: CallCheck

    @property
    def correct(self) -> bool:
        """True when the call is right (see :func:`label_calls`)."""
        return self.check.valid

    @property
    def scored(self) -> bool:
        """True when the call has finite scores (what a calibration is fitted on)."""
        return self.call.result is not None and scalar_features(self.call.result, FEATURES) is not None


def call_rows(outcomes: Sequence[ToolOutcome]) -> list[CallRow]:
    """Every call of every answer, in order."""
    return [CallRow(o, c, k) for o in outcomes for c, k in zip(o.record.calls, o.checks, strict=True)]


def tool_fit_data(outcomes: Sequence[ToolOutcome]) -> tuple[FitData, int]:
    """``(FitData, n_unscored)`` over the scored calls: features, hidden states, labels, groups (item ids).

    Hidden states enter only when every scored call kept them at the same layers.
    """
    from gradguard.calibration.probe_fit import CalibrationError, FitData

    rows = call_rows(outcomes)
    scored = [r for r in rows if r.scored]
    if not scored:
        raise CalibrationError(
            f"none of the {len(outcomes)} answers made a scored tool call; nothing to calibrate per call"
        )
    feats = [scalar_features(r.call.result, FEATURES) if r.call.result is not None else None for r in scored]
    X = np.vstack([f for f in feats if f is not None])
    y = np.asarray([float(r.correct) for r in scored])
    group_ids: dict[str, int] = {}
    groups = np.asarray([group_ids.setdefault(r.outcome.item.group, len(group_ids)) for r in scored], dtype=np.int64)
    if y.min() == y.max():
        outcome = "right" if y[0] == 1 else "wrong"
        raise CalibrationError(
            f"all {y.size} scored tool calls are {outcome}; calibration needs both right and wrong calls — use "
            "harder or easier questions, or check the ground truth"
        )
    arrays = [r.call.hidden_array() for r in scored]
    layer_sets = {r.call.hidden_layers for r in scored}
    H = None
    if all(a is not None for a in arrays) and len(layer_sets) == 1:
        H = np.stack([a for a in arrays if a is not None]).astype(np.float32)
    layers = next(iter(layer_sets)) if H is not None else ()
    data = FitData(X=X, features=FEATURES, H=H, layers=tuple(layers), y=y, groups=groups)
    return data, len(rows) - len(scored)


# ------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ToolsSummary:
    """What ``gradguard eval --task tools`` reports.

    ``call_accuracy``: share of relevant questions answered right (exactly the right calls).
    ``no_call_rate``: share of irrelevant questions answered without any call. ``per_call``: how well each
    score (and the confidence) tells right calls from wrong ones, over every call made; ``per_answer`` the same
    for the message-level scores and the answers' correctness. ``score_over_generate``: median of
    ``timings.score_s / timings.generate_s`` over answers with at least one call (their calls are scored in the
    same pass); ``score_over_generate_per_call`` divides each answer's ratio by its number of calls.
    """

    n: int
    n_relevant: int
    n_irrelevant: int
    n_errors: int
    call_accuracy: float | None
    call_rate_relevant: float | None
    no_call_rate: float | None
    n_calls: int
    n_calls_correct: int
    n_calls_invalid: int
    n_calls_unscored: int
    n_calls_on_irrelevant: int
    per_call: list[Any] = field(default_factory=list)
    per_answer: list[Any] = field(default_factory=list)
    score_over_generate: float | None = None
    score_over_generate_per_call: float | None = None
    score_over_generate_no_call: float | None = None
    model: str | None = None
    spt_offset: int | None = None
    layer_span: tuple[int, int] | None = None
    errors_by_type: dict[str, int] = field(default_factory=dict)


def _share(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def call_method_confidences(rows: Sequence[CallRow], method: str) -> NDArray[np.float64]:
    """Per-call confidence under an uncertainty score (its negation); unscored calls → −inf."""
    from gradguard.calibration.metrics import confidence_from_uncertainty
    from gradguard.scores import SCORE_BY_NAME

    out = np.full(len(rows), -np.inf)
    for i, row in enumerate(rows):
        res = row.call.result
        if res is not None and res.scored:
            out[i] = float(confidence_from_uncertainty(SCORE_BY_NAME[method].read(res)))
    return out


def calibrated_call_confidences(
    rows: Sequence[CallRow], calibration: Any, *, data_sha256: str | None = None
) -> tuple[NDArray[np.float64], str] | None:
    """The per-call ``confidence`` column and how honest it is; None without a calibration.

    When the calls are exactly the calibration's (same data hash, settings, and labels in the same order), the
    calibration's nested out-of-fold confidences are used (cross-fitted, folds grouped by item id); otherwise
    its calibrator is applied to each call (marked in-sample on the calibration data itself).
    """
    from gradguard.calibration.model import predict

    if calibration is None:
        return None
    scored = np.array([r.scored for r in rows], dtype=bool)
    y = np.array([int(r.correct) for r in rows], dtype=np.int64)
    same_data = data_sha256 is not None and calibration.data.sha256 == data_sha256
    applies = all(
        calibration.applies_to(r.call.result.spt_offset, tuple(r.call.result.layer_span))
        for r in rows
        if r.scored and r.call.result is not None
    )
    if (
        same_data
        and applies
        and calibration.n == int(scored.sum())
        and tuple(int(v) for v in y[scored]) == tuple(calibration.holdout_correct)
    ):
        conf = np.full(len(rows), -np.inf)
        conf[scored] = np.asarray(calibration.holdout_confidence, dtype=np.float64)
        return conf, f"task {calibration.task.name}; cross-fitted: nested out-of-fold confidences, folds by item id"
    conf = np.full(len(rows), -np.inf)
    for i, row in enumerate(rows):
        live = row.call.live_result()
        if live is not None and live.scored:
            p = predict(calibration.calibrator, calibration.domain, live).confidence
            conf[i] = -np.inf if p is None else float(p)
    if not np.isfinite(conf).any():
        return None
    note = f"task {calibration.task.name}"
    if same_data:
        note += "; in-sample (calibrated on these calls: see calibrate's cross-validated AUROC)"
    return conf, note


def evaluate_tools(
    outcomes: Sequence[ToolOutcome],
    *,
    calibration: Any = None,
    data_sha256: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> ToolsSummary:
    """Call accuracy, the no-call rate, per-call and per-answer metrics of every score, and the timing ratios."""
    from gradguard.calibration.metrics import confidence_from_uncertainty
    from gradguard.evaluation.report import METHODS, MethodMetrics, _metrics
    from gradguard.scores import SCORE_BY_NAME

    relevant = [o for o in outcomes if not o.item.irrelevant]
    irrelevant = [o for o in outcomes if o.item.irrelevant]
    rows = call_rows(outcomes)
    y_call = np.array([int(r.correct) for r in rows], dtype=np.int64)
    per_call: list[MethodMetrics] = []
    if rows:
        per_call = [_metrics(m, call_method_confidences(rows, m), y_call, n_boot, seed) for m in METHODS]
        column = calibrated_call_confidences(rows, calibration, data_sha256=data_sha256)
        if column is not None:
            per_call.append(_metrics("confidence", column[0], y_call, n_boot, seed, column[1]))
    y_ans = np.array([int(o.correct) for o in outcomes], dtype=np.int64)
    per_answer = []
    for m in METHODS:
        conf = np.full(len(outcomes), -np.inf)
        for i, o in enumerate(outcomes):
            res = o.record.result
            if res is not None and res.scored:
                conf[i] = float(confidence_from_uncertainty(SCORE_BY_NAME[m].read(res)))
        per_answer.append(_metrics(m, conf, y_ans, n_boot, seed))
    with_calls, per_call_ratio, no_call = [], [], []
    for o in outcomes:
        t = o.record.result.timings if o.record.result is not None else None
        if t is None or not t.generate_s:
            continue
        ratio = t.score_s / t.generate_s
        n_scored = sum(1 for c in o.record.calls if c.result is not None)
        if n_scored:
            with_calls.append(ratio)
            per_call_ratio.append(ratio / n_scored)
        elif not o.record.calls:
            no_call.append(ratio)
    errors: dict[str, int] = {}
    for r in rows:
        if not r.correct:
            errors[r.check.error_type or "wrong"] = errors.get(r.check.error_type or "wrong", 0) + 1
    first = next((o.record.result for o in outcomes if o.record.result is not None), None)
    return ToolsSummary(
        n=len(outcomes),
        n_relevant=len(relevant),
        n_irrelevant=len(irrelevant),
        n_errors=sum(1 for o in outcomes if o.record.result is None),
        call_accuracy=_share([o.correct for o in relevant]),
        call_rate_relevant=_share([o.made_call for o in relevant]),
        no_call_rate=_share([o.record.result is not None and not o.made_call for o in irrelevant]),
        n_calls=len(rows),
        n_calls_correct=int(y_call.sum()),
        n_calls_invalid=sum(1 for r in rows if not r.call.valid),
        n_calls_unscored=sum(1 for r in rows if not r.scored),
        n_calls_on_irrelevant=sum(1 for r in rows if r.outcome.item.irrelevant),
        per_call=per_call,
        per_answer=per_answer,
        score_over_generate=_median(with_calls),
        score_over_generate_per_call=_median(per_call_ratio),
        score_over_generate_no_call=_median(no_call),
        model=first.model if first is not None else None,
        spt_offset=first.spt_offset if first is not None else None,
        layer_span=(int(first.layer_span[0]), int(first.layer_span[1])) if first is not None else None,
        errors_by_type=dict(sorted(errors.items(), key=lambda kv: -kv[1])),
    )


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _table(methods: Sequence[Any]) -> list[str]:
    from gradguard.evaluation.report import _LABELS

    def f(v: float) -> str:
        return "  n/a" if not np.isfinite(v) else f"{v:.3f}"

    lines = [f"{'method':<24} {'AUROC':>6} {'95% CI':>15} {'AURC':>6} {'PRR':>6}"]
    for m in methods:
        ci = f"[{f(m.auroc_ci[0])}, {f(m.auroc_ci[1])}]"
        lines.append(f"{_LABELS.get(m.method, m.method):<24} {f(m.auroc):>6} {ci:>15} {f(m.aurc):>6} {f(m.prr):>6}")
        if m.note:
            lines.append(f"{'':<24}   ({m.note})")
    return lines


def format_tools_table(summary: ToolsSummary) -> str:
    """The tools report as text: accuracy and no-call rate, then per-call and per-answer tables."""

    def ratio(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"task tools: {summary.n} questions ({summary.n_relevant} with a fitting tool, {summary.n_irrelevant} "
        f"without), {summary.n_errors} not scored; model {summary.model}, spt_offset {summary.spt_offset}, "
        f"layers {summary.layer_span}",
        f"call accuracy (relevant questions answered with exactly the right calls): {_pct(summary.call_accuracy)}; "
        f"they made a call: {_pct(summary.call_rate_relevant)}",
        f"no-call rate on irrelevant questions: {_pct(summary.no_call_rate)}",
        f"{summary.n_calls} calls made: {summary.n_calls_correct} right, {summary.n_calls_invalid} malformed or "
        f"not matching the schema, {summary.n_calls_on_irrelevant} on irrelevant questions, "
        f"{summary.n_calls_unscored} unscored",
    ]
    if summary.errors_by_type:
        lines.append("wrong calls by reason: " + ", ".join(f"{k} {v}" for k, v in summary.errors_by_type.items()))
    lines.append(
        f"scoring time / generation time (median): {ratio(summary.score_over_generate)} for answers with calls "
        f"(every call scored in the same pass), {ratio(summary.score_over_generate_per_call)} per call; "
        f"{ratio(summary.score_over_generate_no_call)} for answers without a call"
    )
    lines += ["", "per call (label: the call is right):"]
    lines += _table(summary.per_call) if summary.per_call else ["  no calls were made"]
    lines += ["", "per answer (message-level scores; label: the answer is right):"]
    lines += _table(summary.per_answer)
    lines += [
        "",
        "AUROC of each method's confidence for a right call (= AUROC of its uncertainty for a wrong one): higher is "
        "better (0.5 = chance); AURC: lower is better; PRR: higher is better (1 = oracle).",
    ]
    return "\n".join(lines)


def tool_result_rows(outcomes: Sequence[ToolOutcome], *, calibration: Any = None) -> list[dict[str, Any]]:
    """One JSON-ready dict per question: the answer, each call with its verdict, scores and confidence."""
    from gradguard.calibration.model import predict

    def num(v: float) -> float | None:
        return v if np.isfinite(v) else None

    def scores(res: ScoreResult | None) -> dict[str, Any]:
        if res is None:
            return {}
        return {k: num(v) for k, v in res.uncertainty().items()} | {"n_scored_tokens": res.n_scored_tokens}

    def confidence(live: ScoreResult | None) -> float | None:
        if calibration is None or live is None or not live.scored:
            return None
        return predict(calibration.calibrator, calibration.domain, live).confidence

    out = []
    for o in outcomes:
        r = o.record
        res = r.result
        calls = []
        for c, k in zip(r.calls, o.checks, strict=True):
            calls.append(
                {
                    "id": c.id,
                    "name": c.name,
                    "arguments": c.arguments if c.valid else c.raw_arguments,
                    "valid": c.valid,
                    "correct": k.valid,
                    "reason": k.error or None,
                    "error_type": k.error_type or None,
                    "token_span": list(c.token_span) if c.token_span else None,
                    "scores": scores(c.result),
                    "confidence": confidence(c.live_result()),
                }
            )
        out.append(
            {
                "index": r.index,
                "id": o.item.id,
                "category": o.item.category,
                "irrelevant": o.item.irrelevant,
                "ground_truth": list(o.item.ground_truth),
                "response": res.response if res is not None else None,
                "content": r.content,
                "correct": o.correct,
                "calls": calls,
                "scores": scores(res),
                "generate_s": res.timings.generate_s if res is not None else None,
                "score_s": res.timings.score_s if res is not None else None,
                "error": r.error,
            }
        )
    return out


def write_tools_report(
    outcomes: Sequence[ToolOutcome],
    out_dir: str | os.PathLike[str],
    *,
    calibration: Any = None,
    data_sha256: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[ToolsSummary, dict[str, Path]]:
    """Evaluate; write ``results.jsonl``, ``summary.json``, ``table.txt`` and the per-call ``risk_coverage.png``."""
    from dataclasses import asdict

    from gradguard.calibration.metrics import aurc, risk_coverage_curve
    from gradguard.calibration.plots import finish_risk_coverage, pyplot, save_figure
    from gradguard.evaluation.report import _LABELS, METHODS, write_results_jsonl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = evaluate_tools(outcomes, calibration=calibration, data_sha256=data_sha256, n_boot=n_boot, seed=seed)
    paths = {"results": write_results_jsonl(tool_result_rows(outcomes, calibration=calibration), out / "results.jsonl")}
    table = format_tools_table(summary)
    (out / "table.txt").write_text(table + "\n", encoding="utf-8")
    paths["table"] = out / "table.txt"

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if np.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    (out / "summary.json").write_text(json.dumps(clean(asdict(summary)), indent=2) + "\n", encoding="utf-8")
    paths["summary"] = out / "summary.json"
    rows = call_rows(outcomes)
    y = np.array([int(r.correct) for r in rows], dtype=np.int64)
    if rows and 0 < y.sum() < y.size:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 5))
        curves = [(_LABELS[m], call_method_confidences(rows, m)) for m in METHODS]
        column = calibrated_call_confidences(rows, calibration, data_sha256=data_sha256)
        if column is not None:
            curves.append(("confidence", column[0]))
        for label, conf in curves:
            cov, risk = risk_coverage_curve(conf, y)
            bold = label in ("HybridGrad", "confidence")
            ax.plot(cov, risk, lw=2.5 if bold else 1.2, label=f"{label} (AURC {aurc(conf, y):.3f})")
        finish_risk_coverage(ax, y, f"Risk–coverage per tool call: {y.size} calls ({int(y.sum())} right)")
        paths["plot"] = save_figure(fig, out / "risk_coverage.png")
    return summary, paths


# ----------------------------------------------------------------------------------------- commands


def _tool_scorer_and_items(args: Any) -> tuple[Any, Any, list[ToolItem], Task]:
    from gradguard.calibration.harness import make_scorer
    from gradguard.errors import InputError

    if getattr(args, "prompt_template", None):
        raise InputError(
            "--task tools asks each question with its own messages and tools; drop --prompt-template"
        )
    items = load_tool_items(args.data, args.n, shuffle_seed=args.shuffle_seed)
    scorer, profile = make_scorer(
        args.model,
        profile=args.profile,
        spt_offset=args.spt_offset,
        layer_span=tuple(args.layer_span) if args.layer_span else None,
        device=args.device,
    )
    return scorer, profile, items, builtin_task("tools")


def data_label(paths: Sequence[str | os.PathLike[str]]) -> str:
    """The file names joined by ``+`` (what a calibration records as its data file)."""
    return "+".join(Path(p).name for p in paths)


def cmd_eval_tools(args: Any) -> int:
    """``gradguard eval --task tools --data FILE.jsonl [--data FILE2 ...]``: the tools report (see the module)."""
    from gradguard.calibration.model import required_layers

    scorer, profile, items, task = _tool_scorer_and_items(args)
    calibration = profile.calibrations.get(task.name)
    if calibration is not None and not calibration.applies_to(scorer.spt_offset, scorer.layer_span):
        calibration = None
    out = Path(args.out)
    records = run_tool_harness(
        scorer,
        items,
        cache_dir=Path(args.cache) if args.cache else out / "cache",
        task=task,
        max_new_tokens=args.max_new_tokens,
        hidden_layers=required_layers(calibration.calibrator, calibration.domain) if calibration else (),
        tool_format=args.tool_format,
        progress=not args.no_progress,
    )
    outcomes = judge_tool_records(items, records)
    summary, paths = write_tools_report(
        outcomes, out, calibration=calibration, data_sha256=files_sha256(args.data), n_boot=args.boot
    )
    print(format_tools_table(summary))
    if calibration is None:
        print(
            f"\nno per-call confidence: profile {profile.name!r} has no tools calibration at these settings; fit one "
            "with `gradguard calibrate --task tools --data ... --out PROFILE.json`"
        )
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0


def cmd_calibrate_tools(args: Any) -> int:
    """``gradguard calibrate --task tools --data simple.jsonl --data irrelevance.jsonl``: fit the per-call confidence.

    One row per call made (labels: :func:`label_calls`), nested cross-validation with folds grouped by item id,
    stored in the profile as task ``tools``; answers without a call are reported beside it.
    """
    from tqdm.auto import tqdm as bar

    from gradguard.calibration.cli import (
        _base_profile,
        _validated,
        default_probe_layers,
        format_report,
    )
    from gradguard.calibration.fit import fit_calibration
    from gradguard.calibration.thresholds import task_threshold
    from gradguard.errors import InputError
    from gradguard.fast_path import decoder_layers
    from gradguard.profiles.io import save_profile

    scorer, profile, items, task = _tool_scorer_and_items(args)
    base = _base_profile(profile, scorer, overridden=args.spt_offset is not None or args.layer_span is not None)
    model = getattr(scorer, "model", None)
    n_layers = len(decoder_layers(model)) if model is not None else None
    layers = tuple(args.hidden_layers or (default_probe_layers(n_layers) if n_layers is not None else ()))
    if n_layers is not None and any(not 0 <= layer <= n_layers for layer in layers):
        raise InputError(
            f"--hidden-layers {list(layers)}: the model has {n_layers} decoder layers, so a probe layer must lie in "
            f"[0, {n_layers}]; pass layers in that range"
        )
    max_new = args.max_new_tokens or task.max_new_tokens
    records = run_tool_harness(
        scorer,
        items,
        cache_dir=args.cache,
        task=task,
        max_new_tokens=max_new,
        hidden_layers=layers,
        tool_format=args.tool_format,
        progress=not args.no_progress,
    )
    outcomes = judge_tool_records(items, records)
    data, n_unscored = tool_fit_data(outcomes)
    steps = bar(total=6, desc="fit", unit="step", disable=args.no_progress)

    def on_step(msg: str) -> None:
        steps.set_postfix_str(msg, refresh=False)
        steps.update(1)

    scored = next(c.result for o in outcomes for c in o.record.calls if c.result is not None)
    sha = files_sha256(args.data)
    report = fit_calibration(
        data,
        task,
        n_questions=len(items),
        n_unscored=n_unscored,
        spt_offset=scored.spt_offset,
        layer_span=(int(scored.layer_span[0]), int(scored.layer_span[1])),
        data_file=data_label(args.data),
        data_sha256=sha,
        max_new_tokens=max_new,
        folds=args.folds,
        seed=args.seed,
        on_step=on_step,
    )
    steps.close()
    n_no_call = sum(1 for o in outcomes if o.record.result is not None and not o.made_call)
    note = (
        f"per call: one row per tool call made ({data.y.size} scored calls in {len(items)} answers), folds grouped by "
        f"item id; {n_no_call} answers made no call (reported by `gradguard eval --task tools`, not calibrated)"
        + (f"; tool-call format {args.tool_format}" if args.tool_format not in (None, "auto") else "")
    )
    cal = report.calibration.model_copy(update={"data": report.calibration.data.model_copy(update={"note": note})})
    new_data = base.model_dump()
    new_data["calibrations"][task.name] = cal.model_dump()
    new = _validated(new_data, "the calibrated profile")
    out = args.out or f"{Path(args.data[0]).stem}-{task.name}-profile.json"
    save_profile(new, out)
    text = format_report(report).replace("scored answers from", "scored calls from", 1)
    print(text.replace("folds grouped by title/context", "folds grouped by item id (one row per call)"))
    print()
    summary = evaluate_tools(outcomes, calibration=cal, data_sha256=sha, n_boot=1000, seed=args.seed)
    print(format_tools_table(summary))
    for eps in args.epsilon or []:
        r = task_threshold(new, task.name, eps, args.delta)
        print(f"epsilon={eps:g}, delta={args.delta:g}: {r.message}")
    if args.plots:
        from gradguard.calibration.plots import plot_calibration

        for path in plot_calibration(report, args.plots):
            print(f"wrote {path}")
    print(f"wrote {out} (task {task.name})")
    return 0
