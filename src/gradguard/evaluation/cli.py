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
    from gradguard.evaluation.data import DEFAULT_SYSTEM_PROMPT
    from gradguard.evaluation.harness import DEFAULT_MAX_NEW_TOKENS

    p.add_argument("--model", default=None, help="HF id, folder or .gguf (default: the embedded model)")
    p.add_argument("--data", required=True, help="QA JSONL: 'query' and 'truthful answer' (list) per line")
    p.add_argument("--profile", default=None, help="profile JSON or built-in name (default: looked up for the model)")
    p.add_argument("--spt-offset", type=int, default=None, help="override the profile's semantic-preserving offset")
    p.add_argument("--layer-span", type=int, nargs=2, default=None, metavar=("START", "STOP"), help="override the layer span")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help=f"default {DEFAULT_MAX_NEW_TOKENS}")
    p.add_argument(
        "--system-prompt",
        default=DEFAULT_SYSTEM_PROMPT,
        help=f"system message before each question; '' for none (default {DEFAULT_SYSTEM_PROMPT!r})",
    )
    p.add_argument("--judge", choices=["containment", "f1"], default="containment", help="correctness judge")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _cmd_eval(args: argparse.Namespace) -> int:
    from gradguard.evaluation.data import file_sha256, load_qa
    from gradguard.evaluation.harness import make_scorer, run_harness
    from gradguard.evaluation.report import format_table, write_report

    items = load_qa(args.data, args.n)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    scorer, profile = make_scorer(
        args.model,
        profile=args.profile,
        spt_offset=args.spt_offset,
        layer_span=tuple(args.layer_span) if args.layer_span else None,
    )
    records = run_harness(
        scorer,
        items,
        cache_dir=cache,
        system_prompt=args.system_prompt or None,
        max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress,
    )
    summary, paths = write_report(
        records, out, judge=args.judge, profile=profile, data_sha256=file_sha256(args.data), n_boot=args.boot
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
        "mean NLL and mean entropy (and the calibrated confidence when the profile has one).",
    )
    add_generation_arguments(p)
    p.add_argument("--n", type=int, default=None, help="use the first N questions (default all)")
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
