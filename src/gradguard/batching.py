"""Micro-batched generation and scoring: many chat requests generated together, each scored on its own.

:func:`generate_batch` runs a list of :class:`GenerationRequest` through as few left-padded
``model.generate`` calls as their sampling settings allow, then scores every answer alone, so a
request's scores (uncertainties: larger = less confident) do not depend on what it was batched with.
:class:`MicroBatcher` gathers requests submitted from many threads into such batches in a worker thread.
No web framework is imported here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gradguard.errors import ContextLengthError, GenerationCancelled, GradguardError, InputError, QueueFullError
from gradguard.result import ScoreResult, with_messages

if TYPE_CHECKING:
    import torch

    from gradguard.scorer import FinishReason, GradScorer, SpanFn
else:  # pydantic resolves the annotation at runtime; importing the scorer here would import torch
    SpanFn = Callable[[list[int]], Any]

__all__ = ["GenerationRequest", "generate_batch", "MicroBatcher"]

logger = logging.getLogger(__name__)


class GenerationRequest(BaseModel):
    """One chat request to generate and score; the fields act as the same-named arguments of
    :meth:`GradScorer.generate_and_score <gradguard.scorer.GradScorer.generate_and_score>`."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    messages: list[dict[str, Any]]
    max_new_tokens: int = Field(256, gt=0, description="Most tokens to generate (capped by the context window).")
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = Field((), description="Stop strings; a single string counts as one.")
    top_logprobs: int = Field(0, ge=0, le=20, description="Alternatives per answer token in result.top_logprobs.")
    task: str | None = Field(None, description="The calibration task; None: the scorer's.")
    tools: list[dict[str, Any]] | None = Field(None, description="Tool schemas rendered by the chat template.")
    prefill: str = Field("", description="Text the answer is made to start with (teacher-forced, not scored).")
    spans: SpanFn | None = Field(None, exclude=True, description="Maps the answer's token ids to a SpanPlan.")
    max_time: float | None = Field(None, gt=0, description="Seconds this request may generate for.")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    def sampling_key(self) -> tuple[bool, float | None, float | None, int | None]:
        """The settings a batch shares: requests with equal keys are generated in one ``model.generate`` call."""
        if not self.do_sample:
            return (False, None, None, None)
        return (True, self.temperature, self.top_p, self.top_k)


class _Row(NamedTuple):
    """A checked request, ready to generate."""

    slot: int  # the request's place in the batch
    request: GenerationRequest
    task: str
    prompt: list[int]
    position: int
    forced: list[int]
    stops: tuple[str, ...]
    top_logprobs: int
    max_new_tokens: int


