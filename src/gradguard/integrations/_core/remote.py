"""A :class:`ScoringBackend` over HTTP: a ``gradguard serve`` scoring server hosts the model.

:class:`RemoteBackend` speaks the server's OpenAI-compatible wire format (``/v1/chat/completions`` with
``"gradguard_result": true``, ``/v1/score``, ``/v1/models``) with httpx, and rebuilds the very
:class:`~gradguard.ScoreResult` / :class:`~gradguard.integrations._core.ToolTurn` the server computed
(:func:`gradguard.serving.wire.result_from_wire`), so an integration over a remote model publishes the same
metadata, and routes the same way, as one over a local model. Framework-free.

Failures raise :class:`RemoteServerError` (an :class:`IntegrationError`) naming the HTTP status, the server's
message and the URL; never a raw httpx exception. A full queue (429) and an overloaded proxy (503) are
retried, honouring ``Retry-After``, as are connection errors before any byte of the answer arrived.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradguard.integrations._core.errors import IntegrationError
from gradguard.integrations._core.options import GenerationOptions
from gradguard.integrations._core.streaming import StreamPiece
from gradguard.integrations._core.tool_formats import HermesFormat, InvalidToolCall, ToolCall
from gradguard.integrations._core.tool_turn import ScoredCall, ToolMessages, ToolTurn, TurnPiece
from gradguard.integrations._core.tools import ToolBinding, ToolNames, normalize_tools, parse_tool_choice
from gradguard.result import ScoreResult
from gradguard.serving.wire import RESULT_FIELD, RESULT_KEY, TURN_KEY, WireFormatError, result_from_wire

__all__ = [
    "RemoteBackend", "RemoteServerError", "RemoteToolBinding", "DEFAULT_CONTEXT_WINDOW", "API_KEY_ENV", "ExpectedModel",
    "model_warnings",
]

logger = logging.getLogger(__name__)

#: The environment variable holding the server's API key when ``api_key`` is not given.
API_KEY_ENV = "GRADGUARD_API_KEY"
#: The context window reported when the server does not say (``/v1/models`` without ``context_window``).
DEFAULT_CONTEXT_WINDOW = 32768
#: The longest ``Retry-After`` honoured before a retry (seconds); a longer one is cut to this.
MAX_RETRY_AFTER = 30.0
#: How many results' OpenAI logprobs are kept for :meth:`RemoteBackend.logprobs`.
_KEPT_LOGPROBS = 256
_RETRY_STATUS = (429, 503)


class RemoteServerError(IntegrationError):
    """The scoring server could not be reached, refused the request or answered something unusable.

    ``status`` is the HTTP status (None: no answer), ``url`` the request's URL, ``server_message`` and ``code``
    the server's OpenAI error object's ``message`` and ``code``.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        server_message: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.server_message = server_message
        self.code = code


@dataclass
class RemoteToolBinding(ToolBinding):
    """Tools bound to a remote model: the OpenAI-format ``tools`` and ``tool_choice`` sent with each request.

    The server renders them through its model's chat template, enforces ``tool_choice`` and parses and checks
    the calls; here they are only normalised and checked (a malformed tool raises ``ToolSchemaError``, an
    unknown ``tool_choice`` ``ToolChoiceError``). ``fmt`` is a placeholder: parsing is the server's.
    """

    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None

    @classmethod
    def remote(cls, tools: Any, tool_choice: Any = None) -> RemoteToolBinding:
        """Bind ``tools`` (OpenAI dicts, bare ``{"name", ...}`` dicts, pydantic models) with ``tool_choice``."""
        specs = normalize_tools(tools)
        choice = parse_tool_choice(tool_choice, specs)
        wire_choice: Any = choice.mode
        if choice.mode == "tool":
            wire_choice = {"type": "function", "function": {"name": choice.name}}
        return cls(specs, choice, HermesFormat(), ToolNames(s.name for s in specs),
                   tools=[s.to_openai() for s in specs], tool_choice=wire_choice)


def _remote_binding(binding: ToolBinding) -> RemoteToolBinding:
    if isinstance(binding, RemoteToolBinding):
        return binding
    choice: Any = binding.choice.name if binding.choice.mode == "tool" else binding.choice.mode
    return RemoteToolBinding.remote([s.to_openai() for s in binding.specs], choice)


