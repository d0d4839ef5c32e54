"""``gradguard calibrate``: fit P(correct) from scores on a QA file and store it in a profile.

Run before wiring as ``python -m gradguard.calibration.cli calibrate --data FILE --out PROFILE.json``.
It reads answers from the per-question cache shared with ``gradguard eval`` (pass the
same ``--cache``), so nothing is generated twice.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from gradguard.result import SCORE_LABELS

__all__ = ["register", "main"]

_LABELS = SCORE_LABELS


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from gradguard.calibration.fit import calibration_from_records
    from gradguard.evaluation.data import file_sha256, load_qa
    from gradguard.evaluation.harness import make_scorer, run_harness

    items = load_qa(args.data, args.n)
    scorer, profile = make_scorer(
        args.model,
        profile=args.profile,
        spt_offset=args.spt_offset,
        layer_span=tuple(args.layer_span) if args.layer_span else None,
    )
    records = run_harness(
        scorer,
        items,
        cache_dir=args.cache,
        system_prompt=args.system_prompt or None,
        max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress,
    )
    cal = calibration_from_records(
        records,
        judge=args.judge,
        data_path=args.data,
        data_sha256=file_sha256(args.data),
        system_prompt=args.system_prompt or None,
        max_new_tokens=args.max_new_tokens,
        folds=args.folds,
        seed=args.seed,
    )
    updates = {"calibration": cal}
    if args.spt_offset is not None or args.layer_span is not None:
        updates.update(spt_offset=scorer.spt_offset, layer_span=tuple(scorer.layer_span), kind="manual")
    new = profile.model_copy(update=updates)
    new = type(new).model_validate(new.model_dump())  # re-validate the combined profile
    out = args.out or f"{Path(args.data).stem}-calibrated-profile.json"
    new.save(out)

    print(f"{cal.n} scored answers ({cal.n_correct} correct, judge {cal.data.judge}), {cal.n_unscored} unscored")
    print(f"{'calibrator':<12} {'CV AUROC':>8} {'95% CI':>15} {'Brier':>6} {'ECE':>6} {'AURC':>6}")
    for fit in (cal.isotonic, cal.logistic):
        ci = f"[{_fmt(fit.cv.auroc_ci[0])}, {_fmt(fit.cv.auroc_ci[1])}]" if fit.cv.auroc_ci else "n/a"
        mark = " *" if fit.kind == cal.chosen else ""
        print(
            f"{fit.kind + mark:<12} {_fmt(fit.cv.auroc):>8} {ci:>15} {_fmt(fit.cv.brier):>6} {_fmt(fit.cv.ece):>6} "
            f"{_fmt(fit.cv.aurc):>6}"
        )
    print(f"* chosen ({cal.selection_rule})")
    print("raw-score AUROC on the same answers: " + ", ".join(f"{_LABELS[k]} {_fmt(v)}" for k, v in cal.baselines_auroc.items()))
    for eps in args.epsilon or []:
        r = new.threshold(eps, args.delta)
        print(f"epsilon={eps:g}, delta={args.delta:g}: {r.message}")
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``calibrate`` to a parent CLI (the parser sets ``func``)."""
    from gradguard.evaluation.cli import add_generation_arguments

    p = subparsers.add_parser(
        "calibrate",
        help="fit calibrated confidence (P(answer correct)) and store it in a profile",
        description="Generate and score answers (reusing the per-question cache), judge them, cross-validate "
        "isotonic regression on HybridGrad and a regularised logistic model over all single-pass features, keep "
        "the better one, and write the profile with its calibration.",
    )
    add_generation_arguments(p)
    p.add_argument("--n", type=int, default=500, help="use the first N questions (default 500)")
    p.add_argument("--cache", default="gradguard-cache", help="per-question cache folder, shared with `eval --cache`")
    p.add_argument("--out", default=None, help="profile JSON to write (default <data>-calibrated-profile.json)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilon", type=float, nargs="*", default=None, help="also print risk-controlled thresholds")
    p.add_argument("--delta", type=float, default=0.1, help="failure probability for --epsilon (default 0.1)")
    p.set_defaults(func=_cmd_calibrate)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``calibrate ...`` as a stand-alone command; returns the exit status."""
    from gradguard.cli import standalone

    return standalone(register, argv)


if __name__ == "__main__":
    raise SystemExit(main())