def _as_error(exc: BaseException, what: str) -> GradguardError:
    if isinstance(exc, GradguardError):
        return exc
    err = GradguardError(f"{what}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _end(streamer: Any) -> None:
    try:
        streamer.end()
    except Exception:  # a failing consumer must not break the other rows
        logger.exception("a streamer's end() failed")


def _prepare(scorer: GradScorer, index: int, request: GenerationRequest) -> _Row:
    """The checks :meth:`GradScorer.generate_many` makes before it generates (raises the request's error)."""
    from gradguard.scorer import _check_stop, _check_top_logprobs

    stops = _check_stop(request.stop)
    top_k = _check_top_logprobs(request.top_logprobs)
    name = scorer._check_task(request.task) if request.task is not None else scorer.task
    prompt = scorer.prompt_ids(request.messages, request.tools)
    position = scorer._spt_position(prompt)
    forced = scorer._prefill_ids(request.prefill)
    scorer._check_length(len(prompt), len(forced))
    max_new = min(request.max_new_tokens, scorer.context_window - len(prompt) - len(forced))
    if max_new < 1:
        raise ContextLengthError(
            f"the prompt ({len(prompt)} tokens) fills the model's context window of {scorer.context_window} "
            "tokens; shorten it — nothing is truncated silently"
        )
    return _Row(index, request, name, prompt, position, forced, stops, top_k, max_new)


def _make_criteria(
    scorer: GradScorer,
    rows: Sequence[_Row],
    streamers: Sequence[Any | None],
    cancels: Sequence[threading.Event | None],
) -> Any:
    """A per-row stopping criterion that also records (and streams) each row's generated tokens."""
    import torch
    from transformers.generation.stopping_criteria import StoppingCriteria, StopStringCriteria

    class _PerRow(StoppingCriteria):
        def __init__(self) -> None:
            self.tokens: list[list[int]] = [[] for _ in rows]
            self.done = [False] * len(rows)
            self.errors: list[GradguardError | None] = [None] * len(rows)
            self.started = time.monotonic()
            self._eot = set(scorer._eot_ids)
            self._stop_criteria: dict[tuple[str, ...], StopStringCriteria] = {}
            for row in rows:
                if row.stops and row.stops not in self._stop_criteria:
                    self._stop_criteria[row.stops] = StopStringCriteria(
                        tokenizer=scorer.tokenizer, stop_strings=list(row.stops)
                    )

        def finish(self, i: int) -> None:
            if not self.done[i]:
                self.done[i] = True
                if streamers[i] is not None:
                    _end(streamers[i])

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            last = input_ids[:, -1].tolist()
            stop = list(self.done)
            by_stops: dict[tuple[str, ...], list[int]] = {}
            elapsed = time.monotonic() - self.started
            for i, row in enumerate(rows):
                if self.done[i]:
                    continue
                token = int(last[i])
                self.tokens[i].append(token)
                streamer = streamers[i]
                if streamer is not None:
                    try:
                        streamer.put(torch.tensor([token]))
                    except Exception as exc:  # noqa: BLE001 - this row fails alone
                        self.errors[i] = _as_error(exc, "the request's streamer failed")
                        stop[i] = True
                        continue
                cancel = cancels[i]
                max_time = row.request.max_time
                if (
                    token in self._eot
                    or len(self.tokens[i]) >= row.max_new_tokens
                    or (cancel is not None and cancel.is_set())
                    or (max_time is not None and elapsed >= max_time)
                ):
                    stop[i] = True
                elif row.stops:
                    by_stops.setdefault(row.stops, []).append(i)
            for stops, idx in by_stops.items():
                hit = self._stop_criteria[stops](input_ids[idx], scores).tolist()
                for i, h in zip(idx, hit, strict=True):
                    stop[i] = stop[i] or bool(h)
            for i, s in enumerate(stop):
                if s:
                    self.finish(i)
            return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    return _PerRow()


def _generate_alone(
    scorer: GradScorer,
    row: _Row,
    streamer: Any | None,
    cancel: threading.Event | None,
    out: list[ScoreResult | GradguardError | None],
) -> None:
    """A request with no company: :meth:`GradScorer.generate_and_score` itself (unpadded, and its scoring reuses the
    generation's KV cache), so a batch of one costs what a direct call costs."""
    request = row.request
    do_sample, temperature, top_p, top_k = request.sampling_key()
    sampling = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k)) if v is not None}
    if request.max_time is not None:
        sampling["max_time"] = request.max_time
    once = _EndOnce(streamer) if streamer is not None else None
    try:
        out[row.slot] = scorer.generate_and_score(
            request.messages, max_new_tokens=request.max_new_tokens, streamer=once, task=request.task,
            stop=row.stops, top_logprobs=row.top_logprobs, cancel=cancel, tools=request.tools, prefill=request.prefill,
            spans=request.spans, do_sample=do_sample, **sampling,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - this request's own error
        out[row.slot] = _as_error(exc, "generation failed")
    finally:
        if once is not None:
            _end(once)


class _EndOnce:
    """A streamer wrapper whose ``end()`` reaches the streamer once (transformers ends it too, on success)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.ended = inner, False

    def put(self, value: Any) -> None:
        self.inner.put(value)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.inner.end()


def _generate_group(
    scorer: GradScorer,
    rows: Sequence[_Row],
    streamers: Sequence[Any | None],
    cancels: Sequence[threading.Event | None],
    out: list[ScoreResult | GradguardError | None],
) -> None:
    """Generate ``rows`` (same sampling settings) in one left-padded call, then score the answers in one batched
    pass (each answer's scores as if scored alone)."""
    import torch
    from transformers.generation.stopping_criteria import StoppingCriteriaList

    inputs = [row.prompt + row.forced for row in rows]
    width = max(len(ids) for ids in inputs)
    pad_id = scorer.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = next(iter(scorer._eot_ids), 0)
    device = scorer.model.device
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in inputs], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in inputs], device=device)
    criteria = _make_criteria(scorer, rows, streamers, cancels)
    for i, (ids, streamer) in enumerate(zip(inputs, streamers, strict=True)):
        if streamer is not None:
            try:
                streamer.put(torch.tensor([ids]))
            except Exception as exc:  # noqa: BLE001 - this row fails alone (it stops at its first token)
                criteria.errors[i] = _as_error(exc, "the request's streamer failed")
                criteria.finish(i)
    do_sample, temperature, top_p, top_k = rows[0].request.sampling_key()
    kwargs: dict[str, Any] = {"do_sample": do_sample}
    if not do_sample:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(
            {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k)) if v is not None}
        )
    # What generation computes that scoring can reuse: saved from the first column any row's scoring needs.
    first_col = min(width - len(ids) + row.position for ids, row in zip(inputs, rows, strict=True))
    capture = scorer._capture([row.task for row in rows], first_col, width, len(rows), kwargs)
    started = time.perf_counter()
    try:
        with torch.no_grad(), capture if capture is not None else contextlib.nullcontext():
            generated_out = scorer.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max(row.max_new_tokens for row in rows),
                pad_token_id=pad_id,
                stopping_criteria=StoppingCriteriaList([criteria]),
                tokenizer=scorer.tokenizer,  # for stop strings in the model's generation config
                return_dict_in_generate=True,
                **kwargs,
            )
    except Exception as exc:  # noqa: BLE001 - the group's requests fail, the other groups go on
        error = _as_error(exc, "generation failed")
        for row in rows:
            out[row.slot] = error
        return
    finally:
        for i in range(len(rows)):
            criteria.finish(i)  # end() every streamer, also on error or when generation ended for another reason
    generate_s = time.perf_counter() - started
    states = capture.states(getattr(generated_out, "cache", None), mask) if capture is not None else None
    del generated_out
    from gradguard.scorer import ScoreRequest

    ready: list[tuple[_Row, ScoreRequest]] = []
    for i, row in enumerate(rows):
        cancel = cancels[i]
        if criteria.errors[i] is not None:
            out[row.slot] = criteria.errors[i]
            continue
        if cancel is not None and cancel.is_set():
            out[row.slot] = GenerationCancelled("generation was cancelled; the answer was not scored")
            continue
        try:
            generated: list[int] = criteria.tokens[i]
            answer, ended = scorer._until_end_of_turn(generated)
            answer, stopped = scorer._before_stop(answer, row.stops)
            reason: FinishReason = (
                "length" if not (ended or stopped) and len(generated) >= row.max_new_tokens else "stop"
            )
        except Exception as exc:  # noqa: BLE001 - this request fails alone
            out[row.slot] = _as_error(exc, "scoring failed")
            continue
        item = ScoreRequest(
            row.prompt,
            row.position,
            [row.forced + answer],
            task=row.task,
            finish_reasons=[reason],
            top_logprobs=row.top_logprobs,
            n_prefill=len(row.forced),
            spans=row.request.spans,
            generate_s=generate_s,
            reuse=(states, i) if states is not None and states.trusted else None,
        )
        ready.append((row, item))
    _score_group(scorer, ready, out)


