"""``/v1/chat/completions``: OpenAI's chat completion (and chunk stream) with each choice's gradguard score.

Every choice carries ``"gradguard"``: :meth:`ScoreResult.metadata` (a turn with tools: :meth:`ToolTurn.metadata`),
the dict the LangChain and LlamaIndex integrations publish. An answer that was generated but could not be scored
carries the unscored metadata (``scored: false``, ``error``): the answer is never lost to a scoring failure.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from gradguard.batching import GenerationRequest
from gradguard.errors import GenerationCancelled, GradguardError, InputError
from gradguard.integrations._core.metadata import METADATA_KEY, unscored_metadata
from gradguard.integrations._core.options import GenerationOptions
from gradguard.integrations._core.streaming import StreamPiece, _TokenFeed, stream_generation
from gradguard.integrations._core.tool_turn import ToolTurn, TurnPiece, reasoning_spans
from gradguard.integrations._core.tools import ToolBinding
from gradguard.result import ScoreResult
from gradguard.serving.engine import ClientGone, Engine, ThreadStream, timeout_error
from gradguard.serving.errors import ApiError
from gradguard.serving.schema import ChatRequest, chat_messages, has_tool_history
from gradguard.serving.wire import RESULT_KEY, TURN_KEY, json_safe, result_to_wire

__all__ = ["ChatJob", "DEFAULT_MAX_TOKENS"]

logger = logging.getLogger(__name__)

#: max_tokens when a request gives none (capped by the server's max_tokens_limit).
DEFAULT_MAX_TOKENS = 512


class _Choice:
    """One finished choice: its text, tool calls, result (None: unscored) and metadata."""

    def __init__(
        self, content: str, result: ScoreResult | None, meta: dict[str, Any], *, finish: str,
        turn: ToolTurn | None = None,
    ) -> None:
        self.content, self.result, self.meta, self.finish, self.turn = content, result, meta, finish, turn


class ChatJob:
    """One chat completion request, checked and ready to run (plain text through the micro-batcher; a turn with
    tools through the backend, one at a time)."""

    def __init__(self, engine: Engine, req: ChatRequest, model_name: str, *, task: str | None) -> None:
        s = engine.settings
        self.engine, self.req, self.model_name = engine, req, model_name
        req.check_supported()
        if req.n > s.max_n:
            raise ApiError(400, f"n={req.n} is more than this server's limit of {s.max_n}", param="n")
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        if asked is not None and asked > s.max_tokens_limit:
            raise ApiError(400, f"{name}={asked} is more than this server's limit of {s.max_tokens_limit}", param=name)
        self.max_tokens = asked if asked is not None else min(DEFAULT_MAX_TOKENS, s.max_tokens_limit)
        self.task = task
        self.binding: ToolBinding | None = None
        choice = req.tool_choice
        if req.tools or choice not in (None, "auto", "none") or has_tool_history(req.messages):
            # As the integrations do: a tool history without tools bound still goes through a binding (choice none).
            try:
                bound = choice if req.tools or choice not in (None, "auto") else "none"
                self.binding = engine.backend.bind(req.tools or [], bound)
            except InputError as exc:
                param = "tool_choice" if type(exc).__name__ == "ToolChoiceError" else "tools"
                raise ApiError(400, str(exc), param=param) from None
        self.messages = chat_messages(req.messages, tools=self.binding is not None)
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.deadline = time.monotonic() + s.request_timeout_s
        self._admission: Any = None

    # -- what to run ---------------------------------------------------------------------------------------------

    def generation(self) -> GenerationRequest:
        """The micro-batcher's request for one plain-text choice."""
        r = self.req
        sample = bool(r.temperature)
        spans = None if r.score_reasoning else reasoning_spans(self.engine.backend.scorer.tokenizer)
        return GenerationRequest(
            messages=self.messages, max_new_tokens=self.max_tokens, do_sample=sample,
            temperature=r.temperature if sample else None, top_p=r.top_p if sample else None,
            top_k=r.top_k if sample else None, stop=r.stops(), top_logprobs=r.top_logprobs or 0, task=self.task,
            max_time=self.engine.settings.request_timeout_s, spans=spans,
        )

    def options(self) -> GenerationOptions:
        """The options of one turn with tools."""
        r = self.req
        return GenerationOptions(
            max_new_tokens=self.max_tokens, temperature=r.temperature, top_p=r.top_p if r.temperature else None,
            top_k=r.top_k if r.temperature else None,
            stop=r.stops(), logprobs=bool(r.logprobs), top_logprobs=r.top_logprobs, task=self.task,
            timeout=self.engine.settings.request_timeout_s,
        )

    # -- non-streaming -------------------------------------------------------------------------------------------

    async def complete(self, disconnected: Any) -> dict[str, Any]:
        """The ``chat.completion`` object."""
        choices = await (self._turns(disconnected) if self.binding is not None else self._plain(disconnected))
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model_name,
            "choices": [self._choice_body(i, c) for i, c in enumerate(choices)],
            "usage": self._usage(choices),
        }

    async def _plain(self, disconnected: Any) -> list[_Choice]:
        cancel = threading.Event()
        gen = self.generation()
        feeds = [_TokenFeed() for _ in range(self.req.n)]
        futures = []
        try:
            for feed in feeds:
                futures.append(self.engine.submit(gen, streamer=feed, cancel=cancel))
        except BaseException:
            cancel.set()
            raise
        outcomes = await self.engine.wait(futures, cancel=cancel.set, disconnected=disconnected, deadline=self.deadline)
        return [self._plain_choice(out, feed) for out, feed in zip(outcomes, feeds, strict=True)]

    def _plain_choice(self, outcome: Any, feed: _TokenFeed) -> _Choice:
        if isinstance(outcome, ScoreResult):
            return self._scored(outcome)
        if isinstance(outcome, GenerationCancelled):
            raise timeout_error(self.engine.settings.request_timeout_s)
        ids: list[int] = []
        while not feed.items.empty():
            kind, payload = feed.items.get_nowait()
            if kind == "ids":
                ids.extend(payload)
        if not ids:
            raise outcome  # nothing was generated: the request's own error (400 for bad input, else 500)
        return self._unscored(self._decode(ids), outcome)

    def _decode(self, ids: list[int]) -> str:
        text = str(self.engine.backend.scorer.tokenizer.decode(ids, skip_special_tokens=True))
        cuts = [i for i in (text.find(s) for s in self.req.stops()) if i >= 0]
        return text[: min(cuts)] if cuts else text

    def _scored(self, result: ScoreResult) -> _Choice:
        meta = result.metadata()
        self.engine.metrics.observe_result(result, meta)
        return _Choice(result.response, result, meta, finish=result.finish_reason or "stop")

    def _unscored(self, content: str, error: BaseException) -> _Choice:
        logger.warning("an answer could not be scored: %s: %s", type(error).__name__, error)
        self.engine.metrics.observe_result(None)
        meta = unscored_metadata(f"scoring failed: {type(error).__name__}: {error}", model=self.model_name)
        return _Choice(content, None, meta, finish="stop")

    def _turned(self, turn: ToolTurn) -> _Choice:
        meta = turn.metadata()
        self.engine.metrics.observe_result(turn.result, meta)
        finish = "tool_calls" if turn.calls else (turn.result.finish_reason or "stop")
        return _Choice(turn.content, turn.result, meta, finish=finish, turn=turn)

    async def _turns(self, disconnected: Any) -> list[_Choice]:
        choices = []
        with self.engine.admit():
            for _ in range(self.req.n):
                stream = ThreadStream(self._turn_iterator)
                turn: ToolTurn | None = None
                try:
                    async for piece in self._guarded(stream, disconnected):
                        if piece.turn is not None:
                            turn = piece.turn
                finally:
                    stream.cancel()
                if turn is None:
                    raise GradguardError("the turn ended without a result")
                choices.append(self._turned(turn))
        return choices

    def _turn_iterator(self, stream: ThreadStream) -> Iterator[TurnPiece]:
        assert self.binding is not None
        return self.engine.backend.stream_turn(
            self.messages, self.binding, self.options(), reasoning=not self.req.score_reasoning
        )

    async def _guarded(self, stream: ThreadStream, disconnected: Any) -> AsyncIterator[Any]:
        """``stream``'s items, cancelling it on a disconnect (ClientGone) or past the deadline (504)."""
        while True:
            try:
                kind, value = await stream.get(0.1)
            except TimeoutError:
                if disconnected is not None and await disconnected():
                    stream.cancel()
                    raise ClientGone from None
                if time.monotonic() > self.deadline:
                    stream.cancel()
                    raise timeout_error(self.engine.settings.request_timeout_s) from None
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    # -- bodies --------------------------------------------------------------------------------------------------

    def _extras(self, choice: _Choice) -> dict[str, Any]:
        body: dict[str, Any] = {METADATA_KEY: json_safe(choice.meta)}
        if self.req.want_result and choice.result is not None:
            body[RESULT_KEY] = result_to_wire(choice.result)
        if choice.turn is not None:
            body[TURN_KEY] = {
                "reasoning": choice.turn.reasoning,
                "invalid_tool_calls": [
                    {"id": c.id, "name": c.name, "arguments": c.arguments, "error": c.error}
                    for c in choice.turn.invalid
                ],
            }
        return body

    def _logprobs(self, choice: _Choice) -> dict[str, Any] | None:
        if not self.req.logprobs or choice.result is None:
            return None
        return dict(json_safe(self.engine.backend.logprobs(choice.result)))

    def _choice_body(self, index: int, choice: _Choice) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": choice.content}
        if choice.turn is not None and choice.turn.calls:
            message["tool_calls"] = [_tool_call(c.call) for c in choice.turn.calls]
            message["content"] = choice.content or None
        return {
            "index": index, "message": message, "finish_reason": choice.finish, "logprobs": self._logprobs(choice),
            **self._extras(choice),
        }

    def _usage(self, choices: list[_Choice]) -> dict[str, int]:
        prompt = next((c.result.n_prompt_tokens for c in choices if c.result is not None), 0)
        completion = sum(c.result.n_response_tokens for c in choices if c.result is not None)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # -- streaming -----------------------------------------------------------------------------------------------

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model_name,
            "choices": choices, **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def _delta(self, index: int, delta: dict[str, Any]) -> str:
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def _open(self, index: int) -> ThreadStream:
        """Start choice ``index``'s generation in a thread."""
        if self.binding is not None:
            return ThreadStream(self._turn_iterator)
        gen = self.generation()
        tokenizer = self.engine.backend.scorer.tokenizer

        def make(stream: ThreadStream) -> Iterator[StreamPiece]:
            def run(streamer: Any, cancel: threading.Event) -> ScoreResult:
                stream.on_cancel.append(cancel.set)
                if stream.stop.is_set():
                    cancel.set()
                return self.engine.submit(gen, streamer=streamer, cancel=cancel).result()

            return stream_generation(tokenizer, run, gen.stop)

        return ThreadStream(make)

    async def first(self, disconnected: Any) -> tuple[ThreadStream, list[Any]]:
        """Start the first choice and wait for its first piece, so that errors before any text (a full queue,
        bad input) are answered with their HTTP status. A turn with tools is admitted first (released when the
        stream ends)."""
        if self.binding is not None:
            self._admission = self.engine.admit()
            self._admission.__enter__()
        try:
            stream = self._open(0)
        except BaseException:
            self._release()
            raise
        pieces: list[Any] = []
        try:
            async for piece in self._guarded(stream, disconnected):
                pieces.append(piece)
                break
        except BaseException:
            stream.cancel()
            self._release()
            raise
        return stream, pieces

    def _release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission.__exit__(None, None, None)

    async def stream(self, first: ThreadStream, pieces: list[Any]) -> AsyncIterator[str]:
        """The SSE body: role, content deltas, a final chunk per choice with the score, usage, ``[DONE]``."""
        done: list[_Choice] = []
        stream: ThreadStream | None = first
        try:
            for index in range(self.req.n):
                stream = first if index == 0 else self._open(index)
                buffered = pieces if index == 0 else []
                yield self._delta(index, {"role": "assistant", "content": ""})
                choice: _Choice | None = None
                sent = ""
                calls = 0
                try:
                    async for piece in _chain(buffered, self._guarded(stream, None)):
                        if isinstance(piece, TurnPiece):
                            if piece.content:
                                sent += piece.content
                                yield self._delta(index, {"content": piece.content})
                            if piece.calls:
                                deltas = [{"index": calls + k, **_tool_call(c)} for k, c in enumerate(piece.calls)]
                                calls += len(piece.calls)
                                yield self._delta(index, {"tool_calls": deltas})
                            if piece.turn is not None:
                                choice = self._turned(piece.turn)
                        else:
                            if piece.text:
                                sent += piece.text
                                yield self._delta(index, {"content": piece.text})
                            if piece.result is not None:
                                choice = self._scored(piece.result)
                except ApiError as exc:
                    yield f"data: {json.dumps(exc.body())}\n\n"
                    break
                except Exception as exc:  # noqa: BLE001 - the answer so far is sent, unscored (fail closed)
                    if not sent:
                        err = ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")
                        yield f"data: {json.dumps(err.body())}\n\n"
                        break
                    choice = self._unscored(sent, exc)
                if choice is None:
                    break
                done.append(choice)
                final = {"index": index, "delta": {}, "logprobs": self._logprobs(choice),
                         "finish_reason": choice.finish, **self._extras(choice)}
                yield self._chunk([final])
            opts = self.req.stream_options
            if opts is not None and opts.include_usage:
                yield self._chunk([], usage=self._usage(done))
            yield "data: [DONE]\n\n"
        finally:
            if stream is not None:
                stream.cancel()
            self._release()


async def _chain(first: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for item in first:
        yield item
    async for item in rest:
        yield item


def _tool_call(call: Any) -> dict[str, Any]:
    return {
        "id": call.id, "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
    }
