"""The SQLite review queue, the human-review target and the ``review`` CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import UTC
from pathlib import Path

import pytest

import gradguard.review
from gradguard.errors import GradguardError
from gradguard.result import ScoreResult, Timings
from gradguard.review import (
    ReviewAlreadyResolvedError,
    ReviewInputError,
    ReviewItemNotFoundError,
    ReviewQueue,
    ReviewStoreError,
    SQLiteReviewQueue,
    cli,
    default_review_db_path,
    human_review_target,
)
from gradguard.routing import EscalationResult

SRC = Path(gradguard.review.__file__).resolve().parents[2]


def make_result(confidence: float | None = 0.4) -> ScoreResult:
    """A hand-built, scored ScoreResult."""
    return ScoreResult(
        hybridgrad=0.05, semgrad=0.05, paragrad=0.05, exgrad=0.05, alpha=0.6, mean_entropy=0.5, g_nll=1.2,
        mean_nll=0.4, max_nll=0.9, n_response_tokens=3, spt_offset=-3, spt_position=17, layer_span=(2, 4),
        n_prompt_tokens=20, timings=Timings(generate_s=None, score_s=0.01), response="Lyon", confidence=confidence,
        model="tiny",
    )


@pytest.fixture
def queue(tmp_path: Path):
    with SQLiteReviewQueue(tmp_path / "review.sqlite3") as q:
        yield q


# -- CRUD ----------------------------------------------------------------------------------


def test_enqueue_and_get_round_trip(queue: SQLiteReviewQueue) -> None:
    item_id = queue.enqueue("Q?", "A.", confidence=0.3, metadata={"app": "faq", "n": [1, 2]})
    assert uuid.UUID(hex=item_id).version == 4 and item_id == uuid.UUID(hex=item_id).hex
    item = queue.get(item_id)
    assert (item.id, item.question, item.answer, item.confidence) == (item_id, "Q?", "A.", 0.3)
    assert item.metadata == {"app": "faq", "n": [1, 2]}
    assert item.status == "pending" and item.pending
    assert item.created_at.tzinfo is not None and item.created_at.utcoffset() == UTC.utcoffset(None)
    assert (item.verdict_note, item.resolved_answer, item.resolved_at) == (None, None, None)


def test_non_finite_confidence_is_stored_as_none(queue: SQLiteReviewQueue) -> None:
    assert queue.get(queue.enqueue("q", "a", confidence=math.nan)).confidence is None
    assert queue.get(queue.enqueue("q", "a")).confidence is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"metadata": {"x": object()}}, "JSON"), ({"metadata": {"x": math.nan}}, "NaN"),
     ({"confidence": "high"}, "confidence='high'")],
)
def test_enqueue_rejects_unstorable_input(queue: SQLiteReviewQueue, kwargs: dict, match: str) -> None:
    with pytest.raises(ReviewInputError, match=match):
        queue.enqueue("q", "a", **kwargs)
    assert queue.list() == []


def test_list_orders_filters_and_limits(queue: SQLiteReviewQueue) -> None:
    ids = [queue.enqueue(f"q{i}", f"a{i}") for i in range(5)]
    assert [i.id for i in queue.list()] == ids
    queue.resolve(ids[1], "approved")
    queue.resolve(ids[3], "rejected")
    assert [i.id for i in queue.list(status="pending")] == [ids[0], ids[2], ids[4]]
    assert [i.id for i in queue.list(status="rejected")] == [ids[3]]
    assert [i.id for i in queue.list(limit=2)] == ids[:2]
    assert queue.list(status="edited") == []
    with pytest.raises(ReviewInputError, match="status='done'"):
        queue.list(status="done")
    with pytest.raises(ReviewInputError, match="limit=-1"):
        queue.list(limit=-1)


def test_resolve_sets_the_verdict(queue: SQLiteReviewQueue) -> None:
    a, r, e = (queue.enqueue("q", f"answer {i}") for i in range(3))
    approved = queue.resolve(a, "approved", note="fine")
    assert (approved.status, approved.resolved_answer, approved.verdict_note) == ("approved", "answer 0", "fine")
    assert approved.resolved_at is not None and approved.resolved_at >= approved.created_at
    assert queue.resolve(r, "rejected").resolved_answer is None
    edited = queue.resolve(e, "edited", answer="Paris")
    assert (edited.status, edited.resolved_answer, edited.answer) == ("edited", "Paris", "answer 2")
    assert queue.get(e) == edited


def test_resolving_twice_is_an_error(queue: SQLiteReviewQueue) -> None:
    item_id = queue.enqueue("q", "a")
    queue.resolve(item_id, "approved")
    with pytest.raises(ReviewAlreadyResolvedError, match=f"{item_id}.*already resolved \\(approved\\)"):
        queue.resolve(item_id, "rejected")
    assert queue.get(item_id).status == "approved"


def test_unknown_id_names_the_id(queue: SQLiteReviewQueue) -> None:
    with pytest.raises(ReviewItemNotFoundError, match="deadbeef") as info:
        queue.get("deadbeef")
    assert isinstance(info.value, GradguardError) and info.value.item_id == "deadbeef"
    with pytest.raises(ReviewItemNotFoundError, match="deadbeef"):
        queue.resolve("deadbeef", "approved")


@pytest.mark.parametrize(
    ("verdict", "answer", "match"),
    [("ok", None, "verdict='ok'"), ("edited", None, "needs the corrected answer"), ("approved", "x", "only used")],
)
def test_bad_verdicts_are_rejected(queue: SQLiteReviewQueue, verdict: str, answer: str | None, match: str) -> None:
    item_id = queue.enqueue("q", "a")
    with pytest.raises(ReviewInputError, match=match):
        queue.resolve(item_id, verdict, answer=answer)
    assert queue.get(item_id).status == "pending"


def test_queue_persists_creates_its_folder_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "review.sqlite3"
    with SQLiteReviewQueue(path) as q:
        item_id = q.enqueue("q", "a", confidence=0.2)
    assert isinstance(q, ReviewQueue)
    with SQLiteReviewQueue(path) as q2:
        assert q2.get(item_id).confidence == 0.2
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    with pytest.raises(ReviewStoreError, match="closed"):
        q.get(item_id)


def test_unopenable_path_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ReviewStoreError, match="GRADGUARD_REVIEW_DB"):
        SQLiteReviewQueue(blocker / "review.sqlite3")


# -- concurrency and durability ------------------------------------------------------------


def test_threads_enqueue_concurrently(queue: SQLiteReviewQueue) -> None:
    n_threads, per_thread = 6, 20
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            mine = [queue.enqueue(f"q{t}-{i}", "a") for i in range(per_thread)]
            with lock:
                ids.extend(mine)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(set(ids)) == n_threads * per_thread
    assert {i.id for i in queue.list()} == set(ids)


def test_concurrent_verdicts_on_one_item_only_one_wins(queue: SQLiteReviewQueue) -> None:
    item_id = queue.enqueue("q", "a")
    results: list[str] = []

    def worker(verdict: str) -> None:
        try:
            queue.resolve(item_id, verdict)
            results.append(verdict)
        except ReviewAlreadyResolvedError:
            results.append("refused")

    threads = [threading.Thread(target=worker, args=(v,)) for v in ("approved", "rejected") * 4]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results.count("refused") == 7
    winner = next(r for r in results if r != "refused")
    assert queue.get(item_id).status == winner


_CHILD = r"""
import sys, time
from gradguard.review import SQLiteReviewQueue
q = SQLiteReviewQueue(sys.argv[1])
for i in range(int(sys.argv[2])):
    print(q.enqueue(f"question {i}", f"answer {i}", confidence=0.1), flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_enqueued_items_survive_a_killed_writer(tmp_path: Path) -> None:
    db, n = tmp_path / "review.sqlite3", 15
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db), str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )
    watchdog = threading.Timer(60, proc.kill)  # never hang the suite if the child stalls
    watchdog.start()
    try:
        assert proc.stdout is not None
        ids = [proc.stdout.readline().strip() for _ in range(n)]
        os.kill(proc.pid, signal.SIGKILL)  # right after the last enqueue returned; no close, no checkpoint
        proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert all(len(i) == 32 for i in ids), ids
    assert Path(str(db) + "-wal").exists()  # the items were only in the WAL when the writer died
    with SQLiteReviewQueue(db) as q:
        items = {i.id: i for i in q.list()}
    assert set(items) == set(ids)
    assert items[ids[-1]].question == f"question {n - 1}"


