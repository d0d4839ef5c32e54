"""The ReviewStore contract, run on both stores (SQLite and PostgreSQL): CRUD, filters, pages, retention."""

from __future__ import annotations

import math
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gradguard.errors import GradguardError
from gradguard.review import (
    ReviewAlreadyResolvedError,
    ReviewFilter,
    ReviewInputError,
    ReviewItemNotFoundError,
    ReviewQueue,
    ReviewStore,
    ReviewStoreError,
    open_review_queue,
)
from gradguard.review.queue import MAX_TEXT_BYTES
from gradguard.review.sql_store import SQLReviewStore

MESSAGES = [
    {"role": "system", "content": "Answer from the context.\n\nContext: Paris is the capital of France."},
    {"role": "user", "content": "Capital of France? ünïcødé ✓"},
]
ROUTE = [{"tier": "accept", "passed": False, "confidence": 0.31}, {"tier": "human", "action": "escalate"}]


def full_item(store: SQLReviewStore, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "confidence": 0.31,
        "metadata": {"app": "faq", "score": {"tokens": ["Par", "is"], "nll": [0.1, 0.25]}},
        "messages": MESSAGES,
        "task": "qa",
        "model": "qwen2.5-0.5b",
        "profile": "qwen2.5",
        "reason": "low_confidence",
        "route": ROUTE,
    }
    kwargs.update(overrides)
    return store.enqueue("Capital of France?", "Lyon", **kwargs)


# -- CRUD ----------------------------------------------------------------------------------------


def test_store_satisfies_the_protocols_and_masks_nothing_it_need_not(store: SQLReviewStore) -> None:
    assert isinstance(store, ReviewStore) and isinstance(store, ReviewQueue)
    assert "***" in store.url or store.url.startswith("sqlite:///")
    assert store.url in repr(store) or type(store).__name__ in repr(store)


def test_enqueue_and_get_round_trip_every_field(store: SQLReviewStore) -> None:
    item_id = full_item(store)
    assert uuid.UUID(hex=item_id).version == 4 and item_id == uuid.UUID(hex=item_id).hex
    item = store.get(item_id)
    assert (item.id, item.question, item.answer, item.confidence) == (item_id, "Capital of France?", "Lyon", 0.31)
    assert item.metadata == {"app": "faq", "score": {"tokens": ["Par", "is"], "nll": [0.1, 0.25]}}
    assert item.messages == MESSAGES and item.route == ROUTE
    assert (item.task, item.model, item.profile, item.reason) == ("qa", "qwen2.5-0.5b", "qwen2.5", "low_confidence")
    assert item.status == "pending" and item.pending
    assert item.created_at.tzinfo is not None and item.created_at.utcoffset() == timedelta(0)
    assert abs(item.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert (item.verdict_note, item.resolved_answer, item.resolved_at, item.reviewer) == (None, None, None, None)


def test_enqueue_defaults(store: SQLReviewStore) -> None:
    item = store.get(store.enqueue("q", "a"))
    assert item.metadata == {} and item.confidence is None
    assert (item.messages, item.task, item.model, item.profile, item.reason, item.route) == (None,) * 6


def test_non_finite_confidence_is_stored_as_none(store: SQLReviewStore) -> None:
    for value in (math.nan, math.inf, -math.inf):
        assert store.get(store.enqueue("q", "a", confidence=value)).confidence is None
    assert store.get(store.enqueue("q", "a", confidence=1)).confidence == 1.0


def test_question_and_answer_have_no_size_limit(store: SQLReviewStore) -> None:
    big = "x" * (MAX_TEXT_BYTES * 3)
    item = store.get(store.enqueue(big, big))
    assert item.question == big and item.answer == big


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metadata": {"x": object()}}, "metadata is not JSON"),
        ({"metadata": {"x": math.nan}}, "NaN"),
        ({"metadata": ["not", "a", "dict"]}, r"metadata=\['not'.*is not a dict"),
        ({"confidence": "high"}, "confidence='high' is not a number"),
        ({"confidence": True}, "confidence=True"),
        ({"messages": "hello"}, r"messages='hello' is not a list of dicts; pass e.g."),
        ({"messages": [{"role": "user"}, "oops"]}, r"messages\[1\]='oops' is not a dict"),
        ({"messages": [{"content": math.inf}]}, "messages is not JSON"),
        ({"route": {"tier": "human"}}, "route=.* is not a list of dicts"),
        ({"task": 3}, "task=3 is not a string; pass the task text or None"),
        ({"model": b"m"}, "model=b'm' is not a string"),
        ({"reason": ["low"]}, "reason="),
        ({"profile": 1.5}, "profile=1.5"),
    ],
)
def test_enqueue_rejects_unstorable_input(store: SQLReviewStore, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ReviewInputError, match=match):
        store.enqueue("q", "a", **kwargs)
    assert store.list() == []