def _score_group(
    scorer: GradScorer,
    ready: Sequence[tuple[_Row, Any]],
    out: list[ScoreResult | GradguardError | None],
) -> None:
    """Score the group's answers in one batched pass; if that pass fails, score each answer alone instead."""
    if not ready:
        return
    try:
        scored = scorer._score_requests([item for _, item in ready])
    except Exception:  # noqa: BLE001 - one bad request must not sink the others: score them one by one
        logger.exception("the batched scoring pass failed; scoring each answer alone")
        for row, item in ready:
            try:
                out[row.slot] = scorer._score_ids(
                    item.prompt,
                    item.position,
                    item.ids,
                    cache=None,
                    generate_s=item.generate_s,
                    task=item.task,
                    finish_reasons=item.finish_reasons,
                    top_logprobs=item.top_logprobs,
                    n_prefill=item.n_prefill,
                    spans=item.spans,
                )[0]
            except Exception as exc:  # noqa: BLE001 - e.g. a failing spans function: this request fails alone
                out[row.slot] = _as_error(exc, "scoring failed")
        return
    for (row, _), entry in zip(ready, scored, strict=True):
        out[row.slot] = entry[0] if isinstance(entry, list) else _as_error(entry, "scoring failed")


def generate_batch(
    scorer: GradScorer,
    requests: Sequence[GenerationRequest],
    *,
    streamers: Sequence[Any | None] | None = None,
    cancels: Sequence[threading.Event | None] | None = None,
) -> list[ScoreResult | GradguardError]:
    """Generate all ``requests`` together and score each answer on its own; one entry per request, in order.

    Requests with the same sampling settings (``do_sample``, ``temperature``, ``top_p``, ``top_k``) share one
    left-padded ``model.generate`` call. Each row behaves as :meth:`GradScorer.generate_and_score` would for it
    alone: its own ``max_new_tokens`` (capped by the context window), its own stop strings (the answer keeps the
    tokens before the first one), end-of-turn trimming, prefill tokens forced, ``finish_reason`` ``"length"`` or
    ``"stop"``, per-request ``max_time``. ``result.timings.generate_s`` is the wall time of the request's
    generation call. Every answer is then scored alone — exactly what ``scorer.score(messages, result.token_ids,
    task=..., tools=..., prefill=..., spans=...)`` computes — so its scores (uncertainties: larger = less
    confident) do not depend on the batch.

    A request's own problem (unknown task, prompt too long for the context window, a chat template error, a bad
    prefill, a failing streamer or ``spans`` function) becomes its entry — the exception object, a
    :class:`~gradguard.errors.GradguardError` — and never fails the others.

    ``streamers[i]``: an object with ``put()``/``end()`` like a transformers streamer; it gets the row's input
    (prompt + prefill ids, shape ``(1, n)``) once, then ``torch.tensor([token_id])`` for each token the row
    generates (end-of-turn or stop-string tokens included, as transformers streams them), and ``end()`` when
    the row finishes (also on error or cancel).
    ``cancels[i]``: when set, row ``i`` stops at the next token and its entry is
    :class:`~gradguard.errors.GenerationCancelled` (nothing scored).
    The scorer's :attr:`~GradScorer.lock` is held for the whole call.
    """
    n = len(requests)
    streamer_list: list[Any | None] = list(streamers) if streamers is not None else [None] * n
    cancel_list: list[threading.Event | None] = list(cancels) if cancels is not None else [None] * n
    if len(streamer_list) != n or len(cancel_list) != n:
        raise InputError(
            f"{n} requests but {len(streamer_list)} streamers and {len(cancel_list)} cancel events; "
            "pass one (or None) per request"
        )
    out: list[ScoreResult | GradguardError | None] = [None] * n
    ended = [False] * n
    try:
        with scorer.lock:
            groups: dict[tuple[bool, float | None, float | None, int | None], list[_Row]] = {}
            for i, request in enumerate(requests):
                cancel = cancel_list[i]
                if cancel is not None and cancel.is_set():
                    out[i] = GenerationCancelled(
                        "generation was cancelled before it started; nothing was generated or scored"
                    )
                    continue
                try:
                    row = _prepare(scorer, i, request)
                except Exception as exc:  # noqa: BLE001 - this request fails alone
                    out[i] = _as_error(exc, "the request is not usable")
                    continue
                groups.setdefault(request.sampling_key(), []).append(row)
            for i in range(n):  # a request that will not generate: its consumer must not wait
                if out[i] is not None and streamer_list[i] is not None:
                    ended[i] = True
                    _end(streamer_list[i])
            for rows in groups.values():
                idx = [row.slot for row in rows]
                for i in idx:
                    ended[i] = True  # _generate_group / _generate_alone ends them
                if len(rows) == 1:
                    _generate_alone(scorer, rows[0], streamer_list[idx[0]], cancel_list[idx[0]], out)
                else:
                    _generate_group(scorer, rows, [streamer_list[i] for i in idx], [cancel_list[i] for i in idx], out)
    finally:
        for i, streamer in enumerate(streamer_list):
            if streamer is not None and not ended[i]:
                _end(streamer)
    return [
        with_messages([r], requests[i].messages)[0]
        if isinstance(r, ScoreResult)
        else r
        if r is not None
        else GradguardError(f"request {i} was not run")  # unreachable; keeps the type exact
        for i, r in enumerate(out)
    ]


