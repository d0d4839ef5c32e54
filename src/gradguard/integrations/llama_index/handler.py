"""``GradguardEventHandler``: scores every LLM answer seen through LlamaIndex instrumentation.

For applications that host their model with ``llama-index-llms-huggingface``'s ``HuggingFaceLLM``
(or any LlamaIndex LLM backed by a local Hugging Face model that a :class:`gradguard.GradScorer`
can load), without changing the LLM class.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict, deque
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.base.llms.types import ChatResponse, CompletionResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import Dispatcher
from llama_index.core.instrumentation.event_handlers.base import BaseEventHandler
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from gradguard.integrations.llama_index.utils import (
    CapturedScore,
    GradguardLlamaIndexError,
    attach_metadata,
    messages_to_dicts,
    missing_score_metadata,
    publish_score,
    read_metadata,
    read_result,
)
from gradguard.result import ScoreResult

if TYPE_CHECKING:
    from gradguard.scorer import GradScorer

__all__ = ["GradguardEventHandler", "ScoredCall"]

logger = logging.getLogger(__name__)

_MAX_OPEN_SPANS = 4096


class ScoredCall(BaseModel):
    """The record of one LLM answer seen by :class:`GradguardEventHandler`.

    ``metadata`` is the shared schema (:meth:`gradguard.ScoreResult.metadata`; larger
    uncertainty = less confident). When scoring was impossible ``result`` is ``None``,
    ``metadata["scored"]`` is False and ``error`` says why: treat the answer as unconfident.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: Literal["completion", "chat"]
    span_id: str | None = None
    messages: list[dict[str, str]] | None = Field(None, description="The chat messages the answer was scored against.")
    text: str = Field("", description="The answer text.")
    metadata: dict[str, Any]
    result: ScoreResult | None = None
    error: str | None = None
    timestamp: datetime = Field(default_factory=datetime.now)

    @property
    def scored(self) -> bool:
        """True when the answer has a finite score (it may still be unconfident)."""
        return self.result is not None and self.result.scored


