"""Judge cached answers and report how well each score separates right from wrong.

Answers are labelled for their task (:func:`gradguard.calibration.labels.label_answer`: the
task's judge on answerable questions; declining on unanswerable ones). For every method — the
uncertainty scores of :data:`gradguard.scores.SCORES` (larger = less confident), plus the
calibrated ``confidence`` when the profile has one for the task (larger = more confident) —
the report gives AUROC with a bootstrap 95% interval, AURC and PRR
(:mod:`gradguard.calibration.metrics`), and the answer accuracy and decline rates. Unscored
answers (empty, or scoring failed) count as wrong and least confident.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradguard.calibration.harness import CachedRecord
from gradguard.calibration.labels import label_answer
from gradguard.calibration.metrics import (
    aurc,
    auroc,
    bootstrap_ci,
    confidence_from_uncertainty,
    prr,
    risk_coverage_curve,
)
from gradguard.calibration.model import predict
from gradguard.extras import require
from gradguard.scores import SCORE_BY_NAME, SCORE_LABELS, SCORES
from gradguard.tasks import Task, builtin_task

# Fail on import, before `gradguard eval` spends its long harness run, when the extra is missing.
for _module in ("scipy.stats", "matplotlib"):
    require(_module, "calibrate", "the evaluation report")

__all__ = [
    "METHODS",
    "MethodMetrics",
    "EvalSummary",
    "judge_records",
    "method_confidences",
    "calibrated_confidences",
    "evaluate_records",
    "format_table",
    "result_rows",
    "write_results_jsonl",
    "plot_risk_coverage",
    "write_report",
]

#: Reported methods (uncertainty scores), in table order.
METHODS: tuple[str, ...] = tuple(s.name for s in SCORES if s.uncertainty)
_LABELS = {
    **SCORE_LABELS,
    "confidence": "confidence",
}


@dataclass(frozen=True)
class MethodMetrics:
    """AUROC (95% bootstrap interval), AURC and PRR of one method on the evaluated answers."""

    method: str
    auroc: float
    auroc_ci: tuple[float, float]
    aurc: float
    prr: float
    note: str = ""


@dataclass(frozen=True)
class EvalSummary:
    """Accuracy and per-method metrics of one evaluation."""

    n: int
    n_correct: int
    n_unscored: int
    judge: str
    model: str | None
    spt_offset: int | None
    layer_span: tuple[int, int] | None
    methods: list[MethodMetrics] = field(default_factory=list)
    task: str = "closed-qa"
    n_unanswerable: int = 0
    decline_rate_unanswerable: float | None = None
    decline_rate_answerable: float | None = None
    accuracy_answerable: float | None = None

    @property
    def accuracy(self) -> float:
        """Fraction of answers judged correct."""
        return self.n_correct / self.n if self.n else float("nan")


def judge_records(records: Sequence[CachedRecord], task: Task) -> NDArray[np.int64]:
    """0/1 correctness of each record's answer under ``task`` (no answer = wrong)."""
    return np.array(
        [
            int(
                r.result is not None
                and not r.result.empty
                and label_answer(task, r.result.response, r.answers, r.is_impossible)
            )
            for r in records
        ],
        dtype=np.int64,
    )


def _record_confidence(record: CachedRecord, calibration: Any) -> float | None:
    res = record.result
    if res is None or not res.scored:
        return None
    if calibration is None:
        return res.confidence
    hidden = record.hidden_states()
    return predict(calibration.calibrator, calibration.domain, res.model_copy(update={"hidden": hidden})).confidence


def method_confidences(records: Sequence[CachedRecord], method: str, calibration: Any = None) -> NDArray[np.float64]:
    """Confidence (larger = more confident) of each record under ``method``; unscored → −inf.

    For an uncertainty score this is its negation; for ``"confidence"`` it is ``calibration``'s
    (a :class:`~gradguard.profiles.schema.TaskCalibration`) probability, or the one stored in the
    result when no calibration is given.
    """
    out = np.full(len(records), -np.inf)
    for i, r in enumerate(records):
        res = r.result
        if res is None or not res.scored:
            continue
        if method == "confidence":
            p = _record_confidence(r, calibration)
            out[i] = -np.inf if p is None else float(p)
        else:
            out[i] = float(confidence_from_uncertainty(SCORE_BY_NAME[method].read(res)))
    return out


def _metrics(
    name: str, conf: NDArray[np.float64], y: NDArray[np.int64], n_boot: int, seed: int, note: str = ""
) -> MethodMetrics:
    return MethodMetrics(
        method=name,
        auroc=auroc(conf, y),
        auroc_ci=bootstrap_ci(auroc, conf, y, n_boot=n_boot, seed=seed),
        aurc=aurc(conf, y),
        prr=prr(conf, y),
        note=note,
    )


