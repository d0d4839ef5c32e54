"""The tools task: BFCL-format reader, BFCL's checker rules, per-call labels, harness, metrics and CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gradguard.data import DataFormatError
from gradguard.evaluation.tool_calls import (
    ToolItem,
    answer_correct,
    check_call,
    files_sha256,
    label_calls,
    load_tool_items,
    standardize_string,
)


def _tool(name: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} tool",
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


AREA = _tool(
    "geo.area",
    {
        "base": {"type": "integer"},
        "height": {"type": "number"},
        "unit": {"type": "string"},
        "exact": {"type": "boolean"},
        "sides": {"type": "array", "items": {"type": "number"}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "opts": {"type": "object"},
    },
    ["base", "height"],
)
AREA_TRUTH = {
    "geo.area": {
        "base": [10],
        "height": [5.0, 6.5],
        "unit": ["Square Meters", ""],
        "exact": [True, ""],
        "sides": [[3.0, 4.0], ""],
        "tags": [["New-York", "LA"], ""],
        "opts": [{"mode": ["Fast"], "depth": [2, ""]}, ""],
    }
}


def _item(truth: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, ident: str = "x_0") -> ToolItem:
    return ToolItem(
        index=0,
        id=ident,
        messages=({"role": "user", "content": "q"},),
        tools=tuple(tools or [AREA]),
        ground_truth=tuple(truth),
        category="simple_python" if truth else "irrelevance",
    )


def _check(args: dict[str, Any], name: str = "geo.area") -> tuple[bool, str]:
    verdict = check_call(name, args, AREA_TRUTH, AREA["function"]["parameters"])
    return verdict.valid, verdict.error_type


# ------------------------------------------------------------------------------------------ checker rules


def test_standardize_string_is_bfcls() -> None:
    assert standardize_string("April 1, 2024") == "april12024"
    assert standardize_string("New-York_City./*^") == "newyorkcity"
    assert standardize_string("it's") == 'it"s'


def test_a_right_call_passes_and_the_name_must_match() -> None:
    assert _check({"base": 10, "height": 5.0}) == (True, "")
    assert _check({"base": 10, "height": 5.0}, name="geo_area") == (False, "wrong_func_name")


def test_int_is_accepted_for_a_number_but_not_the_reverse_nor_a_bool() -> None:
    assert _check({"base": 10, "height": 5})[0]  # int for number: promoted
    assert _check({"base": 10.0, "height": 5}) == (False, "type_error")  # float for integer
    assert _check({"base": True, "height": 5}) == (False, "type_error")  # bool is not an int
    assert _check({"base": 10, "height": 7}) == (False, "value_error")


def test_required_missing_unexpected_and_omittable_arguments() -> None:
    assert _check({"base": 10}) == (False, "missing_required")
    assert _check({"base": 10, "height": 5, "colour": "red"}) == (False, "unexpected_param")
    # "" among the acceptable values: the argument may be left out; otherwise it may not
    truth = {"f": {"a": [1], "b": [2]}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a"]}
    assert check_call("f", {"a": 1}, truth, schema).error_type == "missing_optional"
    assert check_call("f", {"a": 1, "b": 2}, truth, schema).valid
    # an argument in the schema but not in the ground truth is unexpected
    truth2 = {"f": {"a": [1]}}
    assert check_call("f", {"a": 1, "b": 2}, truth2, schema).error_type == "unexpected_param"


def test_strings_are_compared_after_normalisation() -> None:
    assert _check({"base": 10, "height": 5, "unit": "square meters"})[0]
    assert _check({"base": 10, "height": 5, "unit": "Square-Meters."})[0]
    assert _check({"base": 10, "height": 5, "unit": "square feet"}) == (False, "value_error")
    assert _check({"base": 10, "height": 5, "unit": 3}) == (False, "type_error")


def test_booleans_lists_and_dicts() -> None:
    assert _check({"base": 10, "height": 5, "exact": True})[0]
    assert _check({"base": 10, "height": 5, "exact": False}) == (False, "value_error")
    assert _check({"base": 10, "height": 5, "exact": "true"}) == (False, "type_error")
    # lists elementwise: ints accepted in an array of numbers, strings normalised, order and length matter
    assert _check({"base": 10, "height": 5, "sides": [3, 4.0]})[0]
    assert _check({"base": 10, "height": 5, "sides": [4, 3]}) == (False, "value_error")
    assert _check({"base": 10, "height": 5, "sides": [3, 4, 5]}) == (False, "value_error")
    assert _check({"base": 10, "height": 5, "tags": ["new york", "la"]})[0]
    assert _check({"base": 10, "height": 5, "tags": ["new york"]}) == (False, "value_error")
    # dicts: each key's value among its acceptable ones; a key with "" may be left out
    assert _check({"base": 10, "height": 5, "opts": {"mode": "fast"}})[0]
    assert _check({"base": 10, "height": 5, "opts": {"mode": "fast", "depth": 2}})[0]
    assert _check({"base": 10, "height": 5, "opts": {"mode": "slow"}}) == (False, "value_error")
    assert _check({"base": 10, "height": 5, "opts": {"mode": "fast", "extra": 1}}) == (False, "value_error")
    assert _check({"base": 10, "height": 5, "opts": {}}) == (False, "value_error")


def test_list_of_dicts_and_the_variable_case() -> None:
    schema = {
        "type": "object",
        "properties": {
            "conds": {"type": "array", "items": {"type": "object"}},
            "n": {"type": "integer"},
        },
        "required": ["conds"],
    }
    truth = {"q": {"conds": [[{"field": ["age"], "op": [">"]}, {"field": ["job"], "op": ["="]}]], "n": ["count", ""]}}
    good = [{"field": "Age", "op": ">"}, {"field": "job", "op": "="}]
    assert check_call("q", {"conds": good}, truth, schema).valid
    assert not check_call("q", {"conds": good[::-1]}, truth, schema).valid
    assert not check_call("q", {"conds": good[:1]}, truth, schema).valid
    # BFCL's variable case: the ground truth holds a string for an integer parameter; compared exactly
    assert check_call("q", {"conds": good, "n": "count"}, truth, schema).valid
    assert not check_call("q", {"conds": good, "n": "Count"}, truth, schema).valid


# ---------------------------------------------------------------------------------- labels and answers


def test_per_call_labels_and_answer_correctness() -> None:
    item = _item([AREA_TRUTH])
    right = ("geo.area", {"base": 10, "height": 5})
    wrong = ("geo.area", {"base": 11, "height": 5})
    assert [c.valid for c in label_calls(item, [right])] == [True]
    assert answer_correct(item, [right])
    assert not answer_correct(item, [])  # no call to a relevant question
    assert not answer_correct(item, [right], n_invalid=1)  # a malformed call besides
    # two calls to a one-call question: the first right, the duplicate wrong; the answer is wrong
    labels = label_calls(item, [right, right])
    assert [c.valid for c in labels] == [True, False]
    assert labels[1].error_type == "wrong_count"
    assert not answer_correct(item, [right, right])
    assert [c.valid for c in label_calls(item, [wrong, right])] == [False, True]


def test_irrelevant_items_are_right_without_any_call() -> None:
    item = _item([])
    assert item.irrelevant
    assert answer_correct(item, [])
    assert not answer_correct(item, [], n_invalid=1)
    checks = label_calls(item, [("geo.area", {"base": 1, "height": 2})])
    assert [c.valid for c in checks] == [False] and checks[0].error_type == "irrelevance"


# ------------------------------------------------------------------------------------------------ reader


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _row(ident: str, truth: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": ident,
        "messages": [{"role": "user", "content": f"question {ident}"}],
        "tools": [AREA],
        "ground_truth": truth,
        "category": "simple_python" if truth else "irrelevance",
    }


def test_load_tool_items_reads_several_files(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [_row("a0", [AREA_TRUTH]), _row("a1", [AREA_TRUTH])])
    b = _write(tmp_path / "b.jsonl", [_row("b0", [])])
    items = load_tool_items([a, b])
    assert [i.id for i in items] == ["a0", "a1", "b0"] and [i.index for i in items] == [0, 1, 2]
    assert items[2].irrelevant and not items[0].irrelevant and items[0].source == "a.jsonl"
    assert items[0].group == "id:a0"
    assert items[0].schema("geo.area") == AREA["function"]["parameters"] and items[0].schema("nope") is None
    assert len(load_tool_items([a, b], 2)) == 2
    assert sorted(i.id for i in load_tool_items([a, b], shuffle_seed=1)) == ["a0", "a1", "b0"]
    assert files_sha256([a]) != files_sha256([a, b]) == files_sha256([a, b])
    # a bare {"name", "parameters"} tool reads as an OpenAI tool dict
    bare = _row("c0", [])
    bare["tools"] = [AREA["function"]]
    (c,) = load_tool_items(_write(tmp_path / "c.jsonl", [bare]))
    assert c.tools[0]["type"] == "function" and c.tools[0]["function"]["name"] == "geo.area"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"messages": []}, "messages"),
        ({"tools": []}, "tools"),
        ({"tools": [{"function": {"description": "no name"}}]}, "name"),
        ({"ground_truth": [{"other_fn": {"a": [1]}}]}, "not among the tools"),
        ({"ground_truth": [{"geo.area": {"base": 10}}]}, "list of acceptable values"),
        ({"ground_truth": {"geo.area": {}}}, "ground_truth"),
    ],
)
def test_load_tool_items_names_the_bad_line(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    row = {**_row("a0", [AREA_TRUTH]), **change}
    path = _write(tmp_path / "bad.jsonl", [_row("ok", []), row])
    with pytest.raises(DataFormatError, match=message) as info:
        load_tool_items(path)
    assert "bad.jsonl:2" in str(info.value)


def test_load_tool_items_rejects_duplicate_ids_and_missing_truth(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [_row("a0", []), _row("a0", [])])
    with pytest.raises(DataFormatError, match="already used"):
        load_tool_items(path)
    row = _row("a0", [])
    del row["ground_truth"]
    with pytest.raises(DataFormatError, match="ground_truth"):
        load_tool_items(_write(tmp_path / "e.jsonl", [row]))
    with pytest.raises(DataFormatError, match="does not exist"):
        load_tool_items(tmp_path / "missing.jsonl")
