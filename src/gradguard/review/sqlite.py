"""A durable, thread-safe review queue in one SQLite file (stdlib ``sqlite3``)."""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

from gradguard.cache import cache_dir
from gradguard.review.errors import ReviewStoreError
from gradguard.review.sql_store import SQLReviewStore, Transaction
from gradguard.review.urls import is_url, mask_url, sqlite_path_from_url

__all__ = ["SQLiteReviewQueue", "default_review_db_path", "REVIEW_DB_ENV"]

#: Environment variable that overrides the default review database (a path or a URL).
REVIEW_DB_ENV = "GRADGUARD_REVIEW_DB"

_SCHEMA_VERSION = 2
_TABLE = """
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
    resolved_at     TEXT,
    messages        TEXT,
    task            TEXT,
    model           TEXT,
    profile         TEXT,
    reason          TEXT,
    route           TEXT,
    reviewer        TEXT
)
"""
#: The columns version 2 added to a version-1 table (``ALTER TABLE ADD COLUMN``, in order).
_V2_COLUMNS = ("messages", "task", "model", "profile", "reason", "route", "reviewer")
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS review_items_status ON review_items (status, created_at)",
    "CREATE INDEX IF NOT EXISTS review_items_created ON review_items (created_at)",
    "CREATE INDEX IF NOT EXISTS review_items_task ON review_items (task, created_at)",
    "CREATE INDEX IF NOT EXISTS review_items_reason ON review_items (reason, created_at)",
)


def default_review_db_path() -> Path:
    """``$GRADGUARD_REVIEW_DB`` if set, else ``review.sqlite3`` in gradguard's cache folder.

    The cache folder is :func:`gradguard.cache.cache_dir` (``$GRADGUARD_CACHE``, else
    ``$XDG_CACHE_HOME/gradguard``, else ``~/.cache/gradguard``), shared with the
    rest of gradguard. A ``sqlite:///PATH`` URL in the variable gives its path; any other URL
    (e.g. ``postgresql://...``) raises :class:`ReviewStoreError`: open it with
    :func:`~gradguard.review.open_review_queue`.
    """
    env = os.environ.get(REVIEW_DB_ENV)
    if env:
        if is_url(env):
            if env.partition("://")[0].lower() == "sqlite":
                return sqlite_path_from_url(env)
            raise ReviewStoreError(
                f"${REVIEW_DB_ENV} holds {mask_url(env)!r}, which is not a SQLite file; open it with "
                "open_review_queue() (or gradguard review --db), or set it to a file path"
            )
        return Path(env).expanduser()
    return cache_dir() / "review.sqlite3"


class _WriterGate:
    """A cross-process lock writers take before ``BEGIN IMMEDIATE``: an OS file lock on ``<db>-writer.lock``.

    SQLite's own busy handler sleeps up to 100 ms between tries, so under several writer
    processes a writer can starve for seconds while others take the free lock in between.
    The writers of this class queue on ``flock`` instead, polled every millisecond at most, and
    only then take SQLite's write lock (which stays the real one: writers that do not use the
    gate are still excluded by it). Where there is no ``fcntl`` (Windows) the gate does nothing.
    The lock goes with the process: a killed writer never leaves it held.
    """

    def __init__(self, db_path: Path) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            self._fd: int | None = None
            return
        self._flock = fcntl.flock
        self._ex, self._nb, self._un = fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN
        self._fd = os.open(str(db_path) + "-writer.lock", os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, timeout_s: float) -> bool:
        """Take the lock, waiting at most ``timeout_s``; False when it could not be taken in time."""
        if self._fd is None:
            return True
        deadline, pause = time.monotonic() + timeout_s, 0.00005
        while True:
            try:
                self._flock(self._fd, self._ex | self._nb)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.001)

    def release(self) -> None:
        """Let the next writer in."""
        if self._fd is not None:
            self._flock(self._fd, self._un)

    def close(self) -> None:
        """Close the lock file (releasing the lock if held)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class _SQLiteTransaction:
    """A :class:`~gradguard.review.sql_store.Transaction` on a sqlite3 connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()


