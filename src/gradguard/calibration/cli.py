"""``gradguard calibrate``: fit a task's P(correct) from answers to a QA file and store it in a profile.

Run before wiring as ``python -m gradguard.calibration.cli calibrate --task rag --data FILE --out PROFILE.json``.
It reads answers from the per-question cache shared with ``gradguard eval`` (pass the
same ``--cache``), so nothing is generated twice.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradguard.errors import InputError
from gradguard.scores import SCORE_LABELS

__all__ = [
    "register",
    "main",
    "add_generation_arguments",
    "default_probe_layers",
    "resolve_task",
    "single_data_file",
]


def add_generation_arguments(p: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    """The options shared by ``eval`` and ``calibrate`` (same values → same cache entries).

    ``data_required=False`` makes ``--data`` optional (``calibrate --from-review`` needs no file).
    """
    p.add_argument("--model", default=None, help="HF id, folder or .gguf (default: the embedded model)")
    p.add_argument(
        "--data",
        required=data_required,
        action="append",
        help="QA JSONL: 'query' (or 'question') and 'answers' per line; optional 'context', 'is_impossible', 'title'. "
        "--task tools reads BFCL-format JSONL and takes --data more than once",
    )
    p.add_argument(
        "--task",
        default="closed-qa",
        help="how questions are asked and judged: closed-qa, rag, chat, tools (tool calls, per call), or your own "
        "with --prompt-template (default closed-qa)",
    )
    p.add_argument(
        "--prompt-template",
        default=None,
        help="JSON file defining the task: system_prompt, user_template ('{question}', '{context}'), judge, "
        "max_new_tokens",
    )
    p.add_argument("--profile", default=None, help="profile JSON or built-in name (default: looked up for the model)")
    p.add_argument("--spt-offset", type=int, default=None, help="override the profile's semantic-preserving offset")
    p.add_argument(
        "--layer-span", type=int, nargs=2, default=None, metavar=("START", "STOP"), help="override the layer span"
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    p.add_argument("--device", default=None, help="run the model on this torch device (e.g. cuda); default CPU")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--tool-format",
        default="auto",
        help="--task tools: the tool-call parser (auto = detected from the chat template; hermes-json also reads "
        "calls written as bare or fenced JSON, as small Qwen models write them)",
    )


def single_data_file(args: argparse.Namespace) -> None:
    """Reduce ``args.data`` to its one file; only ``--task tools`` reads several (:class:`InputError` otherwise)."""
    if isinstance(args.data, list):
        if len(args.data) != 1:
            raise InputError(f"--data was given {len(args.data)} times; only --task tools reads several files")
        args.data = args.data[0]


def default_probe_layers(num_layers: int) -> tuple[int, ...]:
    """The hidden layers a probe may read by default: 1/2, 2/3 and 5/6 of the way up (12, 16, 20 of 24).

    All lie in the SemGrad span, which the scoring pass runs anyway.
    """
    return tuple(sorted({num_layers // 2, (2 * num_layers) // 3, (5 * num_layers) // 6}))


def resolve_task(name: str, prompt_template: str | None, profile: Any = None) -> Any:
    """The :class:`~gradguard.tasks.Task` called ``name``: from ``prompt_template``, a built-in, or the profile."""
    from gradguard.tasks import BUILTIN_TASKS, builtin_task, check_task_name, load_task_file

    check_task_name(name)
    if prompt_template:
        return load_task_file(prompt_template, name)
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    if profile is not None and name in profile.calibrations:
        return profile.calibrations[name].task
    return builtin_task(name)  # raises UnknownTaskError with the fix


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _ci(ci: Sequence[float] | None) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "n/a"


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from_review = getattr(args, "from_review", None)
    if not args.data and not from_review:
        raise InputError("calibrate needs labelled answers: pass --data FILE, --from-review URL, or both")
    if args.task == "tools":
        if from_review:
            raise InputError(
                "--from-review does not calibrate --task tools (its labels are per tool call, a review verdict is "
                "per answer); calibrate tools from BFCL data with --data"
            )
        from gradguard.evaluation.tool_calls import cmd_calibrate_tools

        return cmd_calibrate_tools(args)
    if args.data:
        single_data_file(args)
    from tqdm.auto import tqdm

    from gradguard.calibration.fit import fit_task_calibration
    from gradguard.calibration.harness import make_scorer, run_harness
    from gradguard.calibration.thresholds import task_threshold
    from gradguard.data import file_sha256, load_qa
    from gradguard.fast_path import decoder_layers
    from gradguard.profiles.io import save_profile

    items = load_qa(args.data, args.n, shuffle_seed=args.shuffle_seed) if args.data else []
    review_items: list[Any] = []
    review_url = ""
    if from_review:
        from gradguard.calibration.review_data import read_review_items

        # read the queue before loading the model: a URL that cannot be opened fails at once
        review_items, review_url = read_review_items(from_review)
    scorer, profile = make_scorer(
        args.model,
        profile=args.profile,
        spt_offset=args.spt_offset,
        layer_span=tuple(args.layer_span) if args.layer_span else None,
        device=args.device,
    )
    task = resolve_task(args.task, args.prompt_template, profile)
    # Everything that can reject this run is checked *before* the long part: the profile it will write,
    # the probe layers, and whether the offset reaches inside the prompts.
    base = _base_profile(profile, scorer, overridden=args.spt_offset is not None or args.layer_span is not None)
    model = getattr(scorer, "model", None)
    n_layers = len(decoder_layers(model)) if model is not None else None
    layers = tuple(args.hidden_layers or (default_probe_layers(n_layers) if n_layers is not None else ()))
    if n_layers is not None and any(not 0 <= layer <= n_layers for layer in layers):
        raise InputError(
            f"--hidden-layers {list(layers)}: the model has {n_layers} decoder layers, so a probe layer must lie in "
            f"[0, {n_layers}] ({n_layers} = the final normed output); pass layers in that range"
        )
    _check_offset_reaches_prompts(scorer, items, task)
    selection = None
    if from_review:
        from gradguard.calibration.review_data import select_review_items

        selection = select_review_items(
            review_items,
            task=task.name,
            model=str(scorer.model_name),
            url=review_url,
            include_untasked=args.review_include_untasked,
        )
        print(selection.summary())
        _check_offset_reaches_messages(scorer, [item.messages for item in selection.items])
    max_new = args.max_new_tokens or task.max_new_tokens
    records = (
        run_harness(
            scorer,
            items,
            cache_dir=args.cache,
            task=task,
            max_new_tokens=max_new,
            hidden_layers=layers,
            progress=not args.no_progress,
        )
        if items
        else []
    )
    review_records: list[Any] = []
    if selection is not None:
        from gradguard.calibration.review_data import check_review_labels, group_by_question, score_review_items

        kept = next((rec.hidden_layers for rec in records if rec.hidden is not None), None)
        review_records = score_review_items(
            scorer,
            selection,
            task,
            hidden_layers=kept if kept is not None else (() if records else layers),
            first_index=len(items),
            progress=not args.no_progress,
        )
        check_review_labels(review_records, selection, has_data=bool(items))
        records = group_by_question([*records, *review_records])
    steps = tqdm(total=6, desc="fit", unit="step", disable=args.no_progress)

    def on_step(msg: str) -> None:
        steps.set_postfix_str(msg, refresh=False)
        steps.update(1)

    from gradguard.calibration.review_data import REVIEW_SOURCE, with_review_provenance

    report = fit_task_calibration(
        records,
        task,
        data_path=args.data or REVIEW_SOURCE,
        data_sha256=file_sha256(args.data) if args.data else None,
        max_new_tokens=max_new,
        folds=args.folds,
        seed=args.seed,
        on_step=on_step,
    )
    steps.close()
    if selection is not None:
        report = with_review_provenance(report, review_records, review_url)
    cal = report.calibration
    data = base.model_dump()
    data["calibrations"][task.name] = cal.model_dump()
    new = _validated(data, "the calibrated profile")
    out = args.out or f"{Path(args.data).stem if args.data else 'review'}-{task.name}-profile.json"
    save_profile(new, out)
    print(format_report(report))
    for eps in args.epsilon or []:
        r = task_threshold(new, task.name, eps, args.delta)
        print(f"epsilon={eps:g}, delta={args.delta:g}: {r.message}")
    if args.plots:
        from gradguard.calibration.plots import plot_calibration

        for path in plot_calibration(report, args.plots):
            print(f"wrote {path}")
    print(f"wrote {out} (task {task.name})")
    span = tuple(scorer.layer_span)
    stale = sorted(name for name, c in new.calibrations.items() if not c.applies_to(new.spt_offset, span))
    if stale:
        print(
            f"note: the calibrations of {', '.join(stale)} in {out} were fitted at other settings than "
            f"spt_offset={new.spt_offset}, layer_span={span}; they give no confidence at these settings "
            "(recalibrate them)"
        )
    return 0


def _validated(data: dict[str, Any], what: str) -> Any:
    """``Profile.model_validate(data)``, with a validation failure reported as a :class:`ProfileError`."""
    from pydantic import ValidationError

    from gradguard.profiles.errors import ProfileError
    from gradguard.profiles.schema import Profile

    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'profile'}: {e['msg']}" for e in exc.errors())
        raise ProfileError(
            f"{what} is not a valid profile ({problems}); change --spt-offset/--layer-span or --profile"
        ) from None


def _base_profile(profile: Any, scorer: Any, *, overridden: bool) -> Any:
    """The profile this run extends. An explicit ``--spt-offset``/``--layer-span`` makes it a ``manual`` profile at
    the scorer's settings: any negative offset is usable, measured or not. The record ties two fields to the offset,
    so they follow it: the SPS matrix stays only when it measured the new offset (``spt_offset`` must be among its
    offsets), and ``anchor_token`` becomes the token the new offset lands on in this tokenizer's prompts.
    """
    if not overridden:
        return profile
    from gradguard.profiles.lookup import token_at_offset

    offset = int(scorer.spt_offset)
    updates: dict[str, Any] = {"spt_offset": offset, "layer_span": tuple(scorer.layer_span), "kind": "manual"}
    if offset != profile.spt_offset:
        tokenizer = getattr(scorer, "tokenizer", None)
        updates["anchor_token"] = token_at_offset(tokenizer, offset) if tokenizer is not None else None
    if profile.sps is not None and offset not in profile.sps.offsets:
        updates["sps"] = None
    return _validated({**profile.model_dump(), **updates}, f"profile {profile.name!r} at spt_offset={offset}")


def _check_offset_reaches_prompts(scorer: Any, items: Sequence[Any], task: Any) -> None:
    """Raise :class:`InputError` when the offset reaches before the start of every prompt (nothing could be scored)."""
    prompt_ids = getattr(scorer, "prompt_ids", None)
    if prompt_ids is None or not items:
        return
    longest = max(len(prompt_ids(task.item_messages(item))) for item in items)
    if longest + int(scorer.spt_offset) < 0:
        raise InputError(
            f"--spt-offset {scorer.spt_offset} reaches before the start of every prompt (the longest has {longest} "
            f"tokens), so no answer could be scored; pass an offset between -1 and -{longest} (e.g. the profile's)"
        )


def _check_offset_reaches_messages(scorer: Any, conversations: Sequence[Any]) -> None:
    """Raise :class:`InputError` when the offset reaches before the start of every review item's prompt."""
    prompt_ids = getattr(scorer, "prompt_ids", None)
    if prompt_ids is None or not conversations:
        return
    longest = max(len(prompt_ids(messages)) for messages in conversations)
    if longest + int(scorer.spt_offset) < 0:
        raise InputError(
            f"--spt-offset {scorer.spt_offset} reaches before the start of every review item's prompt (the longest "
            f"has {longest} tokens), so no answer could be scored; pass an offset between -1 and -{longest}"
        )