def calibrated_confidences(
    records: Sequence[CachedRecord],
    y: NDArray[np.int64],
    calibration: Any,
    *,
    data_sha256: str | None = None,
) -> tuple[NDArray[np.float64], str] | None:
    """The ``confidence`` column and a note on how honest it is; None when the profile is uncalibrated.

    When these records are exactly the calibration answers (same file hash, judge, settings,
    and the same labels in the same order), the calibration's stored *out-of-fold*
    confidences are used ("cross-fitted"): each comes from a calibrator fitted without that
    question. Otherwise the profile's calibrator is applied; on the calibration file itself
    (a subset or other settings) that is marked *in-sample*.
    """
    cal = calibration
    if cal is None:
        return None
    scored = np.array([r.result is not None and r.result.scored for r in records], dtype=bool)
    same_data = data_sha256 is not None and cal.data.sha256 == data_sha256
    if (
        same_data
        and cal.n == int(scored.sum())
        and cal.n_unscored == int((~scored).sum())
        and all(
            cal.applies_to(r.result.spt_offset, tuple(r.result.layer_span))
            for r in records
            if r.result is not None and r.result.scored
        )
        and tuple(int(v) for v in y[scored]) == tuple(cal.holdout_correct)
    ):
        conf = np.full(len(records), -np.inf)
        conf[scored] = np.asarray(cal.holdout_confidence, dtype=np.float64)
        return conf, f"task {cal.task.name}; cross-fitted: nested out-of-fold confidences from the calibration"
    conf = method_confidences(records, "confidence", cal)
    if not np.isfinite(conf).any():
        return None
    note = f"task {cal.task.name}"
    if same_data:
        note += "; in-sample (calibrated on this file: see calibrate's cross-validated AUROC)"
    return conf, note


