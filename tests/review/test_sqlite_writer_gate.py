"""The SQLite store's writer gate: writers queue on a file lock before SQLite's write lock; readers never wait."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradguard.review import ReviewStoreError, SQLiteReviewQueue

fcntl = pytest.importorskip("fcntl")


def test_a_held_gate_times_out_writers_but_not_readers(tmp_path: Path) -> None:
    db = tmp_path / "review.sqlite3"
    with SQLiteReviewQueue(db, timeout_s=0.2) as q:
        first = q.enqueue("q", "a")
        lock_path = Path(str(db) + "-writer.lock")
        assert lock_path.exists()
        fd = os.open(lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another writer holds the gate
            with pytest.raises(ReviewStoreError, match="stayed locked by another writer for 0.2 s"):
                q.enqueue("q2", "a2")
            with pytest.raises(ReviewStoreError, match="stayed locked"):
                q.resolve(first, "approved")
            assert [i.id for i in q.list()] == [first] and q.get(first).pending  # reads go on
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        second = q.enqueue("q2", "a2")
        assert q.resolve(first, "approved").status == "approved"
        assert [i.id for i in q.list()] == [first, second]
