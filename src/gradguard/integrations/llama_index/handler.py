"""``GradguardEventHandler``: scores the LLM answers seen through LlamaIndex instrumentation."""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from llama_index.core.base.llms.types import ChatResponse, CompletionResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import Dispatcher
from llama_index.core.instrumentation.event_handlers.base import BaseEventHandler
from llama_index.core.instrumentation.events import llm as llm_events
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.instrumentation.span.base import BaseSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from gradguard.integrations._core import LocalBackend, RemoteBackend, score_foreign, unscored_metadata
from gradguard.integrations._core.remote import ExpectedModel, model_warnings
from gradguard.integrations.llama_index.utils import (
    CapturedScore,
    GradguardLlamaIndexError,
    attach_metadata,
    messages_to_dicts,
    publish_score,
    read_metadata,
    read_result,
)
from gradguard.result import ScoreResult
from gradguard.scorer import GradScorer

__all__ = ["GradguardEventHandler", "ScoredCall"]

logger = logging.getLogger(__name__)

_START = (llm_events.LLMChatStartEvent, llm_events.LLMCompletionStartEvent)
_END = (llm_events.LLMChatEndEvent, llm_events.LLMCompletionEndEvent)
_Kind = Literal["completion", "chat"]
_CHAT_METHODS = frozenset({"chat", "stream_chat", "achat", "astream_chat"})
_MAX_KEPT = 4096  # spans and handled event ids remembered
_UNATTRIBUTED = "no span/start event was seen for this LLM call (attached mid-call?), so it cannot be attributed"
_FORMATTED = "complete(formatted=True): the prompt's chat messages are unknown; call llm.chat(messages) for a score"


