"""The scoring benchmark's helpers (benchmarks/bench_scoring.py): argument parsing, aggregation, summary, prompts."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from gradguard import GradScorer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scoring.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scoring", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(ratio_num: float, ratio_den: float, **extra: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "prompt_tokens": 70,
        "answer_tokens": 8,
        "generate_s": ratio_den,
        "score_s": ratio_num,
        "ratio": ratio_num / ratio_den,
        "oracle_s": 10 * ratio_num,
        "oracle_x": 10.0,
        "peak_extra_mb": 5.0,
        "oracle_peak_mb": 50.0,
        "max_rel_diff": 1e-4,
        "score_path": "reuse",
    }
    run.update(extra)
    return run


def test_int_lists_parse(bench: ModuleType) -> None:
    assert bench.parse_int_list("4,8, 32,128") == [4, 8, 32, 128]
    assert bench.parse_int_list("64,64,512") == [64, 512]
    args = bench.parse_args(["--answer-tokens", "4,256", "--lengths", "64"])
    assert args.answer_tokens == [4, 256] and args.lengths == [64]
    defaults = bench.parse_args([])
    assert defaults.answer_tokens == [4, 8, 32, 128] and defaults.lengths == [64, 512, 2048]
    assert defaults.repeats == 3 and defaults.model is None and not defaults.no_oracle
    assert bench.DTYPES[defaults.dtype] is torch.float32


@pytest.mark.parametrize("text", ["", "4,", "4,,8", "a", "4,x", "0", "8,-2", "1.5"])
def test_bad_int_lists_are_rejected(bench: ModuleType, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_int_list(text)


def test_bad_lengths_exit_with_a_clear_error(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--lengths", "64,abc"])
    err = capsys.readouterr().err
    assert "--lengths" in err and "'abc'" in err and "not an integer" in err
    with pytest.raises(SystemExit):
        bench.parse_args(["--answer-tokens", "0"])
    assert "--answer-tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "tpu"])


def test_cell_takes_medians_of_per_run_ratios(bench: ModuleType) -> None:
    # per-run ratios 0.1, 0.5, 0.2 -> median 0.2; the ratio of the medians would be 1.0 / 4.0 = 0.25
    runs = [_run(1.0, 10.0), _run(1.0, 2.0), _run(2.0, 10.0, peak_extra_mb=9.0)]
    row = bench.aggregate(runs, 64, 8)
    assert row["ratio"] == pytest.approx(0.2)
    assert row["score_s"] == 1.0 and row["generate_s"] == 10.0
    assert row["peak_extra_mb"] == 5.0
    assert row["runs"] == 3 and row["target_prompt_tokens"] == 64 and row["target_answer_tokens"] == 8
    assert row["score_path"] == "reuse"
    assert set(bench.ROW_KEYS) == set(row)
    json.loads(json.dumps([row]))  # a JSON list of rows


def test_cell_without_oracle_has_null_oracle_fields(bench: ModuleType) -> None:
    runs = [_run(1.0, 10.0, oracle_s=None, oracle_x=None, oracle_peak_mb=None, max_rel_diff=None, score_path="exact")]
    runs.append({**runs[0], "score_path": "reuse"})
    row = bench.aggregate(runs, 64, 4)
    assert row["oracle_s"] is None and row["oracle_x"] is None and row["max_rel_diff"] is None
    assert row["score_path"] == "mixed"
    assert "-" in bench.format_row(row)
    with pytest.raises(ValueError):
        bench.aggregate([], 64, 4)


def _row(prompt: int, answer: int, ratio: float, oracle_x: float | None, peak: float | None) -> dict[str, Any]:
    return {"target_prompt_tokens": prompt, "target_answer_tokens": answer, "ratio": ratio, "oracle_x": oracle_x,
            "peak_extra_mb": peak}  # fmt: skip


def test_summary(bench: ModuleType) -> None:
    rows = [
        _row(64, 4, 0.30, 5.0, 10.0),
        _row(64, 32, 0.10, 6.0, 20.0),
        _row(64, 256, 0.05, 7.0, 30.0),
        _row(2048, 4, 0.20, 25.0, 10.0),
        _row(2048, 32, 0.12, 30.0, 10.0),
        _row(2048, 256, 0.08, 40.0, 25.0),
    ]
    summary = bench.summarize(rows)
    assert summary["worst_ratio_ge8"] == pytest.approx(0.12)
    assert summary["worst_ratio_lt8"] == pytest.approx(0.30)
    assert summary["longest_prompt"] == 2048 and summary["oracle_x_longest"] == 25.0
    mem = summary["memory"]
    assert mem["prompt"] == 2048 and mem["answer"] == 256 and mem["x"] == pytest.approx(2.5)
    lines = "\n".join(bench.summary_lines(summary))
    assert "MISSED" in lines and "15%" in lines and "25%" in lines and "20x" in lines and "2x" in lines


def test_summary_of_a_small_matrix(bench: ModuleType) -> None:
    summary = bench.summarize([_row(64, 4, 0.5, None, 0.0)])
    assert summary["worst_ratio_ge8"] is None and summary["oracle_x_longest"] is None and summary["memory"] is None
    assert len(bench.summary_lines(summary)) == 1
    assert bench.summarize([])["longest_prompt"] is None


def test_build_prompt_reaches_the_length_and_varies_the_question(bench: ModuleType, qwen_scorer: GradScorer) -> None:
    for target in (8, 64, 300):
        messages = bench.build_prompt(qwen_scorer, target, bench.question_index(target, 0))
        assert len(qwen_scorer.prompt_ids(messages)) >= target
    questions = {
        bench.build_prompt(qwen_scorer, 64, bench.question_index(64, rep))[0]["content"].rsplit("Question: ", 1)[1]
        for rep in range(3)
    }
    assert len(questions) == 3


def test_peak_memory_sees_an_allocation(bench: ModuleType) -> None:
    def allocate() -> float:
        return float(torch.ones(16 * 2**20).sum())  # 64 MiB, touched

    value, elapsed, peak = bench.measure_peak(allocate)
    assert value == 16 * 2**20 and elapsed >= 0
    if peak is not None:  # None only without /proc
        assert peak >= 48 * 2**20
        _, peak_sampled = bench._sampled_peak(allocate)
        assert peak_sampled >= 0


def test_one_run_on_a_tiny_model(bench: ModuleType, qwen_scorer: GradScorer) -> None:
    scorer = qwen_scorer  # from tests/conftest.py: make_tiny_model("qwen2") -> GradScorer(model, tok)
    probe = bench.install_scoring_probe(scorer)
    messages = bench.build_prompt(scorer, 32, 0)
    run = bench.run_once(scorer, probe, messages, 3)
    assert run["answer_tokens"] == 3 and run["prompt_tokens"] >= 32
    assert run["ratio"] == pytest.approx(run["score_s"] / run["generate_s"])
    assert run["oracle_x"] == pytest.approx(run["oracle_s"] / run["score_s"])
    assert run["peak_extra_mb"] is not None and run["peak_extra_mb"] >= 0
    assert run["max_rel_diff"] < 1e-3
    assert len(probe.peaks) == 1
    row = bench.aggregate([run], 32, 3)
    assert set(bench.ROW_KEYS) <= set(row)
    no_oracle = bench.run_once(scorer, probe, messages, 2, oracle=False)
    assert no_oracle["oracle_s"] is None and no_oracle["max_rel_diff"] is None
