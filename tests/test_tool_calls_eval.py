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


# ------------------------------------------------------------------------------------ lenient json format


@pytest.mark.parametrize(
    ("text", "calls", "n_invalid", "content"),
    [
        ('```json\n{\n  "name": "f",\n  "arguments": {"a": 1}\n}\n```', [("f", {"a": 1})], 0, ""),
        ('{"name": "f", "arguments": {"a": 1}}', [("f", {"a": 1})], 0, ""),
        ('Sure:\n```json\n{"name": "f", "arguments": {}}\n```\nDone.', [("f", {})], 0, "Sure:\n\nDone."),
        ('```json\n[{"name": "f", "arguments": {}}, {"name": "g", "parameters": {"x": 1}}]\n```',
         [("f", {}), ("g", {"x": 1})], 0, ""),
        ('```json\n{"name": "f", "arguments": {"a": \n```', [], 1, ""),
        ("The answer is 5.", [], 0, "The answer is 5."),
        ('```json\n{"a": 1}\n```', [], 0, '```json\n{"a": 1}\n```'),
        ('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', [("f", {})], 0, ""),
    ],
)  # fmt: skip
def test_hermes_json_reads_calls_written_as_json(
    text: str, calls: list[tuple[str, dict[str, Any]]], n_invalid: int, content: str
) -> None:
    from gradguard.evaluation.tool_calls import json_call_format, resolve_tool_format

    fmt = json_call_format()
    assert fmt.name == "hermes-json" and resolve_tool_format("hermes-json").name == "hermes-json"
    assert resolve_tool_format("auto") is None and resolve_tool_format("hermes").name == "hermes"
    turn = fmt.parse(text)
    assert [(c.name, c.arguments) for c in turn.calls] == calls
    assert len(turn.invalid) == n_invalid and turn.content == content
    for call in turn.calls:  # spans run from the name's first character to the end of the arguments
        assert text[call.span[0] :].startswith(call.name) and text[call.span[1] - 1] == "}"


# ------------------------------------------------------------------------------- harness on a tiny model

CALL = '<tool_call>\n{{"name": "geo_area", "arguments": {{"base": {base}, "height": 5}}}}\n</tool_call>'
#: A short tool: the tiny models' character-level tokenizer has a 1024-token context.
SMALL = _tool("geo.area", {"base": {"type": "integer"}, "height": {"type": "number"}}, ["base", "height"])
SMALL_TRUTH = {"geo.area": {"base": [10], "height": [5.0]}}


class Scripted:
    """A GradScorer whose "generation" is a scripted answer per question, scored for real (tools, spans)."""

    def __init__(self, inner: Any, answers: dict[str, str]) -> None:
        self.__dict__["inner"] = inner
        self.__dict__["answers"] = answers
        self.__dict__["generated"] = 0
        self.__dict__["rescored"] = 0

    def score(self, messages: Any, response: Any, **kw: Any) -> Any:
        self.__dict__["rescored"] += 1
        return self.inner.score(messages, response, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)

    def generate_and_score(self, messages: Any, *, max_new_tokens: int, **kw: Any) -> Any:
        self.__dict__["generated"] += 1
        result = self.inner.score(messages, self.answers[messages[-1]["content"]], **kw)
        return result.model_copy(update={"timings": result.timings.model_copy(update={"generate_s": 2.0})})


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    """The tiny profiles have no calibration for the scorer's task (one ProfileWarning each): not tested here."""
    import warnings

    from gradguard.profiles import ProfileWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProfileWarning)
        yield


@pytest.fixture(scope="module")
def tiny() -> Any:
    from gradguard import GradScorer
    from gradguard.testing import make_tiny_model

    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, model_name="tiny-qwen2")


