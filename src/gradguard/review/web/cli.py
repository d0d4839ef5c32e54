"""``gradguard review serve``: the parser (:func:`add_serve_parser`) and the handler (:func:`run_serve`).

Importing this module imports neither FastAPI nor uvicorn; :func:`run_serve` does, when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from gradguard.errors import GradguardError
from gradguard.review.web.auth import MIN_TOKEN_CHARS, TokenError, load_tokens_file, parse_token_arg

__all__ = ["add_serve_parser", "run_serve", "reviewers_from_args", "TOKEN_ENV", "DEFAULT_PORT"]

#: Environment variable holding one reviewer token (``TOKEN`` or ``NAME:TOKEN``) when no flag gives one.
TOKEN_ENV = "GRADGUARD_REVIEW_TOKEN"
#: The port ``gradguard review serve`` listens on by default.
DEFAULT_PORT = 8100

_DESCRIPTION = (
    "Serve the reviewers' web app: the queue of answers held back for review, each answer with its tokens "
    "shaded by uncertainty, and approve / reject / edit forms. Every reviewer signs in with a token "
    f"(--tokens FILE, --token, or ${TOKEN_ENV}); verdicts are recorded under the token's reviewer name."
)


def add_serve_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    parents: list[argparse.ArgumentParser] | None = None,
    name: str = "serve",
) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to ``subparsers`` (e.g. ``gradguard review``'s); it sets ``func`` to
    :func:`run_serve`. ``parents`` may supply a shared ``--db`` option; without one ``--db`` is added here."""
    parser = subparsers.add_parser(
        name, parents=parents or [], help="serve the reviewers' web app", description=_DESCRIPTION
    )
    if not any(action.dest == "db" for parent in parents or [] for action in parent._actions):
        parser.add_argument(
            "--db",
            metavar="URL",
            default=None,
            help="review database: a file path, sqlite:///PATH or postgresql://... "
            "(default: $GRADGUARD_REVIEW_DB, else review.sqlite3 in gradguard's cache folder)",
        )
    parser.add_argument(
        "--tokens",
        metavar="FILE",
        default=None,
        help='JSON file {"TOKEN": "reviewer name", ...}: one token per reviewer '
        f"(at least {MIN_TOKEN_CHARS} characters: letters, digits, -._~+/=)",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        default=None,
        help=f"one reviewer's token, named 'reviewer', or NAME:TOKEN (default: ${TOKEN_ENV}); a flag's value "
        "shows in the process list, so prefer --tokens or the variable on shared machines",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--page-size", type=int, default=50, help="items per queue page (default: 50)")
    parser.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the session cookie Secure (when an HTTPS proxy sits in front of the app)",
    )
    parser.set_defaults(func=run_serve)
    return parser


def reviewers_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The reviewers (``token -> name``) of ``--tokens FILE`` and ``--token`` (else ``$GRADGUARD_REVIEW_TOKEN``).

    Raises :class:`~gradguard.review.web.auth.TokenError` when no source gives a token, when a token breaks the
    rules, or when one token is given to two names.
    """
    environ = os.environ if environ is None else environ
    reviewers: dict[str, str] = {}
    sources: list[tuple[str, dict[str, str]]] = []
    if getattr(args, "tokens", None):
        sources.append((f"--tokens {args.tokens}", load_tokens_file(args.tokens)))
    single = getattr(args, "token", None)
    if single:
        sources.append(("--token", parse_token_arg(single, where="--token")))
    elif environ.get(TOKEN_ENV, "").strip():
        sources.append((f"${TOKEN_ENV}", parse_token_arg(environ[TOKEN_ENV], where=f"${TOKEN_ENV}")))
    if not sources:
        raise TokenError(
            "no reviewer tokens: the app always requires one; pass --tokens FILE (a JSON object "
            f'{{"TOKEN": "reviewer name"}}), --token NAME:TOKEN, or set {TOKEN_ENV}'
        )
    for where, found in sources:
        for token, name in found.items():
            if token in reviewers and reviewers[token] != name:
                raise TokenError(
                    f"{where} gives a token already given to {reviewers[token]!r} to {name!r}; "
                    "give every reviewer their own token"
                )
            reviewers[token] = name
    return reviewers


def _warn_plain_http(host: str, out: TextIO) -> None:
    from gradguard.serving.settings import is_loopback

    if not is_loopback(host):
        print(
            f"warning: listening on {host!r} over plain HTTP: reviewer tokens, questions and answers cross the "
            "network unencrypted; put an HTTPS proxy in front (and pass --secure-cookies), or bind 127.0.0.1",
            file=out,
        )


def run_serve(args: argparse.Namespace) -> int:
    """Handle ``gradguard review serve``: check the tokens, open the store, serve until interrupted.

    Returns the exit code (1 with a message on stderr for a bad token source or database).
    """
    try:
        reviewers = reviewers_from_args(args)
        if not 0 < args.port < 65536:
            raise TokenError(f"--port {args.port} is not a port; pick one in 1-65535")
        from gradguard.extras import require

        uvicorn: Any = require("uvicorn", "review-web", "gradguard review serve")
        from gradguard.review.urls import open_review_queue
        from gradguard.review.web import create_app

        store = open_review_queue(args.db)
    except GradguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        app = create_app(store, reviewers, page_size=args.page_size, secure_cookies=args.secure_cookies)
        _warn_plain_http(args.host, sys.stderr)
        names = sorted(set(reviewers.values()))
        print(
            f"gradguard review: serving {store.url} on http://{args.host}:{args.port}/ "
            f"for {len(names)} reviewer(s): {', '.join(names)}",
            file=sys.stderr,
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    except GradguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