class SQLiteReviewQueue(SQLReviewStore):
    """A :class:`~gradguard.review.ReviewStore` in one SQLite file.

    The database runs in WAL mode with ``synchronous=FULL`` and every
    :meth:`enqueue` is its own committed transaction, so an item whose id was
    returned survives the process being killed right afterwards. One connection
    is shared by all threads behind a lock; other processes (e.g. the
    ``gradguard review`` CLI) may use the same file at the same time. Writers take
    turns through an OS file lock on ``<file>-writer.lock`` before SQLite's own write
    lock (SQLite's busy wait alone lets a writer starve for seconds among several
    writer processes); ``timeout_s`` bounds the wait for either.

    ``path`` defaults to :func:`default_review_db_path`; its folder is created. A
    version-1 file (before ``messages``, ``task``, ``reviewer``...) is migrated in place
    to version 2 when opened, keeping every item. Use as a context manager, or call
    :meth:`close`.
    """

    _order_by: ClassVar[str] = "created_at, rowid"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser() if path is not None else default_review_db_path()
        self.url = "sqlite:///" + str(self.path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._gate: _WriterGate | None = None
        self._timeout_s = timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._gate = _WriterGate(self.path)
            # isolation_level=None: no implicit transactions; every write below is an explicit one.
            self._conn = sqlite3.connect(
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
            with self._writer_turn():
                self._migrate(conn)
        except (sqlite3.Error, OSError) as exc:
            self._close_quietly()
            raise ReviewStoreError(
                f"could not open the review database {self.path}: {exc}; check the path is writable, "
                f"or set {REVIEW_DB_ENV} / --db to another file"
            ) from exc
        except ReviewStoreError:
            self._close_quietly()
            raise

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Create the schema, or bring an older file up to :data:`_SCHEMA_VERSION`, in one transaction."""
        conn.execute("BEGIN IMMEDIATE")  # the write lock: another process cannot migrate at the same time
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ReviewStoreError(
                    f"review database {self.path} has schema version {version}, newer than this gradguard "
                    f"understands ({_SCHEMA_VERSION}); upgrade gradguard or use another --db path"
                )
            if version < _SCHEMA_VERSION:
                conn.execute(_TABLE)
                present = {row[1] for row in conn.execute("PRAGMA table_info(review_items)")}
                for column in _V2_COLUMNS:
                    if column not in present:
                        conn.execute(f"ALTER TABLE review_items ADD COLUMN {column} TEXT")
                for statement in _INDEXES:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- plumbing -----------------------------------------------------------------

    def _close_quietly(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        gate, self._gate = getattr(self, "_gate", None), None
        if gate is not None:
            gate.close()

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Hold the :class:`_WriterGate` (other writer processes wait their turn) for the block."""
        gate = self._gate
        if gate is None:
            yield
            return
        if not gate.acquire(self._timeout_s):
            raise ReviewStoreError(
                f"the review database {self.path} stayed locked by another writer for {self._timeout_s:g} s; "
                "check no process is stuck mid-write (or raise timeout_s)"
            )
        try:
            yield
        finally:
            gate.release()

    @contextmanager
    def _transaction(self, what: str, *, write: bool, single: bool = False) -> Iterator[Transaction]:
        with self._lock:
            if self._conn is None:
                raise ReviewStoreError(f"the review queue at {self.path} is closed; open a new SQLiteReviewQueue")
            conn = self._conn
            try:
                # IMMEDIATE takes the write lock up front (no upgrade deadlock between processes),
                # after waiting our turn at the writer gate; a deferred read transaction is one
                # consistent WAL snapshot and waits for nobody.
                with self._writer_turn() if write else nullcontext():
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    yield _SQLiteTransaction(conn)
                    conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.Error):
                    raise ReviewStoreError(f"could not {what} in the review database {self.path}: {exc}") from exc
                raise

    def close(self) -> None:
        """Close the database connection (the queue cannot be used afterwards)."""
        with self._lock:
            self._close_quietly()

    def __enter__(self) -> SQLiteReviewQueue:
        return self

    def __repr__(self) -> str:
        return f"SQLiteReviewQueue({str(self.path)!r})"
