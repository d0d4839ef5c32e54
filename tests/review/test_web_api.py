"""The reviewers' web app over a real SQLite store: sign-in, CSRF, verdicts, conflicts, limits, the queue's
filters and pages, the item page's token shading and escaping, the CLI's token sources."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("jinja2")

from fastapi.testclient import TestClient  # noqa: E402

from gradguard.review import SQLiteReviewQueue  # noqa: E402
from gradguard.review.queue import MAX_TEXT_BYTES  # noqa: E402
from gradguard.review.web import create_app  # noqa: E402
from gradguard.review.web.app import LOGIN_COOKIE, SESSION_COOKIE, csrf_token  # noqa: E402
from gradguard.review.web.auth import TokenError, check_reviewers, load_tokens_file, parse_token_arg  # noqa: E402
from gradguard.review.web.cli import TOKEN_ENV, add_serve_parser, reviewers_from_args, run_serve  # noqa: E402
from gradguard.serving.security import KeyRing, cookie_value  # noqa: E402

from ._web import ALICE, BOB, REVIEWERS, add_item, csrf_of, login  # noqa: E402

SECRET = b"test-secret-0123456789"
QUESTION = "When was the Eiffel Tower completed?"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteReviewQueue]:
    with SQLiteReviewQueue(tmp_path / "review.sqlite3") as queue:
        yield queue


@pytest.fixture
def client(store: SQLiteReviewQueue) -> Iterator[TestClient]:
    with TestClient(create_app(store, REVIEWERS, secret=SECRET)) as c:
        yield c


def bearer(token: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def session_csrf(token: str = ALICE) -> str:
    return csrf_token(SECRET, token)


def message_of(html: str) -> str:
    found = re.search(r'<p class="error"[^>]*>(.*?)</p>', html, re.S)
    assert found, html[:3000]
    return found.group(1)


# -- authentication -----------------------------------------------------------------------------------------------


def test_pages_without_a_valid_token_are_401_and_show_nothing(client: TestClient, store: SQLiteReviewQueue) -> None:
    item_id = add_item(store, "Secret question about <project X>?", "Secret answer")
    requests = [
        ("GET", "/"),
        ("GET", f"/items/{item_id}"),
        ("GET", "/?status=all&page=1"),
        ("POST", f"/items/{item_id}/approve"),
        ("POST", "/logout"),
    ]
    for headers in ({}, bearer("wrong-token-0123456789abcdef"), {"Cookie": f"{SESSION_COOKIE}=not-a-token-at-all"}):
        for method, path in requests:
            r = client.request(
                method, path, headers=headers, data={"csrf": session_csrf()} if method == "POST" else None
            )
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["content-type"].startswith("text/html")
            assert 'href="/login"' in r.text
            for leak in ("Secret", item_id, item_id[:8], "project X", "low_confidence", "rag", "1 item", "total"):
                assert leak not in r.text, leak
    assert store.get(item_id).pending
    assert client.get("/healthz").status_code == 200
    assert client.get("/static/review.css").status_code == 200
    assert client.get("/login").status_code == 200


def test_login_sets_an_httponly_samesite_cookie_and_logout_clears_it(
    client: TestClient, store: SQLiteReviewQueue
) -> None:
    add_item(store)
    form = client.get("/login")
    assert 'name="token"' in form.text and 'type="password"' in form.text
    login_cookie = form.headers["set-cookie"]
    assert LOGIN_COOKIE in login_cookie and "HttpOnly" in login_cookie and "SameSite=Strict" in login_cookie
    r = client.post("/login", data={"token": ALICE, "csrf": csrf_of(form.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    session = next(c for c in r.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
    page = client.get("/")
    assert page.status_code == 200 and "Signed in as <strong>alice</strong>" in page.text and QUESTION in page.text
    out = client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert f"{SESSION_COOKIE}=;" in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    assert client.get("/").status_code == 401


def test_base64_tokens_survive_the_cookie(store: SQLiteReviewQueue) -> None:
    token = "ab+/cd==ef+/gh0123456789=="
    with TestClient(create_app(store, {token: "carol"}, secret=SECRET)) as c:
        login(c, token)
        assert "Signed in as <strong>carol</strong>" in c.get("/").text


def test_login_with_a_wrong_token_is_401_with_the_form_again(client: TestClient) -> None:
    form = client.get("/login")
    r = client.post(
        "/login", data={"token": "wrong-token-0123456789abcdef", "csrf": csrf_of(form.text)}, follow_redirects=False
    )
    assert r.status_code == 401
    assert 'name="token"' in r.text and "not a reviewer token" in r.text
    assert SESSION_COOKIE + "=" not in ";".join(r.headers.get_list("set-cookie")).replace(LOGIN_COOKIE, "")
    assert client.get("/").status_code == 401


@pytest.mark.parametrize("csrf", [None, "", "forged", "0" * 64])
def test_login_without_its_csrf_token_is_403(client: TestClient, csrf: str | None) -> None:
    client.get("/login")
    data = {"token": ALICE} | ({"csrf": csrf} if csrf is not None else {})
    r = client.post("/login", data=data, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    assert not any(c.startswith(f"{SESSION_COOKIE}=") for c in r.headers.get_list("set-cookie"))
    assert client.get("/").status_code == 401


def test_login_csrf_is_bound_to_the_forms_nonce(client: TestClient) -> None:
    other = TestClient(client.app)
    stolen = csrf_of(other.get("/login").text)  # another browser's form token
    client.get("/login")
    r = client.post("/login", data={"token": ALICE, "csrf": stolen}, follow_redirects=False)
    assert r.status_code == 403


def test_bearer_header_works(client: TestClient, store: SQLiteReviewQueue) -> None:
    item_id = add_item(store)
    assert client.get("/", headers=bearer(BOB)).status_code == 200
    page = client.get(f"/items/{item_id}", headers=bearer(BOB))
    assert page.status_code == 200 and "Signed in as <strong>bob</strong>" in page.text
    r = client.post(
        f"/items/{item_id}/reject",
        headers=bearer(BOB),
        data={"csrf": csrf_of(page.text), "note": "no"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert (store.get(item_id).status, store.get(item_id).reviewer) == ("rejected", "bob")


def test_keyring_and_cookie_parsing() -> None:
    ring = KeyRing(REVIEWERS)
    assert ring.lookup(ALICE) == "alice" and ring.lookup(BOB) == "bob"
    assert ring.lookup(ALICE[:-1]) is None and ring.lookup("") is None and ring.lookup(None) is None
    assert cookie_value('a=1; gradguard_review="x/y="; b=2', "gradguard_review") == "x/y="
    assert cookie_value("a=1", "gradguard_review") is None


# -- CSRF and verdicts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("csrf", [None, "", "forged", csrf_token(SECRET, BOB), csrf_token(b"other-secret", ALICE)])
@pytest.mark.parametrize("action", ["approve", "reject", "edit"])
def test_a_missing_or_forged_csrf_token_is_403_and_changes_nothing(
    client: TestClient, store: SQLiteReviewQueue, csrf: str | None, action: str
) -> None:
    item_id = add_item(store)
    login(client)
    data = {"note": "n", "answer": "changed"} | ({"csrf": csrf} if csrf is not None else {})
    r = client.post(f"/items/{item_id}/{action}", data=data, follow_redirects=False)
    assert r.status_code == 403 and "nothing was changed" in r.text
    item = store.get(item_id)
    assert item.pending and item.verdict_note is None and item.reviewer is None


def test_logout_needs_its_csrf_token(client: TestClient) -> None:
    login(client)
    assert client.post("/logout", data={"csrf": "forged"}, follow_redirects=False).status_code == 403
    assert client.get("/").status_code == 200


@pytest.mark.parametrize(
    ("action", "answer", "status", "resolved"),
    [
        ("approve", None, "approved", "It was completed in March 1889."),
        ("reject", None, "rejected", None),
        ("edit", "It was completed on 31 March 1889.", "edited", "It was completed on 31 March 1889."),
    ],
)
def test_verdicts_are_stored_with_the_note_and_the_reviewer(
    client: TestClient, store: SQLiteReviewQueue, action: str, answer: str | None, status: str, resolved: str | None
) -> None:
    item_id = add_item(store)
    login(client, BOB)
    page = client.get(f"/items/{item_id}")
    data = {"csrf": csrf_of(page.text), "note": f"{action} note ✓"} | ({"answer": answer} if answer else {})
    r = client.post(f"/items/{item_id}/{action}", data=data, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/?")
    item = store.get(item_id)
    assert (item.status, item.reviewer, item.verdict_note, item.resolved_answer) == (
        status,
        "bob",
        f"{action} note ✓",
        resolved,
    )
    assert item.resolved_at is not None
    shown = client.get(f"/items/{item_id}")
    assert 'id="reviewer">bob<' in shown.text and f"{action} note ✓" in shown.text
    assert 'id="approve-form"' not in shown.text  # no more actions on a resolved item
    flash = client.get(r.headers["location"])
    assert f"Item {item_id[:8]} {status}." in flash.text


def test_after_a_verdict_the_next_pending_item_opens(client: TestClient, store: SQLiteReviewQueue) -> None:
    first, second = add_item(store, "Q1"), add_item(store, "Q2")
    login(client)
    page = client.get(f"/items/{first}?status=pending")
    r = client.post(
        f"/items/{first}/approve", data={"csrf": csrf_of(page.text), "status": "pending"}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"].startswith(f"/items/{second}?")
    nxt = client.get(r.headers["location"])
    assert nxt.status_code == 200 and f"Item {first[:8]} approved." in nxt.text and "Q2" in nxt.text


def test_a_second_verdict_is_409_naming_who_resolved_it(client: TestClient, store: SQLiteReviewQueue) -> None:
    item_id = add_item(store)
    alice, bob = client, TestClient(client.app)
    login(alice, ALICE)
    login(bob, BOB)
    alice_page, bob_page = alice.get(f"/items/{item_id}"), bob.get(f"/items/{item_id}")
    ok = alice.post(
        f"/items/{item_id}/approve", data={"csrf": csrf_of(alice_page.text), "note": "fine"}, follow_redirects=False
    )
    assert ok.status_code == 303
    late = bob.post(
        f"/items/{item_id}/reject", data={"csrf": csrf_of(bob_page.text), "note": "wrong"}, follow_redirects=False
    )
    assert late.status_code == 409
    message = message_of(late.text)
    assert "already resolved (approved) by alice at" in message and "UTC" in message and "not recorded" in message
    again = alice.post(f"/items/{item_id}/approve", data={"csrf": csrf_of(alice_page.text)}, follow_redirects=False)
    assert again.status_code == 409  # a double submit
    item = store.get(item_id)
    assert (item.status, item.reviewer, item.verdict_note) == ("approved", "alice", "fine")


def test_unknown_item_is_404(client: TestClient) -> None:
    login(client)
    assert client.get("/items/0123456789abcdef0123456789abcdef").status_code == 404
    r = client.post("/items/0123456789abcdef0123456789abcdef/approve", data={"csrf": session_csrf()})
    assert r.status_code == 404
    assert client.post("/items/x/frobnicate", data={"csrf": session_csrf()}).status_code == 404


@pytest.mark.parametrize("field", ["note", "answer"])
def test_texts_over_64_kib_are_refused_and_nothing_is_stored(
    client: TestClient, store: SQLiteReviewQueue, field: str
) -> None:
    item_id = add_item(store)
    big = "é" * (MAX_TEXT_BYTES // 2) + "x"  # 64 KiB + 1 byte of UTF-8
    assert len(big.encode()) == MAX_TEXT_BYTES + 1
    data = {"csrf": session_csrf(), "note": "short", "answer": "edited answer"} | {field: big}
    r = client.post(f"/items/{item_id}/edit", headers=bearer(), data=data, follow_redirects=False)
    assert r.status_code == 413
    assert "Nothing was saved" in r.text and "65536" in r.text
    item = store.get(item_id)
    assert item.pending and item.verdict_note is None and item.resolved_answer is None
    fits = client.post(
        f"/items/{item_id}/approve",
        headers=bearer(),
        data={"csrf": session_csrf(), "note": "x" * MAX_TEXT_BYTES},
        follow_redirects=False,
    )
    assert fits.status_code == 303 and store.get(item_id).verdict_note == "x" * MAX_TEXT_BYTES


def test_an_edit_without_an_answer_is_400(client: TestClient, store: SQLiteReviewQueue) -> None:
    item_id = add_item(store)
    r = client.post(f"/items/{item_id}/edit", headers=bearer(), data={"csrf": session_csrf(), "answer": "  "})
    assert r.status_code == 400 and store.get(item_id).pending


# -- the queue --------------------------------------------------------------------------------------------------------


def rows(html: str) -> list[str]:
    return re.findall(r'<td class="question"><a href="/items/[0-9a-f]+\?[^"]*" title="[^"]*">([^<]*)</a>', html)


def summary(html: str) -> tuple[int, int, int]:
    found = [int(re.search(rf'id="{name}">(\d+)<', html).group(1)) for name in ("total", "page", "pages")]  # type: ignore[union-attr]
    return found[0], found[1], found[2]


def test_pagination_oldest_first_with_totals(client: TestClient, store: SQLiteReviewQueue) -> None:
    for i in range(120):
        add_item(store, f"question {i:03d}", confidence=0.5)
    login(client)
    first = client.get("/")
    assert summary(first.text) == (120, 1, 3)
    assert rows(first.text) == [f"question {i:03d}" for i in range(50)]
    assert "Items 1–50 of" in first.text
    second = client.get("/?status=pending&page=2")
    assert rows(second.text) == [f"question {i:03d}" for i in range(50, 100)]
    third = client.get("/?page=3")
    assert rows(third.text) == [f"question {i:03d}" for i in range(100, 120)] and summary(third.text) == (120, 3, 3)
    assert 'rel="next"' not in third.text and 'href="?status=pending&amp;page=2" rel="prev"' in third.text
    past = client.get("/?page=9")
    assert past.status_code == 200 and rows(past.text) == [] and "past the last one" in past.text


def test_links_keep_the_filters(client: TestClient, store: SQLiteReviewQueue) -> None:
    for i in range(60):
        add_item(store, f"q{i}", task="rag", reason="out_of_domain", confidence=0.3)
    login(client)
    page = client.get("/?status=pending&task=rag&reason=out_of_domain&min_confidence=0.1&max_confidence=0.9")
    keep = "status=pending&amp;task=rag&amp;reason=out_of_domain&amp;min_confidence=0.1&amp;max_confidence=0.9"
    assert f'href="?{keep}&amp;page=2" rel="next"' in page.text
    assert f'?{keep}"' in page.text  # item links carry them to the item page (and back)
    item = client.get(re.search(r'href="(/items/[^"]+)"', page.text).group(1).replace("&amp;", "&"))  # type: ignore[union-attr]
    assert f'href="/?{keep}"' in item.text
    assert '<input type="hidden" name="task" value="rag">' in item.text


def test_filters(client: TestClient, store: SQLiteReviewQueue) -> None:
    a = add_item(store, "A rag low", task="rag", reason="low_confidence", confidence=0.2)
    add_item(store, "B qa low", task="qa", reason="low_confidence", confidence=0.6)
    add_item(store, "C rag ood", task="rag", reason="out_of_domain", confidence=0.9)
    add_item(store, "D unscored", task=None, reason="unscored", confidence=None, tokens=None)
    store.resolve(a, "approved", reviewer="alice")
    login(client)

    def shown(query: str) -> list[str]:
        r = client.get("/?" + query)
        assert r.status_code == 200, r.text
        return [q.split()[0] for q in rows(r.text)]

    assert shown("") == ["B", "C", "D"]  # pending by default
    assert shown("status=all") == ["A", "B", "C", "D"]
    assert shown("status=approved") == ["A"]
    assert shown("status=all&task=rag") == ["A", "C"]
    assert shown("reason=low_confidence") == ["B"]
    assert shown("status=all&min_confidence=0.5") == ["B", "C"]
    assert shown("status=all&max_confidence=0.6") == ["A", "B"]
    assert shown("status=all&min_confidence=0.3&max_confidence=0.7") == ["B"]
    assert shown("task=&reason=&min_confidence=&max_confidence=") == ["B", "C", "D"]
    page = client.get("/")
    for option in (
        '<option value="qa">qa</option>',
        '<option value="rag">rag</option>',
        '<option value="out_of_domain">out_of_domain</option>',
        '<option value="unscored">unscored</option>',
    ):
        assert option in page.text


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("status=done", "status"),
        ("min_confidence=abc", "min_confidence"),
        ("max_confidence=1.5", "max_confidence"),
        ("min_confidence=nan", "min_confidence"),
        ("min_confidence=0.8&max_confidence=0.2", "min_confidence"),
        ("page=0", "page"),
        ("page=two", "page"),
        ("page=-1", "page"),
        ("task=" + "x" * 500, "task"),
    ],
)
def test_bad_filters_are_400_with_a_message(client: TestClient, query: str, named: str) -> None:
    login(client)
    r = client.get("/?" + query)
    assert r.status_code == 400
    assert named in message_of(r.text)


# -- the item page ---------------------------------------------------------------------------------------------------


def test_item_page_shows_the_item(client: TestClient, store: SQLiteReviewQueue) -> None:
    item_id = add_item(store)
    login(client)
    html = client.get(f"/items/{item_id}").text
    assert QUESTION in html and "<details" in html and "You answer from the context only." in html
    assert "Eiffel Tower was completed in March 1889" in html  # the retrieved context
    for text in (
        "rag_dev.jsonl",
        "812",
        "0.834",
        "63.5",
        "Qwen/Qwen3-0.6B",
        "family:qwen3",
        "HybridGrad",
        ">0.41<",  # HybridGrad, 4 significant digits
        "human_review",
        "pending_review",
        "confidence 0.42 &lt; 0.80",
        'id="confidence">0.420<',
    ):
        assert text in html, text
    assert 'id="approve-form"' in html and 'id="reject-form"' in html
    assert (
        '<textarea id="edit-answer" name="answer" rows="6" required>It was completed in March 1889.</textarea>' in html
    )


def test_tokens_are_shaded_by_nll_or_entropy(client: TestClient, store: SQLiteReviewQueue) -> None:
    item_id = add_item(store)
    login(client)

    def tokens(html: str) -> list[tuple[str, str, str]]:
        return re.findall(r'<span class="tok (l\d|lna)" title="([^"]*)">([^<]*)</span>', html)

    nll = client.get(f"/items/{item_id}")
    assert 'data-shade="nll"' in nll.text
    got = tokens(nll.text)
    assert [t[2] for t in got] == ["It", " was", " completed", " in", " March", " 1889", "."]
    # NLLs 0.05 0.3 0.7 0.02 1.6 2.9 None -> classes by the edges 0.25 0.5 1 2 4
    assert [t[0] for t in got] == ["l0", "l1", "l2", "l0", "l3", "l4", "lna"]
    assert got[5][1] == "NLL 2.900 nats (p 0.055) · entropy 4.600 nats"
    assert 'id="legend"' in nll.text and "NLL (−log p), nats:" in nll.text and "≥ 4" in nll.text
    assert 'class="toggle on" id="shade-nll"' in nll.text
    ent = client.get(f"/items/{item_id}?shade=entropy")
    assert 'data-shade="entropy"' in ent.text and 'class="toggle on" id="shade-entropy"' in ent.text
    # entropies 0.4 0.9 1.2 0.1 2.2 4.6 0.3
    assert [t[0] for t in tokens(ent.text)] == ["l1", "l2", "l3", "l0", "l4", "l5", "l1"]
    assert "entropy, nats:" in ent.text
    assert client.get(f"/items/{item_id}?shade=logits").status_code == 400


def test_tokens_outside_the_scored_span_and_unknown_texts(client: TestClient, store: SQLiteReviewQueue) -> None:
    prefilled = {
        "text": ["Yes", ",", " 1889"],
        "logprob": [-0.1, -0.9, -2.5],
        "entropy": [0.1, 1.0, 3.0],
        "span": [1, 3],
    }
    item_id = add_item(store, answer="Yes, 1889", tokens=prefilled)
    unknown = add_item(
        store, answer="Yes", tokens={"text": [None], "logprob": [-1.0], "entropy": [1.0], "span": [0, 1]}
    )
    login(client)
    html = client.get(f"/items/{item_id}").text
    spans = re.findall(r'<span class="tok (l\d|lna)" title="([^"]*)">([^<]*)</span>', html)
    assert spans[0] == ("lna", "not scored (teacher-forced)", "Yes") and spans[1][0] == "l2" and spans[2][0] == "l4"
    assert "not shaded" in client.get(f"/items/{unknown}").text


def test_an_answer_without_tokens_is_unshaded(client: TestClient, store: SQLiteReviewQueue) -> None:
    item_id = add_item(store, answer="Plain answer.", tokens=None)
    login(client)
    html = client.get(f"/items/{item_id}").text
    assert '<p class="answer text" id="answer">Plain answer.</p>' in html
    assert 'class="tok' not in html.split('id="answer"')[1].split("</p>")[0]
    assert "not shaded" in html


def test_items_without_scores_or_with_odd_metadata_render(client: TestClient, store: SQLiteReviewQueue) -> None:
    bare = store.enqueue("bare question", "bare answer")
    odd = store.enqueue(
        "odd question", "odd answer",
        metadata={"score": {"tokens": {"text": "oops"}, "uncertainty": [1], "calibration": "x"}},
        messages=[{"role": "user", "content": [{"type": "text", "text": "multi-part"}]}, {"x": 1}],
        route=[{"step": 0}],
    )  # fmt: skip
    login(client)
    for item_id in (bare, odd):
        r = client.get(f"/items/{item_id}")
        assert r.status_code == 200 and "not shaded" in r.text
    assert "multi-part" in client.get(f"/items/{odd}").text
    assert client.get("/?status=all").status_code == 200


def test_model_output_is_escaped(client: TestClient, store: SQLiteReviewQueue) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    tokens = {"text": ["<script>", 'alert("x")', "</script>"], "logprob": [-1.0, -2.0, -3.0], "entropy": [1, 2, 3]}
    item_id = add_item(store, f"Q {evil}", evil, tokens=tokens, task=evil, reason="low_confidence")
    login(client)
    for path in ("/?status=all", f"/items/{item_id}", f"/items/{item_id}?shade=entropy"):
        html = client.get(path).text
        assert "<script>" not in html and "<img" not in html
        assert "&lt;script&gt;" in html
    page = client.get(f"/items/{item_id}")
    client.post(f"/items/{item_id}/edit", data={"csrf": csrf_of(page.text), "answer": evil, "note": evil})
    resolved = client.get(f"/items/{item_id}").text
    assert "<script>" not in resolved and resolved.count("&lt;script&gt;") >= 3
    assert "content-security-policy" in page.headers and "script-src" not in page.headers["content-security-policy"]


# -- the CLI ----------------------------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", "has no reviewer tokens"),
        ("[]", "holds a JSON list, not an object"),
        ("{not json", "is not valid JSON"),
        ('{"short": "alice"}', "token #1 is 5 characters long; tokens need at least 16"),
        ('{"has spaces in it 0123456789": "alice"}', "token #1 has characters other than"),
        ('{"alice-token-0123456789abcdef": ""}', "the name of token #1 is ''"),
        ('{"alice-token-0123456789abcdef": 7}', "the name of token #1 is 7"),
    ],
)
def test_tokens_file_errors_name_the_file_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TokenError, match=re.escape(message)) as info:
        load_tokens_file(path)
    assert "tokens.json" in str(info.value)
    assert any(fix in str(info.value) for fix in ("{", "secrets.token_urlsafe", "e.g."))


def test_tokens_sources(tmp_path: Path) -> None:
    assert load_tokens_file(write(tmp_path, json.dumps(REVIEWERS))) == REVIEWERS
    with pytest.raises(TokenError, match="could not read"):
        load_tokens_file(tmp_path / "missing.json")
    assert parse_token_arg(ALICE) == {ALICE: "reviewer"}
    assert parse_token_arg(f"Alice Smith:{ALICE}") == {ALICE: "Alice Smith"}
    with pytest.raises(TokenError, match="--token: token #1 is 5 characters"):
        parse_token_arg("alice:short")
    with pytest.raises(TokenError, match="name before ':' is empty"):
        parse_token_arg(f":{ALICE}")
    with pytest.raises(TokenError):
        check_reviewers({})

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", "--tokens", write(tmp_path, json.dumps({ALICE: "alice"})), "--token", f"bob:{BOB}"]
    )
    assert args.func is run_serve and (args.host, args.port) == ("127.0.0.1", 8100)
    assert reviewers_from_args(args, environ={}) == REVIEWERS
    env_only = parser.parse_args(["serve"])
    assert reviewers_from_args(env_only, environ={TOKEN_ENV: ALICE}) == {ALICE: "reviewer"}
    with pytest.raises(TokenError, match="no reviewer tokens.*--tokens FILE.*--token.*GRADGUARD_REVIEW_TOKEN"):
        reviewers_from_args(env_only, environ={})
    clash = parser.parse_args(
        ["serve", "--tokens", write(tmp_path, json.dumps({ALICE: "alice"})), "--token", f"mallory:{ALICE}"]
    )
    with pytest.raises(TokenError, match="already given to 'alice'"):
        reviewers_from_args(clash, environ={})


def test_run_serve_refuses_bad_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--db", str(tmp_path / "r.sqlite3"), "--tokens", write(tmp_path, "[1]")])
    assert args.func(args) == 1
    assert "error: the tokens file" in capsys.readouterr().err
    assert args.func(parser.parse_args(["serve", "--db", str(tmp_path / "r.sqlite3")])) == 1
    assert "no reviewer tokens" in capsys.readouterr().err


def test_a_non_loopback_bind_warns_of_plain_http() -> None:
    import io

    from gradguard.review.web.cli import _warn_plain_http

    for host, warned in (("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True)):
        out = io.StringIO()
        _warn_plain_http(host, out)
        assert ("plain HTTP" in out.getvalue()) is warned, host


def test_importing_gradguard_does_not_import_fastapi() -> None:
    code = (
        "import sys, gradguard, gradguard.review, gradguard.review.web, gradguard.review.web.cli; "
        "bad = [m for m in ('fastapi', 'starlette', 'jinja2', 'uvicorn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
