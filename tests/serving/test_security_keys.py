"""GuardMiddleware with several named keys, a cookie, open prefixes and its own error page (as the review app
uses it); the one-key behaviour of ``gradguard serve`` is tested in test_limits_and_auth.py."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from gradguard.serving.errors import ApiError
from gradguard.serving.security import CREDENTIAL_STATE, PRINCIPAL_STATE, GuardMiddleware, KeyRing


async def echo_state(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI app answering with what the middleware put in ``scope["state"]``."""
    state = scope.get("state", {})
    body = json.dumps({"principal": state.get(PRINCIPAL_STATE), "credential": state.get(CREDENTIAL_STATE)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def client(**options: Any) -> TestClient:
    return TestClient(GuardMiddleware(echo_state, max_body_bytes=1000, **options))


def test_named_keys_from_header_or_cookie() -> None:
    c = client(keys={"key-of-alice-0001": "alice", "key-of-bob-00002": "bob"}, cookie="session")
    assert c.get("/", headers={"Authorization": "Bearer key-of-bob-00002"}).json() == {
        "principal": "bob", "credential": "key-of-bob-00002"
    }  # fmt: skip
    assert c.get("/", headers={"Cookie": "x=1; session=key-of-alice-0001"}).json()["principal"] == "alice"
    # the header wins over the cookie; a wrong header is refused even with a good cookie
    both = {"Authorization": "Bearer key-of-bob-00002", "Cookie": "session=key-of-alice-0001"}
    assert c.get("/", headers=both).json()["principal"] == "bob"
    wrong = {"Authorization": "Bearer nope", "Cookie": "session=key-of-alice-0001"}
    assert c.get("/", headers=wrong).status_code == 401
    assert c.get("/", headers={"Cookie": "other=key-of-alice-0001"}).status_code == 401
    assert c.get("/").status_code == 401


def test_api_key_alone_is_named_api_and_cookies_are_ignored_without_a_cookie_name() -> None:
    c = client(api_key="s3cret")
    assert c.get("/", headers={"Authorization": "Bearer s3cret"}).json()["principal"] == "api"
    assert c.get("/", headers={"Cookie": "session=s3cret"}).status_code == 401
    assert client(api_key=None).get("/").json() == {"principal": None, "credential": None}


def test_open_paths_prefixes_and_error_renderer() -> None:
    def render(error: ApiError) -> tuple[str, bytes]:
        return "text/html; charset=utf-8", f"<p>{error.status}</p>".encode()

    c = client(keys={"key-of-alice-0001": "alice"}, open_paths={"/login"}, open_prefixes=("/static/",),
               render_error=render)  # fmt: skip
    assert c.get("/login").json()["principal"] is None
    assert c.get("/login", headers={"Authorization": "Bearer key-of-alice-0001"}).json()["principal"] == "alice"
    assert c.get("/static/a.css").status_code == 200
    refused = c.get("/healthz")  # not open here: open_paths replaces the default
    assert refused.status_code == 401 and refused.text == "<p>401</p>"
    assert refused.headers["content-type"].startswith("text/html") and refused.headers["www-authenticate"] == "Bearer"
    big = c.post("/login", content=b"x" * 2000)
    assert big.status_code == 413 and big.text == "<p>413</p>"


def test_keyring_compares_every_key() -> None:
    ring = KeyRing({"a" * 16: "one", "b" * 32: "two"})
    assert (ring.lookup("a" * 16), ring.lookup("b" * 32), ring.lookup("a" * 17), ring.lookup("")) == (
        "one", "two", None, None
    )  # fmt: skip
    assert len(ring) == 2 and bool(KeyRing({})) is False