def format_report(report: Any) -> str:
    """The calibration's figures as text: counts, the ablation, raw scores, gains and the domain flag.

    Labels from review (``calibrate --from-review``) get their own line: how many, by verdict, from where.
    """
    from gradguard.calibration.fit import SHIPPED

    cal = report.calibration
    d = cal.data
    n_review = int(getattr(d, "n_from_review", 0) or 0)
    if not n_review:
        source, judged, grouping = d.file, f"judge {d.judge}", "title/context"
    elif n_review == cal.n:
        source, judged, grouping = "the review queue", "by reviewers' verdicts", "context and question text"
    else:
        source, judged = f"{d.file} and the review queue", f"judge {d.judge} on the file, reviewers on review"
        grouping = "title/context and question text"
    lines = [
        f"task {cal.task.name}: {cal.n} scored answers from {source} ({cal.n_correct} correct, {judged}), "
        f"{cal.n_unscored} unscored; {cal.folds}-fold nested CV, folds grouped by {grouping}",
    ]
    if n_review:
        v = dict(getattr(d, "review_verdicts", None) or {})
        lines.append(
            f"review-sourced: {n_review} of {cal.n} labels from {getattr(d, 'review_url', None) or 'a review queue'} "
            f"({v.get('approved', 0)} approved = correct; {v.get('edited', 0)} edited, {v.get('rejected', 0)} "
            "rejected = wrong); held-back answers are a low-confidence sample, not a random one "
            "(docs/review_calibration.md)"
        )
    lines += [
        "",
        f"{'features':<20} {'CV AUROC':>8} {'95% CI':>15} {'Brier':>6} {'ECE':>6} {'AURC':>6}",
    ]
    for name, fig in cal.ablation.items():
        mark = " *" if name == SHIPPED else ""
        lines.append(
            f"{name + mark:<20} {_fmt(fig.auroc):>8} {_ci(fig.auroc_ci):>15} {_fmt(fig.brier):>6} {_fmt(fig.ece):>6} "
            f"{_fmt(fig.aurc):>6}"
        )
    lines.append("* shipped: " + cal.selection.split(";")[0])
    lines.append("")
    lines.append(f"{'raw score':<14} {'AUROC':>6}   confidence − score [95% CI]")
    for name, value in cal.baselines_auroc.items():
        gain = cal.gains.get(name)
        g = f"{gain.diff:+.3f} {_ci(gain.ci)}" if gain is not None else "n/a"
        lines.append(f"{SCORE_LABELS.get(name, name):<14} {_fmt(value):>6}   {g}")
    if cal.domain is not None:
        lines.append("")
        lines.append(
            f"out-of-domain flag: edge = {cal.domain.edge_quantile:.0%} quantile of held-out distances "
            f"({cal.domain.edge:.2f}); fires on {_fmt(cal.domain_fire_rate)} of held-out answers of this task"
        )
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``calibrate`` to a parent CLI (the parser sets ``func``)."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit a task's calibrated confidence (P(answer correct)) and store it in a profile",
        description="Generate and score answers the way the task asks them (reusing the per-question cache), label "
        "them for the task, fit a logistic model over the gradient scores, token statistics and hidden-state probes "
        "by nested grouped cross-validation, print the ablation, and write the profile with the task's calibration.",
    )
    add_generation_arguments(p, data_required=False)
    p.add_argument(
        "--from-review",
        default=None,
        metavar="URL",
        help="also (or only) label answers from the review queue at URL (sqlite:///PATH, a path, postgresql://...): "
        "resolved items of --task by this model, approved = correct, edited/rejected = wrong, re-scored under "
        "their stored messages; see docs/review_calibration.md",
    )
    p.add_argument(
        "--review-include-untasked",
        action="store_true",
        help="with --from-review: also take resolved items enqueued without a task",
    )
    p.add_argument("--n", type=int, default=None, help="use N questions (default all)")
    p.add_argument(
        "--shuffle-seed", type=int, default=None, help="shuffle the questions with this seed before taking N"
    )
    p.add_argument("--cache", default="gradguard-cache", help="per-question cache folder, shared with `eval --cache`")
    p.add_argument(
        "--out", default=None, help="profile JSON to write (default <data>-<task>-profile.json; review-<task>-...)"
    )
    p.add_argument(
        "--hidden-layers", type=int, nargs="+", default=None, help="layers a probe may read (default 1/2, 2/3, 5/6 up)"
    )
    p.add_argument("--folds", type=int, default=5, help="outer cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plots", default=None, help="folder for the reliability diagram and risk–coverage plot")
    p.add_argument("--epsilon", type=float, nargs="*", default=None, help="also print risk-controlled thresholds")
    p.add_argument("--delta", type=float, default=0.1, help="failure probability for --epsilon (default 0.1)")
    p.set_defaults(func=_cmd_calibrate)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``calibrate ...`` as a stand-alone command; returns the exit status."""
    from gradguard.cli import standalone

    return standalone(register, argv)


if __name__ == "__main__":
    raise SystemExit(main())
