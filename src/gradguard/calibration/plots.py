"""Plots of a task calibration: a reliability diagram and a risk–coverage plot of its held-out confidences."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from gradguard.calibration.metrics import aurc, risk_coverage_curve
from gradguard.extras import require
from gradguard.scores import FEATURES, SCORE_BY_NAME

__all__ = [
    "plot_calibration",
    "plot_reliability",
    "plot_task_risk_coverage",
    "pyplot",
    "finish_risk_coverage",
    "save_figure",
]


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (the ``calibrate`` extra)."""
    require("matplotlib", "calibrate", "plotting").use("Agg", force=False)
    return require("matplotlib.pyplot", "calibrate", "plotting")


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as a PNG at ``path`` (parent folders created) and close it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    pyplot().close(fig)
    return out


def finish_risk_coverage(ax: Any, y: np.ndarray, title: str, *, legend_size: int = 8) -> None:
    """The random-guess line, axes, labels, title, legend and grid of a risk–coverage plot."""
    ax.axhline(1 - y.mean(), ls="--", color="grey", lw=1, label=f"random ({1 - y.mean():.3f})")
    ax.set_xlabel("coverage (fraction of answers accepted, most confident first)")
    ax.set_ylabel("risk (error rate among accepted answers)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=legend_size, loc="lower right")
    ax.grid(alpha=0.3)


def plot_reliability(report: Any, path: str | os.PathLike[str], *, bins: int = 10) -> Path:
    """Mean confidence against the observed share correct, per confidence bin (nested out-of-fold confidences)."""
    plt = pyplot()
    cal = report.calibration
    conf = np.asarray(cal.holdout_confidence)
    y = np.asarray(cal.holdout_correct, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    xs, ys, ns = [], [], []
    for b in range(bins):
        m = idx == b
        if m.any():
            xs.append(conf[m].mean())
            ys.append(y[m].mean())
            ns.append(int(m.sum()))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    ax.plot(xs, ys, marker="o", color="black", label=f"task {cal.task.name} (ECE {cal.cv.ece:.3f})")
    for x, yy, n in zip(xs, ys, ns, strict=True):
        ax.annotate(str(n), (x, yy), textcoords="offset points", xytext=(4, -10), fontsize=7, color="dimgray")
    ax.set_ylabel("share of answers correct")
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability, task {cal.task.name}: {cal.n} answers, nested cross-validated", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    axh.hist(conf, bins=edges, color="grey")
    axh.set_xlabel("confidence (held out)")
    axh.set_ylabel("answers")
    axh.set_xlim(0, 1)
    return save_figure(fig, path)


def plot_task_risk_coverage(report: Any, path: str | os.PathLike[str]) -> Path:
    """Risk against coverage for the confidence (held out), each ablation, and the best raw scores."""
    plt = pyplot()
    cal = report.calibration
    y = report.y
    fig, ax = plt.subplots(figsize=(7, 5))
    curves: list[tuple[str, np.ndarray, dict[str, Any]]] = []
    palette = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:olive"])
    for name, result in report.ablation.items():
        style = dict(lw=2.5, color="black") if name == list(report.ablation)[-1] else dict(lw=1.2, color=next(palette))
        curves.append((f"confidence: {name}", result.oof, style))
    best = sorted(report.raw_auroc.items(), key=lambda kv: -kv[1])[:3]
    for name, _ in best:
        spec = SCORE_BY_NAME[name]
        curves.append((spec.label, -report_feature(report, spec.feature), dict(lw=1, ls="--", color=next(palette))))
    for label, conf, style in curves:
        cov, risk = risk_coverage_curve(conf, y)
        ax.plot(cov, risk, label=f"{label} (AURC {aurc(conf, y):.3f})", **style)
    finish_risk_coverage(ax, y, f"Risk–coverage, task {cal.task.name}: {cal.n} answers (nested CV)", legend_size=7)
    return save_figure(fig, path)


def report_feature(report: Any, feature: str) -> np.ndarray:
    """One scalar feature of the fit's answers (kept on the report for plotting)."""
    return np.asarray(report.features[:, FEATURES.index(feature)])


def plot_calibration(report: Any, folder: str | os.PathLike[str]) -> list[Path]:
    """Both plots of one task into ``folder`` (``reliability_<task>.png``, ``risk_coverage_<task>.png``)."""
    name = report.calibration.task.name
    out = Path(folder)
    return [
        plot_reliability(report, out / f"reliability_{name}.png"),
        plot_task_risk_coverage(report, out / f"risk_coverage_{name}.png"),
    ]
