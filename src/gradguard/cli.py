"""The ``gradguard`` command line: ``ask`` and ``score`` (plus the commands other modules register)."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gradguard.errors import GradguardError
from gradguard.result import ScoreResult

__all__ = ["main", "result_json", "run_command"]

#: Modules that add sub-commands through ``register(subparsers)``.
_COMMAND_MODULES = (
    "gradguard.profiles.cli",
    "gradguard.calibration.cli",
    "gradguard.evaluation.cli",
    "gradguard.review.cli",
    "gradguard.serving.cli",
)


def result_json(result: ScoreResult) -> dict[str, Any]:
    """The ``--json`` object of ``ask`` and ``score`` (NaN scores become null)."""

    def num(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "answer": result.response,
        "model": result.model,
        "profile": result.profile,
        "task": result.task,
        "confidence": result.confidence,
        "calibrator": result.calibrator,
        "calibration": result.calibration.model_dump() if result.calibration is not None else None,
        "in_domain": result.in_domain,
        "domain_percentile": result.domain_percentile,
        "scores": {**{key: num(v) for key, v in result.uncertainty().items()}, "alpha": num(result.alpha)},
        "scored": result.scored,
        "spt_offset": result.spt_offset,
        "n_response_tokens": result.n_response_tokens,
        "timing": {"generate_s": result.timings.generate_s, "score_s": result.timings.score_s},
    }


def _read_context(value: str | None) -> str | None:
    """``--context TEXT`` or ``--context @FILE``."""
    if value is None or not value.startswith("@"):
        return value
    from pathlib import Path

    from gradguard.errors import InputError

    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"--context {value}: cannot read {path} ({exc.strerror}); pass the text or @FILE of a readable file"
        ) from None


def _task_and_messages(args: argparse.Namespace) -> tuple[str, list[dict[str, str]]]:
    """The task and the chat messages: ``--context`` formats the ``rag`` prompt; a bare question is ``chat``."""
    from gradguard.errors import InputError
    from gradguard.tasks import BUILTIN_TASKS

    context = _read_context(args.context)
    task = args.task or ("rag" if context is not None else "chat" if not args.system else None)
    if context is not None:
        spec = BUILTIN_TASKS.get(task or "rag")
        if spec is None or not spec.needs_context:
            raise InputError(f"--context formats the rag prompt, but --task is {task!r}; drop --task or use --task rag")
        if args.system:
            raise InputError("--context uses the rag task's own system prompt; drop --system")
        return task or "rag", spec.messages(args.question, context)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.question})
    if task is None:
        task = "closed-qa" if args.system == BUILTIN_TASKS["closed-qa"].system_prompt else "chat"
    return task, messages


def _print(result: ScoreResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result_json(result), ensure_ascii=False))
        return
    print(result.response)
    print()
    if not result.scored:
        print("(unscored: the answer is empty; treat it as unconfident)")
        return
    confidence = "n/a (uncalibrated)" if result.confidence is None else f"{result.confidence:.3f}"
    if result.calibration is not None:
        domain = (
            "" if result.in_domain is not False else "  OUT OF DOMAIN: the calibration has not seen answers like this"
        )
        confidence += f"  (task {result.task}, calibrated on {result.calibration.data}){domain}"
    elif result.task:
        confidence += f"  (task {result.task})"
    print(f"confidence  {confidence}")
    print(f"hybridgrad  {result.hybridgrad:.4g}   (uncertainty: larger = less confident)")
    print(f"semgrad     {result.semgrad:.4g}")
    print(f"paragrad    {result.paragrad:.4g}")
    print(f"mean NLL    {result.mean_nll:.4g}   mean entropy {result.mean_entropy:.4g}")
    gen = result.timings.generate_s
    timing = f"score {result.timings.score_s:.2f}s" + (f", generate {gen:.2f}s" if gen is not None else "")
    print(f"{result.n_response_tokens} tokens, spt_offset {result.spt_offset}, {timing}, model {result.model}")


def _cmd_ask(args: argparse.Namespace) -> int:
    from gradguard.scorer import GradScorer

    task, messages = _task_and_messages(args)
    scorer = GradScorer.from_pretrained(args.model, spt_offset=args.spt_offset, task=task)
    result = scorer.generate_and_score(messages, max_new_tokens=args.max_new_tokens)
    _print(result, args.json)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from gradguard.scorer import GradScorer

    bulk, single = (args.jsonl, args.out), (args.question, args.answer)
    if not (all(v is not None for v in bulk) and all(v is None for v in single)) and not (
        all(v is not None for v in single) and all(v is None for v in bulk)
    ):
        args.score_parser.error(
            "give either --question and --answer (one answer) or --jsonl IN and --out OUT (a file of answers)"
        )
    if args.jsonl is not None:
        if args.system is not None or args.context is not None:
            args.score_parser.error("--system and --context are per line with --jsonl (messages, or question+context)")
        from gradguard.bulk import score_jsonl

        scorer = GradScorer.from_pretrained(args.model, spt_offset=args.spt_offset, task=args.task)
        summary = score_jsonl(scorer, args.jsonl, args.out, task=args.task)
        print(json.dumps(vars(summary)) if args.json else f"{args.out}: {summary}")
        return 0
    task, messages = _task_and_messages(args)
    scorer = GradScorer.from_pretrained(args.model, spt_offset=args.spt_offset, task=task)
    result = scorer.score(messages, args.answer)
    _print(result, args.json)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="Hub id, local folder or .gguf file (default: the embedded model)"
    )
    parser.add_argument("--system", default=None, help="an optional system message")
    parser.add_argument(
        "--context",
        default=None,
        help="a passage to answer from (TEXT or @FILE): formats the rag prompt and implies --task rag",
    )
    parser.add_argument(
        "--task",
        default=None,
        help="calibration task: chat (default for a bare question), rag (with --context), closed-qa, "
        "or a calibrated one",
    )
    parser.add_argument(
        "--spt-offset", type=int, default=None, help="override the semantic-preserving offset (negative)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="gradguard", description="Gradient-based uncertainty for local chat models.")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="generate an answer and score it")
    ask.add_argument("question")
    ask.add_argument("--max-new-tokens", type=int, default=128)
    _common(ask)
    ask.set_defaults(func=_cmd_ask)
    score = sub.add_parser("score", help="score a given answer (teacher-forced)")
    score.add_argument("--question", default=None, help="the question (with --answer)")
    score.add_argument("--answer", default=None, help="the answer to score (with --question)")
    score.add_argument(
        "--jsonl", default=None, metavar="IN", help="score each line of this JSONL file (with --out)"
    )
    score.add_argument("--out", default=None, metavar="OUT", help="JSONL results of --jsonl (resumes if it exists)")
    _common(score)
    score.set_defaults(func=_cmd_score, score_parser=score)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; a :class:`GradguardError` becomes exit status 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GradguardError as exc:
        print(f"gradguard: error: {exc}", file=sys.stderr)
        return 2


def standalone(register: Callable[[Any], None], argv: Sequence[str] | None = None) -> int:
    """Run one module's commands (``python -m gradguard.profiles.cli ...``) without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="gradguard")
    register(parser.add_subparsers(dest="command", required=True))
    return run_command(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
