"""A review queue in a PostgreSQL database (psycopg 3), shared by several processes and machines.

psycopg is imported when a :class:`PostgresReviewQueue` is created, so ``import gradguard.review``
works without it; ``pip install 'gradguard[postgres]'`` installs it.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from gradguard.errors import MissingExtraError
from gradguard.review.errors import ReviewInputError, ReviewStoreError
from gradguard.review.sql_store import SQLReviewStore, Transaction, _utc
from gradguard.review.urls import POSTGRES_SCHEMES, mask_url, url_password

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresReviewQueue", "PostgresDriverMissingError"]

_SCHEMA_VERSION = 2
#: The key of the advisory lock held while the schema is created (so concurrent first opens do not race).
_SCHEMA_LOCK = 0x67726164677561  # "gradgua"
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS review_items (
        seq             BIGINT GENERATED ALWAYS AS IDENTITY,
        id              TEXT PRIMARY KEY,
        created_at      TIMESTAMPTZ NOT NULL,
        question        TEXT NOT NULL,
        answer          TEXT NOT NULL,
        confidence      DOUBLE PRECISION,
        metadata        JSON NOT NULL,
        messages        JSON,
        task            TEXT,
        model           TEXT,
        profile         TEXT,
        reason          TEXT,
        route           JSON,
        status          TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'edited')),
        verdict_note    TEXT,
        resolved_answer TEXT,
        resolved_at     TIMESTAMPTZ,
        reviewer        TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS review_items_status ON review_items (status, created_at, seq)",
    "CREATE INDEX IF NOT EXISTS review_items_created ON review_items (created_at, seq)",
    "CREATE INDEX IF NOT EXISTS review_items_task ON review_items (task, created_at, seq)",
    "CREATE INDEX IF NOT EXISTS review_items_reason ON review_items (reason, created_at, seq)",
    "CREATE TABLE IF NOT EXISTS review_schema (version INTEGER NOT NULL)",
)
_FIX = "check the server is running and the URL's host/port/user/password/database; see docs/review.md"


class PostgresDriverMissingError(MissingExtraError, ReviewStoreError):
    """psycopg 3 is not installed; ``pip install 'gradguard[postgres]'`` adds it."""


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresDriverMissingError(
            f"a PostgreSQL review queue needs psycopg 3, which is not installed ({exc}); "
            "pip install 'gradguard[postgres]'",
            package="psycopg",
            extra="postgres",
            name="psycopg",
        ) from exc
    return psycopg


class _PostgresTransaction:
    """A :class:`~gradguard.review.sql_store.Transaction` on a psycopg cursor."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(sql, params)
        return self._cursor.rowcount

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[tuple[Any, ...]]:
        self._cursor.execute(sql, params)
        return self._cursor.fetchall()