@pytest.mark.parametrize(
    ("question", "answer", "match"),
    [(None, "a", "question=None"), ("q", 42, "answer=42"), ("q\ud800", "a", "lone surrogate")],
)
def test_enqueue_rejects_bad_texts(store: SQLReviewStore, question: Any, answer: Any, match: str) -> None:
    with pytest.raises(ReviewInputError, match=match):
        store.enqueue(question, answer)
    assert store.list() == []


def test_long_values_are_shortened_in_messages(store: SQLReviewStore) -> None:
    with pytest.raises(ReviewInputError) as info:
        store.enqueue("q", "a", messages="x" * 10_000)  # type: ignore[arg-type]
    assert len(str(info.value)) < 300


def test_list_orders_filters_and_limits(store: SQLReviewStore) -> None:
    ids = [store.enqueue(f"q{i}", f"a{i}") for i in range(5)]
    assert [i.id for i in store.list()] == ids
    store.resolve(ids[1], "approved")
    store.resolve(ids[3], "rejected")
    assert [i.id for i in store.list(status="pending")] == [ids[0], ids[2], ids[4]]
    assert [i.id for i in store.list(status="rejected")] == [ids[3]]
    assert [i.id for i in store.list(limit=2)] == ids[:2]
    assert store.list(status="edited") == []
    with pytest.raises(ReviewInputError, match="status='done'"):
        store.list(status="done")
    with pytest.raises(ReviewInputError, match="limit=-1"):
        store.list(limit=-1)


def test_resolve_sets_the_verdict_and_reviewer(store: SQLReviewStore) -> None:
    a, r, e = (store.enqueue("q", f"answer {i}") for i in range(3))
    approved = store.resolve(a, "approved", note="fine", reviewer="alice")
    assert (approved.status, approved.resolved_answer, approved.verdict_note) == ("approved", "answer 0", "fine")
    assert approved.reviewer == "alice"
    assert approved.resolved_at is not None and approved.resolved_at >= approved.created_at
    rejected = store.resolve(r, "rejected")
    assert rejected.resolved_answer is None and rejected.reviewer is None
    edited = store.resolve(e, "edited", answer="Paris", reviewer="bob")
    assert (edited.status, edited.resolved_answer, edited.answer, edited.reviewer) == (
        "edited",
        "Paris",
        "answer 2",
        "bob",
    )
    assert store.get(e) == edited and store.get(a) == approved


def test_resolving_twice_is_an_error(store: SQLReviewStore) -> None:
    item_id = store.enqueue("q", "a")
    store.resolve(item_id, "approved", reviewer="alice")
    with pytest.raises(ReviewAlreadyResolvedError, match=f"{item_id}.*already resolved \\(approved\\)"):
        store.resolve(item_id, "rejected", reviewer="bob")
    item = store.get(item_id)
    assert (item.status, item.reviewer) == ("approved", "alice")


def test_unknown_id_names_the_id(store: SQLReviewStore) -> None:
    with pytest.raises(ReviewItemNotFoundError, match="deadbeef") as info:
        store.get("deadbeef")
    assert isinstance(info.value, GradguardError) and info.value.item_id == "deadbeef"
    with pytest.raises(ReviewItemNotFoundError, match="deadbeef"):
        store.resolve("deadbeef", "approved")


@pytest.mark.parametrize(
    ("verdict", "answer", "match"),
    [("ok", None, "verdict='ok'"), ("edited", None, "needs the corrected answer"), ("approved", "x", "only used")],
)
def test_bad_verdicts_are_rejected(store: SQLReviewStore, verdict: str, answer: str | None, match: str) -> None:
    item_id = store.enqueue("q", "a")
    with pytest.raises(ReviewInputError, match=match):
        store.resolve(item_id, verdict, answer=answer)
    assert store.get(item_id).status == "pending"