class _Pending(NamedTuple):
    request: GenerationRequest
    streamer: Any
    cancel: threading.Event | None
    future: concurrent.futures.Future[ScoreResult]


class MicroBatcher:
    """Gathers requests submitted from many threads and runs them through :func:`generate_batch` in a worker thread.

    The worker waits for a first request, then gathers more for up to ``max_wait_ms`` or until ``max_batch`` are
    waiting, and runs them as one batch; ``max_batch=1`` runs them one at a time (batching off). At most
    ``max_queue`` requests wait: beyond that :meth:`submit` raises :class:`~gradguard.errors.QueueFullError`.
    ``on_batch(size)`` is called once per batch run (for metrics). A request whose ``cancel`` event is set (or
    whose future was cancelled) when its batch starts is dropped with
    :class:`~gradguard.errors.GenerationCancelled`.
    """

    def __init__(
        self,
        scorer: GradScorer,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or not max_wait_ms >= 0:
            raise InputError(
                f"max_batch={max_batch}, max_queue={max_queue}, max_wait_ms={max_wait_ms}: "
                "max_batch and max_queue must be at least 1 and max_wait_ms not negative"
            )
        self.scorer = scorer
        self.max_batch = int(max_batch)
        self.max_wait_ms = float(max_wait_ms)
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._running = 0
        self._closed = False
        self._cond = threading.Condition()
        self._batch_s: float | None = None  # moving average of a batch's duration, for retry_after
        self._worker = threading.Thread(target=self._work, name="gradguard-microbatcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet running)."""
        with self._cond:
            return len(self._pending)

    @property
    def running(self) -> int:
        """Requests in the batch now generating."""
        with self._cond:
            return self._running

    def _retry_after(self) -> float:
        if self._batch_s is None:
            return 1.0
        batches = math.ceil((len(self._pending) + self._running) / self.max_batch)
        return max(0.1, round(self._batch_s * max(1, batches), 2))

    def submit(
        self, request: GenerationRequest, *, streamer: Any = None, cancel: threading.Event | None = None
    ) -> concurrent.futures.Future[ScoreResult]:
        """Queue one request; the future's result is its :class:`ScoreResult` (or raises the request's error).

        Raises :class:`~gradguard.errors.QueueFullError` (``retry_after``: an estimate in seconds) when
        ``max_queue`` requests are already waiting, and :class:`~gradguard.errors.GradguardError` once closed.
        ``streamer`` and ``cancel`` act as in :func:`generate_batch`.
        """
        future: concurrent.futures.Future[ScoreResult] = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise GradguardError("the micro-batcher is closed; it takes no more requests")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(
                    f"{len(self._pending)} requests are already waiting for the model (max_queue={self.max_queue}); "
                    "retry later",
                    retry_after=self._retry_after(),
                )
            self._pending.append(_Pending(request, streamer, cancel, future))
            self._cond.notify_all()
        return future

    def close(self) -> None:
        """Stop the worker once the running batch (if any) is done; waiting requests fail with a GradguardError."""
        with self._cond:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for item in dropped:
            self._fail(item, GradguardError("the micro-batcher was closed before this request ran"))
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _fail(item: _Pending, error: BaseException) -> None:
        if item.streamer is not None:
            _end(item.streamer)
        future = item.future
        if future.done():
            return
        if future.running() or future.set_running_or_notify_cancel():
            future.set_exception(error)

    def _next_batch(self) -> list[_Pending] | None:
        """Wait for a first request, then gather more for up to max_wait_ms or until max_batch; None once closed."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.max_wait_ms / 1000.0
            while len(self._pending) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            self._running = len(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.monotonic()
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - the worker must survive; the batch's requests fail
                logger.exception("a micro-batch failed")
                for item in batch:
                    if not item.future.done():
                        self._fail(item, _as_error(exc, "the batch failed"))
            finally:
                elapsed = time.monotonic() - started
                with self._cond:
                    self._running = 0
                    self._batch_s = elapsed if self._batch_s is None else 0.8 * self._batch_s + 0.2 * elapsed

    def _run(self, batch: list[_Pending]) -> None:
        live: list[_Pending] = []
        for item in batch:
            if item.cancel is not None and item.cancel.is_set():
                self._fail(item, GenerationCancelled("the request was cancelled before it ran; nothing was generated"))
            elif not item.future.set_running_or_notify_cancel():  # cancelled through its future
                if item.streamer is not None:
                    _end(item.streamer)
            else:
                live.append(item)
        if not live:
            return
        if self.on_batch is not None:
            try:
                self.on_batch(len(live))
            except Exception:
                logger.exception("on_batch failed")
        results = generate_batch(
            self.scorer,
            [item.request for item in live],
            streamers=[item.streamer for item in live],
            cancels=[item.cancel for item in live],
        )
        for item, result in zip(live, results, strict=True):
            if isinstance(result, ScoreResult):
                item.future.set_result(result)
            else:
                item.future.set_exception(result)