def test_harness_scores_each_call_on_its_own_span_and_caches(tiny: Any, tmp_path: Path) -> None:
    from gradguard.evaluation.tool_calls import judge_tool_records, run_tool_harness
    from gradguard.integrations._core.tool_formats import HermesFormat

    items = [
        _item([SMALL_TRUTH], [SMALL], ident="a"),
        _item([], [SMALL], ident="b"),
        _item([SMALL_TRUTH], [SMALL], ident="c"),
        _item([SMALL_TRUTH], [SMALL], ident="d"),
    ]
    items = [ToolItem(**{**it.__dict__, "index": i, "messages": ({"role": "user", "content": it.id},)})
             for i, it in enumerate(items)]  # fmt: skip
    answers = {
        "a": CALL.format(base=10) + "\n" + CALL.format(base=3),
        "b": "No tool fits that.",
        "c": '<tool_call>\n{"name": "geo_area", "arguments": {"base": 10, "height": 5,}}\n</tool_call>',
        "d": '```json\n{"name": "geo_area", "arguments": {"base": 10, "height": 5}}\n```',
    }
    strict = HermesFormat()
    strict.lenient = False  # tags only: the fenced call of "d" is text
    scorer = Scripted(tiny, answers)
    records = run_tool_harness(
        scorer, items, cache_dir=tmp_path, hidden_layers=(2,), tool_format=strict, progress=False
    )
    assert scorer.generated == 4 and scorer.rescored == 0
    a, b, c, d = records
    assert [call.name for call in a.calls] == ["geo.area", "geo.area"]  # safe names mapped back
    for call in a.calls:
        assert call.result is not None and call.result.span == call.token_span
        assert call.result.n_scored_tokens == call.token_span[1] - call.token_span[0]
        assert call.hidden_layers == (2,) and call.hidden_array() is not None
        assert call.live_result().hidden is not None
        text = a.result.response
        assert text[call.char_span[0] :].startswith("geo_area") and text[call.char_span[1] - 1] == "}"
    assert a.result.parts == () and a.result.timings.generate_s == 2.0
    assert b.calls == () and b.content == "No tool fits that."
    assert len(c.calls) == 1 and not c.calls[0].valid and c.calls[0].error
    assert d.calls == ()
    outcomes = judge_tool_records(items, records)
    assert [[k.valid for k in o.checks] for o in outcomes] == [[True, False], [], [False], []]
    assert [o.correct for o in outcomes] == [False, True, False, False]
    # a second run reads everything from the cache
    again = Scripted(tiny, answers)
    same = run_tool_harness(again, items, cache_dir=tmp_path, hidden_layers=(2,), tool_format=strict, progress=False)
    assert [r.score_key for r in same] == [r.score_key for r in records] and again.rescored == again.generated == 0
    # the lenient Hermes parser (the default) reads the fenced call of "d": only "d" is scored again (from its
    # cached tokens); the others' calls lie at the same spans, so their scores are reused
    fresh = Scripted(tiny, answers)
    other = run_tool_harness(fresh, items, cache_dir=tmp_path, hidden_layers=(2,), progress=False)
    assert fresh.generated == 0 and fresh.rescored == 1
    assert other[0].score_key != records[0].score_key
    assert [len(r.calls) for r in other] == [2, 0, 1, 1]
    assert other[0].calls[0].model_dump(exclude={"id"}) == records[0].calls[0].model_dump(exclude={"id"})
    assert other[3].calls[0].result is not None
    assert judge_tool_records(items, other)[3].correct


def test_a_binding_error_is_recorded_not_raised(tiny: Any, tmp_path: Path) -> None:
    from gradguard.evaluation.tool_calls import run_tool_harness
    from gradguard.integrations._core.tools import ToolSchemaError

    def broken(tools: Any) -> Any:
        raise ToolSchemaError("tool 'geo.area': cannot render")

    (rec,) = run_tool_harness(tiny, [_item([])], cache_dir=tmp_path, binding_factory=broken, progress=False)
    assert rec.result is None and "cannot render" in (rec.error or "")


# --------------------------------------------------------------------------------- metrics and fitting


