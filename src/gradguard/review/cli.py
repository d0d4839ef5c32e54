"""``gradguard review``: list, show and resolve items in the human review queue.

Wire into a top-level parser with :func:`register`; each sub-command sets
``func`` on the parsed namespace to a handler ``(args) -> int`` (the exit code).
Run standalone with ``python -m gradguard.review list`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TextIO

from gradguard.errors import GradguardError
from gradguard.review.queue import REVIEW_STATUSES, VERDICTS, ReviewItem
from gradguard.review.sqlite import REVIEW_DB_ENV, SQLiteReviewQueue, default_review_db_path

__all__ = ["register", "configure", "main"]

_DESCRIPTION = "List, show and resolve answers held back for human review."


def _db_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--db",
        metavar="PATH",
        default=None,
        help=f"review database (default: ${REVIEW_DB_ENV} or {default_review_db_path()})",
    )
    return parent


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``list``, ``show`` and ``resolve`` sub-commands to ``parser``."""
    parser.set_defaults(func=lambda args: _usage(parser))
    db = _db_parent()
    sub = parser.add_subparsers(dest="review_command", metavar="{list,show,resolve}")

    p_list = sub.add_parser("list", parents=[db], help="list review items, oldest first")
    p_list.add_argument("--status", choices=REVIEW_STATUSES, default=None, help="only items with this status")
    p_list.add_argument("--limit", type=int, default=None, help="at most this many items")
    p_list.add_argument("--json", action="store_true", help="print a JSON array of items")
    p_list.set_defaults(func=_cmd_list)

    p_show = sub.add_parser("show", parents=[db], help="show one review item")
    p_show.add_argument("id", help="the item id")
    p_show.add_argument("--json", action="store_true", help="print the item as JSON")
    p_show.set_defaults(func=_cmd_show)

    p_resolve = sub.add_parser("resolve", parents=[db], help="give a pending item its verdict")
    p_resolve.add_argument("id", help="the item id")
    p_resolve.add_argument("--verdict", required=True, choices=VERDICTS, help="the verdict")
    p_resolve.add_argument("--answer", default=None, help="the corrected answer (required with --verdict edited)")
    p_resolve.add_argument("--note", default=None, help="a note kept with the verdict")
    p_resolve.set_defaults(func=_cmd_resolve)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``review`` command (with ``list``, ``show``, ``resolve``) to a top-level CLI."""
    parser = subparsers.add_parser(
        "review", help="list and resolve answers held for human review", description=_DESCRIPTION
    )
    configure(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``review`` standalone: ``main(["list", "--status", "pending"])``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="gradguard review", description=_DESCRIPTION)
    configure(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


# -- handlers -------------------------------------------------------------------------


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _open(args: argparse.Namespace) -> SQLiteReviewQueue:
    return SQLiteReviewQueue(args.db)


def _fail(exc: GradguardError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_item(item: ReviewItem, out: TextIO) -> None:
    conf = "-" if item.confidence is None else f"{item.confidence:.3f}"
    lines = [
        f"id:          {item.id}",
        f"status:      {item.status}",
        f"created_at:  {item.created_at.isoformat()}",
        f"confidence:  {conf}",
        f"question:    {item.question}",
        f"answer:      {item.answer}",
    ]
    if not item.pending:
        lines += [
            f"resolved_at: {item.resolved_at.isoformat() if item.resolved_at else '-'}",
            f"resolved:    {item.resolved_answer if item.resolved_answer is not None else '-'}",
            f"note:        {item.verdict_note if item.verdict_note is not None else '-'}",
        ]
    if item.metadata:
        lines.append("metadata:    " + json.dumps(item.metadata, sort_keys=True))
    out.write("\n".join(lines) + "\n")


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        with _open(args) as queue:
            items = queue.list(status=args.status, limit=args.limit)
    except GradguardError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps([item.model_dump(mode="json") for item in items], indent=2, sort_keys=True))
        return 0
    if not items:
        print("no review items" + (f" with status {args.status}" if args.status else ""), file=sys.stderr)
        return 0
    for item in items:
        conf = "-" if item.confidence is None else f"{item.confidence:.3f}"
        when = item.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{item.id}  {item.status:<8}  {when}  {conf:>5}  {_one_line(item.question, 60)}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        with _open(args) as queue:
            item = queue.get(args.id)
    except GradguardError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(item.model_dump(mode="json"), indent=2, sort_keys=True))
    else:
        _print_item(item, sys.stdout)
    return 0


def _cmd_resolve(args: argparse.Namespace) -> int:
    try:
        with _open(args) as queue:
            item = queue.resolve(args.id, args.verdict, answer=args.answer, note=args.note)
    except GradguardError as exc:
        return _fail(exc)
    print(f"resolved {item.id}: {item.status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
