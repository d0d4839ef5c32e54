"""The SQL both review stores share: :class:`SQLReviewStore`, with the dialect differences isolated.

:class:`~gradguard.review.SQLiteReviewQueue` and :class:`~gradguard.review.PostgresReviewQueue` run the
same statements on the same ``review_items`` table. What differs is left to the subclass:

- the connection and its transactions (:meth:`SQLReviewStore._transaction`), which translate the
  driver's errors into :class:`~gradguard.review.ReviewStoreError`;
- the placeholder (statements are written with ``?``; a dialect whose driver wants ``%s`` sets
  :attr:`SQLReviewStore._placeholder`);
- how a JSON value and a timestamp are passed and read back (:meth:`SQLReviewStore._json_param`,
  :meth:`SQLReviewStore._time_param`, :meth:`SQLReviewStore._time_value`);
- the tie-breaker of "oldest first" (:attr:`SQLReviewStore._order_by`) and the "id in a list" clause.
"""

from __future__ import annotations

import builtins
import json
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from gradguard.review.errors import (
    ReviewAlreadyResolvedError,
    ReviewInputError,
    ReviewItemNotFoundError,
)
from gradguard.review.queue import ReviewFilter, ReviewItem, ReviewPage, check_status, check_verdict

__all__ = ["SQLReviewStore", "COLUMNS", "JSON_COLUMNS", "MAX_PAGE_SIZE"]

#: The columns of ``review_items``, in the order every SELECT returns them (the :class:`ReviewItem` fields).
COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "question",
    "answer",
    "confidence",
    "metadata",
    "messages",
    "task",
    "model",
    "profile",
    "reason",
    "route",
    "status",
    "verdict_note",
    "resolved_answer",
    "resolved_at",
    "reviewer",
)
#: The columns holding JSON text.
JSON_COLUMNS: frozenset[str] = frozenset({"metadata", "messages", "route"})
#: The largest page :meth:`SQLReviewStore.query` returns.
MAX_PAGE_SIZE = 500

_SELECT = ", ".join(COLUMNS)
#: The columns an enqueue fills (the verdict's columns start NULL, the status 'pending').
_VERDICT_COLUMNS = ("status", "verdict_note", "resolved_answer", "resolved_at", "reviewer")
_INSERTED = tuple(c for c in COLUMNS if c not in _VERDICT_COLUMNS)


