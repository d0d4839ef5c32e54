"""``gradguard review``: list, show, resolve, delete and export items in the human review queue.

``--db`` takes a file path, ``sqlite:///PATH`` or ``postgresql://user:password@host:port/database``
(default: ``$GRADGUARD_REVIEW_DB``, a path or a URL, else ``review.sqlite3`` in gradguard's cache folder).
Wire into a top-level parser with :func:`register`; each sub-command sets
``func`` on the parsed namespace to a handler ``(args) -> int`` (the exit code).
Run standalone with ``python -m gradguard.review list`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import TextIO

from gradguard.cache import cache_dir
from gradguard.errors import GradguardError
from gradguard.review.queue import REVIEW_STATUSES, VERDICTS, ReviewItem, ReviewStore
from gradguard.review.sqlite import REVIEW_DB_ENV
from gradguard.review.urls import open_review_queue
from gradguard.review.web.cli import add_serve_parser

__all__ = ["register", "configure", "main"]

_DESCRIPTION = "List, show, resolve, delete and export answers held back for human review."


def _db_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--db",
        metavar="URL_OR_PATH",
        default=None,
        help="review database: a file path, sqlite:///PATH, or postgresql://user:password@host:port/database "
        f"(default: ${REVIEW_DB_ENV}, a path or a URL, else {cache_dir() / 'review.sqlite3'})",
    )
    return parent


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days; pass e.g. 30 or 0.5") from None
    if not math.isfinite(days) or days < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number of days; pass e.g. 30")
    return days


def _selectors(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--id", dest="ids", action="append", default=None, metavar="ID", help="an item id (repeat for several)"
    )
    parser.add_argument(
        "--older-than",
        type=_days,
        default=None,
        metavar="DAYS",
        help="items enqueued more than DAYS days ago (with --id: items matching both)",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``list``, ``show``, ``resolve``, ``delete`` and ``export`` sub-commands to ``parser``."""
    parser.set_defaults(func=lambda args: _usage(parser))
    db = _db_parent()
    sub = parser.add_subparsers(dest="review_command", metavar="{list,show,resolve,delete,export,serve}")

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
    p_resolve.add_argument(
        "--reviewer",
        default=_default_reviewer(),
        metavar="NAME",
        help="who gives the verdict, stored with it (default: $USER)",
    )
    p_resolve.set_defaults(func=_cmd_resolve)

    p_delete = sub.add_parser(
        "delete",
        parents=[db],
        help="delete items by id and/or age (needs --yes)",
        description="Delete review items, pending or resolved, by id and/or age. Without --yes nothing is "
        "deleted: the command says how many items would go and exits 1.",
    )
    _selectors(p_delete)
    p_delete.add_argument("--yes", action="store_true", help="really delete them")
    p_delete.set_defaults(func=_cmd_delete)

    p_export = sub.add_parser(
        "export",
        parents=[db],
        help="write items as JSON lines (all, or by id and/or age)",
        description="Write review items, oldest first, one JSON object per line (the fields of `show --json`). "
        "Without --id and --older-than: every item.",
    )
    _selectors(p_export)
    p_export.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of stdout")
    p_export.set_defaults(func=_cmd_export)

    add_serve_parser(sub, parents=[db])


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``review`` command (``list``, ``show``, ``resolve``, ``delete``, ``export``, ``serve``) to a
    top-level CLI."""
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


def _default_reviewer() -> str | None:
    return os.environ.get("USER") or os.environ.get("USERNAME") or None


def _open(args: argparse.Namespace) -> ReviewStore:
    return open_review_queue(args.db)


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
        f"reason:      {item.reason or '-'}",
        f"task:        {item.task or '-'}",
        f"model:       {item.model or '-'}" + (f" (profile {item.profile})" if item.profile else ""),
        f"question:    {item.question}",
        f"answer:      {item.answer}",
    ]
    if not item.pending:
        lines += [
            f"resolved_at: {item.resolved_at.isoformat() if item.resolved_at else '-'}",
            f"reviewer:    {item.reviewer or '-'}",
            f"resolved:    {item.resolved_answer if item.resolved_answer is not None else '-'}",
            f"note:        {item.verdict_note if item.verdict_note is not None else '-'}",
        ]
    if item.messages:
        lines.append("messages:")
        lines += [f"  [{m.get('role', '?')}] {_one_line(str(m.get('content', '')), 200)}" for m in item.messages]
    if item.route:
        lines.append("route:       " + json.dumps(item.route, sort_keys=True))
    if item.metadata:
        lines.append("metadata:    " + json.dumps(item.metadata, sort_keys=True))
    out.write("\n".join(lines) + "\n")


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        with closing(_open(args)) as queue:
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
        task, reason, reviewer = item.task or "-", item.reason or "-", item.reviewer or "-"
        print(
            f"{item.id}  {item.status:<8}  {when}  {conf:>5}  {_one_line(task, 16):<16}  {_one_line(reason, 16):<16}  "
            f"{_one_line(reviewer, 12):<12}  {_one_line(item.question, 60)}"
        )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        with closing(_open(args)) as queue:
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
        with closing(_open(args)) as queue:
            item = queue.resolve(args.id, args.verdict, answer=args.answer, note=args.note, reviewer=args.reviewer)
    except GradguardError as exc:
        return _fail(exc)
    print(f"resolved {item.id}: {item.status}" + (f" (by {item.reviewer})" if item.reviewer else ""))
    return 0


def _before(args: argparse.Namespace) -> datetime | None:
    return None if args.older_than is None else datetime.now(UTC) - timedelta(days=args.older_than)


def _cmd_delete(args: argparse.Namespace) -> int:
    if args.ids is None and args.older_than is None:
        print("error: say which items to delete: --id ID (repeatable) and/or --older-than DAYS", file=sys.stderr)
        return 2
    try:
        with closing(_open(args)) as queue:
            if not args.yes:
                n = len(queue.export(ids=args.ids, before=_before(args)))
                print(f"{n} item(s) would be deleted from {queue.url}; add --yes to delete them", file=sys.stderr)
                return 1
            n = queue.delete(ids=args.ids, before=_before(args))
            where = queue.url
    except GradguardError as exc:
        return _fail(exc)
    print(f"deleted {n} item(s) from {where}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        with closing(_open(args)) as queue:
            items = queue.export(ids=args.ids, before=_before(args))
    except GradguardError as exc:
        return _fail(exc)
    lines = "".join(json.dumps(item.model_dump(mode="json"), sort_keys=True) + "\n" for item in items)
    if args.out is None:
        sys.stdout.write(lines)
    else:
        try:
            with open(args.out, "w", encoding="utf-8") as out:
                out.write(lines)
        except OSError as exc:
            print(f"error: could not write {args.out}: {exc}; check the folder exists and is writable", file=sys.stderr)
            return 1
    print(f"exported {len(items)} item(s)" + (f" to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