def _rate(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def evaluate_records(
    records: Sequence[CachedRecord],
    task: Task | None = None,
    *,
    calibration: Any = None,
    data_sha256: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> EvalSummary:
    """Label the answers for ``task`` and compute every method's metrics and the decline rates.

    A ``confidence`` row is added when ``calibration`` (the task's) is given (see
    :func:`calibrated_confidences` for when it is cross-fitted or in-sample).
    """
    task = task or builtin_task("closed-qa")
    y = judge_records(records, task)
    first = next((r.result for r in records if r.result is not None), None)
    methods = [_metrics(m, method_confidences(records, m), y, n_boot, seed) for m in METHODS]
    column = calibrated_confidences(records, y, calibration, data_sha256=data_sha256)
    if column is not None:
        methods.append(_metrics("confidence", column[0], y, n_boot, seed, column[1]))
    answered = [r for r in records if r.result is not None]
    declined = {id(r): task.declined(r.result.response) for r in answered}  # type: ignore[union-attr]
    unanswerable = [r for r in answered if r.is_impossible]
    answerable = [r for r in answered if not r.is_impossible]
    y_by_id = {id(r): int(v) for r, v in zip(records, y, strict=True)}
    return EvalSummary(
        n=len(records),
        n_correct=int(y.sum()),
        n_unscored=sum(1 for r in records if r.result is None or not r.result.scored),
        judge=task.judge,
        model=first.model if first is not None else None,
        spt_offset=first.spt_offset if first is not None else None,
        layer_span=tuple(first.layer_span) if first is not None else None,  # type: ignore[arg-type]
        methods=methods,
        task=task.name,
        n_unanswerable=sum(1 for r in records if r.is_impossible),
        decline_rate_unanswerable=_rate([declined[id(r)] for r in unanswerable]) if task.declines else None,
        decline_rate_answerable=_rate([declined[id(r)] for r in answerable]) if task.declines else None,
        accuracy_answerable=_rate([bool(y_by_id[id(r)]) for r in answerable]) if unanswerable else None,
    )


def _f(v: float, digits: int = 3) -> str:
    return "  n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def format_table(summary: EvalSummary) -> str:
    """A plain-text table: one row per method with AUROC [95% CI], AURC and PRR."""
    head = (
        f"task {summary.task}: {summary.n} questions, {summary.n_correct} correct ({summary.accuracy:.1%}, judge "
        f"{summary.judge}), {summary.n_unscored} unscored; model {summary.model}, spt_offset {summary.spt_offset}, "
        f"layers {summary.layer_span}"
    )
    lines = [head]
    if summary.n_unanswerable:
        lines.append(
            f"{summary.n_unanswerable} unanswerable: declined {_pct(summary.decline_rate_unanswerable)}; "
            f"{summary.n - summary.n_unanswerable} answerable: accuracy {_pct(summary.accuracy_answerable)}, "
            f"declined {_pct(summary.decline_rate_answerable)}"
        )
    lines += ["", f"{'method':<24} {'AUROC':>6} {'95% CI':>15} {'AURC':>6} {'PRR':>6}"]
    for m in summary.methods:
        ci = f"[{_f(m.auroc_ci[0])}, {_f(m.auroc_ci[1])}]"
        lines.append(f"{_LABELS.get(m.method, m.method):<24} {_f(m.auroc):>6} {ci:>15} {_f(m.aurc):>6} {_f(m.prr):>6}")
        if m.note:
            lines.append(f"{'':<24}   ({m.note})")
    lines.append("")
    lines.append(
        "AUROC of each method's confidence for a correct answer (= AUROC of its uncertainty for a wrong one): "
        "higher is better (0.5 = chance); AURC: lower is better; PRR: higher is better (1 = oracle)."
    )
    return "\n".join(lines)


def result_rows(records: Sequence[CachedRecord], task: Task, *, calibration: Any = None) -> list[dict[str, Any]]:
    """One JSON-ready dict per question: question, gold answers, answer, label, scores, confidence."""
    y = judge_records(records, task)
    rows = []
    for r, c in zip(records, y, strict=True):
        res = r.result
        row: dict[str, Any] = {
            "index": r.index,
            "query": r.query,
            "answers": list(r.answers),
            "is_impossible": r.is_impossible,
            "group": r.group,
            "response": res.response if res is not None else None,
            "declined": task.declined(res.response) if res is not None else None,
            "correct": bool(c),
            "task": task.name,
            "judge": task.judge,
            "scored": bool(res is not None and res.scored),
            "error": r.error,
        }
        if res is not None:
            row.update({k: (v if math.isfinite(v) else None) for k, v in res.uncertainty().items()})
            row.update(
                max_nll=res.max_nll if math.isfinite(res.max_nll) else None,
                alpha=res.alpha if math.isfinite(res.alpha) else None,
                n_response_tokens=res.n_response_tokens,
                spt_offset=res.spt_offset,
                layer_span=list(res.layer_span),
                generate_s=res.timings.generate_s,
                score_s=res.timings.score_s,
            )
            row.update(confidence=_record_confidence(r, calibration))
        rows.append(row)
    return rows


def write_results_jsonl(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write one JSON object per line."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    return p


def plot_risk_coverage(
    records: Sequence[CachedRecord],
    path: str | os.PathLike[str],
    task: Task,
    *,
    calibration: Any = None,
    data_sha256: str | None = None,
    title: str | None = None,
) -> Path:
    """Risk (error among accepted answers) against coverage for every method, with oracle and random references."""
    from gradguard.calibration.plots import finish_risk_coverage, pyplot, save_figure

    plt = pyplot()
    y = judge_records(records, task)
    fig, ax = plt.subplots(figsize=(7, 5))
    curves = [(_LABELS[m], method_confidences(records, m)) for m in METHODS]
    column = calibrated_confidences(records, y, calibration, data_sha256=data_sha256)
    if column is not None:
        kind = "cross-fitted" if "cross-fitted" in column[1] else "calibrated"
        curves.append((f"confidence ({kind})", column[0]))
    palette = iter(plt.get_cmap("tab20").colors)
    for label, conf in curves:
        cov, risk = risk_coverage_curve(conf, y)
        if label == "HybridGrad":
            style: dict[str, Any] = dict(lw=2.5, color="crimson")
        elif label.startswith("confidence"):
            style = dict(lw=2.5, color="black")
        else:
            style = dict(lw=1.2, color=next(palette))
        ax.plot(cov, risk, label=f"{label} (AURC {aurc(conf, y):.3f})", **style)
    n, n_c = len(y), int(y.sum())
    k = np.arange(1, n + 1)
    ax.plot(k / n, np.maximum(k - n_c, 0) / k, ls=":", color="grey", label="oracle")
    finish_risk_coverage(
        ax, y, title or f"Risk–coverage, task {task.name}: {n} questions ({n_c} correct, judge {task.judge})"
    )
    return save_figure(fig, path)


def write_report(
    records: Sequence[CachedRecord],
    out_dir: str | os.PathLike[str],
    task: Task | None = None,
    *,
    calibration: Any = None,
    data_sha256: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[EvalSummary, dict[str, Path]]:
    """Evaluate; write ``results.jsonl``, ``summary.json``, ``table.txt`` and ``risk_coverage.png`` into ``out_dir``."""
    task = task or builtin_task("closed-qa")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = evaluate_records(
        records, task, calibration=calibration, data_sha256=data_sha256, n_boot=n_boot, seed=seed
    )
    paths = {
        "results": write_results_jsonl(result_rows(records, task, calibration=calibration), out / "results.jsonl"),
        "plot": plot_risk_coverage(
            records, out / "risk_coverage.png", task, calibration=calibration, data_sha256=data_sha256
        ),
    }
    table = format_table(summary)
    (out / "table.txt").write_text(table + "\n", encoding="utf-8")
    paths["table"] = out / "table.txt"

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    data = clean(asdict(summary))
    data["accuracy"] = clean(summary.accuracy)
    (out / "summary.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    paths["summary"] = out / "summary.json"
    return summary, paths