@pytest.mark.parametrize("field", ["note", "answer"])
def test_a_note_or_edited_answer_over_64_kib_is_refused_whole(store: SQLReviewStore, field: str) -> None:
    item_id = store.enqueue("q", "a")
    too_long = "é" * (MAX_TEXT_BYTES // 2 + 1)  # 2 bytes each in UTF-8: just over the limit
    kwargs = {"note": too_long} if field == "note" else {"answer": too_long}
    with pytest.raises(ReviewInputError, match="over the limit of 65536 bytes"):
        store.resolve(item_id, "edited" if field == "answer" else "approved", **kwargs)
    item = store.get(item_id)
    assert (item.status, item.verdict_note, item.resolved_answer, item.resolved_at) == ("pending", None, None, None)
    just_fits = "é" * (MAX_TEXT_BYTES // 2)
    done = store.resolve(item_id, "edited", answer=just_fits, note=just_fits)
    assert done.resolved_answer == just_fits and done.verdict_note == just_fits


def test_reviewer_must_be_text(store: SQLReviewStore) -> None:
    item_id = store.enqueue("q", "a")
    with pytest.raises(ReviewInputError, match="reviewer=7"):
        store.resolve(item_id, "approved", reviewer=7)  # type: ignore[arg-type]
    assert store.get(item_id).pending


def test_a_closed_store_refuses_work(store_url: str) -> None:
    store = open_review_queue(store_url)
    item_id = store.enqueue("q", "a")
    store.close()
    with pytest.raises(ReviewStoreError, match="closed"):
        store.get(item_id)
    store.close()  # closing twice is fine
    with open_review_queue(store_url) as again:
        assert again.get(item_id).question == "q"


# -- query, pages, facets -------------------------------------------------------------------------


def _populate(store: SQLReviewStore) -> list[str]:
    specs = [
        ("qa", "low_confidence", 0.1),
        ("qa", "out_of_domain", 0.5),
        ("summarise", "low_confidence", None),
        (None, "unscored", 0.9),
        ("qa", None, 0.3),
        ("tools", "tool_call", 0.7),
    ]
    return [store.enqueue(f"q{i}", f"a{i}", task=t, reason=r, confidence=c) for i, (t, r, c) in enumerate(specs)]


def test_query_filters(store: SQLReviewStore) -> None:
    ids = _populate(store)
    store.resolve(ids[1], "approved")

    def q(**kw: Any) -> list[str]:
        return [i.id for i in store.query(ReviewFilter(**kw)).items]

    assert [i.id for i in store.query().items] == ids
    assert q() == ids
    assert q(task="qa") == [ids[0], ids[1], ids[4]]
    assert q(reason="low_confidence") == [ids[0], ids[2]]
    assert q(status="pending", task="qa") == [ids[0], ids[4]]
    assert q(status="approved") == [ids[1]]
    assert q(min_confidence=0.5) == [ids[1], ids[3], ids[5]]
    assert q(max_confidence=0.3) == [ids[0], ids[4]]
    assert q(min_confidence=0.2, max_confidence=0.6, task="qa") == [ids[1], ids[4]]
    assert q(task="nope") == []
    page = store.query(ReviewFilter(task="qa"))
    assert (page.total, page.offset, page.limit) == (3, 0, 50)


def test_query_pages(store: SQLReviewStore) -> None:
    ids = [store.enqueue(f"q{i}", "a", task="even" if i % 2 == 0 else "odd") for i in range(12)]
    first = store.query(limit=5)
    assert [i.id for i in first.items] == ids[:5] and (first.total, first.offset, first.limit) == (12, 0, 5)
    second = store.query(offset=5, limit=5)
    assert [i.id for i in second.items] == ids[5:10] and second.total == 12
    last = store.query(offset=10, limit=5)
    assert [i.id for i in last.items] == ids[10:] and last.total == 12
    past = store.query(offset=50, limit=5)
    assert past.items == [] and past.total == 12
    evens = store.query(ReviewFilter(task="even"), offset=2, limit=2)
    assert [i.id for i in evens.items] == [ids[4], ids[6]] and evens.total == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"offset": -1}, "offset=-1"),
        ({"limit": 0}, "limit=0 is not an integer from 1 to 500"),
        ({"limit": 501}, "limit=501"),
        ({"limit": True}, "limit=True"),
        ({"offset": 1.5}, "offset=1.5"),
        ({"where": {"task": "qa"}}, "is not a ReviewFilter"),
    ],
)
def test_query_checks_its_arguments(store: SQLReviewStore, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ReviewInputError, match=match):
        store.query(**kwargs)