class GradguardEventHandler(BaseEventHandler):
    """Scores every completion and chat answer of a LlamaIndex LLM and attaches the score to the response.

    It listens to ``LLMCompletionEndEvent`` and ``LLMChatEndEvent`` (the events every LlamaIndex
    LLM emits), scores the answer teacher-forced with a :class:`gradguard.GradScorer` over the
    same model, and puts the shared metadata in ``response.additional_kwargs["gradguard"]``
    (and ``response.message.additional_kwargs`` for chat) before the application gets the
    response (for streams: on the last chunk, once the stream is exhausted). Larger
    uncertainty = less confident; ``scored`` False means unconfident.

    - A chat call that ``HuggingFaceLLM`` runs as an inner ``complete(formatted=True)`` is
      scored once, against the chat messages.
    - A completion is scored as a single user turn (with ``llm.system_prompt`` as system message).
    - A completion of an already-formatted prompt outside a chat cannot be re-templated: it is
      recorded unscored (``error`` set), never as confident.
    - Responses that already carry gradguard metadata (from :class:`GradguardLLM`) are recorded,
      not scored twice.
    - With ``llm=`` given, events of other LLMs are ignored.

    The record (:attr:`records`) is thread-safe and bounded by ``max_records``. The handler
    never raises into the application: failures are logged and recorded as unscored.

    Example (offline, on a tiny random model):

    .. code-block:: python

        from llama_index.core.base.llms.types import ChatMessage
        from llama_index.llms.huggingface import HuggingFaceLLM
        from gradguard.testing import make_tiny_model
        from gradguard.integrations.llama_index import GradguardEventHandler

        model, tok = make_tiny_model("qwen2")
        llm = HuggingFaceLLM(model=model, tokenizer=tok, max_new_tokens=8, is_chat_model=True,
                             context_window=1024, device_map="cpu")
        handler = GradguardEventHandler.from_llm(llm).attach()
        try:
            reply = llm.chat([ChatMessage(role="user", content="Name a prime number.")])
            print(reply.message.additional_kwargs["gradguard"]["uncertainty"]["hybridgrad"])
            print(len(handler.records), handler.last.scored)
        finally:
            handler.detach()
    """

    scorer: Any = Field(..., exclude=True, description="The gradguard GradScorer over the LLM's model.")
    llm: Any = Field(None, exclude=True, description="Only score this LLM's events (None: every LLM's).")
    max_records: int = Field(1000, gt=0, description="How many records are kept (oldest dropped first).")

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _records: deque[ScoredCall] = PrivateAttr(default=None)  # type: ignore[assignment]
    _spans: OrderedDict[str, dict[str, Any]] = PrivateAttr(default_factory=OrderedDict)
    _pending_prompts: Counter[str] = PrivateAttr(default_factory=Counter)
    _open_chats: int = PrivateAttr(default=0)
    _dispatchers: list[Dispatcher] = PrivateAttr(default_factory=list)
    _seen: OrderedDict[int, None] = PrivateAttr(default_factory=OrderedDict)

    def __init__(self, scorer: GradScorer, *, llm: Any = None, max_records: int = 1000, **kwargs: Any) -> None:
        """Score with ``scorer``; ``llm`` restricts scoring to that LLM's events (see the class docs)."""
        if not hasattr(scorer, "score"):
            raise GradguardLlamaIndexError(
                f"scorer={scorer!r} is not a gradguard GradScorer; build one with GradScorer(model, tokenizer), "
                "or use GradguardEventHandler.from_llm(hf_llm)"
            )
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records <= 0:
            raise GradguardLlamaIndexError(f"max_records={max_records!r} is not a positive integer; pass e.g. 1000")
        super().__init__(scorer=scorer, llm=llm, max_records=max_records, **kwargs)
        self._records = deque(maxlen=max_records)

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex instrumentation."""
        return "GradguardEventHandler"

    @classmethod
    def from_llm(cls, llm: Any, *, scorer: GradScorer | None = None, **kwargs: Any) -> GradguardEventHandler:
        """A handler for a ``HuggingFaceLLM`` (or any LLM with ``_model``/``_tokenizer``), scoring only its events.

        The scorer is built over the LLM's own model and tokenizer (nothing is loaded twice);
        pass ``scorer=`` to reuse one. Extra keyword arguments go to :class:`gradguard.GradScorer`
        when it is built here (e.g. ``spt_offset=-3``) or to the handler (``max_records``).
        """
        handler_kwargs = {k: kwargs.pop(k) for k in ("max_records",) if k in kwargs}
        if scorer is None:
            model = getattr(llm, "_model", None)
            tokenizer = getattr(llm, "_tokenizer", None)
            if model is None or tokenizer is None:
                raise GradguardLlamaIndexError(
                    f"{type(llm).__name__} does not expose a Hugging Face model and tokenizer (_model/_tokenizer); "
                    "pass scorer=GradScorer(model, tokenizer) built over the same model"
                )
            from gradguard.scorer import GradScorer

            scorer = GradScorer(model, tokenizer, **kwargs)
        elif kwargs:
            raise GradguardLlamaIndexError(
                f"from_llm got scorer= and scorer options {sorted(kwargs)}; pass the options when building the scorer"
            )
        return cls(scorer, llm=llm, **handler_kwargs)

    # ------------------------------------------------------------------ registration

    def attach(self, dispatcher: Dispatcher | None = None) -> GradguardEventHandler:
        """Register with ``dispatcher`` (default: the root dispatcher, which sees every LLM); returns self."""
        dispatcher = dispatcher or get_dispatcher()
        if not any(h is self for h in dispatcher.event_handlers):
            dispatcher.add_event_handler(self)
        with self._lock:
            if not any(d is dispatcher for d in self._dispatchers):
                self._dispatchers.append(dispatcher)
        return self

    def detach(self) -> None:
        """Unregister from every dispatcher :meth:`attach` registered with."""
        with self._lock:
            dispatchers, self._dispatchers = self._dispatchers, []
        for dispatcher in dispatchers:
            dispatcher.event_handlers = [h for h in dispatcher.event_handlers if h is not self]

    def __enter__(self) -> GradguardEventHandler:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # ------------------------------------------------------------------ records

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

    def _add(self, record: ScoredCall) -> None:
        with self._lock:
            self._records.append(record)

    # ------------------------------------------------------------------ events

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Process one instrumentation event; never raises."""
        try:
            if isinstance(event, LLMChatStartEvent):
                self._on_chat_start(event)
            elif isinstance(event, LLMCompletionStartEvent):
                self._remember(event.span_id, {"kind": "completion", "model_dict": event.model_dict,
                                               "formatted": bool(event.additional_kwargs.get("formatted"))})
            elif isinstance(event, LLMCompletionEndEvent):
                self._on_completion_end(event)
            elif isinstance(event, LLMChatEndEvent):
                self._on_chat_end(event)
        except Exception as exc:  # noqa: BLE001 - instrumentation must never break the application
            logger.warning("gradguard event handler failed on %s: %s", type(event).__name__, exc, exc_info=True)
            try:
                response = getattr(event, "response", None)
                if isinstance(event, (LLMCompletionEndEvent, LLMChatEndEvent)):
                    meta = missing_score_metadata(f"scoring failed: {exc}", model=self._model_name())
                    if isinstance(response, (CompletionResponse, ChatResponse)):
                        attach_metadata(response, meta)
                    kind: Literal["completion", "chat"] = "chat" if isinstance(event, LLMChatEndEvent) else "completion"
                    self._add(ScoredCall(kind=kind, span_id=event.span_id, text=_text_of(response),
                                         metadata=meta, error=f"{type(exc).__name__}: {exc}"))
            except Exception:  # noqa: BLE001
                pass

    def _remember(self, span_id: str | None, info: dict[str, Any]) -> None:
        if span_id is None:
            return
        with self._lock:
            self._spans[span_id] = info
            while len(self._spans) > _MAX_OPEN_SPANS:
                _, old = self._spans.popitem(last=False)
                self._forget_chat(old)

    def _pop(self, span_id: str | None) -> dict[str, Any] | None:
        if span_id is None:
            return None
        with self._lock:
            info = self._spans.pop(span_id, None)
            if info is not None:
                self._forget_chat(info)
            return info

    def _forget_chat(self, info: dict[str, Any]) -> None:
        # caller holds self._lock
        if info.get("kind") != "chat":
            return
        self._open_chats = max(0, self._open_chats - 1)
        prompt = info.get("prompt")
        if prompt is not None and self._pending_prompts[prompt] > 0:
            self._pending_prompts[prompt] -= 1
            if self._pending_prompts[prompt] == 0:
                del self._pending_prompts[prompt]

    def _model_name(self) -> str | None:
        return getattr(self.scorer, "model_name", None)

    def _is_mine(self, model_dict: dict[str, Any] | None) -> bool:
        if self.llm is None or model_dict is None:
            return True
        try:
            return model_dict == self.llm.to_payload()
        except Exception:  # noqa: BLE001
            return True

    def _render(self, messages: list[Any]) -> str | None:
        """The prompt string an LLM would build from chat messages (to recognise its inner completion)."""
        try:
            to_prompt = getattr(self.llm, "messages_to_prompt", None) if self.llm is not None else None
            if to_prompt is not None:
                return str(to_prompt(messages))
            return str(
                self.scorer.tokenizer.apply_chat_template(
                    messages_to_dicts(messages), tokenize=False, add_generation_prompt=True
                )
            )
        except Exception:  # noqa: BLE001
            return None

    def _on_chat_start(self, event: LLMChatStartEvent) -> None:
        if not self._is_mine(event.model_dict):
            return
        prompt = self._render(list(event.messages))
        with self._lock:
            if event.span_id is not None:
                self._spans[event.span_id] = {"kind": "chat", "model_dict": event.model_dict, "prompt": prompt}
            self._open_chats += 1
            if prompt is not None:
                self._pending_prompts[prompt] += 1

    def _on_completion_end(self, event: LLMCompletionEndEvent) -> None:
        info = self._pop(event.span_id)
        if info is not None and not self._is_mine(info.get("model_dict")):
            return
        response = event.response
        if self._record_existing("completion", event.span_id, None, response):
            return
        formatted = bool(info and info.get("formatted"))
        with self._lock:
            inside_chat = event.prompt in self._pending_prompts or (formatted and self._open_chats > 0)
        if inside_chat:
            return  # the inner completion of a chat call: the chat end event scores it against the messages
        if formatted:
            meta = missing_score_metadata(
                "the prompt was already formatted (complete(formatted=True)), so its chat messages are unknown; "
                "call llm.chat(messages) to get a score",
                model=self._model_name(),
            )
            attach_metadata(response, meta)
            self._mark_seen(response)
            self._add(ScoredCall(kind="completion", span_id=event.span_id, text=response.text, metadata=meta,
                                 error=meta["error"]))
            return
        messages: list[dict[str, str]] = []
        system_prompt = getattr(self.llm, "system_prompt", None) if self.llm is not None else None
        if system_prompt:
            messages.append({"role": "system", "content": str(system_prompt)})
        messages.append({"role": "user", "content": event.prompt})
        self._score("completion", event.span_id, messages, response.text or "", response)

    def _on_chat_end(self, event: LLMChatEndEvent) -> None:
        info = self._pop(event.span_id)
        if info is not None and not self._is_mine(info.get("model_dict")):
            return
        if info is None and self.llm is not None:
            return  # not a chat we saw start for our LLM
        response = event.response
        if response is None:
            meta = missing_score_metadata("the chat produced no response", model=self._model_name())
            self._add(ScoredCall(kind="chat", span_id=event.span_id, text="", metadata=meta, error=meta["error"]))
            return
        if self._record_existing("chat", event.span_id, None, response):
            return
        messages = messages_to_dicts(list(event.messages))
        self._score("chat", event.span_id, messages, response.message.content or "", response)

    def _mark_seen(self, response: Any) -> None:
        with self._lock:
            self._seen[id(response)] = None
            while len(self._seen) > _MAX_OPEN_SPANS:
                self._seen.popitem(last=False)

    def _record_existing(
        self, kind: Literal["completion", "chat"], span_id: str | None, messages: Any, response: Any
    ) -> bool:
        """Record (without re-scoring) a response that already carries gradguard metadata.

        A response this handler already recorded (an async wrapper's end event repeats its inner
        call's response object) is skipped silently.
        """
        meta = read_metadata(response)
        if meta is None:
            return False
        with self._lock:
            if id(response) in self._seen:
                return True
        self._mark_seen(response)
        self._add(ScoredCall(kind=kind, span_id=span_id, messages=messages, text=_text_of(response),
                             metadata=dict(meta), result=read_result(response)))
        return True

    def _score(
        self,
        kind: Literal["completion", "chat"],
        span_id: str | None,
        messages: list[dict[str, str]],
        text: str,
        response: CompletionResponse | ChatResponse,
    ) -> None:
        result: ScoreResult | None = None
        error: str | None = None
        try:
            result = self.scorer.score(messages, text)
            meta = result.metadata()
        except Exception as exc:  # noqa: BLE001 - unscored, never raised into the app
            logger.warning("gradguard could not score a %s answer: %s", kind, exc)
            error = f"{type(exc).__name__}: {exc}"
            meta = missing_score_metadata(f"scoring failed: {error}", model=self._model_name())
        attach_metadata(response, meta)
        self._mark_seen(response)
        self._add(ScoredCall(kind=kind, span_id=span_id, messages=messages, text=text, metadata=meta,
                             result=result, error=error))
        publish_score(CapturedScore(text=text, result=result, metadata=meta, source="handler"))


def _text_of(response: Any) -> str:
    if isinstance(response, ChatResponse):
        return response.message.content or ""
    if isinstance(response, CompletionResponse):
        return response.text or ""
    return ""
