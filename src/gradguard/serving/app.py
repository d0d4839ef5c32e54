"""The OpenAI-compatible scoring server: :func:`create_app` builds the FastAPI app.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/score``, ``GET /v1/models``, ``/healthz``, ``/readyz``,
``/metrics``. See ``docs/serving.md`` for the wire format.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from gradguard.errors import (
    ChatTemplateError,
    ContextLengthError,
    GenerationCancelled,
    GradguardError,
    InputError,
    QueueFullError,
)
from gradguard.integrations._core.backend import LocalBackend
from gradguard.serving.chat import ChatJob
from gradguard.serving.engine import ClientGone, Engine, queue_full_error
from gradguard.serving.errors import ApiError
from gradguard.serving.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from gradguard.serving.schema import ChatRequest, ScoreRequest, parse_body
from gradguard.serving.scoring import score_request
from gradguard.serving.security import GuardMiddleware
from gradguard.serving.settings import ServerSettings, check_bind
from gradguard.tasks import BUILTIN_TASKS, UnknownTaskError

__all__ = ["create_app", "api_error_of"]

logger = logging.getLogger(__name__)


def api_error_of(exc: BaseException) -> ApiError:
    """The HTTP error of an exception raised while answering a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFullError):
        return queue_full_error(exc)
    if isinstance(exc, UnknownTaskError):
        return ApiError(400, str(exc), param="task", code="unknown_task")
    if isinstance(exc, ContextLengthError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ChatTemplateError):
        return ApiError(400, str(exc), param="messages", code="invalid_messages")
    if isinstance(exc, GenerationCancelled):
        return ApiError(504, str(exc), type="timeout_error", code="request_timeout")
    if isinstance(exc, InputError):
        return ApiError(400, str(exc))
    cause = exc.__cause__
    if isinstance(exc, GradguardError) and isinstance(cause, InputError | ChatTemplateError):
        return api_error_of(cause)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


def create_app(settings: ServerSettings | None = None, *, backend: LocalBackend | None = None) -> FastAPI:
    """The server app. ``backend``: a ready :class:`LocalBackend` (tests); else ``settings.model`` is loaded at
    startup (``/readyz`` answers 503 until then). Refuses a non-loopback host without a key (see
    :func:`~gradguard.serving.settings.check_bind`)."""
    settings = settings or ServerSettings()
    check_bind(settings)
    backend = backend or LocalBackend(model=settings.model, device=settings.device)
    metrics = ServerMetrics()
    engine = Engine(backend, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(engine.start)
            _check_default_task(engine)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz; the process stays alive
            engine.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("gradguard serve: the model could not be loaded: %s", engine.load_error)
        yield
        engine.close()

    app = FastAPI(title="gradguard", lifespan=lifespan)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.settings = settings

    def reject(path: str, error: ApiError) -> None:
        metrics.observe_request(_endpoint(path), error.status, 0.0, error.type)

    app.add_middleware(
        GuardMiddleware, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes, on_reject=reject
    )

    def served_name() -> str:
        return settings.served_model_name or backend.model_name

    def check_model(name: str | None) -> None:
        if name is None:
            return
        names = {served_name(), backend.model_name, *( [backend.source] if backend.source else [])}
        if name not in names:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {served_name()!r}",
                           param="model", code="model_not_found")

    def check_task(name: str | None) -> str | None:
        if name is None:
            return settings.task
        scorer = backend.scorer
        cal = scorer.profile.calibrations.get(name)
        if name not in BUILTIN_TASKS and cal is None:
            raise ApiError(400, f"unknown task {name!r}: calibrated tasks are {sorted(scorer.profile.calibrations)}",
                           param="task", code="unknown_task")
        if cal is None or not cal.applies_to(scorer.spt_offset, scorer.layer_span):
            raise ApiError(400, f"task {name!r} has no calibration for this model: its confidence would be None; "
                           f"calibrated tasks are {sorted(scorer.profile.calibrations)}", param="task",
                           code="uncalibrated_task")
        return name

    def require_ready() -> None:
        if not engine.ready:
            raise ApiError(503, f"the model is not loaded{': ' + engine.load_error if engine.load_error else ' yet'}",
                           type="server_error", code="model_not_ready")

    async def answer(endpoint: str, handler: Callable[[], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        try:
            response = await handler()
        except ClientGone:
            metrics.observe_request(endpoint, 499, time.perf_counter() - started, "client_disconnected")
            return Response(status_code=499)
        except Exception as exc:  # noqa: BLE001 - every error becomes OpenAI's error object
            err = api_error_of(exc)
            if err.status >= 500 and not isinstance(exc, ApiError):
                logger.exception("gradguard serve: %s failed", endpoint)
            metrics.observe_request(endpoint, err.status, time.perf_counter() - started, err.type)
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        metrics.observe_request(endpoint, response.status_code, time.perf_counter() - started)
        return response

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        async def handle() -> Response:
            req = parse_body(await request.body(), ChatRequest)
            check_model(req.model)
            require_ready()
            job = ChatJob(engine, req, served_name(), task=check_task(req.task))
            if not req.stream:
                return JSONResponse(await job.complete(request.is_disconnected))
            first, pieces = await job.first(request.is_disconnected)
            return StreamingResponse(job.stream(first, pieces), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})

        return await answer("chat_completions", handle)

    @app.post("/v1/score", response_model=None)
    async def score(request: Request) -> Response:
        async def handle() -> Response:
            req = parse_body(await request.body(), ScoreRequest)
            check_model(req.model)
            require_ready()
            return JSONResponse(await score_request(engine, req, served_name(), check_task(req.task)))

        return await answer("score", handle)

    @app.get("/v1/models", response_model=None)
    async def models() -> Response:
        async def handle() -> Response:
            item: dict[str, object] = {"id": served_name(), "object": "model", "created": 0, "owned_by": "gradguard"}
            if engine.ready:
                item["max_model_len"] = int(engine.backend.scorer.context_window)  # vLLM's name for it
            return JSONResponse({"object": "list", "data": [item]})

        return await answer("models", handle)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> Response:
        if engine.ready:
            return JSONResponse({"status": "ready", "model": served_name()})
        return JSONResponse({"status": "loading" if engine.load_error is None else "failed",
                             "error": engine.load_error}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _check_default_task(engine: Engine) -> None:
    task = engine.settings.task
    if task is not None and task not in BUILTIN_TASKS and task not in engine.backend.scorer.profile.calibrations:
        raise UnknownTaskError(f"--task {task!r} is neither built in nor calibrated for this model")


def _endpoint(path: str) -> str:
    return {"/v1/chat/completions": "chat_completions", "/v1/score": "score", "/v1/models": "models"}.get(
        path, path.strip("/") or "root"
    )