class RemoteBackend:
    """A model hosted by a ``gradguard serve`` server at ``base_url`` (``http://host:8000``, ``/v1`` optional).

    ``api_key``: the server's key (default: ``$GRADGUARD_API_KEY``; sent as ``Authorization: Bearer``);
    ``timeout``: seconds per request; ``max_retries``: retries of a 429/503 answer (after ``Retry-After``) or of
    a connection error before any answer; ``model``: the served model name (default: the first of
    ``/v1/models``); ``headers``: extra request headers. ``transport``/``async_transport``: httpx transports
    (tests). Thread-safe; async methods open a client per call (so they work from any event loop).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        model: str | None = None,
        headers: Mapping[str, str] | None = None,
        transport: Any = None,
        async_transport: Any = None,
    ) -> None:
        try:
            import httpx  # noqa: F401 - checked here so the error names the extra
        except ImportError as exc:  # pragma: no cover - httpx ships with the client extra
            raise IntegrationError(
                "RemoteBackend needs httpx; pip install 'gradguard[client]'"
            ) from exc
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise IntegrationError(
                f"base_url={base_url!r} is not an http(s) URL; pass the server's address, e.g. 'http://127.0.0.1:8000'"
            )
        if max_retries < 0 or timeout <= 0:
            raise IntegrationError(f"max_retries={max_retries!r} must be >= 0 and timeout={timeout!r} > 0")
        root = base_url.rstrip("/")
        self.base_url = root[: -len("/v1")] if root.endswith("/v1") else root
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.model = model
        self._headers = {"Accept": "application/json", **dict(headers or {})}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        self._transport, self._async_transport = transport, async_transport
        self._client: Any = None
        self._lock = threading.Lock()
        self._models: list[dict[str, Any]] | None = None
        self._logprobs: OrderedDict[int, tuple[ScoreResult, Any]] = OrderedDict()

    def __repr__(self) -> str:
        return f"RemoteBackend({self.base_url!r}, model={self.model!r})"

    # --- HTTP plumbing ------------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _sync_client(self) -> Any:
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.base_url, headers=self._headers, timeout=self.timeout, transport=self._transport
                )
            return self._client

    def _async_client(self) -> Any:
        import httpx

        return httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=self.timeout, transport=self._async_transport
        )

    def close(self) -> None:
        """Close the HTTP connections (a later call opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): ``Retry-After`` when given, else 0.5, 1, 2, ..."""
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER)
            except ValueError:
                when = email.utils.parsedate_to_datetime(retry_after) if retry_after.strip() else None
                if when is not None:
                    return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)
        return min(0.5 * 2**attempt, MAX_RETRY_AFTER)

    def _transport_error(self, exc: Exception, path: str) -> RemoteServerError:
        import httpx

        url = self._url(path)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return RemoteServerError(
                f"cannot connect to the gradguard server at {self.base_url} ({type(exc).__name__}: {exc}); "
                "is `gradguard serve` running there?", url=url,
            )
        if isinstance(exc, httpx.TimeoutException):
            return RemoteServerError(
                f"the gradguard server at {url} sent no answer within {self.timeout:g} s ({type(exc).__name__}); "
                "raise timeout= or ask for fewer tokens", url=url,
            )
        return RemoteServerError(f"the request to {url} failed: {type(exc).__name__}: {exc}", url=url)

    @staticmethod
    def _retryable(exc: Exception) -> bool:
        """Connection errors raised before any byte of the answer arrived (the request may be sent again)."""
        import httpx

        return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.RemoteProtocolError)

    def _status_error(self, status: int, body: bytes, path: str, reason: str = "") -> RemoteServerError:
        url = self._url(path)
        message, code = None, None
        try:
            error = json.loads(body or b"null")
            error = error.get("error") if isinstance(error, dict) else None
            if isinstance(error, dict):
                message, code = error.get("message"), error.get("code")
            elif isinstance(error, str):
                message = error
        except ValueError:
            pass
        if message is None:
            message = body[:300].decode("utf-8", "replace").strip() or reason or "no message"
        hint = {
            401: "; pass the server's key as api_key= (or set GRADGUARD_API_KEY)",
            403: "; the key is not allowed to use this server",
            404: "; is this a gradguard server (`gradguard serve`) and is the URL its root?",
            429: f"; the server's queue stayed full after {self.max_retries} retries: retry later or raise max_retries",
            503: f"; the server stayed overloaded after {self.max_retries} retries",
            504: "; the request ran longer than the server's request timeout: ask for fewer tokens",
        }.get(status, "")
        return RemoteServerError(
            f"the gradguard server at {url} answered {status}{f' {reason}' if reason else ''}: {message}{hint}",
            url=url, status=status, server_message=str(message), code=code,
        )

    def _send(self, method: str, path: str, body: Any = None, *, retries: int | None = None) -> Any:
        """Send a request (retrying as documented) and return the open, streamed ``httpx.Response`` (status < 400).
        The caller closes it."""
        client = self._sync_client()
        retries = self.max_retries if retries is None else retries
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                request = client.build_request(method, path, json=body)
                response = client.send(request, stream=True)
            except Exception as exc:  # httpx's errors, converted
                if self._retryable(exc) and not last:
                    logger.info("gradguard server %s: %s; retrying", self.base_url, exc)
                    time.sleep(self._delay(attempt))
                    continue
                raise self._transport_error(exc, path) from None
            if response.status_code < 400:
                return response
            try:
                content = response.read()
            except Exception:  # noqa: BLE001 - the status says enough
                content = b""
            finally:
                response.close()
            if response.status_code in _RETRY_STATUS and not last:
                delay = self._delay(attempt, response.headers.get("retry-after"))
                logger.info("gradguard server %s answered %s; retrying in %.2f s", self.base_url,
                            response.status_code, delay)
                time.sleep(delay)
                continue
            raise self._status_error(response.status_code, content, path, response.reason_phrase)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _asend(self, client: Any, method: str, path: str, body: Any = None) -> Any:
        """Async :meth:`_send` with ``client`` (an ``httpx.AsyncClient``)."""
        import asyncio

        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                request = client.build_request(method, path, json=body)
                response = await client.send(request, stream=True)
            except Exception as exc:
                if self._retryable(exc) and not last:
                    await asyncio.sleep(self._delay(attempt))
                    continue
                raise self._transport_error(exc, path) from None
            if response.status_code < 400:
                return response
            try:
                content = await response.aread()
            except Exception:  # noqa: BLE001
                content = b""
            finally:
                await response.aclose()
            if response.status_code in _RETRY_STATUS and not last:
                await asyncio.sleep(self._delay(attempt, response.headers.get("retry-after")))
                continue
            raise self._status_error(response.status_code, content, path, response.reason_phrase)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, content: bytes, path: str) -> dict[str, Any]:
        try:
            data = json.loads(content)
        except ValueError:
            raise RemoteServerError(
                f"the answer of {self._url(path)} is not JSON: {content[:200]!r}; is this a gradguard server?",
                url=self._url(path),
            ) from None
        if not isinstance(data, dict):
            raise RemoteServerError(f"the answer of {self._url(path)} is not a JSON object", url=self._url(path))
        return data

    def _call(self, method: str, path: str, body: Any = None, *, retries: int | None = None) -> dict[str, Any]:
        response = self._send(method, path, body, retries=retries)
        try:
            content = response.read()
        except Exception as exc:
            raise self._transport_error(exc, path) from None
        finally:
            response.close()
        return self._json(content, path)

    async def _acall(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self._async_client() as client:
            response = await self._asend(client, method, path, body)
            try:
                content = await response.aread()
            except Exception as exc:
                raise self._transport_error(exc, path) from None
            finally:
                await response.aclose()
        return self._json(content, path)

    # --- model --------------------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """The server's ``/v1/models`` entries (cached after the first answer)."""
        if self._models is None:
            data = self._call("GET", "/v1/models", retries=0).get("data")
            if not isinstance(data, list) or not data or not all(isinstance(d, dict) for d in data):
                url = self._url("/v1/models")
                raise RemoteServerError(f"{url} lists no model; is this a gradguard server?", url=url)
            self._models = data
        return self._models

    def _entry(self) -> dict[str, Any] | None:
        try:
            models = self.models()
        except RemoteServerError as exc:
            logger.warning("gradguard: cannot read the served model: %s", exc)
            return None
        return next((m for m in models if m.get("id") == self.model), models[0])

    @property
    def model_name(self) -> str:
        """The served model's name: ``model`` when given, else the first of ``/v1/models`` (cached). When the server
        cannot be reached this does not raise: it is ``"unknown (<base_url>)"`` (calls then raise)."""
        if self.model is not None:
            return self.model
        entry = self._entry()
        return str(entry["id"]) if entry is not None and entry.get("id") else f"unknown ({self.base_url})"

    @property
    def context_window(self) -> int:
        """The model's context window: the ``context_window`` (or vLLM's ``max_model_len``) of its ``/v1/models``
        entry, else :data:`DEFAULT_CONTEXT_WINDOW`."""
        entry = self._entry() or {}
        value = entry.get("context_window") or entry.get("max_model_len")
        return int(value) if isinstance(value, int) and value > 0 else DEFAULT_CONTEXT_WINDOW

    # --- requests and answers -----------------------------------------------------------------------------

    def _chat_body(
        self,
        messages: ToolMessages,
        options: GenerationOptions,
        *,
        stream: bool,
        binding: RemoteToolBinding | None = None,
        reasoning: bool = True,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": _wire_messages(messages), "max_tokens": options.max_new_tokens,
                                RESULT_FIELD: True}
        if self.model is not None:
            body["model"] = self.model
        sample = options.do_sample if options.do_sample is not None else bool(options.temperature)
        body["temperature"] = (options.temperature or 1.0) if sample else 0.0
        if sample and options.top_p is not None:
            body["top_p"] = options.top_p
        if sample and options.top_k is not None:
            body["top_k"] = options.top_k  # an extension (a server that does not know it ignores it)
        if options.repetition_penalty is not None:
            body["repetition_penalty"] = options.repetition_penalty
        if options.stop:
            body["stop"] = list(options.stop)
        if options.logprobs or options.top_logprobs:
            body["logprobs"] = True
            if options.top_logprobs:
                body["top_logprobs"] = options.top_logprobs
        if options.task is not None:
            body["task"] = options.task
        if not reasoning:
            body["score_reasoning"] = True  # an extension: score a <think> section too
        if binding is not None:
            if binding.tools:
                body["tools"] = binding.tools
            body["tool_choice"] = binding.tool_choice if binding.tools else "none"
        if stream:
            body["stream"] = True
        return body

    def _remember(self, result: ScoreResult, logprobs: Any) -> None:
        with self._lock:
            self._logprobs[id(result)] = (result, logprobs)
            while len(self._logprobs) > _KEPT_LOGPROBS:
                self._logprobs.popitem(last=False)

    def _choice(self, data: Mapping[str, Any], path: str) -> dict[str, Any]:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise RemoteServerError(f"the answer of {self._url(path)} has no choices", url=self._url(path))
        return choices[0]

    def _result(self, holder: Mapping[str, Any], path: str) -> ScoreResult:
        if RESULT_KEY not in holder:
            meta = holder.get("gradguard")
            why = meta.get("error") if isinstance(meta, Mapping) else None
            raise RemoteServerError(
                f"the answer of {self._url(path)} carries no gradguard result"
                + (f": {why}" if why else "; is this a gradguard server (not a plain OpenAI-compatible one)?"),
                url=self._url(path), server_message=why,
            )
        try:
            return result_from_wire(holder[RESULT_KEY])
        except WireFormatError as exc:
            raise RemoteServerError(f"{self._url(path)}: {exc}", url=self._url(path)) from None

    def _completion(self, data: Mapping[str, Any]) -> ScoreResult:
        choice = self._choice(data, _CHAT)
        result = self._result(choice, _CHAT)
        self._remember(result, choice.get("logprobs"))
        return result

    def _turn(self, data: Mapping[str, Any]) -> ToolTurn:
        choice = self._choice(data, _CHAT)
        result = self._result(choice, _CHAT)
        self._remember(result, choice.get("logprobs"))
        message = choice.get("message") or {}
        calls = [self._call_of(c) for c in message.get("tool_calls") or []]
        return _rebuild_turn(result, str(message.get("content") or ""), calls, choice.get(TURN_KEY))

    def _call_of(self, entry: Mapping[str, Any]) -> ToolCall:
        fn = entry.get("function") or {}
        raw = fn.get("arguments")
        try:
            args = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        except ValueError:
            raise RemoteServerError(
                f"{self._url(_CHAT)}: tool call {entry.get('id')!r} has arguments that are not JSON: {raw!r:.200}",
                url=self._url(_CHAT),
            ) from None
        return ToolCall(str(entry.get("id") or ""), str(fn.get("name") or ""), args, (0, 0))

    def _score_body(self, messages: Sequence[Mapping[str, Any]], answer: str, task: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": _wire_messages(messages), "response": answer, RESULT_FIELD: True}
        if self.model is not None:
            body["model"] = self.model
        if task is not None:
            body["task"] = task
        return body

    def _scored(self, data: Mapping[str, Any]) -> ScoreResult:
        results = data.get("results")
        if not isinstance(results, list) or not results or not isinstance(results[0], dict):
            raise RemoteServerError(f"the answer of {self._url(_SCORE)} has no results", url=self._url(_SCORE))
        return self._result(results[0], _SCORE)

    # --- the ScoringBackend protocol ----------------------------------------------------------------------

    def generate(self, messages: ToolMessages, options: GenerationOptions, *, reasoning: bool = True) -> ScoreResult:
        """Generate and score an answer on the server (``reasoning=False``: score a ``<think>`` section too)."""
        return self._completion(self._call("POST", _CHAT, self._chat_body(messages, options, stream=False,
                                                                            reasoning=reasoning)))

    def score(self, messages: ToolMessages, answer: str, *, task: str | None = None) -> ScoreResult:
        """Score ``answer`` to ``messages`` teacher-forced on the server (``/v1/score``). An answer the server could
        not score raises :class:`RemoteServerError` with its reason."""
        return self._scored(self._call("POST", _SCORE, self._score_body(messages, answer, task)))

    def logprobs(self, result: ScoreResult) -> dict[str, Any]:
        """The OpenAI logprobs the server sent with ``result`` (kept for the last 256 results of this backend)."""
        with self._lock:
            entry = self._logprobs.get(id(result))
        if entry is None or entry[0] is not result:
            raise IntegrationError(
                "the logprobs of this result are unknown: a remote model's logprobs come with its answer; "
                "ask for them with logprobs=True when generating"
            )
        return dict(entry[1]) if isinstance(entry[1], Mapping) else {"content": None, "refusal": None}

    def bind(self, tools: Any, tool_choice: Any = None) -> ToolBinding:
        """Bind ``tools`` (checked here; rendered, enforced and parsed by the server)."""
        return RemoteToolBinding.remote(tools, tool_choice)

    def generate_turn(
        self, messages: ToolMessages, binding: ToolBinding, options: GenerationOptions, *, reasoning: bool = True
    ) -> ToolTurn:
        """One assistant turn with ``binding``'s tools, generated, parsed and scored per call by the server."""
        body = self._chat_body(messages, options, stream=False, binding=_remote_binding(binding), reasoning=reasoning)
        return self._turn(self._call("POST", _CHAT, body))

    def stream(
        self, messages: ToolMessages, options: GenerationOptions, *, reasoning: bool = True
    ) -> Iterator[StreamPiece]:
        """Stream the answer; the last piece carries the result. Closing the iterator closes the connection (the
        server then stops generating)."""
        return self._events(self._chat_body(messages, options, stream=True, reasoning=reasoning), turn=False)

    def stream_turn(
        self, messages: ToolMessages, binding: ToolBinding, options: GenerationOptions, *, reasoning: bool = True
    ) -> Iterator[TurnPiece]:
        """Stream one turn with tools: content, each call once complete, the scored turn on the last piece."""
        body = self._chat_body(messages, options, stream=True, binding=_remote_binding(binding), reasoning=reasoning)
        return self._events(body, turn=True)

    def _events(self, body: dict[str, Any], *, turn: bool) -> Iterator[Any]:
        state = _StreamState(self, turn=turn)
        response = self._send("POST", _CHAT, body)
        try:
            for line in _lines(response.iter_lines, self, _CHAT):
                out = state.feed(line)
                if out is _DONE:
                    break
                yield from out
        finally:
            response.close()
        state.finish()

    # --- async --------------------------------------------------------------------------------------------

    async def agenerate(
        self, messages: ToolMessages, options: GenerationOptions, *, reasoning: bool = True
    ) -> ScoreResult:
        """Async :meth:`generate`."""
        body = self._chat_body(messages, options, stream=False, reasoning=reasoning)
        return self._completion(await self._acall("POST", _CHAT, body))

    async def ascore(self, messages: ToolMessages, answer: str, *, task: str | None = None) -> ScoreResult:
        """Async :meth:`score`."""
        return self._scored(await self._acall("POST", _SCORE, self._score_body(messages, answer, task)))

    async def agenerate_turn(
        self, messages: ToolMessages, binding: ToolBinding, options: GenerationOptions, *, reasoning: bool = True
    ) -> ToolTurn:
        """Async :meth:`generate_turn`."""
        body = self._chat_body(messages, options, stream=False, binding=_remote_binding(binding), reasoning=reasoning)
        return self._turn(await self._acall("POST", _CHAT, body))

    async def astream(
        self, messages: ToolMessages, options: GenerationOptions, *, reasoning: bool = True
    ) -> AsyncIterator[StreamPiece]:
        """Async :meth:`stream`; closing the async iterator closes the connection."""
        body = self._chat_body(messages, options, stream=True, reasoning=reasoning)
        async for piece in self._astream_events(body, turn=False):
            yield piece

    async def astream_turn(
        self, messages: ToolMessages, binding: ToolBinding, options: GenerationOptions, *, reasoning: bool = True
    ) -> AsyncIterator[TurnPiece]:
        """Async :meth:`stream_turn`."""
        body = self._chat_body(messages, options, stream=True, binding=_remote_binding(binding), reasoning=reasoning)
        async for piece in self._astream_events(body, turn=True):
            yield piece

    async def _astream_events(self, body: dict[str, Any], *, turn: bool) -> AsyncIterator[Any]:
        state = _StreamState(self, turn=turn)
        async with self._async_client() as client:
            response = await self._asend(client, "POST", _CHAT, body)
            try:
                lines = response.aiter_lines()
                while True:
                    try:
                        line = await lines.__anext__()
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        raise self._transport_error(exc, _CHAT) from None
                    out = state.feed(line)
                    if out is _DONE:
                        break
                    for piece in out:
                        yield piece
            finally:
                await response.aclose()
        state.finish()


_CHAT = "/v1/chat/completions"
_SCORE = "/v1/score"
_DONE = object()


def _lines(iter_lines: Any, backend: RemoteBackend, path: str) -> Iterator[str]:
    """``response.iter_lines()`` with transport errors converted."""
    iterator = iter_lines()
    while True:
        try:
            line = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise backend._transport_error(exc, path) from None
        yield line


def _wire_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as OpenAI's wire schema wants them: a past call's ``arguments`` as a JSON string."""
    out = []
    for message in messages:
        item = dict(message)
        if item.get("tool_calls"):
            calls = []
            for call in item["tool_calls"]:
                call = dict(call)
                fn = call.get("function")
                if isinstance(fn, Mapping) and not isinstance(fn.get("arguments"), str):
                    call["function"] = {**fn, "arguments": json.dumps(fn.get("arguments") or {}, ensure_ascii=False)}
                calls.append(call)
            item["tool_calls"] = calls
        out.append(item)
    return out


def _rebuild_turn(result: ScoreResult, content: str, calls: list[ToolCall], extra: Any) -> ToolTurn:
    """The :class:`ToolTurn` the server sent: each call with its own part of ``result`` (None: not scored)."""
    extra = extra if isinstance(extra, Mapping) else {}
    parts = list(result.parts)
    scored = [ScoredCall(c, parts[i] if i < len(parts) and parts[i].scored else None) for i, c in enumerate(calls)]
    invalid = [
        InvalidToolCall(str(c.get("id") or ""), c.get("name"), c.get("arguments"), str(c.get("error") or ""), None)
        for c in extra.get("invalid_tool_calls") or [] if isinstance(c, Mapping)
    ]
    return ToolTurn(result, content, scored, invalid, str(extra.get("reasoning") or ""))


class _StreamState:
    """Reads a chat-completion SSE stream: text (and calls) as they come, the result on the choice's last chunk."""

    def __init__(self, backend: RemoteBackend, *, turn: bool) -> None:
        self.backend, self.turn = backend, turn
        self.text = ""
        self.calls: list[ToolCall] = []
        self.logprobs: list[Any] = []
        self.done = False

    def _error(self, message: str, **kwargs: Any) -> RemoteServerError:
        return RemoteServerError(message, url=self.backend._url(_CHAT), **kwargs)

    def feed(self, line: str) -> Any:
        """The pieces that ``line`` completes, or ``_DONE``."""
        line = line.strip()
        if not line or line.startswith(":") or not line.startswith("data:"):
            return ()
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            return _DONE
        try:
            event = json.loads(payload)
        except ValueError:
            url = self.backend._url(_CHAT)
            raise self._error(f"{url} streamed a line that is not JSON: {payload[:200]!r}") from None
        if isinstance(event, Mapping) and "error" in event:
            error = event["error"] if isinstance(event["error"], Mapping) else {"message": str(event["error"])}
            raise self._error(
                f"the gradguard server at {self.backend._url(_CHAT)} failed mid-stream: {error.get('message')}",
                server_message=error.get("message"), code=error.get("code"),
            )
        choices = event.get("choices") if isinstance(event, Mapping) else None
        if not choices:
            return ()  # the usage chunk
        choice = choices[0]
        delta = choice.get("delta") or {}
        if isinstance(choice.get("logprobs"), Mapping):
            self.logprobs.extend(choice["logprobs"].get("content") or [])
        pieces: list[Any] = []
        text = str(delta.get("content") or "")
        calls = [self.backend._call_of(c) for c in delta.get("tool_calls") or []]
        self.text += text
        self.calls += calls
        if choice.get("finish_reason") is None and RESULT_KEY not in choice:
            if text or calls:
                pieces.append(TurnPiece(text, calls) if self.turn else StreamPiece(text))
            return pieces
        result = self.backend._result(choice, _CHAT)
        self.backend._remember(result, {"content": self.logprobs, "refusal": None} if self.logprobs else None)
        self.done = True
        if not self.turn:
            sent = self.text[: len(self.text) - len(text)]
            rest = result.response[len(sent):] if result.response.startswith(sent) else text
            return [StreamPiece(rest, result)]
        turn = _rebuild_turn(result, self.text, self.calls, choice.get(TURN_KEY))
        return [TurnPiece(text, calls, turn)]

    def finish(self) -> None:
        if not self.done:
            raise self._error(
                f"the stream from {self.backend._url(_CHAT)} ended before its scored result arrived "
                "(the server stopped or the connection was cut)"
            )


#: ``expected_model`` of the side-car handlers: the scorer's model name, or a map generator name -> scorer name.
ExpectedModel = str | Mapping[str, str] | None


def model_warnings(generator: str | None, scorer: Sequence[str | None], expected: ExpectedModel) -> list[str]:
    """Human-readable warnings when an answer from model ``generator`` is scored by a different model (``scorer``:
    the names the scoring model goes by). Scores of another model's answers are not that model's uncertainty.

    ``expected=None``: warn when the generator's name is known and is none of the scorer's names. A string: the
    scorer must be that model, and the generator's name must be known. A mapping (generator name -> scorer name,
    e.g. ``{"qwen2.5:0.5b": "Qwen/Qwen2.5-0.5B-Instruct"}``): the generator must be in it and map to the scorer.
    """
    names = [n for n in scorer if n]
    shown = names[0] if names else "unknown"
    if isinstance(expected, str):
        out = []
        if expected not in names:
            out.append(f"the scoring server serves {shown!r}, not the expected model {expected!r}: these scores are "
                       "another model's; point scorer_url at a server for the generating model")
        if generator is None:
            out.append(f"the generating model's name is unknown, so it cannot be checked against {expected!r}; "
                       "make sure the generator is that model")
        return out
    if expected is None:
        if generator is None or generator in names:
            return []
        return [f"the answer was generated by {generator!r} but scored by {shown!r}: scores are only meaningful for "
                "the same model; if these are the same model under two names, pass "
                f"expected_model={{{generator!r}: {shown!r}}}"]
    if generator is None:
        return [f"the generating model's name is unknown, so it cannot be matched in expected_model "
                f"{dict(expected)!r}; the answer was scored by {shown!r}"]
    if generator not in expected:
        return [f"the generating model {generator!r} is not in expected_model {sorted(expected)!r}; the answer was "
                f"scored by {shown!r}: add it if they are the same model"]
    if expected[generator] not in names:
        return [f"the generating model {generator!r} should be scored by {expected[generator]!r} (expected_model), "
                f"but the scoring server serves {shown!r}"]
    return []
