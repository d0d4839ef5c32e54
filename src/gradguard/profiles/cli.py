"""``gradguard profile build|show|threshold``.

Run before wiring as ``python -m gradguard.profiles.cli profile build --model SRC --paraphrases FILE``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["register", "main", "load_model_source"]


def load_model_source(source: str | None) -> tuple[Any, Any, str]:
    """``(model, tokenizer, name)`` through gradguard's loader (None = the embedded default model)."""
    from gradguard.loading import load_model

    return load_model(source)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.split("/")[-1]).strip("-").lower() or "model"


def _cmd_build(args: argparse.Namespace) -> int:
    from gradguard.profiles.build import build_profile
    from gradguard.profiles.io import save_profile
    from gradguard.profiles.lookup import FAMILY_DEFAULTS, load_builtin_profile
    from gradguard.profiles.summary import profile_summary

    model, tokenizer, name = load_model_source(args.model)
    profile = build_profile(
        model,
        tokenizer,
        args.paraphrases,
        model_id=name,
        num_queries=args.queries,
        num_offsets=args.offsets,
        max_paraphrases=args.max_paraphrases,
        system_prompt=args.system_prompt or None,
        span_rule=args.span,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    out = args.out or f"profile-{_slug(name)}.json"
    save_profile(profile, out)
    print(profile_summary(profile))
    print(f"wrote {out}")
    if args.plot:
        from gradguard.profiles.plot import plot_sps

        family = FAMILY_DEFAULTS.get(profile.model_type)
        ref = load_builtin_profile(family).spt_offset if family else None
        plot_sps(profile, args.plot, reference_offset=ref)
        print(f"wrote {args.plot}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from gradguard.profiles.io import load_profile, profile_json
    from gradguard.profiles.lookup import resolve_profile
    from gradguard.profiles.summary import profile_summary

    if args.profile:
        profile = load_profile(args.profile)
    else:
        model, tokenizer, name = load_model_source(args.model)
        profile = resolve_profile(model, tokenizer, model_id=name)
    if args.json:
        print(profile_json(profile), end="")
    else:
        print(profile_summary(profile))
        if profile.source:
            print(f"  from {profile.source}")
    return 0


def _cmd_threshold(args: argparse.Namespace) -> int:
    from gradguard.calibration.thresholds import task_threshold
    from gradguard.profiles.io import load_profile

    profile = load_profile(args.profile)
    results = [task_threshold(profile, args.task, eps, args.delta) for eps in args.epsilon]
    if args.json:
        print(json.dumps([r.model_dump() for r in results], indent=2))
        return 0
    for r in results:
        head = f"epsilon={r.epsilon:g} delta={r.delta:g}: "
        print(
            head + (f"threshold {r.threshold:.3f}, coverage {r.expected_coverage:.1%}" if r.feasible else "infeasible")
        )
        print("  " + r.message)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``profile`` (with ``build``, ``show``, ``threshold``) to a parent CLI; each leaf sets ``func``."""
    from gradguard.data import DEFAULT_SYSTEM_PROMPT

    p = subparsers.add_parser("profile", help="build, show and use per-model SPS profiles")
    sub = p.add_subparsers(dest="profile_command", required=True, metavar="{build,show,threshold}")

    b = sub.add_parser(
        "build",
        help="measure the Semantic Preservation Score and write a profile",
        description="Forward every query and its paraphrases (no generation), compute SPS for every layer and the "
        "last K prompt positions, pick the semantic-preserving offset and the layer span, and write a profile.",
    )
    b.add_argument("--model", default=None, help="HF id, folder or .gguf (default: the embedded model)")
    b.add_argument("--paraphrases", required=True, help="JSONL with 'query' and 'paraphrases' on each line")
    b.add_argument("--queries", type=int, default=200, help="number of queries to use (default 200)")
    b.add_argument("--offsets", type=int, default=8, help="prompt positions K measured from the end (default 8)")
    b.add_argument("--max-paraphrases", type=int, default=None, help="keep at most this many paraphrases per query")
    b.add_argument(
        "--span", choices=["top-half", "band"], default="top-half", help="layer-span rule (default top-half)"
    )
    b.add_argument(
        "--system-prompt",
        default=DEFAULT_SYSTEM_PROMPT,
        help=f"system message before each query; '' for none (default {DEFAULT_SYSTEM_PROMPT!r})",
    )
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--out", default=None, help="profile JSON to write (default profile-<model>.json)")
    b.add_argument("--plot", default=None, help="also draw the SPS heat map to this PNG")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    b.set_defaults(func=_cmd_build)

    s = sub.add_parser("show", help="print a profile (a file, a built-in name, or the one resolved for --model)")
    s.add_argument("profile", nargs="?", default=None, help="profile JSON or built-in name")
    s.add_argument("--model", default=None, help="resolve the profile for this model instead")
    s.add_argument("--json", action="store_true", help="print the JSON")
    s.set_defaults(func=_cmd_show)

    t = sub.add_parser(
        "threshold",
        help="risk-controlled confidence thresholds from a calibrated profile",
        description="For each target error rate epsilon among accepted answers, the loosest confidence threshold "
        "whose error is <= epsilon with probability >= 1-delta (Learn-then-Test, Clopper-Pearson).",
    )
    t.add_argument("profile", help="calibrated profile JSON or built-in name")
    t.add_argument("--epsilon", type=float, nargs="+", required=True, help="target error rate(s), e.g. 0.3 0.05")
    t.add_argument("--delta", type=float, default=0.1, help="failure probability (default 0.1)")
    t.add_argument("--json", action="store_true")
    t.add_argument("--task", default=None, help="the calibrated task (default: the profile's default task)")
    t.set_defaults(func=_cmd_threshold)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``profile ...`` as a stand-alone command; returns the exit status."""
    from gradguard.cli import standalone

    return standalone(register, argv)


if __name__ == "__main__":
    raise SystemExit(main())
