"""Bearer-key authentication and the request-body size limit, as one ASGI middleware."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gradguard.serving.errors import ApiError

__all__ = ["GuardMiddleware", "OPEN_PATHS"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths that need no key (liveness must answer without one).
OPEN_PATHS = frozenset({"/healthz"})


class GuardMiddleware:
    """Checks ``Authorization: Bearer KEY`` (when ``api_key`` is set; constant-time) and refuses a body over
    ``max_body_bytes`` (413) before the app sees it. ``on_reject(path, error)`` is told of every refusal."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body_bytes: int,
        on_reject: Callable[[str, ApiError], None] | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        error = self._auth_error(path, headers)
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
            await _send_error(send, error)
            return
        await self.app(scope, receive, send)

    def _auth_error(self, path: str, headers: dict[str, str]) -> ApiError | None:
        if not self.api_key or path in OPEN_PATHS:
            return None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
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


async def _send_error(send: Send, error: ApiError) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