def test_facets(store: SQLReviewStore) -> None:
    assert store.facets() == {"task": [], "reason": []}
    _populate(store)
    store.enqueue("q", "a", task="Zeta", reason="custom")
    assert store.facets() == {
        "task": sorted(["qa", "summarise", "tools", "Zeta"]),
        "reason": ["custom", "low_confidence", "out_of_domain", "tool_call", "unscored"],
    }


# -- retention: delete and export -------------------------------------------------------------------


def _aged(store: SQLReviewStore, n_old: int, n_new: int) -> tuple[list[str], datetime, list[str]]:
    old = [store.enqueue(f"old {i}", "a") for i in range(n_old)]
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    time.sleep(0.01)
    new = [store.enqueue(f"new {i}", "a") for i in range(n_new)]
    return old, cutoff, new


def test_delete_and_export_by_age(store: SQLReviewStore) -> None:
    old, cutoff, new = _aged(store, 3, 2)
    store.resolve(old[0], "approved")
    assert [i.id for i in store.export(before=cutoff)] == old
    assert [i.id for i in store.export()] == old + new
    naive = cutoff.replace(tzinfo=None)  # a naive datetime is UTC
    assert [i.id for i in store.export(before=naive)] == old
    assert store.delete(before=cutoff) == 3
    assert [i.id for i in store.list()] == new
    assert store.delete(before=cutoff) == 0


def test_delete_and_export_by_id_and_both(store: SQLReviewStore) -> None:
    old, cutoff, new = _aged(store, 2, 2)
    picked = [old[1], new[0], "unknown-id"]
    assert [i.id for i in store.export(ids=picked)] == [old[1], new[0]]
    assert [i.id for i in store.export(ids=picked, before=cutoff)] == [old[1]]
    assert store.export(ids=[]) == []
    assert store.delete(ids=[]) == 0
    assert store.delete(ids=picked, before=cutoff) == 1
    assert [i.id for i in store.list()] == [old[0], new[0], new[1]]
    assert store.delete(ids=(new[0],)) == 1
    assert [i.id for i in store.list()] == [old[0], new[1]]


def test_delete_needs_a_selector_and_checks_it(store: SQLReviewStore) -> None:
    item_id = store.enqueue("q", "a")
    with pytest.raises(ReviewInputError, match="ids=.*and/or before="):
        store.delete()
    with pytest.raises(ReviewInputError, match="is not a list of ids"):
        store.delete(ids=item_id)
    with pytest.raises(ReviewInputError, match="not an id string"):
        store.export(ids=[1])  # type: ignore[list-item]
    with pytest.raises(ReviewInputError, match="before='2024-01-01' is not a datetime"):
        store.delete(before="2024-01-01")  # type: ignore[arg-type]
    assert [i.id for i in store.list()] == [item_id]


# -- concurrency -----------------------------------------------------------------------------------


def _race(workers: list[threading.Thread]) -> None:
    for th in workers:
        th.start()
    for th in workers:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in workers)


def test_threads_enqueue_concurrently(store: SQLReviewStore) -> None:
    n_threads, per_thread = 4, 15
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            mine = [store.enqueue(f"q{t}-{i}", "a", task=f"t{t}") for i in range(per_thread)]
            with lock:
                ids.extend(mine)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    _race([threading.Thread(target=worker, args=(t,)) for t in range(n_threads)])
    assert errors == []
    assert len(set(ids)) == n_threads * per_thread
    assert {i.id for i in store.list()} == set(ids)
    assert store.query(ReviewFilter(task="t0")).total == per_thread


def test_concurrent_verdicts_on_one_item_only_one_wins(store: SQLReviewStore) -> None:
    item_id = store.enqueue("q", "a")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        verdict = ("approved", "rejected")[n % 2]
        barrier.wait()
        try:
            store.resolve(item_id, verdict, reviewer=f"r{n}")
            results.append(f"r{n}")
        except ReviewAlreadyResolvedError:
            results.append("refused")

    _race([threading.Thread(target=worker, args=(n,)) for n in range(8)])
    assert results.count("refused") == 7
    winner = next(r for r in results if r != "refused")
    assert store.get(item_id).reviewer == winner


