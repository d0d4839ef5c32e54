"""The reviewers' web app: :func:`create_app` builds it over a :class:`~gradguard.review.ReviewStore`.

Pages (server-rendered, no JavaScript): ``/login`` (a token form), ``/`` (the queue, filtered and paged),
``/items/{id}`` (one item with its tokens shaded by uncertainty, and the approve / reject / edit forms).
Every page but ``/login``, ``/healthz`` and ``/static/`` needs a reviewer token, in the session cookie
``/login`` sets or in ``Authorization: Bearer TOKEN``; every form carries a CSRF token bound to it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.staticfiles import StaticFiles

from gradguard.review.errors import (
    ReviewAlreadyResolvedError,
    ReviewError,
    ReviewInputError,
    ReviewItemNotFoundError,
    ReviewStoreError,
)
from gradguard.review.queue import MAX_TEXT_BYTES, REVIEW_STATUSES, VERDICTS, ReviewFilter, ReviewItem, ReviewStore
from gradguard.review.web.auth import check_reviewers
from gradguard.review.web.views import (
    FILTER_PARAMS,
    FilterError,
    QueueQuery,
    format_confidence,
    format_time,
    parse_queue_query,
    parse_shade,
    shade_answer,
    truncate,
)
from gradguard.scores import SCORE_LABELS, UNCERTAINTY_KEYS
from gradguard.serving.errors import ApiError
from gradguard.serving.security import CREDENTIAL_STATE, PRINCIPAL_STATE, GuardMiddleware, KeyRing, cookie_value

__all__ = ["create_app", "SESSION_COOKIE", "LOGIN_COOKIE", "csrf_token"]

#: The cookie carrying the reviewer's token after ``/login``.
SESSION_COOKIE = "gradguard_review"
#: The cookie carrying the sign-in form's nonce (what the login form's CSRF token is bound to).
LOGIN_COOKIE = "gradguard_review_login"
#: Largest request body (two 64 KiB texts, percent-encoded, fit).
DEFAULT_MAX_BODY_BYTES = 1 << 20

_HERE = Path(__file__).resolve().parent
_ACTIONS = {"approve": "approved", "reject": "rejected", "edit": "edited"}
_ID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_HTML = "text/html; charset=utf-8"
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def csrf_token(secret: bytes, credential: str, purpose: str = "session") -> str:
    """The CSRF token of a session (``purpose="session"``, bound to the reviewer's token) or of the sign-in form
    (``purpose="login"``, bound to its nonce): ``HMAC-SHA256(secret, purpose NUL credential)`` in hex."""
    message = purpose.encode() + b"\0" + credential.encode("utf-8", "surrogatepass")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _same(expected: str, given: object) -> bool:
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


class _SecurityHeaders:
    """Adds CSP, nosniff, no-referrer and no-framing to every response; ``no-store`` to every page."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cache = not str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += _SECURITY_HEADERS
                if cache:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["conf"] = format_confidence
    env.filters["when"] = format_time
    env.filters["truncate_line"] = truncate
    env.filters["num"] = _num
    env.filters["sig"] = _sig
    return env


def _sig(value: Any, digits: int = 4) -> str:
    """A float with ``digits`` significant digits (gradient scores span orders of magnitude), else as ``num``."""
    if isinstance(value, float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}g}"
    return _num(value)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "—"
    return str(value)


def _short(item_id: str) -> str:
    return item_id[:8]


def _message_view(message: Any, index: int, count: int) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        return {"role": "?", "text": json.dumps(message, indent=2, default=str), "open": False}
    role = str(message.get("role", "?"))
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
    extra = {k: v for k, v in message.items() if k not in ("role", "content")}
    if extra:
        text += "\n\n" + json.dumps(extra, indent=2, default=str)
    # the question is usually the last user message: open it, fold the system prompt and the context
    return {"role": role, "text": text, "open": role == "user" and index == count - 1, "chars": len(text)}


