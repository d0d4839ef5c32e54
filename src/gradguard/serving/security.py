"""Bearer-key authentication and the request-body size limit, as one ASGI middleware.

Used by ``gradguard serve`` (one API key) and ``gradguard review serve`` (one token per reviewer, also read from
a cookie, the reviewer's name put in ``scope["state"]``). Framework-free.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping
from typing import Any

from gradguard.serving.errors import ApiError

__all__ = ["GuardMiddleware", "KeyRing", "OPEN_PATHS", "PRINCIPAL_STATE", "CREDENTIAL_STATE", "cookie_value"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths that need no key (liveness must answer without one).
OPEN_PATHS = frozenset({"/healthz"})
#: The ``scope["state"]`` key (``request.state.principal``) holding the name the accepted key maps to.
PRINCIPAL_STATE = "principal"
#: The ``scope["state"]`` key holding the accepted key itself (what a CSRF token is bound to).
CREDENTIAL_STATE = "credential"

#: ``render_error(error) -> (content_type, body)``: how a refusal is written (default: OpenAI's JSON error object).
ErrorRenderer = Callable[[ApiError], tuple[str, bytes]]


class KeyRing:
    """Keys mapped to the names of whoever holds them (``token -> principal``), looked up in constant time.

    :meth:`lookup` compares the SHA-256 digest of the offered key with the digest of **every** key
    (``hmac.compare_digest``, no early exit), so neither which key matched nor how long the keys are shows
    in the time it takes.
    """

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._digests = [(hashlib.sha256(key.encode("utf-8")).digest(), name) for key, name in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def lookup(self, key: str | None) -> str | None:
        """The name ``key`` belongs to, or ``None`` when it is no key of this ring (or ``None``/empty)."""
        if not key:
            return None
        offered = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for digest, name in self._digests:
            if hmac.compare_digest(offered, digest):
                found = name
        return found


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie:`` header (the first one; surrounding quotes removed)."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


class GuardMiddleware:
    """Checks ``Authorization: Bearer KEY`` (when a key is set; constant-time) and refuses a body over
    ``max_body_bytes`` (413) before the app sees it. ``on_reject(path, error)`` is told of every refusal.

    ``api_key`` is the one key of ``gradguard serve`` (its holder is named ``"api"``); ``keys`` maps more keys
    to their holders' names (``token -> name``). With neither, every request passes. ``cookie`` names a cookie
    the key may also come in (the header wins when both are sent). An accepted request carries the holder's
    name in ``scope["state"]["principal"]`` (``request.state.principal``) and the key in
    ``scope["state"]["credential"]``. ``open_paths`` (exact) and ``open_prefixes`` need no key;
    ``render_error`` writes refusals another way (e.g. an HTML page).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None = None,
        max_body_bytes: int,
        on_reject: Callable[[str, ApiError], None] | None = None,
        keys: Mapping[str, str] | None = None,
        cookie: str | None = None,
        open_paths: Collection[str] = OPEN_PATHS,
        open_prefixes: Collection[str] = (),
        render_error: ErrorRenderer | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject
        all_keys = dict(keys or {})
        if api_key:
            all_keys.setdefault(api_key, "api")
        self.keys = KeyRing(all_keys)
        self.cookie = cookie
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        error = self._auth_error(path, headers, scope)
        if error is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                error = self._too_large(int(length))
            else:
                body, error = await self._read_body(receive)
                if error is None:
                    receive = _replay(body, receive)
        if error is not None:
            if self.on_reject is not None:
                self.on_reject(path, error)
            await _send_error(send, error, self.render_error)
            return
        await self.app(scope, receive, send)

    def _is_open(self, path: str) -> bool:
        return path in self.open_paths or any(path.startswith(prefix) for prefix in self.open_prefixes)

    def _offered_key(self, headers: dict[str, str]) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        if self.cookie is not None:
            return cookie_value(headers.get("cookie", ""), self.cookie)
        return None

    def _auth_error(self, path: str, headers: dict[str, str], scope: Scope) -> ApiError | None:
        if not self.keys:
            return None
        key = self._offered_key(headers)
        name = self.keys.lookup(key)
        if name is not None:
            state = scope.setdefault("state", {})
            state[PRINCIPAL_STATE] = name
            state[CREDENTIAL_STATE] = key
            return None
        if self._is_open(path):
            return None
        return ApiError(
            401, "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
            type="authentication_error", code="invalid_api_key", headers={"www-authenticate": "Bearer"},
        )

    def _too_large(self, size: int) -> ApiError:
        return ApiError(
            413, f"the request body ({size} bytes or more) exceeds the server's limit of {self.max_body_bytes} bytes",
            code="request_too_large",
        )

    async def _read_body(self, receive: Receive) -> tuple[bytes, ApiError | None]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", self._too_large(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then the real one (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, error: ApiError, render: ErrorRenderer | None = None) -> None:
    if render is not None:
        content_type, payload = render(error)
    else:
        content_type, payload = "application/json", json.dumps(error.body()).encode()
    headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
