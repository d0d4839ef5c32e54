"""The evaluation harness (per-question cache, resume, re-scoring), the report, and the eval/calibrate CLIs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from gradguard.calibration.harness import CACHE_FILE, CacheWarning, ResultCache, run_harness
from gradguard.data import DataFormatError, QAItem, load_qa, qa_messages
from gradguard.errors import InputError
from gradguard.evaluation.report import METHODS, evaluate_records, format_table, write_report
from gradguard.profiles import Profile, load_profile, save_profile
from gradguard.result import ScoreResult, Timings


def _u(query: str) -> float:
    """A fixed pseudo-random number in [0, 1) per question."""
    return int(hashlib.sha256(query.encode()).hexdigest()[:8], 16) / 2**32


class FakeScorer:
    """Answers 'alpha' (correct) with probability falling in a hidden difficulty that also sets HybridGrad."""

    def __init__(self, spt_offset: int = -2, layer_span: tuple[int, int] = (2, 4), fail_on: str | None = None) -> None:
        self.model_name = "fake/model"
        self.spt_offset = spt_offset
        self.layer_span = layer_span
        self.generated = 0
        self.rescored = 0
        self.fail_on = fail_on
        self.interrupt_after: int | None = None

    def _result(self, query: str, text: str, generate_s: float | None) -> ScoreResult:
        d = _u(query)  # difficulty
        h = math.exp(-8 + 6 * d) * (1 + 0.05 * self.spt_offset)
        return ScoreResult(
            hybridgrad=h, semgrad=2 * h, paragrad=h / 2, exgrad=h / 3, alpha=0.5,
            mean_entropy=0.5 + d, g_nll=1 + 3 * _u(query + "g"), mean_nll=0.3 + d / 2, max_nll=1.0 + d,
            n_response_tokens=len(text), spt_offset=self.spt_offset, spt_position=20 + self.spt_offset,
            layer_span=self.layer_span, n_prompt_tokens=20, timings=Timings(generate_s=generate_s, score_s=0.01),
            response=text, token_ids=tuple(ord(c) for c in text), model=self.model_name,
            token_entropies=tuple(0.5 + d for _ in text),
            token_logprobs=tuple(-(0.3 + d / 2) for _ in text),
        )

    def generate_and_score(self, messages: Any, *, max_new_tokens: int = 24, **kw: Any) -> ScoreResult:
        query = messages[-1]["content"]
        if self.interrupt_after is not None and self.generated >= self.interrupt_after:
            raise KeyboardInterrupt
        if query == self.fail_on:
            raise InputError("prompt too long for the fake model")
        self.generated += 1
        correct = _u(query + "c") < 1 - _u(query)  # P(correct | difficulty d) = 1 - d
        return self._result(query, "alpha" if correct else "beta", 0.1)

    def score(self, messages: Any, response: Any) -> ScoreResult:
        self.rescored += 1
        return self._result(messages[-1]["content"], "".join(chr(i) for i in response), None)


def items(n: int) -> list[QAItem]:
    return [QAItem(index=i, query=f"Question number {i}?", answers=("alpha",)) for i in range(n)]


def write_qa(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for it in items(n):
            fh.write(json.dumps({"query": it.query, "truthful answer": list(it.answers)}) + "\n")
    return path


def test_second_run_is_served_from_the_cache(tmp_path: Path) -> None:
    scorer = FakeScorer()
    first = run_harness(scorer, items(12), cache_dir=tmp_path, progress=False)
    assert scorer.generated == 12
    again = run_harness(scorer, items(12), cache_dir=tmp_path, progress=False)
    assert scorer.generated == 12 and scorer.rescored == 0
    assert [r.model_dump() for r in again] == [r.model_dump() for r in first]
    assert len((tmp_path / CACHE_FILE).read_text().splitlines()) == 12


def test_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    scorer = FakeScorer()
    scorer.interrupt_after = 5
    with pytest.raises(KeyboardInterrupt):
        run_harness(scorer, items(10), cache_dir=tmp_path, progress=False)
    assert len(ResultCache(tmp_path)) == 5
    resumed = FakeScorer()
    records = run_harness(resumed, items(10), cache_dir=tmp_path, progress=False)
    assert resumed.generated == 5 and len(records) == 10
    assert [r.index for r in records] == list(range(10))


def test_a_cut_off_last_line_is_dropped_and_recomputed(tmp_path: Path) -> None:
    run_harness(FakeScorer(), items(4), cache_dir=tmp_path, progress=False)
    path = tmp_path / CACHE_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # a write interrupted mid-line
    scorer = FakeScorer()
    with pytest.warns(CacheWarning, match="incomplete last line"):
        records = run_harness(scorer, items(4), cache_dir=tmp_path, progress=False)
    assert scorer.generated == 1 and len(records) == 4
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_other_offset_rescores_cached_answers_without_generating(tmp_path: Path) -> None:
    run_harness(FakeScorer(spt_offset=-2), items(6), cache_dir=tmp_path, progress=False)
    other = FakeScorer(spt_offset=-1)
    records = run_harness(other, items(6), cache_dir=tmp_path, progress=False)
    assert other.generated == 0 and other.rescored == 6
    assert all(r.result is not None and r.result.spt_offset == -1 for r in records)
    # both settings now live side by side in the cache
    back = FakeScorer(spt_offset=-2)
    run_harness(back, items(6), cache_dir=tmp_path, progress=False)
    assert back.generated == back.rescored == 0


def test_changed_generation_settings_generate_again(tmp_path: Path) -> None:
    run_harness(FakeScorer(), items(3), cache_dir=tmp_path, progress=False)
    scorer = FakeScorer()
    run_harness(scorer, items(3), cache_dir=tmp_path, progress=False, max_new_tokens=5)
    assert scorer.generated == 3


def test_scoring_errors_are_recorded_as_unscored(tmp_path: Path) -> None:
    qs = items(5)
    scorer = FakeScorer(fail_on=qs[2].query)
    records = run_harness(scorer, qs, cache_dir=tmp_path, progress=False)
    assert records[2].result is None and "too long" in (records[2].error or "")
    summary = evaluate_records(records, n_boot=50)
    assert summary.n_unscored == 1 and summary.n == 5


def test_report_ranks_methods_and_writes_files(tmp_path: Path) -> None:
    records = run_harness(FakeScorer(), items(200), cache_dir=tmp_path / "cache", progress=False)
    summary, paths = write_report(records, tmp_path / "out", n_boot=100)
    by = {m.method: m for m in summary.methods}
    assert tuple(by) == METHODS and {"hybridgrad", "g_nll", "max_entropy"} <= set(by)
    # HybridGrad tracks the hidden difficulty, G-NLL is noise
    assert by["hybridgrad"].auroc > 0.7 and abs(by["g_nll"].auroc - 0.5) < 0.15
    assert by["hybridgrad"].auroc_ci[0] < by["hybridgrad"].auroc < by["hybridgrad"].auroc_ci[1]
    assert by["hybridgrad"].aurc < by["g_nll"].aurc and by["hybridgrad"].prr > 0.3
    rows = [json.loads(line) for line in paths["results"].read_text().splitlines()]
    assert len(rows) == 200 and sum(r["correct"] for r in rows) == summary.n_correct
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(paths["summary"].read_text())["n"] == 200
    assert "HybridGrad" in format_table(summary)


def test_qa_loader_reports_line_numbers(tmp_path: Path) -> None:
    f = tmp_path / "qa.jsonl"
    f.write_text('{"query": "a?", "truthful answer": ["x"]}\n{"query": "b?"}\n')
    with pytest.raises(DataFormatError, match=r"qa.jsonl:2: no gold answers"):
        load_qa(f)
    f.write_text('{"query": "a?", "truthful answer": "x"}\n')
    assert load_qa(f)[0].answers == ("x",)
    with pytest.raises(DataFormatError, match="does not exist"):
        load_qa(tmp_path / "missing.jsonl")
    assert qa_messages("q?", None) == [{"role": "user", "content": "q?"}]


@pytest.mark.filterwarnings("ignore::gradguard.profiles.ProfileWarning")  # the tiny model's family-default anchor
def test_tiny_model_rescoring_matches_generation(tmp_path: Path) -> None:
    from gradguard import GradScorer
    from gradguard.testing import make_tiny_model

    model, tok = make_tiny_model("qwen2")
    qs = items(2)
    a = GradScorer(model, tok, spt_offset=-2, model_name="tiny")
    first = run_harness(a, qs, cache_dir=tmp_path, max_new_tokens=6, progress=False)
    b = GradScorer(model, tok, spt_offset=-3, model_name="tiny")
    rescored = run_harness(b, qs, cache_dir=tmp_path, max_new_tokens=6, progress=False)
    for r1, r2, q in zip(first, rescored, qs, strict=True):
        assert r1.result is not None and r2.result is not None
        assert r2.result.token_ids == r1.result.token_ids and r2.result.spt_offset == -3
        direct = b.score(qa_messages(q.query), list(r1.result.token_ids))
        assert r2.result.semgrad == pytest.approx(direct.semgrad, rel=1e-5)
        assert r2.result.g_nll == pytest.approx(r1.result.g_nll, rel=1e-5)  # NLL does not depend on the offset


# -- the CLIs, with the model loading replaced by the fake scorer ------------------------------------------


@pytest.fixture()
def fake_models(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeScorer]:
    made: dict[str, FakeScorer] = {}

    def make_scorer(
        source: Any,
        *,
        profile: Any = None,
        spt_offset: Any = None,
        layer_span: Any = None,
        strict: bool = True,
        device: Any = None,
    ) -> Any:
        scorer = FakeScorer()
        made[str(len(made))] = scorer
        prof = load_profile(profile) if profile else Profile(
            name="fake", kind="manual", model_type="fake", spt_offset=-2, layer_span=(2, 4)
        )
        return scorer, prof

    monkeypatch.setattr("gradguard.calibration.harness.make_scorer", make_scorer)
    return made


def test_eval_then_calibrate_reuses_the_cache(
    tmp_path: Path, fake_models: dict[str, FakeScorer], capsys: pytest.CaptureFixture[str]
) -> None:
    from gradguard.calibration.cli import main as calibrate_main
    from gradguard.evaluation.cli import main as eval_main
    from gradguard.profiles.cli import main as profile_main

    data = write_qa(tmp_path / "qa.jsonl", 300)
    cache = tmp_path / "cache"
    assert (
        eval_main(
            [
                "eval",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "ev"),
                "--cache",
                str(cache),
                "--no-progress",
                "--boot",
                "50",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "HybridGrad" in out and (tmp_path / "ev" / "results.jsonl").is_file()
    assert fake_models["0"].generated == 300

    prof = tmp_path / "cal.json"
    code = calibrate_main(
        ["calibrate", "--data", str(data), "--n", "300", "--cache", str(cache), "--out", str(prof), "--no-progress",
         "--epsilon", "0.3", "0.001"]
    )
    assert code == 0
    assert fake_models["1"].generated == 0 and fake_models["1"].rescored == 0  # all from the cache
    text = capsys.readouterr().out
    assert "gradients" in text and "all together *" in text and "no threshold guarantees" in text
    p = load_profile(prof)
    cal = p.calibrations["closed-qa"]
    assert cal.n == 300 and cal.data.judge == "containment" and cal.data.file == "qa.jsonl"
    assert cal.ablation["gradients"].auroc is not None and cal.ablation["gradients"].auroc > 0.7
    assert cal.cv.auroc == cal.ablation["all together"].auroc
    assert len(cal.holdout_confidence) == 300

    # the calibrated profile now adds a confidence row to eval
    assert (
        eval_main(
            [
                "eval",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "ev2"),
                "--cache",
                str(cache),
                "--profile",
                str(prof),
                "--no-progress",
                "--boot",
                "50",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "cross-fitted" in out  # the same answers: the honest out-of-fold confidences are reported
    summary = json.loads((tmp_path / "ev2" / "summary.json").read_text())
    conf_row = next(m for m in summary["methods"] if m["method"] == "confidence")
    assert conf_row["auroc"] == pytest.approx(cal.cv.auroc, abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "ev2" / "results.jsonl").read_text().splitlines()]
    assert all(r["confidence"] is not None and r["task"] == "closed-qa" for r in rows)
    # a subset of the calibration file: the refitted calibrator, flagged in-sample
    assert (
        eval_main(
            [
                "eval",
                "--data",
                str(data),
                "--n",
                "200",
                "--out",
                str(tmp_path / "ev3"),
                "--cache",
                str(cache),
                "--profile",
                str(prof),
                "--no-progress",
                "--boot",
                "50",
            ]
        )
        == 0
    )
    assert "in-sample" in capsys.readouterr().out

    assert profile_main(["profile", "threshold", str(prof), "--task", "closed-qa", "--epsilon", "0.3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["epsilon"] == 0.3 and isinstance(res[0]["feasible"], bool)
    assert profile_main(["profile", "show", str(prof)]) == 0
    assert "task closed-qa: 300 answers from qa.jsonl" in capsys.readouterr().out


def test_cli_errors_are_reported_not_raised(
    tmp_path: Path, fake_models: dict[str, FakeScorer], capsys: pytest.CaptureFixture[str]
) -> None:
    from gradguard.evaluation.cli import main as eval_main

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    assert eval_main(["eval", "--data", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_empty_answers_count_as_wrong_and_least_confident() -> None:
    from gradguard.calibration.harness import CachedRecord

    fake = FakeScorer()
    recs = []
    for i, (text, h) in enumerate([("alpha", 1e-4), ("alpha", 2e-4), ("beta", 1e-3), ("beta", 5e-3)]):
        res = fake._result(f"q{i}", text, 0.1).model_copy(update={"hybridgrad": h})
        recs.append(
            CachedRecord(gen_key=str(i), score_key=str(i), index=i, query=f"q{i}", answers=("alpha",), result=res)
        )
    empty = fake._result("q4", "", 0.1).model_copy(
        update={
            k: math.nan for k in ("hybridgrad", "semgrad", "paragrad", "exgrad", "g_nll", "mean_nll", "mean_entropy")
        }
        | {"empty": True, "n_response_tokens": 0}
    )
    recs.append(CachedRecord(gen_key="4", score_key="4", index=4, query="q4", answers=("alpha",), result=empty))
    summary = evaluate_records(recs, n_boot=10)
    hg = next(m for m in summary.methods if m.method == "hybridgrad")
    assert summary.n_unscored == 1 and summary.n_correct == 2
    assert hg.auroc == 1.0 and hg.prr == pytest.approx(1.0)


def test_make_scorer_uses_the_resolved_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from gradguard.calibration.harness import make_scorer
    from gradguard.profiles.fingerprint import chat_template_fingerprint
    from gradguard.testing import make_tiny_model

    model, tok = make_tiny_model("qwen2")
    monkeypatch.setattr("gradguard.profiles.cli.load_model_source", lambda source: (model, tok, "acme/tiny"))
    prof = save_profile(
        Profile(
            name="acme-tiny", kind="measured", model_id="acme/tiny", model_type="qwen2", num_layers=4, hidden_size=32,
            chat_template_fingerprint=chat_template_fingerprint(tok), spt_offset=-1, layer_span=(1, 4),
        ),
        tmp_path / "p.json",
    )
    scorer, resolved = make_scorer(None, profile=prof)
    assert resolved.name == "acme-tiny" and scorer.spt_offset == -1 and scorer.layer_span == (1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer, resolved = make_scorer(None, profile=prof, spt_offset=-2)
    assert scorer.spt_offset == -2 and scorer.layer_span == (1, 4)
    with pytest.raises(InputError, match="spt_offset=1"):
        make_scorer(None, spt_offset=1)


def test_rag_report_gives_decline_rates_and_labels_declines_on_unanswerable_questions() -> None:
    from gradguard.calibration.harness import CachedRecord
    from gradguard.tasks import builtin_task

    fake = FakeScorer()
    rows = [  # (answer, gold, is_impossible)
        ("unanswerable.", (), True),  # right: declined an unanswerable question
        ("Sky plc", (), True),  # wrong: answered an unanswerable question
        ("Sky plc", ("Sky plc",), False),  # right
        ("unanswerable", ("BSkyB",), False),  # wrong: declined an answerable question
        ("BSkyB", ("BSkyB",), False),  # right
    ]
    recs = [
        CachedRecord(
            gen_key=str(i), score_key=str(i), index=i, query=f"q{i}", answers=gold, is_impossible=imp,
            result=fake._result(f"q{i}", text, 0.1),
        )
        for i, (text, gold, imp) in enumerate(rows)
    ]
    summary = evaluate_records(recs, builtin_task("rag"), n_boot=10)
    assert summary.n_correct == 3 and summary.n_unanswerable == 2
    assert summary.decline_rate_unanswerable == 0.5
    assert summary.decline_rate_answerable == pytest.approx(1 / 3)
    assert summary.accuracy_answerable == pytest.approx(2 / 3)
    table = format_table(summary)
    assert "2 unanswerable: declined 50.0%" in table and "task rag" in table