def _item_view(item: ReviewItem, shade: str) -> dict[str, Any]:
    meta = item.metadata or {}
    score = meta.get("score") if isinstance(meta.get("score"), Mapping) else {}
    assert isinstance(score, Mapping)
    calibration = score.get("calibration") if isinstance(score.get("calibration"), Mapping) else None
    uncertainty = score.get("uncertainty") if isinstance(score.get("uncertainty"), Mapping) else {}
    assert isinstance(uncertainty, Mapping)
    order = {name: i for i, name in enumerate(UNCERTAINTY_KEYS)}
    names = sorted(uncertainty, key=lambda k: (order.get(str(k), len(order)), str(k)))
    scores = [(SCORE_LABELS.get(str(k), str(k)), uncertainty[k]) for k in names]
    messages = list(item.messages or [])
    route_columns = (
        "step",
        "action",
        "target",
        "confidence",
        "signal_value",
        "outcome",
        "tier_index",
        "reason",
        "error",
    )
    route = [step if isinstance(step, Mapping) else {"outcome": str(step)} for step in (item.route or [])]
    rest = {k: v for k, v in meta.items() if k != "score"}
    score_rest = {k: v for k, v in score.items() if k != "tokens"}
    raw = json.dumps({**rest, "score": score_rest} if score else rest, indent=2, sort_keys=True, default=str)
    return {
        "score": score,
        "calibration": calibration,
        "scores": scores,
        "in_domain": score.get("in_domain"),
        "domain_percentile": score.get("domain_percentile"),
        "model": item.model or score.get("model"),
        "profile": item.profile or score.get("profile"),
        "task": item.task or score.get("task"),
        "messages": [_message_view(m, i, len(messages)) for i, m in enumerate(messages)],
        "route": route,
        "route_columns": route_columns,
        "shaded": shade_answer(item.answer, meta, shade),  # type: ignore[arg-type]
        "raw_metadata": raw if len(raw) <= 100_000 else raw[:100_000] + "\n…",
    }


