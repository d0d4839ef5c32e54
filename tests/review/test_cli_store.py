"""``gradguard review`` on either store: --db URLs, the new fields, resolve --reviewer, delete and export."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gradguard.review import cli, open_review_queue
from gradguard.review.sql_store import SQLReviewStore


def _age(store_url: str, item_id: str, days: float) -> None:
    """Move an item's creation time ``days`` into the past (there is no API for that: it is the test's doing)."""
    with open_review_queue(store_url) as store:
        assert isinstance(store, SQLReviewStore)
        with store._transaction("age an item", write=True) as tx:
            when = store._time_param(datetime.now(UTC) - timedelta(days=days))
            tx.execute(store._sql("UPDATE review_items SET created_at = ? WHERE id = ?"), (when, item_id))


def test_list_show_resolve_with_the_new_fields(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_review_queue(store_url) as q:
        first = q.enqueue(
            "Capital of France?",
            "Lyon",
            confidence=0.3,
            task="qa",
            reason="low_confidence",
            model="tiny",
            profile="tiny-p",
            messages=[{"role": "user", "content": "Capital?"}],
            route=[{"tier": "accept", "passed": False}],
        )
        second = q.enqueue("2+2?", "5")
    capsys.readouterr()
    assert cli.main(["list", "--db", store_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(first) and "qa" in lines[0] and "low_confidence" in lines[0]
    assert "Capital of France?" in lines[0] and lines[1].startswith(second)

    assert cli.main(["show", first, "--db", store_url]) == 0
    shown = capsys.readouterr().out
    assert "reason:      low_confidence" in shown and "task:        qa" in shown
    assert "tiny (profile tiny-p)" in shown and "[user] Capital?" in shown and '"tier": "accept"' in shown

    monkeypatch.setenv("USER", "envuser")  # the default reviewer is read when the parser is built
    assert cli.main(["resolve", first, "--verdict", "approved", "--db", store_url]) == 0
    assert f"resolved {first}: approved (by envuser)" in capsys.readouterr().out
    assert cli.main(["resolve", second, "--verdict", "rejected", "--reviewer", "dana", "--db", store_url]) == 0
    capsys.readouterr()
    assert cli.main(["show", second, "--db", store_url]) == 0
    assert "reviewer:    dana" in capsys.readouterr().out
    assert cli.main(["list", "--db", store_url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(i["reviewer"], i["task"]) for i in listed] == [("envuser", "qa"), ("dana", None)]


def test_env_variable_may_hold_a_url(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_url if "://" in store_url else f"sqlite:///{store_url}"
    with open_review_queue(url) as q:
        item_id = q.enqueue("q", "a")
    monkeypatch.setenv("GRADGUARD_REVIEW_DB", url)
    assert cli.main(["list", "--json"]) == 0
    assert [i["id"] for i in json.loads(capsys.readouterr().out)] == [item_id]


def test_delete_needs_a_selector_and_yes(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_review_queue(store_url) as q:
        old, keep, new = q.enqueue("old", "a"), q.enqueue("old too", "a"), q.enqueue("new", "a")
    _age(store_url, old, 40)
    _age(store_url, keep, 10)
    assert cli.main(["delete", "--db", store_url]) == 2
    assert "--older-than" in capsys.readouterr().err
    assert cli.main(["delete", "--older-than", "30", "--db", store_url]) == 1
    err = capsys.readouterr().err
    assert "1 item(s) would be deleted" in err and "add --yes" in err
    with open_review_queue(store_url) as q:
        assert len(q.list()) == 3
    assert cli.main(["delete", "--older-than", "30", "--yes", "--db", store_url]) == 0
    assert "deleted 1 item(s)" in capsys.readouterr().out
    assert cli.main(["delete", "--id", new, "--id", "nope", "--yes", "--db", store_url]) == 0
    assert "deleted 1 item(s)" in capsys.readouterr().out
    with open_review_queue(store_url) as q:
        assert [i.id for i in q.list()] == [keep]
    with pytest.raises(SystemExit):
        cli.main(["delete", "--older-than", "-1", "--db", store_url])


def test_export_writes_json_lines(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open_review_queue(store_url) as q:
        a = q.enqueue("q1", "a1", task="qa", metadata={"score": {"tokens": ["a", "b"]}})
        time.sleep(0.002)
        b = q.enqueue("q2", "a2")
        q.resolve(b, "edited", answer="a2 fixed", reviewer="eve")
    _age(store_url, a, 3)
    capsys.readouterr()
    assert cli.main(["export", "--db", store_url]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["id"] for r in rows] == [a, b] and "exported 2 item(s)" in captured.err
    assert rows[0]["metadata"] == {"score": {"tokens": ["a", "b"]}} and rows[1]["reviewer"] == "eve"
    out = tmp_path / "old.jsonl"
    assert cli.main(["export", "--older-than", "1", "--out", str(out), "--db", store_url]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [a]
    assert cli.main(["export", "--id", b, "--db", store_url]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [b]
    assert cli.main(["export", "--out", str(tmp_path / "no" / "such" / "dir.jsonl"), "--db", store_url]) == 1


def test_a_bad_url_is_reported_without_its_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--db", "mysql://root:hunter2@localhost/db"]) == 1
    err = capsys.readouterr().err
    assert "hunter2" not in err and "mysql://root:***@localhost/db" in err
