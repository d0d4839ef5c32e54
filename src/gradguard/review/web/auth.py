"""Reviewer tokens: the rules a token follows, a ``--tokens`` file, a ``--token`` value (framework-free)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from gradguard.review.errors import ReviewInputError

__all__ = [
    "MIN_TOKEN_CHARS",
    "DEFAULT_REVIEWER",
    "TokenError",
    "check_reviewers",
    "load_tokens_file",
    "parse_token_arg",
]

#: The shortest reviewer token accepted.
MIN_TOKEN_CHARS = 16
#: The reviewer's name when a token is given without one (``--token TOKEN``).
DEFAULT_REVIEWER = "reviewer"
#: Characters a token may use: letters, digits and ``-._~+/=`` (hex, base64 and base64url tokens all fit); they
#: travel unquoted in a cookie.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/=]+")
_MAKE_ONE = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class TokenError(ReviewInputError):
    """A reviewer token (or the file holding them) is not usable; the message says how to fix it."""


def _token_problem(token: object) -> str | None:
    if not isinstance(token, str):
        return f"is a {type(token).__name__}, not a string"
    if len(token) < MIN_TOKEN_CHARS:
        return f"is {len(token)} characters long; tokens need at least {MIN_TOKEN_CHARS}"
    if not _TOKEN_RE.fullmatch(token):
        return "has characters other than letters, digits and -._~+/= (no spaces, quotes, ';' or ',')"
    return None


def check_reviewers(reviewers: Mapping[str, str], *, where: str = "reviewers") -> dict[str, str]:
    """``reviewers`` (``token -> name``) as a dict, or :class:`TokenError` naming the first bad entry.

    At least one reviewer; every token a string of at least :data:`MIN_TOKEN_CHARS` characters from
    ``[A-Za-z0-9-._~+/=]``; every name a non-empty string.
    """
    if not isinstance(reviewers, Mapping) or not reviewers:
        raise TokenError(f'{where} has no reviewer tokens; give at least one {{"TOKEN": "NAME"}} ({_MAKE_ONE})')
    out: dict[str, str] = {}
    for number, (token, name) in enumerate(reviewers.items(), start=1):
        problem = _token_problem(token)
        if problem is not None:
            raise TokenError(f"{where}: token #{number} {problem}; {_MAKE_ONE}")
        if not isinstance(name, str) or not name.strip():
            raise TokenError(
                f"{where}: the name of token #{number} is {name!r}; give each token the reviewer's name, "
                'e.g. {"TOKEN": "alice"}'
            )
        out[token] = name.strip()
    return out


def load_tokens_file(path: str | Path) -> dict[str, str]:
    """The reviewers in a JSON file holding one object ``{"TOKEN": "reviewer name", ...}`` (checked as by
    :func:`check_reviewers`); raises :class:`TokenError` naming the file and the fix."""
    where = f"the tokens file {str(path)!r}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenError(f"could not read {where}: {exc.strerror or exc}; check the --tokens path") from None
    except UnicodeDecodeError:
        raise TokenError(f'{where} is not UTF-8 text; write it as a JSON object {{"TOKEN": "NAME"}}') from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenError(
            f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            'write it as a JSON object {"TOKEN": "NAME", ...}'
        ) from None
    if not isinstance(data, dict):
        raise TokenError(
            f'{where} holds a JSON {type(data).__name__}, not an object; write it as {{"TOKEN": "NAME", ...}}'
        )
    return check_reviewers(data, where=where)


def parse_token_arg(value: str, *, where: str = "--token") -> dict[str, str]:
    """``TOKEN`` (the reviewer is named :data:`DEFAULT_REVIEWER`) or ``NAME:TOKEN`` as ``{token: name}``."""
    value = value.strip()
    name, sep, token = value.rpartition(":")
    if not sep:
        name, token = DEFAULT_REVIEWER, value
    elif not name.strip():
        raise TokenError(f"{where}: the name before ':' is empty; pass NAME:TOKEN or just TOKEN")
    return check_reviewers({token: name}, where=where)