class PostgresReviewQueue(SQLReviewStore):
    """A :class:`~gradguard.review.ReviewStore` in a PostgreSQL database.

    ``url`` is a libpq URL, ``postgresql://user:password@host:port/database`` (``postgres://`` too, and
    any libpq parameters in the query string, e.g. ``?sslmode=require`` or
    ``?options=-csearch_path%3Dmyschema`` for another schema). The table ``review_items`` (and
    ``review_schema``, its version) is created on first use. Every :meth:`enqueue` is one committed
    transaction (durable once the id is returned, with the server's default ``synchronous_commit``);
    :meth:`resolve` is one ``UPDATE ... WHERE status = 'pending' RETURNING``, so of two concurrent
    verdicts exactly one wins, across processes and machines. One connection is shared by this
    object's threads behind a lock (it reconnects if the connection breaks); open one store per
    process. :attr:`url` is the URL with its password masked.

    Text stored here cannot contain NUL characters (``\\x00``), a PostgreSQL limit:
    :meth:`enqueue` refuses them with :class:`~gradguard.review.ReviewInputError`.
    """

    _placeholder: ClassVar[str] = "%s"
    _json_placeholder: ClassVar[str] = "?::json"
    _order_by: ClassVar[str] = "created_at, seq"
    _ids_clause: ClassVar[str] = "id = ANY(?)"

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        if not isinstance(url, str) or url.partition("://")[0].lower() not in POSTGRES_SCHEMES:
            raise ReviewStoreError(
                f"{mask_url(str(url))!r} is not a PostgreSQL URL; give postgresql://user:password@host:port/database"
            )
        self.url = mask_url(url)
        self._conninfo = url
        self._password = url_password(url)
        self._connect_timeout = max(1, round(connect_timeout_s))
        self._lock = threading.Lock()
        self._closed = False
        self._psycopg = _import_psycopg()
        self._conn: psycopg.Connection[Any] | None = None
        try:
            self._conn = self._connect()
            self._create_schema(self._conn)
        except self._psycopg.Error as exc:
            self._close_quietly()
            raise ReviewStoreError(
                f"could not open the review database {self.url}: {self._scrub(exc)}; {_FIX}"
            ) from None
        except BaseException:
            self._close_quietly()
            raise

    # -- plumbing -----------------------------------------------------------------------------------

    def _scrub(self, exc: BaseException) -> str:
        """The error's message without the password (libpq does not print it, but be sure)."""
        text = " ".join(str(exc).split())
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _connect(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] = self._psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
        )
        return conn

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Create the table and indexes unless they are there, under an advisory lock."""
        with conn.cursor() as cur:
            if self._schema_version(cur) == _SCHEMA_VERSION:
                return
            with conn.transaction():
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                version = self._schema_version(cur)
                if version is not None and version > _SCHEMA_VERSION:
                    raise ReviewStoreError(
                        f"the review database {self.url} has schema version {version}, newer than this gradguard "
                        f"understands ({_SCHEMA_VERSION}); upgrade gradguard or use another database"
                    )
                for statement in _SCHEMA:
                    cur.execute(statement)
                cur.execute("DELETE FROM review_schema")
                cur.execute("INSERT INTO review_schema (version) VALUES (%s)", (_SCHEMA_VERSION,))

    @staticmethod
    def _schema_version(cur: psycopg.Cursor[Any]) -> int | None:
        cur.execute("SELECT to_regclass('review_schema') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return None
        cur.execute("SELECT max(version) FROM review_schema")
        row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def _close_quietly(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
                pass

    @contextmanager
    def _transaction(self, what: str, *, write: bool, single: bool = False) -> Iterator[Transaction]:
        psycopg = self._psycopg
        with self._lock:
            if self._closed:
                raise ReviewStoreError(f"the review queue at {self.url} is closed; open a new PostgresReviewQueue")
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._close_quietly()
                    self._conn = self._connect()
                conn = self._conn
                if single:
                    # The connection autocommits: one statement is its own transaction (one round trip,
                    # committed, and so durable, before execute returns).
                    with conn.cursor() as cur:
                        yield _PostgresTransaction(cur)
                    return
                with conn.transaction(), conn.cursor() as cur:
                    if not write:
                        # One snapshot for the whole read (a page and its count agree).
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    yield _PostgresTransaction(cur)
            except psycopg.Error as exc:
                raise ReviewStoreError(
                    f"could not {what} in the review database {self.url}: {self._scrub(exc)}; {_FIX}"
                ) from None

    def _time_param(self, when: datetime) -> Any:
        return _utc(when)

    def _ids_param(self, ids: builtins.list[str]) -> Any:
        return ids

    def _check_text_storable(self, name: str, text: str) -> None:
        if "\x00" in text:
            raise ReviewInputError(
                f"the {name} contains a NUL character (\\x00), which PostgreSQL text cannot hold; "
                "remove it (nothing was stored)"
            )

    def close(self) -> None:
        """Close the connection (the queue cannot be used afterwards)."""
        with self._lock:
            self._closed = True
            self._close_quietly()

    def __enter__(self) -> PostgresReviewQueue:
        return self
