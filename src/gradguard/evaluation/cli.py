"""``gradguard eval``: AUROC/AURC/PRR of every score on a QA file, per-question JSONL and a risk–coverage plot.

Run before wiring as ``python -m gradguard.evaluation.cli eval --data FILE --out DIR``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

__all__ = ["register", "main"]


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.task == "tools":
        from gradguard.evaluation.tool_calls import cmd_eval_tools

        return cmd_eval_tools(args)
    from gradguard.calibration.cli import resolve_task, single_data_file

    single_data_file(args)
    from gradguard.calibration.harness import make_scorer, run_harness
    from gradguard.calibration.model import required_layers
    from gradguard.data import file_sha256, load_qa
    from gradguard.evaluation.report import format_table, write_report

    items = load_qa(args.data, args.n, shuffle_seed=args.shuffle_seed)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    scorer, profile = make_scorer(
        args.model,
        profile=args.profile,
        spt_offset=args.spt_offset,
        layer_span=tuple(args.layer_span) if args.layer_span else None,
        device=args.device,
    )
    task = resolve_task(args.task, args.prompt_template, profile)
    calibration = profile.calibrations.get(task.name)
    if calibration is not None and not calibration.applies_to(scorer.spt_offset, scorer.layer_span):
        calibration = None
    records = run_harness(
        scorer,
        items,
        cache_dir=cache,
        task=task,
        max_new_tokens=args.max_new_tokens,
        hidden_layers=required_layers(calibration.calibrator, calibration.domain) if calibration else (),
        progress=not args.no_progress,
    )
    summary, paths = write_report(
        records, out, task, calibration=calibration, data_sha256=file_sha256(args.data), n_boot=args.boot
    )
    print(format_table(summary))
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``eval`` to a parent CLI (the parser sets ``func``)."""
    from gradguard.calibration.cli import add_generation_arguments

    p = subparsers.add_parser(
        "eval",
        help="evaluate every uncertainty score on a QA file",
        description="Generate (greedy) and score one answer per question — cached per question, so an interrupted "
        "run resumes — judge it, and print AUROC, AURC and PRR for HybridGrad, SemGrad, ParaGrad, ExGrad, G-NLL, "
        "mean NLL and mean entropy (and the task's calibrated confidence when the profile has one); for a task with "
        "unanswerable questions also the decline rates.",
    )
    add_generation_arguments(p)
    p.add_argument("--n", type=int, default=None, help="use N questions (default all)")
    p.add_argument(
        "--shuffle-seed", type=int, default=None, help="shuffle the questions with this seed before taking N"
    )
    p.add_argument("--out", default="gradguard-eval", help="output folder (default ./gradguard-eval)")
    p.add_argument("--cache", default=None, help="per-question cache folder (default OUT/cache)")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the AUROC interval")
    p.set_defaults(func=_cmd_eval)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``eval ...`` as a stand-alone command; returns the exit status."""
    from gradguard.cli import standalone

    return standalone(register, argv)


if __name__ == "__main__":
    raise SystemExit(main())