class ScoredCall(BaseModel):
    """One LLM answer; without a score ``result`` is None and ``error`` says why (treat it as unconfident)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: _Kind
    span_id: str | None = None
    messages: list[dict[str, str]] | None = Field(None, description="The chat messages the answer was scored against.")
    text: str = Field("", description="The answer text.")
    metadata: dict[str, Any]
    result: ScoreResult | None = None
    error: str | None = Field(None, description="Why the answer has no score (None when it was scored).")
    timestamp: datetime = Field(default_factory=datetime.now)

    @property
    def scored(self) -> bool:
        """True when the answer has a finite score (it may still be unconfident)."""
        return self.result is not None and self.result.scored


@dataclass
class _Span:
    instance: Any
    parent: str | None
    method: str
    in_chat: bool  # a chat span of the same LLM instance encloses it
    started: bool = False  # its LLM start event was seen
    formatted: bool = False


class _SpanTracker(BaseSpanHandler[BaseSpan]):
    """Keeps each span's instance, parent and method; a started LLM call's span until its end event (a stream
    ends after its method returned). It creates no spans."""

    _spans: OrderedDict[str, _Span] = PrivateAttr(default_factory=OrderedDict)

    def new_span(self, id_: str, *args: Any, **kwargs: Any) -> None:  # called with keywords only
        instance, parent_span_id = kwargs.get("instance"), kwargs.get("parent_span_id")
        method = id_.rsplit("-", 5)[0].rpartition(".")[2]  # ids are "<Class>.<method>-<uuid4>"
        with self.lock:
            if id_ in self._spans:  # seen through a second attached dispatcher
                return
            in_chat, up = False, self._spans.get(parent_span_id or "")
            while up is not None and not in_chat:  # ancestors are open, hence known, while a child starts
                in_chat = instance is not None and up.instance is instance and up.method in _CHAT_METHODS
                up = self._spans.get(up.parent or "")
            self._spans[id_] = _Span(instance, parent_span_id, method, in_chat)
            while len(self._spans) > _MAX_KEPT:
                self._spans.popitem(last=False)

    def prepare_to_exit_span(self, id_: str, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            if (span := self._spans.get(id_)) is not None and not span.started:
                del self._spans[id_]

    def prepare_to_drop_span(self, id_: str, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            self._spans.pop(id_, None)

    def start(self, span_id: str | None, formatted: bool) -> None:
        with self.lock:
            if (span := self._spans.get(span_id or "")) is not None:
                span.started, span.formatted = True, formatted

    def end(self, span_id: str | None) -> _Span | None:
        with self.lock:
            return self._spans.pop(span_id or "", None)


class GradguardEventHandler(BaseEventHandler):
    """Scores LlamaIndex LLM answers teacher-forced with a :class:`gradguard.GradScorer` over the same model and
    puts the metadata in ``response.additional_kwargs["gradguard"]`` (and the chat message's) before the app
    gets the response (streams: the last chunk). Usage: docs/llama_index.md. Calls are attributed by span:
    a completion inside a chat span of the same LLM instance (``HuggingFaceLLM`` runs ``chat`` as
    ``complete(formatted=True)``) is left to the chat, scored against its messages; another formatted
    completion is recorded unscored; with ``llm=``, other LLM instances' calls are ignored; a call that cannot
    be attributed, or whose handling fails, is recorded unscored with the reason (fail closed, never raised).
    GradguardLLM responses are recorded, not rescored. Records are thread-safe, bounded by ``max_records``.

    Side-car mode: ``GradguardEventHandler(scorer_url="http://127.0.0.1:8000", api_key=...)`` scores on a
    ``gradguard serve`` server (``/v1/score``) instead of a local scorer (give exactly one), for an LLM served
    elsewhere (vLLM, Ollama, TGI through ``OpenAILike``/``Ollama``). The LLM's model name (its ``metadata.model_name``
    or ``model``) is checked against the server's through ``expected_model`` (a scorer name, or a map generator name
    -> scorer name); a possible mismatch adds a sentence to the metadata's ``warnings`` list, never an exception.
    A server that cannot be reached records the answer unscored with the error (fail closed)."""

    scorer: Any = Field(None, exclude=True, description="The gradguard GradScorer over the LLM's model.")
    scorer_url: str | None = Field(None, description="A `gradguard serve` server scoring instead of `scorer`.")
    expected_model: Any = Field(None, description="Scorer name, or map generator name -> scorer name.")
    llm: Any = Field(None, exclude=True, description="Only score this LLM instance's calls (None: every LLM's).")
    max_records: int = Field(1000, gt=0, description="How many records are kept (oldest dropped first).")

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _records: deque[ScoredCall] = PrivateAttr(default_factory=deque)
    _backend: LocalBackend | RemoteBackend = PrivateAttr(default=None)  # type: ignore[assignment]
    _tracker: _SpanTracker = PrivateAttr(default_factory=_SpanTracker)
    _dispatchers: list[Dispatcher] = PrivateAttr(default_factory=list)
    _seen: weakref.WeakValueDictionary[int, Any] = PrivateAttr(default_factory=weakref.WeakValueDictionary)
    _handled: OrderedDict[str, None] = PrivateAttr(default_factory=OrderedDict)

    def __init__(
        self,
        scorer: GradScorer | None = None,
        *,
        llm: Any = None,
        max_records: int = 1000,
        scorer_url: str | None = None,
        api_key: str | None = None,
        expected_model: ExpectedModel = None,
        timeout: float = 120.0,
        **kwargs: Any,
    ) -> None:
        if (scorer is None) == (scorer_url is None):
            raise GradguardLlamaIndexError(
                "GradguardEventHandler takes exactly one of scorer= (a GradScorer over the LLM's model) and "
                f"scorer_url= (a `gradguard serve` server); got {'both' if scorer is not None else 'neither'}"
            )
        if scorer is not None and not isinstance(scorer, GradScorer):
            raise GradguardLlamaIndexError(
                f"scorer={scorer!r} is not a gradguard GradScorer; build one with GradScorer(model, tokenizer), "
                "or use GradguardEventHandler.from_llm(hf_llm)"
            )
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records <= 0:
            raise GradguardLlamaIndexError(f"max_records={max_records!r} is not a positive integer; pass e.g. 1000")
        super().__init__(scorer=scorer, llm=llm, max_records=max_records, scorer_url=scorer_url,
                         expected_model=expected_model, **kwargs)
        self._records = deque(maxlen=max_records)
        if scorer_url is not None:
            try:
                self._backend = RemoteBackend(scorer_url, api_key=api_key, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - named for the reader
                raise GradguardLlamaIndexError(str(exc)) from None
        else:
            self._backend = LocalBackend(scorer=scorer)

    @classmethod
    def from_llm(cls, llm: Any, *, scorer: GradScorer | None = None, **kwargs: Any) -> GradguardEventHandler:
        """A handler for ``llm`` only, scoring with ``scorer`` or a GradScorer over the LLM's own ``_model`` and
        ``_tokenizer`` built with ``kwargs`` (e.g. ``spt_offset=-3``); ``max_records`` goes to the handler."""
        handler_kwargs = {k: kwargs.pop(k) for k in ("max_records",) if k in kwargs}
        if scorer is None:
            model, tokenizer = getattr(llm, "_model", None), getattr(llm, "_tokenizer", None)
            if model is None or tokenizer is None:
                msg = f"{type(llm).__name__} exposes no Hugging Face model/tokenizer (_model/_tokenizer)"
                raise GradguardLlamaIndexError(f"{msg}; pass scorer=GradScorer(model, tokenizer) over its model")
            scorer = GradScorer(model, tokenizer, **kwargs)
        elif kwargs:
            raise GradguardLlamaIndexError(f"from_llm got scorer= and scorer options {sorted(kwargs)}; give them to it")
        return cls(scorer, llm=llm, **handler_kwargs)

    def attach(self, dispatcher: Dispatcher | None = None) -> GradguardEventHandler:
        """Register with ``dispatcher`` (default: the root, which sees every LLM's spans and events)."""
        dispatcher = dispatcher or get_dispatcher()
        with self._lock:
            if not any(d is dispatcher for d in self._dispatchers):
                self._dispatchers.append(dispatcher)
                dispatcher.add_span_handler(self._tracker)
                dispatcher.add_event_handler(self)
        return self

    def detach(self) -> None:
        """Unregister from every dispatcher :meth:`attach` registered with."""
        with self._lock:
            dispatchers, self._dispatchers = self._dispatchers, []
        for d in dispatchers:
            d.event_handlers = [h for h in d.event_handlers if h is not self]
            d.span_handlers = [h for h in d.span_handlers if h is not self._tracker]

    def __enter__(self) -> GradguardEventHandler:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    @property
    def records(self) -> list[ScoredCall]:
        """A snapshot of the records, oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def last(self) -> ScoredCall | None:
        """The most recent record, or ``None``."""
        with self._lock:
            return self._records[-1] if self._records else None

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Process one instrumentation event; never raises."""
        if isinstance(event, _START):
            self._tracker.start(event.span_id, bool(event.additional_kwargs.get("formatted")))
        elif isinstance(event, _END):
            with self._lock:
                if event.id_ in self._handled:  # the same event through a second attached dispatcher
                    return
                self._handled[event.id_] = None
                while len(self._handled) > _MAX_KEPT:
                    self._handled.popitem(last=False)
            kind: _Kind = "chat" if isinstance(event, llm_events.LLMChatEndEvent) else "completion"
            try:
                self._on_end(kind, event)
            except Exception as exc:  # noqa: BLE001 - recorded unscored; instrumentation must not break the app
                logger.warning("gradguard event handler failed on %s", type(event).__name__, exc_info=True)
                self._unscored(kind, event, f"handling the {type(event).__name__} failed: {type(exc).__name__}: {exc}")

    def _on_end(self, kind: _Kind, event: Any) -> None:
        span, response = self._tracker.end(event.span_id), event.response
        if span is not None and span.started and span.instance is not None:
            if self.llm is not None and span.instance is not self.llm:
                return  # another LLM's call
            if span.in_chat and kind == "completion":
                return  # the inner completion of a chat: the chat end event scores it against the messages
        else:
            span = None
        if (meta := read_metadata(response)) is not None:  # from GradguardLLM: record, do not rescore
            with self._lock:  # an async wrapper's end event repeats its inner call's response: skip it
                if self._seen.get(id(response)) is response:
                    return
            return self._record(kind, event, dict(meta), read_result(response))
        if span is None or response is None:
            return self._unscored(kind, event, _UNATTRIBUTED if span is None else "the call produced no response")
        if kind == "chat":
            messages, text = messages_to_dicts(list(event.messages)), response.message.content or ""
        elif span.formatted:
            return self._unscored(kind, event, _FORMATTED)
        else:
            system = getattr(span.instance, "system_prompt", None)
            messages = [{"role": "system", "content": str(system)}] if system else []
            messages.append({"role": "user", "content": event.prompt})
            text = response.text or ""
        result, meta = score_foreign(self._backend, messages, text)
        if isinstance(self._backend, RemoteBackend):
            generator = _generator_name(span.instance, response)
            warnings = model_warnings(generator, [meta.get("model"), self._backend.model_name], self.expected_model)
            for warning in warnings:
                logger.warning("gradguard: %s", warning)
            if warnings:
                meta["warnings"] = [*meta.get("warnings", []), *warnings]
        self._record(kind, event, meta, result, messages)
        publish_score(CapturedScore(text=text, result=result, metadata=meta, source="handler"))

    def _unscored(self, kind: _Kind, event: Any, reason: str) -> None:
        logger.info("gradguard recorded a %s answer unscored: %s", kind, reason)
        self._record(kind, event, unscored_metadata(reason, model=self._backend.model_name))

    def _record(
        self, kind: _Kind, event: Any, meta: dict[str, Any], result: ScoreResult | None = None, messages: Any = None
    ) -> None:
        response = event.response
        text = (response.message.content if isinstance(response, ChatResponse) else getattr(response, "text", "")) or ""
        if isinstance(response, (CompletionResponse, ChatResponse)):
            attach_metadata(response, meta)
        error = None if meta.get("scored") else meta.get("error")
        record = ScoredCall(
            kind=kind, span_id=event.span_id, messages=messages, text=text, metadata=meta, result=result, error=error
        )
        with self._lock:
            self._records.append(record)
            if response is not None:
                self._seen[id(response)] = response


def _generator_name(llm: Any, response: Any) -> str | None:
    """The name of the model that wrote ``response``: the raw answer's ``model`` (OpenAI-style), else the LLM's
    ``metadata.model_name`` or ``model`` / ``model_name`` (None when unknown)."""
    raw = getattr(response, "raw", None)
    name = raw.get("model") if isinstance(raw, dict) else getattr(raw, "model", None)
    if isinstance(name, str) and name:
        return name
    try:
        name = llm.metadata.model_name
    except Exception:  # noqa: BLE001 - an LLM whose metadata fails has no known name
        name = None
    if isinstance(name, str) and name and name != "unknown":
        return name
    for attr in ("model", "model_name"):
        value = getattr(llm, attr, None)
        if isinstance(value, str) and value:
            return value
    return None