class Transaction(Protocol):
    """What a dialect's transaction offers the shared code (statements use ``?`` placeholders)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[tuple[Any, ...]]:
        """Run a query and return all its rows."""
        ...


def _short(value: object, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _utc(when: datetime) -> datetime:
    """``when`` in UTC; a naive datetime is taken to be UTC already."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class SQLReviewStore(ABC):
    """The :class:`~gradguard.review.ReviewStore` protocol in SQL, common to the SQLite and PostgreSQL stores.

    Subclasses open the connection, create or migrate the schema, set :attr:`url` (password masked)
    and implement :meth:`_transaction` and :meth:`close`.
    """

    #: Where the store lives, safe to print (any password replaced by ``***``).
    url: str

    #: The driver's placeholder; statements are written with ``?`` and rewritten when this differs.
    _placeholder: ClassVar[str] = "?"
    #: The placeholder of a JSON value (e.g. ``?::json`` where the column type needs a cast).
    _json_placeholder: ClassVar[str] = "?"
    #: "Oldest first": the creation time, then the insertion order.
    _order_by: ClassVar[str] = "created_at"
    #: A condition that holds when ``id`` is one of the ids passed as one parameter (:meth:`_ids_param`).
    _ids_clause: ClassVar[str] = "id IN (SELECT value FROM json_each(?))"

    # -- what a dialect provides ------------------------------------------------------------------

    @abstractmethod
    def _transaction(self, what: str, *, write: bool, single: bool = False) -> AbstractContextManager[Transaction]:
        """One transaction, committed when the block ends and rolled back when it raises.

        ``what`` (e.g. ``"enqueue an item"``) goes into the :class:`ReviewStoreError` a driver error
        becomes. ``write=True`` takes the write lock up front where the database has one.
        ``single=True`` promises the block runs one statement only, which a dialect may then run as
        its own (autocommitted, equally atomic and durable) transaction to save round trips.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the connection(s); the store cannot be used afterwards."""

    def _time_param(self, when: datetime) -> Any:
        """A UTC timestamp as the driver stores it (default: ISO 8601 text, which sorts in time order)."""
        return _utc(when).isoformat(timespec="microseconds")

    def _time_value(self, value: Any) -> datetime:
        """A stored timestamp as an aware UTC datetime."""
        if isinstance(value, datetime):
            return _utc(value)
        return _utc(datetime.fromisoformat(value))

    def _json_param(self, text: str | None) -> Any:
        """JSON text as the driver stores it (default: the text itself)."""
        return text

    def _ids_param(self, ids: builtins.list[str]) -> Any:
        """The parameter of :attr:`_ids_clause` (default: a JSON array)."""
        return json.dumps(ids)

    def _check_text_storable(self, name: str, text: str) -> None:
        """Raise :class:`ReviewInputError` when the database cannot hold ``text`` (default: any str)."""
        return None

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> SQLReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- rows -------------------------------------------------------------------------------------

    def _item(self, row: Sequence[Any]) -> ReviewItem:
        values = dict(zip(COLUMNS, row, strict=True))
        for column in JSON_COLUMNS:
            value = values[column]
            if isinstance(value, str):
                values[column] = json.loads(value)
        values["created_at"] = self._time_value(values["created_at"])
        if values["resolved_at"] is not None:
            values["resolved_at"] = self._time_value(values["resolved_at"])
        return ReviewItem(**values)

    # -- checks -----------------------------------------------------------------------------------

    def _text(self, name: str, value: object, *, optional: bool) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            fix = f"pass the {name} text" + (" or None" if optional else "")
            raise ReviewInputError(f"{name}={_short(value)} is not a string; {fix}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ReviewInputError(
                f"{name} is not valid Unicode text ({exc.reason} at position {exc.start}); "
                "remove the lone surrogate characters"
            ) from None
        self._check_text_storable(name, value)
        return value

    @staticmethod
    def _json_text(name: str, value: object) -> str:
        try:
            return json.dumps(value, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ReviewInputError(
                f"{name} is not JSON-serialisable ({exc}); pass plain str/number/bool/None/list/dict values without NaN"
            ) from None

    def _json_list(self, name: str, value: object) -> str | None:
        """A sequence of mappings (``messages``, ``route``) as JSON text, None for None."""
        if value is None:
            return None
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise ReviewInputError(
                f"{name}={_short(value)} is not a list of dicts; pass e.g. [{{'role': 'user', 'content': '...'}}] "
                "or None"
            )
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                raise ReviewInputError(f"{name}[{i}]={_short(entry)} is not a dict; pass a list of dicts or None")
        text = self._json_text(name, [dict(entry) for entry in value])
        self._check_text_storable(name, text)
        return text

    @staticmethod
    def _check_ids(ids: object) -> builtins.list[str] | None:
        if ids is None:
            return None
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise ReviewInputError(f"ids={_short(ids)} is not a list of ids; pass e.g. ids=['3f2a...'] or None")
        for item_id in ids:
            if not isinstance(item_id, str):
                raise ReviewInputError(f"ids holds {_short(item_id)}, not an id string; pass a list of id strings")
        return builtins.list(ids)

    @staticmethod
    def _check_before(before: object) -> datetime | None:
        if before is None:
            return None
        if not isinstance(before, datetime):
            raise ReviewInputError(
                f"before={_short(before)} is not a datetime; pass e.g. datetime.now(UTC) - timedelta(days=30) or None"
            )
        return _utc(before)

    # -- the ReviewQueue protocol -------------------------------------------------------------------

    def enqueue(
        self,
        question: str,
        answer: str,
        *,
        confidence: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        task: str | None = None,
        model: str | None = None,
        profile: str | None = None,
        reason: str | None = None,
        route: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Store a pending item in its own committed transaction and return its id (uuid4 hex).

        A non-finite ``confidence`` is stored as ``None``. ``metadata`` (a dict), ``messages`` and
        ``route`` (lists of dicts) must be JSON-serialisable (NaN included: it is rejected). Any value
        that cannot be stored raises :class:`ReviewInputError` and nothing is stored. The question and
        answer have no size limit here.
        """
        self._text("question", question, optional=False)
        self._text("answer", answer, optional=False)
        if confidence is not None:
            if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
                raise ReviewInputError(
                    f"confidence={_short(confidence)} is not a number; pass a float in [0, 1] or None"
                )
            confidence = float(confidence) if math.isfinite(confidence) else None
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ReviewInputError(f"metadata={_short(metadata)} is not a dict; pass a dict or None")
        meta = self._json_text("metadata", dict(metadata or {}))
        self._check_text_storable("metadata", meta)
        msgs = self._json_list("messages", messages)
        trail = self._json_list("route", route)
        labels = {
            name: self._text(name, value, optional=True)
            for name, value in (("task", task), ("model", model), ("profile", profile), ("reason", reason))
        }
        item_id = uuid.uuid4().hex
        values: dict[str, Any] = {
            "id": item_id,
            "created_at": self._time_param(datetime.now(UTC)),
            "question": question,
            "answer": answer,
            "confidence": confidence,
            "metadata": self._json_param(meta),
            "messages": self._json_param(msgs),
            "route": self._json_param(trail),
            **labels,
        }
        marks = ", ".join(self._json_placeholder if c in JSON_COLUMNS else "?" for c in _INSERTED)
        sql = f"INSERT INTO review_items ({', '.join(_INSERTED)}, status) VALUES ({marks}, 'pending')"
        with self._transaction("enqueue an item", write=True, single=True) as tx:
            tx.execute(self._sql(sql), [values[c] for c in _INSERTED])
        return item_id

    def get(self, item_id: str) -> ReviewItem:
        """The item with this id; raises :class:`ReviewItemNotFoundError` naming the id."""
        with self._transaction("read an item", write=False, single=True) as tx:
            rows = tx.fetchall(self._sql(f"SELECT {_SELECT} FROM review_items WHERE id = ?"), (item_id,))
        if not rows:
            raise ReviewItemNotFoundError(item_id, self.url)
        return self._item(rows[0])

    def list(self, status: str | None = None, limit: int | None = None) -> builtins.list[ReviewItem]:
        """Items oldest first, only those with ``status`` when given, at most ``limit`` of them."""
        check_status(status)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ReviewInputError(f"limit={limit!r} is not a non-negative integer; pass e.g. limit=20 or None")
        sql = f"SELECT {_SELECT} FROM review_items"
        params: builtins.list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        sql += f" ORDER BY {self._order_by}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._transaction("list items", write=False, single=True) as tx:
            rows = tx.fetchall(self._sql(sql), params)
        return [self._item(row) for row in rows]

    def resolve(
        self,
        item_id: str,
        verdict: str,
        *,
        answer: str | None = None,
        note: str | None = None,
        reviewer: str | None = None,
    ) -> ReviewItem:
        """Give a pending item its verdict (``approved``, ``rejected`` or ``edited`` with ``answer``).

        The resolved answer is the original answer when approved, ``answer`` when edited and ``None``
        when rejected; ``reviewer`` (who gave it) is stored with it. A note or edited answer over
        64 KiB is refused (:class:`ReviewInputError`, nothing stored). Raises
        :class:`ReviewItemNotFoundError` for an unknown id and :class:`ReviewAlreadyResolvedError` when
        the item already has a verdict: the update only applies to a pending row, in one statement, so
        of two concurrent verdicts (threads, processes or machines) exactly one wins.
        """
        check_verdict(verdict, answer, note)
        for name, value in (("edited answer", answer), ("note", note), ("reviewer", reviewer)):
            self._text(name, value, optional=True)
        resolved = "answer" if verdict == "approved" else "?"
        params: builtins.list[Any] = [verdict, note]
        if verdict != "approved":
            params.append(answer if verdict == "edited" else None)
        params += [self._time_param(datetime.now(UTC)), reviewer, item_id]
        sql = (
            f"UPDATE review_items SET status = ?, verdict_note = ?, resolved_answer = {resolved}, resolved_at = ?, "
            f"reviewer = ? WHERE id = ? AND status = 'pending' RETURNING {_SELECT}"
        )
        with self._transaction("resolve an item", write=True) as tx:
            rows = tx.fetchall(self._sql(sql), params)
            if not rows:
                found = tx.fetchall(self._sql("SELECT status FROM review_items WHERE id = ?"), (item_id,))
        if rows:
            return self._item(rows[0])
        if not found:
            raise ReviewItemNotFoundError(item_id, self.url)
        raise ReviewAlreadyResolvedError(item_id, found[0][0])

    # -- the ReviewStore protocol -------------------------------------------------------------------

    def query(self, where: ReviewFilter | None = None, *, offset: int = 0, limit: int = 50) -> ReviewPage:
        """One page of the items matching ``where``, oldest first, and ``total``, how many match in all.

        ``offset`` >= 0 and 1 <= ``limit`` <= 500. The page is read with ``LIMIT``/``OFFSET`` on the
        indexed columns, in the same transaction as the count.
        """
        if where is not None and not isinstance(where, ReviewFilter):
            raise ReviewInputError(f"where={_short(where)} is not a ReviewFilter; pass ReviewFilter(...) or None")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ReviewInputError(f"offset={offset!r} is not a non-negative integer; pass e.g. offset=0")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise ReviewInputError(f"limit={limit!r} is not an integer from 1 to {MAX_PAGE_SIZE}; pass e.g. limit=50")
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if where is not None:
            for column in ("status", "task", "reason"):
                value = getattr(where, column)
                if value is not None:
                    clauses.append(f"{column} = ?")
                    params.append(value)
            if where.min_confidence is not None:
                clauses.append("confidence >= ?")
                params.append(where.min_confidence)
            if where.max_confidence is not None:
                clauses.append("confidence <= ?")
                params.append(where.max_confidence)
        condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._transaction("query items", write=False) as tx:
            total = tx.fetchall(self._sql(f"SELECT COUNT(*) FROM review_items{condition}"), params)[0][0]
            rows = tx.fetchall(
                self._sql(f"SELECT {_SELECT} FROM review_items{condition} ORDER BY {self._order_by} LIMIT ? OFFSET ?"),
                [*params, limit, offset],
            )
        return ReviewPage(items=[self._item(row) for row in rows], total=int(total), offset=offset, limit=limit)

    def facets(self) -> dict[str, builtins.list[str]]:
        """The distinct non-null values of ``task`` and ``reason``: ``{"task": [...], "reason": [...]}``, sorted."""
        out: dict[str, builtins.list[str]] = {}
        with self._transaction("read the facets", write=False) as tx:
            for column in ("task", "reason"):
                rows = tx.fetchall(f"SELECT DISTINCT {column} FROM review_items WHERE {column} IS NOT NULL")
                out[column] = sorted(row[0] for row in rows)
        return out

    def _selection(self, ids: object, before: object) -> tuple[str, builtins.list[Any]]:
        id_list, cutoff = self._check_ids(ids), self._check_before(before)
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if id_list is not None:
            clauses.append(self._ids_clause)
            params.append(self._ids_param(id_list))
        if cutoff is not None:
            clauses.append("created_at < ?")
            params.append(self._time_param(cutoff))
        return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params

    def delete(self, *, ids: Sequence[str] | None = None, before: datetime | None = None) -> int:
        """Delete the items with these ids and/or enqueued before ``before``; returns how many went.

        ``before`` is compared in UTC (a naive datetime is taken as UTC). At least one of ``ids`` and
        ``before`` is required (:class:`ReviewInputError` otherwise); both given means items matching
        both. Pending and resolved items alike are deleted, in one transaction.
        """
        if ids is None and before is None:
            raise ReviewInputError(
                "delete needs ids=[...] and/or before=<datetime>; to delete everything pass before=datetime.now(UTC)"
            )
        condition, params = self._selection(ids, before)
        with self._transaction("delete items", write=True, single=True) as tx:
            return tx.execute(self._sql(f"DELETE FROM review_items{condition}"), params)

    def export(self, *, ids: Sequence[str] | None = None, before: datetime | None = None) -> builtins.list[ReviewItem]:
        """The items :meth:`delete` with the same arguments would delete, oldest first (neither given: all)."""
        condition, params = self._selection(ids, before)
        with self._transaction("export items", write=False, single=True) as tx:
            rows = tx.fetchall(
                self._sql(f"SELECT {_SELECT} FROM review_items{condition} ORDER BY {self._order_by}"), params
            )
        return [self._item(row) for row in rows]