# -- default path ----------------------------------------------------------------------------


def test_default_path_honours_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRADGUARD_REVIEW_DB", str(tmp_path / "custom.db"))
    assert default_review_db_path() == tmp_path / "custom.db"


def test_default_path_follows_the_gradguard_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GRADGUARD_REVIEW_DB", raising=False)
    monkeypatch.delenv("GRADGUARD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_review_db_path() == tmp_path / "xdg" / "gradguard" / "review.sqlite3"
    monkeypatch.setenv("GRADGUARD_CACHE", str(tmp_path / "gg"))
    assert default_review_db_path() == tmp_path / "gg" / "review.sqlite3"
    monkeypatch.delenv("GRADGUARD_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_review_db_path() == tmp_path / "home" / ".cache" / "gradguard" / "review.sqlite3"


# -- the escalation target -----------------------------------------------------------------


def test_human_review_target_enqueues_and_returns_pending_id(queue: SQLiteReviewQueue) -> None:
    target = human_review_target(queue, placeholder="Pending review.", metadata={"app": "faq"})
    out = target("Q?", "Lyon", make_result(0.4))
    assert isinstance(out, EscalationResult)
    assert (out.answer, out.result) == ("Pending review.", None) and out.pending_review_id is not None
    item = queue.get(out.pending_review_id)
    assert (item.question, item.answer, item.confidence) == ("Q?", "Lyon", 0.4)
    assert item.metadata["app"] == "faq" and item.metadata["score"]["model"] == "tiny"


def test_human_review_target_with_no_result(queue: SQLiteReviewQueue) -> None:
    out = human_review_target(queue)("Q?", "A", None)
    item = queue.get(out.pending_review_id or "")
    assert item.confidence is None and item.metadata == {"score": None}


def test_human_review_target_checks_its_queue() -> None:
    with pytest.raises(GradguardError, match="not a ReviewQueue"):
        human_review_target(object())  # type: ignore[arg-type]


# -- CLI -------------------------------------------------------------------------------------


def test_cli_list_show_resolve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "review.sqlite3")
    with SQLiteReviewQueue(db) as q:
        first, second = q.enqueue("Capital of France?", "Lyon", confidence=0.3), q.enqueue("2+2?", "5")
    capsys.readouterr()

    assert cli.main(["list", "--db", db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [i["id"] for i in listed] == [first, second] and listed[0]["confidence"] == 0.3

    assert cli.main(["list", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(first) and "Capital of France?" in lines[0]

    assert cli.main(["show", first, "--db", db]) == 0
    shown = capsys.readouterr().out
    assert "Lyon" in shown and "pending" in shown

    assert cli.main(["resolve", first, "--verdict", "edited", "--answer", "Paris", "--note", "fixed", "--db", db]) == 0
    assert f"resolved {first}: edited" in capsys.readouterr().out
    assert cli.main(["list", "--db", db, "--status", "pending", "--json"]) == 0
    assert [i["id"] for i in json.loads(capsys.readouterr().out)] == [second]
    assert cli.main(["show", first, "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resolved_answer"] == "Paris"


def test_cli_errors_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "review.sqlite3")
    with SQLiteReviewQueue(db) as q:
        item_id = q.enqueue("q", "a")
    assert cli.main(["show", "nope", "--db", db]) == 1
    assert "'nope'" in capsys.readouterr().err
    assert cli.main(["resolve", item_id, "--verdict", "edited", "--db", db]) == 1
    assert "--answer" in capsys.readouterr().err
    assert cli.main(["resolve", item_id, "--verdict", "approved", "--db", db]) == 0
    assert cli.main(["resolve", item_id, "--verdict", "approved", "--db", db]) == 1
    assert "already resolved" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["resolve", item_id, "--verdict", "maybe", "--db", db])


def test_cli_register_wires_into_a_top_level_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "env.sqlite3"
    monkeypatch.setenv("GRADGUARD_REVIEW_DB", str(db))
    with SQLiteReviewQueue(db) as q:
        item_id = q.enqueue("q", "a")
    parser = argparse.ArgumentParser(prog="gradguard")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["review", "list", "--json"])
    assert args.func(args) == 0
    assert [i["id"] for i in json.loads(capsys.readouterr().out)] == [item_id]
    bare = parser.parse_args(["review"])
    assert bare.func(bare) == 2