def test_two_store_instances_racing_on_verdicts(store_url: str) -> None:
    """Separate connections (as separate processes or machines would have): exactly one verdict per item wins."""
    n_items = 10
    with open_review_queue(store_url) as setup:
        ids = [setup.enqueue(f"q{i}", "a") for i in range(n_items)]
    stores = [open_review_queue(store_url) for _ in range(2)]
    wins: list[list[str]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(k: int) -> None:
        barrier.wait()
        for item_id in ids:
            try:
                stores[k].resolve(item_id, "approved", reviewer=f"store{k}")
                wins[k].append(item_id)
            except ReviewAlreadyResolvedError:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    try:
        _race([threading.Thread(target=worker, args=(k,)) for k in range(2)])
    finally:
        for s in stores:
            s.close()
    assert errors == []
    assert sorted(wins[0] + wins[1]) == sorted(ids)  # each item won exactly once
    with open_review_queue(store_url) as check:
        for item_id in ids:
            item = check.get(item_id)
            assert item.status == "approved"
            assert item.reviewer == ("store0" if item_id in wins[0] else "store1")


# -- size ---------------------------------------------------------------------------------------------


def test_a_page_stays_fast_with_10000_items(store: SQLReviewStore) -> None:
    """Pages are LIMIT/OFFSET on indexes: a page deep into 10,000 items reads fast and returns the right rows."""
    n = 10_000
    base = datetime(2026, 1, 1, tzinfo=UTC)
    marks = ", ".join(
        "?::json" if store._json_placeholder != "?" and c == "metadata" else "?"
        for c in ("id", "created_at", "question", "answer", "confidence", "metadata", "task", "reason", "status")
    )
    sql = store._sql(
        "INSERT INTO review_items (id, created_at, question, answer, confidence, metadata, task, reason, status) "
        f"VALUES ({marks})"
    )
    ids = [f"{i:032x}" for i in range(n)]
    with store._transaction("bulk insert", write=True) as tx:
        for i, item_id in enumerate(ids):
            tx.execute(
                sql,
                (
                    item_id,
                    store._time_param(base + timedelta(seconds=i)),
                    f"q{i}",
                    "a",
                    (i % 100) / 100,
                    f'{{"n": {i}}}',
                    f"task{i % 5}",
                    "low_confidence" if i % 3 else "unscored",
                    "pending" if i % 4 else "approved",
                ),
            )
    start = time.perf_counter()
    page = store.query(ReviewFilter(status="pending", task="task2"), offset=1000, limit=50)
    deep = store.query(offset=9_950, limit=50)
    facets = store.facets()
    elapsed = time.perf_counter() - start
    expected = [item_id for i, item_id in enumerate(ids) if i % 4 and i % 5 == 2]
    assert page.total == len(expected) and [i.id for i in page.items] == expected[1000:1050]
    assert [i.id for i in deep.items] == ids[9_950:] and deep.total == n
    assert facets == {"task": [f"task{k}" for k in range(5)], "reason": ["low_confidence", "unscored"]}
    assert elapsed < 2.0, f"two pages and the facets of 10,000 items took {elapsed:.2f} s"


def test_nul_characters(store: SQLReviewStore) -> None:
    """PostgreSQL text cannot hold NUL: refused up front there (nothing stored); SQLite keeps it. JSON escapes it."""
    from gradguard.review.postgres import PostgresReviewQueue

    in_json = store.get(store.enqueue("q", "a", metadata={"x": "a\x00b"}, messages=[{"content": "\x00"}]))
    assert in_json.metadata == {"x": "a\x00b"} and in_json.messages == [{"content": "\x00"}]
    if isinstance(store, PostgresReviewQueue):
        with pytest.raises(ReviewInputError, match=r"question contains a NUL character .* remove it"):
            store.enqueue("q\x00", "a")
        with pytest.raises(ReviewInputError, match="note contains a NUL"):
            store.resolve(in_json.id, "approved", note="\x00")
        assert store.query().total == 1 and store.get(in_json.id).pending
    else:
        assert store.get(store.enqueue("q\x00", "a")).question == "q\x00"