def create_app(
    store: ReviewStore,
    reviewers: Mapping[str, str],
    *,
    secret: bytes | None = None,
    page_size: int = 50,
    secure_cookies: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The reviewers' app over ``store``; ``reviewers`` maps each token to the reviewer's name.

    ``secret`` keys the CSRF tokens (default: random per process, so forms open before a restart must be
    reloaded); ``page_size`` items per queue page; ``secure_cookies`` marks the cookies ``Secure`` (serve
    behind HTTPS then). Tokens are checked by :func:`~gradguard.review.web.auth.check_reviewers`.
    """
    reviewers = check_reviewers(reviewers)
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ReviewInputError(f"page_size={page_size!r} is not a positive integer; pass e.g. page_size=50")
    key = secret if secret else os.urandom(32)
    keyring = KeyRing(reviewers)
    env = _environment()
    cookie_flags = "; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure_cookies else "")

    def render_error(error: ApiError) -> tuple[str, bytes]:
        if error.status == 401:
            message = "Sign in with your reviewer token to see this page."
        else:
            message = error.message
        page = env.get_template("error.html").render(
            title="Sign in required" if error.status == 401 else f"Error {error.status}",
            status=error.status,
            message=message,
            principal=None,
            csrf=None,
            login_link=error.status == 401,
        )
        return _HTML, page.encode()

    app = FastAPI(title="gradguard review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
    app.add_middleware(
        GuardMiddleware,
        keys=reviewers,
        cookie=SESSION_COOKIE,
        max_body_bytes=max_body_bytes,
        open_paths={"/login", "/healthz"},
        open_prefixes=("/static/",),
        render_error=render_error,
    )
    app.add_middleware(_SecurityHeaders)

    def principal(request: Request) -> str | None:
        return getattr(request.state, PRINCIPAL_STATE, None)

    def session_csrf(request: Request) -> str | None:
        credential = getattr(request.state, CREDENTIAL_STATE, None)
        return csrf_token(key, credential) if credential else None

    def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("principal", principal(request))
        context.setdefault("csrf", session_csrf(request))
        html = env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status_code)

    def error_page(request: Request, status: int, title: str, message: str, **context: Any) -> HTMLResponse:
        context.setdefault("login_link", False)
        return page(request, "error.html", status, title=title, status=status, message=message, **context)

    async def form_of(request: Request) -> dict[str, str]:
        form = await request.form()
        out: dict[str, str] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                raise ReviewInputError(f"the form field {name!r} is a file; these forms take text only")
            out.setdefault(name, value)
        return out

    def check_session_csrf(request: Request, form: Mapping[str, str]) -> HTMLResponse | None:
        expected = session_csrf(request)
        if expected is None or not _same(expected, form.get("csrf")):
            return error_page(
                request,
                403,
                "Form check failed",
                "This form was not sent by this page (its CSRF token is missing or wrong), so nothing was changed. "
                "Reload the page and try again.",
            )
        return None

    @app.exception_handler(ReviewError)
    async def review_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ReviewItemNotFoundError):
            return error_page(request, 404, "No such item", f"There is no review item {exc.item_id!r}.")
        if isinstance(exc, ReviewInputError):
            return error_page(request, 400, "Bad request", str(exc))
        if isinstance(exc, ReviewStoreError):
            return error_page(request, 503, "Review database unavailable", str(exc))
        return error_page(request, 500, "Error", str(exc))

    # -- sign in and out --------------------------------------------------------------------------------------

    def login_page(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
        nonce = secrets.token_urlsafe(24)
        response = page(request, "login.html", status, csrf=csrf_token(key, nonce, "login"), error=error)
        response.headers.append("set-cookie", f"{LOGIN_COOKIE}={nonce}; Max-Age=3600{cookie_flags}")
        return response

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return login_page(request)

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await form_of(request)
        nonce = cookie_value(request.headers.get("cookie", ""), LOGIN_COOKIE)
        if not nonce or not _same(csrf_token(key, nonce, "login"), form.get("csrf")):
            return error_page(
                request,
                403,
                "Form check failed",
                "The sign-in form was not sent by this page or has expired (its CSRF token is missing or wrong). "
                "Open the sign-in page again.",
                login_link=True,
            )
        name = keyring.lookup(form.get("token", "").strip())
        if name is None:
            return login_page(request, 401, "That token is not a reviewer token here. Check it and try again.")
        response = RedirectResponse("/", status_code=303)
        response.headers.append("set-cookie", f"{SESSION_COOKIE}={form['token'].strip()}{cookie_flags}")
        response.headers.append("set-cookie", f"{LOGIN_COOKIE}=; Max-Age=0{cookie_flags}")
        return response

    @app.post("/logout", response_class=HTMLResponse)
    async def logout(request: Request) -> Response:
        form = await form_of(request)
        refused = check_session_csrf(request, form)
        if refused is not None:
            return refused
        response = RedirectResponse("/login", status_code=303)
        response.headers.append("set-cookie", f"{SESSION_COOKIE}=; Max-Age=0{cookie_flags}")
        return response

    # -- the queue -------------------------------------------------------------------------------------------

    def flash_of(params: Mapping[str, str]) -> str | None:
        verdict, item_id = params.get("done"), params.get("item")
        if verdict in VERDICTS and item_id and _ID_RE.fullmatch(item_id):
            return f"Item {_short(item_id)} {verdict}."
        return None

    @app.get("/", response_class=HTMLResponse)
    def queue(request: Request) -> HTMLResponse:
        try:
            query = parse_queue_query(request.query_params)
        except FilterError as exc:
            return error_page(request, 400, "Bad filter", str(exc))
        result = store.query(query.to_filter(), offset=(query.page - 1) * page_size, limit=page_size)
        facets = store.facets()
        pages = max(1, math.ceil(result.total / page_size))
        return page(
            request,
            "queue.html",
            query=query,
            result=result,
            page=query.page,
            pages=pages,
            page_size=page_size,
            first=(query.page - 1) * page_size + 1,
            last=(query.page - 1) * page_size + len(result.items),
            statuses=REVIEW_STATUSES,
            tasks=facets.get("task", []),
            reasons=facets.get("reason", []),
            item_query=query.query_string(page=query.page),
            flash=flash_of(request.query_params),
            prev_link="?" + query.query_string(page=query.page - 1) if query.page > 1 else None,
            next_link="?" + query.query_string(page=query.page + 1) if query.page < pages else None,
            last_link="?" + query.query_string(page=pages),
        )

    # -- one item --------------------------------------------------------------------------------------------

    @app.get("/items/{item_id}", response_class=HTMLResponse)
    def item_page(request: Request, item_id: str) -> HTMLResponse:
        try:
            query = parse_queue_query(request.query_params)
            shade = parse_shade(request.query_params.get("shade"))
        except FilterError as exc:
            return error_page(request, 400, "Bad request", str(exc))
        item = store.get(item_id)
        qs = query.query_string(page=query.page)
        return page(
            request,
            "item.html",
            item=item,
            view=_item_view(item, shade),
            shade=shade,
            query=query,
            hidden=query.params(page=query.page),
            back="/?" + qs,
            item_query=qs,
            flash=flash_of(request.query_params),
            max_text_bytes=MAX_TEXT_BYTES,
        )

    @app.post("/items/{item_id}/{action}", response_class=HTMLResponse)
    async def resolve(request: Request, item_id: str, action: str) -> Response:
        verdict = _ACTIONS.get(action)
        if verdict is None:
            return error_page(request, 404, "No such action", f"{action!r} is not one of {sorted(_ACTIONS)}.")
        form = await form_of(request)
        refused = check_session_csrf(request, form)
        if refused is not None:
            return refused
        try:
            query = parse_queue_query({k: v for k, v in form.items() if k in (*FILTER_PARAMS, "page")})
        except FilterError:
            query = QueueQuery()
        note = form.get("note") or None
        if note is not None and not note.strip():
            note = None
        answer = form.get("answer", "") if verdict == "edited" else None
        reviewer = principal(request)
        try:
            await run_in_threadpool(store.resolve, item_id, verdict, answer=answer, note=note, reviewer=reviewer)
        except ReviewAlreadyResolvedError as exc:
            try:
                other = await run_in_threadpool(store.get, item_id)
                who = f"by {other.reviewer}" if other.reviewer else "by someone"
                message = (
                    f"Item {_short(item_id)} was already resolved ({other.status}) {who} at "
                    f"{format_time(other.resolved_at)}; your verdict was not recorded."
                )
            except ReviewItemNotFoundError:
                message = f"Item {_short(item_id)} was already resolved ({exc.status}); your verdict was not recorded."
            return error_page(request, 409, "Already resolved", message, item_link=f"/items/{quote(item_id)}")
        except ReviewInputError as exc:
            too_big = any(len(t.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES for t in (note, answer) if t)
            return error_page(
                request,
                413 if too_big else 400,
                "Not saved",
                f"Nothing was saved: {exc}",
                item_link=f"/items/{quote(item_id)}",
            )
        nxt = await run_in_threadpool(
            store.query,
            ReviewFilter(
                status="pending",
                task=query.task,
                reason=query.reason,
                min_confidence=query.min_confidence,
                max_confidence=query.max_confidence,
            ),
            offset=0,
            limit=1,
        )
        done = urlencode({"done": verdict, "item": item_id})
        filters = query.query_string()
        if nxt.items:
            return RedirectResponse(f"/items/{nxt.items[0].id}?{filters}&{done}", status_code=303)
        return RedirectResponse(f"/?{filters}&{done}", status_code=303)

    return app
