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
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradguard.data import DataFormatError, file_sha256, iter_jsonl

__all__ = [
    "ToolItem",
    "load_tool_items",
    "files_sha256",
    "standardize_string",
    "CallCheck",
    "check_call",
    "label_calls",
    "answer_correct",
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