def _record(item: ToolItem, calls: list[tuple[dict[str, Any], float]], *, text: str = "x") -> Any:
    """A ToolRecord with hand-built results: each call ``(arguments, hybridgrad)``."""
    from gradguard.evaluation.tool_calls import CallRecord, ToolRecord
    from gradguard.result import Timings
    from gradguard.testing.results import make_score_result

    timings = Timings(generate_s=2.0, score_s=1.0)
    return ToolRecord(
        gen_key=item.id,
        score_key=item.id,
        index=item.index,
        item_id=item.id,
        irrelevant=item.irrelevant,
        group=item.group,
        result=make_score_result(response=text, timings=timings),
        calls=tuple(
            CallRecord(
                id=f"c{j}",
                name="geo.area",
                arguments=args,
                valid=True,
                result=make_score_result(
                    hybridgrad=g,
                    mean_nll=g,
                    g_nll=g * 3,
                    timings=timings,
                    token_ids=(1, 2),
                    token_logprobs=(-g, -2 * g),
                    token_entropies=(g, 1.5 * g),
                ),
            )
            for j, (args, g) in enumerate(calls)
        ),
    )


def _synthetic(n: int = 60, seed: int = 0) -> list[Any]:
    """Outcomes where a right call has a low HybridGrad (a perfect signal) and irrelevant items alternate."""
    import numpy as np

    from gradguard.evaluation.tool_calls import judge_tool_records

    rng = np.random.default_rng(seed)
    items, records = [], []
    for i in range(n):
        relevant = i % 3 != 2
        item = ToolItem(**{**_item([AREA_TRUTH] if relevant else [], ident=f"q{i}").__dict__, "index": i})
        right = bool(rng.random() < 0.5)
        if relevant:
            calls = [({"base": 10 if right else 11, "height": 5}, float(rng.uniform(0.01, 0.1) + (0 if right else 1)))]
        else:
            calls = [] if i % 2 else [({"base": 1, "height": 1}, float(rng.uniform(1.0, 2.0)))]
        items.append(item)
        records.append(_record(item, calls))
    return judge_tool_records(items, records)


def test_evaluate_tools_reports_accuracy_no_call_rate_and_per_call_auroc() -> None:
    from gradguard.evaluation.tool_calls import evaluate_tools, format_tools_table

    outcomes = _synthetic()
    summary = evaluate_tools(outcomes, n_boot=50)
    relevant = [o for o in outcomes if not o.item.irrelevant]
    irrelevant = [o for o in outcomes if o.item.irrelevant]
    assert summary.n_relevant == len(relevant) and summary.n_irrelevant == len(irrelevant)
    assert summary.call_accuracy == pytest.approx(sum(o.correct for o in relevant) / len(relevant))
    assert summary.no_call_rate == pytest.approx(sum(not o.made_call for o in irrelevant) / len(irrelevant))
    assert summary.n_calls == sum(len(o.record.calls) for o in outcomes)
    hybrid = next(m for m in summary.per_call if m.method == "hybridgrad")
    assert hybrid.auroc == pytest.approx(1.0) and hybrid.auroc_ci[0] <= 1.0
    assert summary.score_over_generate == pytest.approx(0.5) and summary.score_over_generate_per_call == 0.5
    assert summary.errors_by_type  # the wrong calls' reasons are counted
    table = format_tools_table(summary)
    assert "call accuracy" in table and "no-call rate on irrelevant questions" in table and "HybridGrad" in table


