"""Where requests meet the model: the micro-batcher for plain answers, an admission count for the rest, and
waiting for a result with a deadline and a disconnect check (cancelling the generation on either).

Plain-text chat completions go through :class:`gradguard.batching.MicroBatcher` (requests arriving within
``max_wait_ms`` share one generation batch). Turns with tools and ``/v1/score`` are **not** micro-batched: they
run one at a time under the scorer's lock, admitted only while fewer than ``max_queue`` of them are in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gradguard.errors import QueueFullError
from gradguard.integrations._core.backend import LocalBackend
from gradguard.serving.errors import ApiError
from gradguard.serving.metrics import ServerMetrics
from gradguard.serving.settings import ServerSettings

__all__ = ["Engine", "ClientGone", "ThreadStream", "POLL_S"]

#: How often a waiting request checks for a disconnect and its deadline.
POLL_S = 0.1


class ClientGone(Exception):  # noqa: N818 - a condition, not a failure to report
    """The client disconnected; its generation was cancelled and nothing is sent."""


def timeout_error(seconds: float) -> ApiError:
    """The 504 of a request that ran past ``request_timeout_s``."""
    return ApiError(504, f"the request took longer than the server's limit of {seconds:g} s and was cancelled",
                    type="timeout_error", code="request_timeout")


def queue_full_error(exc: QueueFullError) -> ApiError:
    """The 429 of a full queue, with ``Retry-After``."""
    return ApiError(429, f"the server is busy: {exc}", type="server_overloaded", code="queue_full",
                    headers={"retry-after": str(max(1, math.ceil(exc.retry_after)))})


class Engine:
    """The model, its micro-batcher and the admission count of one app."""

    def __init__(self, backend: LocalBackend, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self.batcher: Any = None
        self.load_error: str | None = None
        self._direct = 0
        self._lock = threading.Lock()
        metrics.track_queue(lambda: float(self.depth))

    @property
    def ready(self) -> bool:
        """True once the model is loaded and the batcher runs."""
        return self.batcher is not None

    @property
    def depth(self) -> int:
        """Requests waiting for the model (batcher queue plus unbatched requests in flight)."""
        return int(getattr(self.batcher, "depth", 0) or 0) + self._direct

    def start(self) -> None:
        """Load the model (blocking) and start the micro-batcher."""
        from gradguard.batching import MicroBatcher

        scorer = self.backend.scorer
        s = self.settings
        self.batcher = MicroBatcher(
            scorer, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
            on_batch=self.metrics.observe_batch,
        )

    def close(self) -> None:
        """Stop the micro-batcher."""
        if self.batcher is not None:
            self.batcher.close()

    def submit(self, request: Any, *, streamer: Any = None, cancel: threading.Event | None = None) -> Any:
        """Queue one generation (raises :class:`QueueFullError` when the queue is full)."""
        return self.batcher.submit(request, streamer=streamer, cancel=cancel)

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one unbatched request in flight; raises :class:`QueueFullError` when ``max_queue`` already are."""
        with self._lock:
            if self.depth >= self.settings.max_queue:
                raise QueueFullError(f"{self.depth} requests are already waiting (max_queue={self.settings.max_queue})",
                                     retry_after=1.0)
            self._direct += 1
        try:
            yield
        finally:
            with self._lock:
                self._direct -= 1

    async def wait(
        self,
        futures: list[concurrent.futures.Future[Any]],
        *,
        cancel: Callable[[], None],
        disconnected: Callable[[], Awaitable[bool]],
        deadline: float,
    ) -> list[Any]:
        """The outcome of each future (its result or its exception), in order. A disconnect (:class:`ClientGone`)
        or the deadline (504) calls ``cancel()`` first."""
        wrapped = [asyncio.wrap_future(f) for f in futures]
        try:
            while True:
                _, pending = await asyncio.wait(wrapped, timeout=POLL_S)
                if not pending:
                    break
                if await disconnected():
                    cancel()
                    raise ClientGone
                if time.monotonic() > deadline:
                    cancel()
                    raise timeout_error(self.settings.request_timeout_s)
        finally:
            for w in wrapped:  # mark every outcome retrieved, also of generations still stopping after a cancel
                w.add_done_callback(_retrieve)
        return [w.exception() or w.result() for w in wrapped]


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Read a finished future's exception so asyncio does not log it as never retrieved (the request already
    answered: a timeout, a disconnect)."""
    if not future.cancelled():
        future.exception()


class ThreadStream:
    """A blocking iterator run in a thread and read from the event loop.

    ``make(stream)`` builds the iterator in the thread; ``stream.stop`` is set by :meth:`cancel`, which also
    calls every hook in ``stream.on_cancel`` (e.g. a generation's cancel event). Items come back as
    ``("item", value)``, then ``("error", exc)`` or ``("end", None)``.
    """

    def __init__(self, make: Callable[[ThreadStream], Iterator[Any]]) -> None:
        self.stop = threading.Event()
        self.on_cancel: list[Callable[[], None]] = []
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._thread = threading.Thread(target=self._work, args=(make,), name="gradguard-serve-stream", daemon=True)
        self._thread.start()

    def _push(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening
            pass

    def _work(self, make: Callable[[ThreadStream], Iterator[Any]]) -> None:
        iterator: Iterator[Any] | None = None
        try:
            iterator = make(self)
            for item in iterator:
                self._push("item", item)
                if self.stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            self._push("error", exc)
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        self._push("end", None)

    def cancel(self) -> None:
        """Stop the iterator (and its generation) at the next chance."""
        self.stop.set()
        for hook in list(self.on_cancel):
            hook()

    async def get(self, timeout: float) -> tuple[str, Any]:
        """The next ``(kind, value)``; raises ``TimeoutError`` after ``timeout`` seconds."""
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def items(self, deadline: float) -> AsyncIterator[Any]:
        """The items until the end (an error is raised); past ``deadline`` it cancels and raises ``TimeoutError``."""
        while True:
            kind, value = await self.get(max(0.0, deadline - time.monotonic()))
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
