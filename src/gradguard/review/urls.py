"""Pick a review store by URL: :func:`open_review_queue`, and the URL helpers the stores share.

Accepted forms:

- ``sqlite:///relative/path.sqlite3`` or ``sqlite:////absolute/path.sqlite3`` (three slashes, then the path);
- a plain file path (``review.sqlite3``, ``/var/lib/app/review.sqlite3``, ``~/review.sqlite3``): SQLite;
- ``postgresql://user:password@host:port/database`` (or ``postgres://...``, with any libpq parameters
  in the query string, e.g. ``?sslmode=require``): PostgreSQL (``pip install 'gradguard[postgres]'``);
- ``None``: ``$GRADGUARD_REVIEW_DB`` (a URL or a path) if set, else ``review.sqlite3`` in gradguard's
  cache folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from gradguard.review.errors import ReviewStoreError
from gradguard.review.queue import ReviewStore

__all__ = [
    "open_review_queue",
    "mask_url",
    "is_url",
    "sqlite_path_from_url",
    "POSTGRES_SCHEMES",
    "URL_HELP",
]

#: The URL schemes that open a :class:`~gradguard.review.PostgresReviewQueue`.
POSTGRES_SCHEMES = ("postgresql", "postgres")
#: What a review database can be, for error messages and help texts.
URL_HELP = "a file path, sqlite:///PATH, or postgresql://user:password@host:port/database; see docs/review.md"
#: A ``password=`` parameter in a URL's query string (its value is group 2).
_PASSWORD_PARAM = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def is_url(target: str) -> bool:
    """True when ``target`` looks like ``scheme://...`` rather than a file path."""
    head, sep, _ = target.partition("://")
    return bool(sep) and head.isidentifier()


def mask_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` parameter) replaced by ``***``.

    ``postgresql://user:secret@host/db`` becomes ``postgresql://user:***@host/db``; a path or a URL
    without a password comes back unchanged.
    """
    if not is_url(url):
        return url
    scheme, _, rest = url.partition("://")
    # The last "@" ends the user info even when an unencoded password holds "/", "?" or "#":
    # masking too much is harmless, showing a piece of the password is not.
    userinfo, at, rest_after = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = userinfo.split(":", 1)[0] + ":***@" + rest_after
    return scheme + "://" + _PASSWORD_PARAM.sub(r"\1***", rest)


def url_password(url: str) -> str | None:
    """The password in ``url`` (authority or ``password=`` parameter), for scrubbing it out of messages."""
    try:
        parts = urlsplit(url)
        if parts.password:
            return unquote(parts.password)
        for key, value in parse_qsl(parts.query):
            if key.lower() == "password" and value:
                return value
    except ValueError:
        return None
    return None


def sqlite_path_from_url(url: str) -> Path:
    """The file path of a ``sqlite:///PATH`` URL (``sqlite:////abs/path`` for an absolute path)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/") or len(rest) < 2:
        raise ReviewStoreError(
            f"{mask_url(url)!r} is not a SQLite URL; write sqlite:///relative/path or sqlite:////absolute/path "
            f"(three slashes, then the path), or give the file path itself"
        )
    return Path(unquote(rest[1:])).expanduser()


def open_review_queue(url: str | os.PathLike[str] | None = None) -> ReviewStore:
    """Open the review store ``url`` names: SQLite for a path or ``sqlite:///PATH``, PostgreSQL for ``postgresql://``.

    ``None`` means ``$GRADGUARD_REVIEW_DB`` (a URL or a path), else the default SQLite file
    (:func:`~gradguard.review.default_review_db_path`). An unknown scheme, or a database that
    cannot be opened, raises :class:`~gradguard.review.ReviewStoreError` naming the URL (password
    masked) and what to check. The caller closes the store (or uses it as a context manager).
    """
    from gradguard.review.sqlite import REVIEW_DB_ENV, SQLiteReviewQueue, default_review_db_path

    if url is None:
        env = os.environ.get(REVIEW_DB_ENV)
        if env:
            return open_review_queue(env)
        return SQLiteReviewQueue(default_review_db_path())
    if isinstance(url, os.PathLike):
        return SQLiteReviewQueue(url)
    if not isinstance(url, str):
        raise ReviewStoreError(f"the review database {url!r} is neither a URL nor a path; give {URL_HELP}")
    if not url.strip():
        raise ReviewStoreError(f"the review database URL is empty; give {URL_HELP}")
    if not is_url(url):
        return SQLiteReviewQueue(url)
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SQLiteReviewQueue(sqlite_path_from_url(url))
    if scheme in POSTGRES_SCHEMES:
        from gradguard.review.postgres import PostgresReviewQueue

        return PostgresReviewQueue(url)
    raise ReviewStoreError(f"the review database {mask_url(url)!r} has an unknown scheme {scheme!r}; give {URL_HELP}")
