"""``gradguard eval``: AUROC/AURC/PRR of every score on a QA file, per-question JSONL and a risk–coverage plot.

Run before wiring as ``python -m gradguard.evaluation.cli eval --data FILE --out DIR``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


__all__ = ["register", "main", "add_generation_arguments"]


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """The options shared by ``eval`` and ``calibrate`` (same values → same cache entries)."""
    p.add_argument("--model", default=None, help="HF id, folder or .gguf (default: the embedded model)")
    p.add_argument(
        "--data",
        required=True,
        help="QA JSONL: 'query' (or 'question') and 'answers' per line; optional 'context', 'is_impossible', 'title'",
    )
    p.add_argument(
        "--task",
        default="closed-qa",
        help="how questions are asked and judged: closed-qa, rag, chat, or your own with --prompt-template (default closed-qa)",
    )
    p.add_argument(
        "--prompt-template",
        default=None,
        help="JSON file defining the task: system_prompt, user_template ('{question}', '{context}'), judge, max_new_tokens",
    )
    p.add_argument("--profile", default=None, help="profile JSON or built-in name (default: looked up for the model)")
    p.add_argument("--spt-offset", type=int, default=None, help="override the profile's semantic-preserving offset")
    p.add_argument("--layer-span", type=int, nargs=2, default=None, metavar=("START", "STOP"), help="override the layer span")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    p.add_argument("--device", default=None, help="run the model on this torch device (e.g. cuda); default CPU")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _cmd_eval(args: argparse.Namespace) -> int:
    from gradguard.calibration.cli import resolve_task
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


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``eval`` to a parent CLI (the parser sets ``func``)."""
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
    p.add_argument("--shuffle-seed", type=int, default=None, help="shuffle the questions with this seed before taking N")
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
