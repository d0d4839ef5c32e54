"""Opening a schema-version-1 SQLite review file migrates it to version 2 in place, keeping every item."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from gradguard.review import ReviewFilter, ReviewStoreError, SQLiteReviewQueue

#: The version-1 DDL, verbatim from gradguard before the migration (``git show <v1>:src/gradguard/review/sqlite.py``).
V1_SCHEMA = """
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

V1_ROWS = [
    ("a" * 32, "2025-01-01T10:00:00.000001+00:00", "Q1?", "A1", 0.2, '{"app": "faq"}', "pending", None, None, None),
    (
        "b" * 32,
        "2025-01-02T10:00:00.000000+00:00",
        "Q2?",
        "A2",
        None,
        "{}",
        "approved",
        "ok",
        "A2",
        "2025-01-03T08:00:00.000000+00:00",
    ),
    (
        "c" * 32,
        "2025-01-04T10:00:00.000000+00:00",
        "Q3?",
        "A3",
        0.9,
        '{"score": {"tokens": [1, 2]}}',
        "edited",
        None,
        "A3 fixed",
        "2025-01-05T08:00:00.000000+00:00",
    ),
]


def make_v1_file(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(V1_SCHEMA)
        conn.executemany("INSERT INTO review_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", V1_ROWS)
        conn.execute("PRAGMA user_version=1")
    finally:
        conn.close()


def columns_and_version(path: Path) -> tuple[list[str], int, set[str]]:
    conn = sqlite3.connect(path)
    try:
        cols = [row[1] for row in conn.execute("PRAGMA table_info(review_items)")]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(review_items)")}
    finally:
        conn.close()
    return cols, version, indexes


def test_a_v1_file_is_migrated_and_keeps_every_item(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite3"
    make_v1_file(db)
    with SQLiteReviewQueue(db) as q:
        items = q.list()
        assert [i.id for i in items] == [row[0] for row in V1_ROWS]
        for item, row in zip(items, V1_ROWS, strict=True):
            assert (item.question, item.answer, item.confidence, item.status) == (row[2], row[3], row[4], row[6])
            assert item.metadata == json.loads(row[5])
            assert (item.verdict_note, item.resolved_answer) == (row[7], row[8])
            assert item.created_at.isoformat(timespec="microseconds") == row[1]
            assert (item.messages, item.task, item.model, item.profile, item.reason, item.route, item.reviewer) == (
                (None,) * 7
            )
        # the old items work with the new features
        resolved = q.resolve(V1_ROWS[0][0], "rejected", reviewer="carol")
        assert (resolved.status, resolved.reviewer) == ("rejected", "carol")
        new_id = q.enqueue("Q4?", "A4", task="qa", reason="low_confidence", messages=[{"role": "user", "content": "x"}])
        assert q.query(ReviewFilter(task="qa")).items[0].id == new_id
        assert q.facets() == {"task": ["qa"], "reason": ["low_confidence"]}
        assert q.query().total == 4
    cols, version, indexes = columns_and_version(db)
    assert version == 2
    assert cols[:10] == [
        "id",
        "created_at",
        "question",
        "answer",
        "confidence",
        "metadata",
        "status",
        "verdict_note",
        "resolved_answer",
        "resolved_at",
    ]
    assert set(cols[10:]) == {"messages", "task", "model", "profile", "reason", "route", "reviewer"}
    assert {"review_items_status", "review_items_task", "review_items_reason"} <= indexes


def test_reopening_a_migrated_or_new_file_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite3"
    make_v1_file(db)
    SQLiteReviewQueue(db).close()
    before = columns_and_version(db)
    with SQLiteReviewQueue(db) as q:
        assert len(q.list()) == 3
    assert columns_and_version(db) == before
    fresh = tmp_path / "new.sqlite3"
    SQLiteReviewQueue(fresh).close()
    cols, version, _ = columns_and_version(fresh)
    assert version == 2 and set(cols) == set(before[0])


def test_concurrent_first_opens_migrate_once(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite3"
    make_v1_file(db)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            with SQLiteReviewQueue(db) as q:
                assert len(q.list()) == 3
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert columns_and_version(db)[1] == 2


def test_a_failed_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "v1.sqlite3"
    make_v1_file(db)
    import gradguard.review.sqlite as module

    monkeypatch.setattr(module, "_INDEXES", (*module._INDEXES, "CREATE INDEX broken ON no_such_table (x)"))
    with pytest.raises(ReviewStoreError, match="no such table"):
        SQLiteReviewQueue(db)
    cols, version, _ = columns_and_version(db)
    assert version == 1 and len(cols) == 10  # the ALTER TABLEs were rolled back with the rest
    monkeypatch.undo()
    with SQLiteReviewQueue(db) as q:
        assert len(q.list()) == 3


def test_a_newer_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "v9.sqlite3"
    SQLiteReviewQueue(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=9")
    conn.close()
    with pytest.raises(ReviewStoreError, match="schema version 9, newer than this gradguard understands"):
        SQLiteReviewQueue(db)