def test_per_call_calibration_fits_with_folds_by_item_and_is_cross_fitted_on_its_data(tmp_path: Path) -> None:
    from gradguard.calibration.fit import fit_calibration
    from gradguard.evaluation.tool_calls import (
        calibrated_call_confidences,
        call_rows,
        tool_fit_data,
        write_tools_report,
    )
    from gradguard.tasks import builtin_task

    outcomes = _synthetic(60)
    data, n_unscored = tool_fit_data(outcomes)
    rows = call_rows(outcomes)
    assert n_unscored == 0 and data.y.size == len(rows) and data.H is None
    assert len(set(data.groups.tolist())) == data.y.size  # one call per item here: one group each
    report = fit_calibration(
        data, builtin_task("tools"), n_questions=len(outcomes), n_unscored=0, spt_offset=-3, layer_span=(2, 4),
        data_file="a.jsonl+b.jsonl", data_sha256="abc", max_new_tokens=128, folds=3, n_boot=20,
    )  # fmt: skip
    cal = report.calibration
    assert cal.task.name == "tools" and cal.data.judge == "bfcl" and cal.cv.auroc is not None and cal.cv.auroc > 0.9
    conf, note = calibrated_call_confidences(rows, cal, data_sha256="abc") or (None, "")
    assert "cross-fitted" in note and conf is not None
    conf2, note2 = calibrated_call_confidences(rows, cal, data_sha256="other") or (None, "")
    assert "cross-fitted" not in note2
    summary, paths = write_tools_report(outcomes, tmp_path, calibration=cal, data_sha256="abc", n_boot=20)
    assert summary.per_call[-1].method == "confidence"
    assert {"results", "table", "summary", "plot"} <= set(paths)
    first = json.loads(paths["results"].read_text().splitlines()[0])
    assert {"calls", "correct", "ground_truth", "scores"} <= set(first)
    assert first["calls"][0]["confidence"] is not None


def test_fit_data_needs_both_outcomes() -> None:
    from gradguard.calibration.probe_fit import CalibrationError
    from gradguard.evaluation.tool_calls import judge_tool_records, tool_fit_data

    items = [ToolItem(**{**_item([AREA_TRUTH], ident=f"q{i}").__dict__, "index": i}) for i in range(4)]
    records = [_record(it, [({"base": 10, "height": 5}, 0.1)]) for it in items]
    with pytest.raises(CalibrationError, match="all 4 scored tool calls are right"):
        tool_fit_data(judge_tool_records(items, records))
    with pytest.raises(CalibrationError, match="made a scored tool call"):
        tool_fit_data(judge_tool_records(items, [_record(it, []) for it in items]))


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model folder, its profile and two BFCL-format files (relevant, irrelevant)."""
    from gradguard.profiles.io import save_profile
    from gradguard.testing import make_tiny_model, make_tiny_profile

    tmp = tmp_path_factory.mktemp("tools-cli")
    model, tok = make_tiny_model("qwen2")
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    save_profile(make_tiny_profile(tok, model_id=None), tmp / "profile.json")
    rows = [_row(f"s{i}", [SMALL_TRUTH]) for i in range(16)] + [_row(f"i{i}", []) for i in range(4)]
    for row in rows:
        row["tools"] = [SMALL]
    simple = _write(tmp / "simple.jsonl", rows[:16])
    irrelevant = _write(tmp / "irrelevance.jsonl", rows[16:])
    return {"tmp": tmp, "model": tmp / "model", "profile": tmp / "profile.json", "simple": simple, "irr": irrelevant}


@pytest.fixture()
def scripted_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """GradScorer.generate_and_score answers question sN with a right call for even N, a wrong one for odd N,
    and irrelevant question iN with a call for odd N; each answer is scored for real."""
    from gradguard.scorer import GradScorer

    def answer(question: str) -> str:
        ident = question.split()[-1]
        n = int(ident[1:])
        if ident.startswith("s"):
            return CALL.format(base=10 if n % 2 == 0 else 11)
        return CALL.format(base=1) if n % 2 else "None of the tools fits."

    def fake(self: Any, messages: Any, *, max_new_tokens: int = 256, **kw: Any) -> Any:
        kw = {k: v for k, v in kw.items() if k in ("tools", "prefill", "spans", "task")}
        result = self.score(messages, answer(messages[-1]["content"]), **kw)
        return result.model_copy(update={"timings": result.timings.model_copy(update={"generate_s": 1.0})})

    monkeypatch.setattr(GradScorer, "generate_and_score", fake)


@pytest.fixture()
def quick_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer bootstrap resamples: the figures do not matter here, the flow and the written profile do."""
    from gradguard.calibration import fit
    from gradguard.evaluation import tool_calls

    real_fit, real_eval = fit.fit_calibration, tool_calls.evaluate_tools
    monkeypatch.setattr(fit, "fit_calibration", lambda *a, **k: real_fit(*a, **{**k, "n_boot": 20}))
    monkeypatch.setattr(tool_calls, "evaluate_tools", lambda *a, **k: real_eval(*a, **{**k, "n_boot": 20}))


