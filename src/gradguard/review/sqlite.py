"""A durable, thread-safe review queue in one SQLite file (stdlib ``sqlite3``)."""

from __future__ import annotations

import builtins
import json
import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gradguard.cache import cache_dir
from gradguard.review.errors import (
    ReviewAlreadyResolvedError,
    ReviewInputError,
    ReviewItemNotFoundError,
    ReviewStoreError,
)
from gradguard.review.queue import ReviewItem, check_status, check_verdict

__all__ = ["SQLiteReviewQueue", "default_review_db_path", "REVIEW_DB_ENV"]

#: Environment variable that overrides the default review database path.
REVIEW_DB_ENV = "GRADGUARD_REVIEW_DB"

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
    id              TEXT PRIMARY KEY,
    created_at      TEXT NOT NULL,
    question        TEXT NOT NULL,
    answer          TEXT NOT NULL,
    confidence      REAL,
    metadata        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'edited')),
    verdict_note    TEXT,
    resolved_answer TEXT,
    resolved_at     TEXT
);
CREATE INDEX IF NOT EXISTS review_items_status ON review_items (status, created_at);
"""
_COLUMNS = (
    "id, created_at, question, answer, confidence, metadata, status, verdict_note, resolved_answer, resolved_at"
)


def default_review_db_path() -> Path:
    """``$GRADGUARD_REVIEW_DB`` if set, else ``review.sqlite3`` in gradguard's cache folder.

    The cache folder is :func:`gradguard.cache.cache_dir` (``$GRADGUARD_CACHE``, else
    ``$XDG_CACHE_HOME/gradguard``, else ``~/.cache/gradguard``), shared with the
    rest of gradguard.
    """
    env = os.environ.get(REVIEW_DB_ENV)
    if env:
        return Path(env).expanduser()
    return cache_dir() / "review.sqlite3"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class SQLiteReviewQueue:
    """A :class:`~gradguard.review.ReviewQueue` in one SQLite file.

    The database runs in WAL mode with ``synchronous=FULL`` and every
    :meth:`enqueue` is its own committed transaction, so an item whose id was
    returned survives the process being killed right afterwards. One connection
    is shared by all threads behind a lock; other processes (e.g. the
    ``gradguard review`` CLI) may use the same file at the same time.

    ``path`` defaults to :func:`default_review_db_path`; its folder is created.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser() if path is not None else default_review_db_path()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; every write below is an explicit one.
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            conn = self._conn
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ReviewStoreError(
                    f"review database {self.path} could not switch to WAL mode (got {mode!r}); "
                    "put it on a local file system"
                )
            conn.execute("PRAGMA synchronous=FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ReviewStoreError(
                    f"review database {self.path} has schema version {version}, newer than this gradguard "
                    f"understands ({_SCHEMA_VERSION}); upgrade gradguard or use another --db path"
                )
            conn.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._close_quietly()
            raise ReviewStoreError(
                f"could not open the review database {self.path}: {exc}; check the path is writable, "
                f"or set {REVIEW_DB_ENV} / --db to another file"
            ) from exc
        except ReviewStoreError:
            self._close_quietly()
            raise

    # -- plumbing -----------------------------------------------------------------

    def _close_quietly(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    @contextmanager
    def _locked(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise ReviewStoreError(f"the review queue at {self.path} is closed; open a new SQLiteReviewQueue")
            conn = self._conn
            try:
                yield conn
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.Error):
                    raise ReviewStoreError(f"could not {what} in the review database {self.path}: {exc}") from exc
                raise

    @staticmethod
    def _item(row: tuple[Any, ...]) -> ReviewItem:
        (item_id, created_at, question, answer, confidence, metadata, status, note, resolved_answer, resolved_at) = row
        return ReviewItem(
            id=item_id,
            created_at=datetime.fromisoformat(created_at),
            question=question,
            answer=answer,
            confidence=confidence,
            metadata=json.loads(metadata),
            status=status,
            verdict_note=note,
            resolved_answer=resolved_answer,
            resolved_at=datetime.fromisoformat(resolved_at) if resolved_at else None,
        )

    def close(self) -> None:
        """Close the database connection (the queue cannot be used afterwards)."""
        with self._lock:
            self._close_quietly()

    def __enter__(self) -> SQLiteReviewQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteReviewQueue({str(self.path)!r})"

    # -- the ReviewQueue protocol ---------------------------------------------------

    def enqueue(
        self,
        question: str,
        answer: str,
        *,
        confidence: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store a pending item in its own committed transaction and return its id (uuid4 hex).

        A non-finite ``confidence`` is stored as ``None``; ``metadata`` must be
        JSON-serialisable (NaN included: it is rejected).
        """
        for name, value in (("question", question), ("answer", answer)):
            if not isinstance(value, str):
                raise ReviewInputError(f"{name}={value!r} is not a string; pass the {name} text")
        if confidence is not None:
            if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
                raise ReviewInputError(f"confidence={confidence!r} is not a number; pass a float in [0, 1] or None")
            confidence = float(confidence) if math.isfinite(confidence) else None
        try:
            meta = json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ReviewInputError(
                f"metadata is not JSON-serialisable ({exc}); pass plain str/number/bool/None/list/dict values "
                "without NaN"
            ) from None
        item_id = uuid.uuid4().hex
        with self._locked("enqueue an item") as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"INSERT INTO review_items ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'pending', NULL, NULL, NULL)",
                (item_id, _now(), question, answer, confidence, meta),
            )
            conn.execute("COMMIT")
        return item_id

    def get(self, item_id: str) -> ReviewItem:
        """The item with this id; raises :class:`ReviewItemNotFoundError` naming the id."""
        with self._locked("read an item") as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM review_items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise ReviewItemNotFoundError(item_id, str(self.path))
        return self._item(row)

    def list(self, status: str | None = None, limit: int | None = None) -> builtins.list[ReviewItem]:
        """Items oldest first, only those with ``status`` when given, at most ``limit`` of them."""
        check_status(status)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ReviewInputError(f"limit={limit!r} is not a non-negative integer; pass e.g. limit=20 or None")
        sql = f"SELECT {_COLUMNS} FROM review_items"
        params: builtins.list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY created_at, rowid"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._locked("list items") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [self._item(row) for row in rows]

    def resolve(
        self, item_id: str, verdict: str, *, answer: str | None = None, note: str | None = None
    ) -> ReviewItem:
        """Give a pending item its verdict (``approved``, ``rejected`` or ``edited`` with ``answer``).

        The resolved answer is the original answer when approved, ``answer`` when
        edited and ``None`` when rejected. Raises :class:`ReviewItemNotFoundError`
        for an unknown id and :class:`ReviewAlreadyResolvedError` when the item
        already has a verdict (atomically: of two concurrent verdicts one wins).
        """
        check_verdict(verdict, answer)
        with self._locked("resolve an item") as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT status, answer FROM review_items WHERE id = ?", (item_id,)).fetchone()
            if row is None or row[0] != "pending":
                conn.execute("ROLLBACK")
                if row is None:
                    raise ReviewItemNotFoundError(item_id, str(self.path))
                raise ReviewAlreadyResolvedError(item_id, row[0])
            resolved = {"approved": row[1], "edited": answer, "rejected": None}[verdict]
            conn.execute(
                "UPDATE review_items SET status = ?, verdict_note = ?, resolved_answer = ?, resolved_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (verdict, note, resolved, _now(), item_id),
            )
            conn.execute("COMMIT")
        return self.get(item_id)