def _cli(setup: dict[str, Path], command: str, *extra: str) -> list[str]:
    return [
        command, "--task", "tools", "--model", str(setup["model"]), "--profile", str(setup["profile"]),
        "--data", str(setup["simple"]), "--data", str(setup["irr"]), "--no-progress", "--max-new-tokens", "32",
        *extra,
    ]  # fmt: skip


def test_eval_and_calibrate_task_tools(
    cli_setup: dict[str, Path], scripted_generation: None, quick_figures: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from gradguard.calibration.cli import main as calibrate_main
    from gradguard.evaluation.cli import main as eval_main
    from gradguard.profiles import load_profile

    tmp = cli_setup["tmp"]
    cache = tmp / "cache"
    prof = tmp / "tools-profile.json"
    args = _cli(cli_setup, "calibrate", "--cache", str(cache), "--out", str(prof), "--folds", "2",
                "--hidden-layers", "3")  # fmt: skip
    assert calibrate_main(args) == 0
    out = capsys.readouterr().out
    assert "folds grouped by item id" in out and "call accuracy" in out
    cal = load_profile(prof).calibrations["tools"]
    assert cal.n == 16 + 2 and cal.n_correct == 8 and cal.data.file == "simple.jsonl+irrelevance.jsonl"
    assert "per call" in cal.data.note and cal.task.judge == "bfcl"
    # eval reads the same cache: with the original profile there is no per-call confidence ...
    args = _cli(cli_setup, "eval", "--out", str(tmp / "eval"), "--cache", str(cache), "--boot", "20")
    assert eval_main(args) == 0
    out = capsys.readouterr().out
    assert "call accuracy (relevant questions answered with exactly the right calls): 50.0%" in out
    assert "no-call rate on irrelevant questions: 50.0%" in out
    assert "no per-call confidence" in out
    summary = json.loads((tmp / "eval" / "summary.json").read_text())
    assert summary["n_calls"] == 16 + 2 and summary["n_calls_correct"] == 8
    # ... and with the calibrated one a cross-fitted confidence (the calibration's own out-of-fold values)
    args[args.index("--profile") + 1] = str(prof)
    assert eval_main(args) == 0
    assert "cross-fitted" in capsys.readouterr().out


def test_only_the_tools_task_reads_several_files(
    cli_setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from gradguard.evaluation.cli import main as eval_main

    args = _cli(cli_setup, "eval", "--out", str(cli_setup["tmp"] / "x"))
    args[args.index("tools")] = "closed-qa"
    assert eval_main(args) == 2
    assert "only --task tools reads several files" in capsys.readouterr().err


def test_tools_is_a_built_in_task_of_the_scorer() -> None:
    from gradguard import GradScorer
    from gradguard.tasks import builtin_task
    from gradguard.testing import make_tiny_model

    model, tok = make_tiny_model("qwen2")
    scorer = GradScorer(model, tok, model_name="tiny-qwen2", task="tools")
    assert scorer.task == "tools" and scorer.calibration_for() is None  # built in, not calibrated in this profile
    task = builtin_task("tools")
    assert task.judge == "bfcl" and task.tool_calls and task.max_new_tokens >= 64
