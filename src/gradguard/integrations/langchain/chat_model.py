"""``ChatGradguard``: a LangChain chat model over a local Hugging Face model whose every answer is scored."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import AliasChoices, ConfigDict, Field, PrivateAttr, ValidationError
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from gradguard.embedded import EMBEDDED_MODEL_ID
from gradguard.errors import InputError
from gradguard.integrations.langchain.metadata import GRADGUARD_KEY, openai_logprobs, remember_result
from gradguard.result import ScoreResult, Timings
from gradguard.scorer import GradScorer

__all__ = ["ChatGradguard", "ChatInputError", "to_chat_dicts"]

logger = logging.getLogger(__name__)

#: Keyword arguments ``invoke``/``bind`` may pass per call.
_CALL_OPTIONS = frozenset(
    {"max_tokens", "max_new_tokens", "temperature", "top_p", "timeout", "logprobs", "top_logprobs", "stream", "model", "task"}
)
_MAX_TOP_LOGPROBS = 20


class ChatInputError(InputError):
    """A message, option or field value that ``ChatGradguard`` cannot use (the message says which, and the fix)."""


_ROLE_OF_CHAT_MESSAGE = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}


def to_chat_dicts(messages: Sequence[BaseMessage], system_prompt: str | None = None) -> list[dict[str, str]]:
    """LangChain messages as ``[{"role", "content"}]`` for the model's chat template.

    System, human and AI messages (and ``ChatMessage`` with one of those roles) are
    supported, with text content. ``system_prompt`` is prepended when the conversation
    has no system message of its own. Raises :class:`ChatInputError` for anything else.
    """
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            if message.tool_calls or message.invalid_tool_calls:
                raise ChatInputError(
                    f"message {i} is an AIMessage with tool calls; ChatGradguard does not call tools: send the "
                    "tool's result as a HumanMessage (see examples/langchain_agent_confidence.py)"
                )
            role = "assistant"
        elif isinstance(message, ChatMessage) and message.role.lower() in _ROLE_OF_CHAT_MESSAGE:
            role = _ROLE_OF_CHAT_MESSAGE[message.role.lower()]
        else:
            raise ChatInputError(
                f"message {i} is a {type(message).__name__} (type {message.type!r}); ChatGradguard takes system, "
                "human and AI messages: render tool or function results into a HumanMessage"
            )
        content = message.content
        if not isinstance(content, str):
            kinds = {b.get("type") if isinstance(b, dict) else "text" for b in content}
            if kinds - {"text"}:
                raise ChatInputError(
                    f"message {i} has content blocks of type {sorted(str(k) for k in kinds - {'text'})}; "
                    "ChatGradguard hosts a text-only model: pass text content"
                )
            content = message.text
        out.append({"role": role, "content": content})
    if system_prompt is not None and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system_prompt})
    if not out:
        raise ChatInputError("no messages were given; pass at least one HumanMessage")
    return out


@dataclass(frozen=True)
class _Options:
    """The generation options of one call (fields merged with per-call keyword arguments)."""

    max_new_tokens: int
    temperature: float | None
    top_p: float | None
    timeout: float | None
    stop: tuple[str, ...]
    logprobs: bool
    top_logprobs: int
    task: str | None = None

    def generate_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.temperature:
            kwargs.update(do_sample=True, temperature=float(self.temperature))
            if self.top_p is not None:
                kwargs["top_p"] = float(self.top_p)
        if self.timeout is not None:
            kwargs["max_time"] = float(self.timeout)
        if self.stop:
            kwargs.update(stop_strings=list(self.stop), tokenizer=tokenizer)
        return kwargs


class _Cancelled(StoppingCriteria):
    """Stops generation when the consumer of a stream went away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-n:]):
                best = n
                break
    return best


class ChatGradguard(BaseChatModel):
    """A local Hugging Face chat model whose every answer carries its gradient-based uncertainty.

    Each completion's ``response_metadata["gradguard"]`` holds ``confidence`` (calibrated
    P(correct), ``None`` when the model has no calibration), ``uncertainty`` (HybridGrad,
    SemGrad, ParaGrad, ExGrad, G-NLL, mean NLL, mean entropy: **larger = less confident**),
    ``model``, ``profile``, ``spt_offset``, ``n_response_tokens`` and ``scored``. When
    streaming, the last chunk carries it. With ``logprobs=True`` the metadata also holds
    OpenAI-style ``logprobs`` (``top_logprobs`` most likely alternatives per token).

    Build it over a ready scorer, ``ChatGradguard(scorer=GradScorer(model, tokenizer))``,
    or a model source loaded lazily on first use: ``ChatGradguard()`` (the embedded
    Qwen2.5-Coder-0.5B-Instruct), ``ChatGradguard(model="Qwen/Qwen2.5-1.5B-Instruct")``
    (a Hub id in the local cache), a folder, or a ``.gguf`` file. Decoding is greedy
    unless ``temperature > 0``. Concurrent calls (``batch``, threads) share the model
    and are serialised by the scorer's lock.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    model: str | None = Field(None, description="Model source: Hub id, folder or .gguf; None = embedded default.")
    scorer: GradScorer | None = Field(None, exclude=True, description="A ready scorer (overrides `model`).")
    max_new_tokens: int = Field(
        256, validation_alias=AliasChoices("max_new_tokens", "max_tokens"), description="Most tokens to generate."
    )
    temperature: float | None = Field(None, description="Sampling temperature; None or 0 = greedy.")
    top_p: float | None = Field(None, description="Nucleus sampling mass (only with temperature > 0).")
    stop: list[str] | None = Field(None, description="Stop strings; the answer ends before the first one.")
    timeout: float | None = Field(None, description="Most seconds to spend generating (transformers' max_time).")
    system_prompt: str | None = Field(None, description="System message used when the conversation has none.")
    logprobs: bool = Field(False, description="Add OpenAI-style logprobs to response_metadata.")
    top_logprobs: int | None = Field(None, description="Alternatives per token in logprobs (0-20; costs one forward pass).")
    streaming: bool = Field(False, description="Stream by default in invoke (LangChain's flag).")
    task: str | None = Field(
        None,
        description="Calibration task of the confidence: 'chat', 'rag', 'closed-qa' or one the profile was calibrated "
        "for (None: the profile's default task). Per call: invoke(..., task='rag').",
    )

    _scorer: GradScorer | None = PrivateAttr(None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **kwargs: Any) -> None:
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            parts = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
                if err.get("type") == "extra_forbidden":
                    parts.append(
                        f"{loc}={err.get('input')!r} is not an option of ChatGradguard (a local model: no API key, "
                        "no retries); remove it"
                    )
                else:
                    parts.append(f"{loc}={err.get('input')!r}: {err.get('msg')}")
            raise ChatInputError("invalid ChatGradguard: " + "; ".join(parts)) from None
        self._options({})  # validate the field values now, not on first call
        self._scorer = self.scorer

    # --- LangChain plumbing ------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "gradguard"

    @property
    def model_name(self) -> str:
        """The hosted model's name (without loading it)."""
        if self._scorer is not None:
            return self._scorer.model_name
        return self.model or EMBEDDED_MODEL_ID

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "system_prompt": self.system_prompt,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="gradguard",
            ls_model_name=kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model_name,
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if isinstance(temperature, (int, float)):
            params["ls_temperature"] = float(temperature)
        max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens))
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    @property
    def gradscorer(self) -> GradScorer:
        """The scorer behind this model, loaded on first use (the embedded default loads in ~10 s)."""
        if self._scorer is None:
            with self._load_lock:
                if self._scorer is None:
                    self._scorer = GradScorer.from_pretrained(self.model)
        return self._scorer

    # --- options -------------------------------------------------------------------------------

    def _options(self, kwargs: Mapping[str, Any], stop: list[str] | None = None) -> _Options:
        unknown = sorted(set(kwargs) - _CALL_OPTIONS)
        if unknown:
            raise ChatInputError(
                f"unsupported call options {unknown}; ChatGradguard takes {sorted(_CALL_OPTIONS - {'stream', 'model'})} "
                "(it does not call tools; use a ConfidenceRouter or an agent loop around it)"
            )
        if "model" in kwargs and kwargs["model"] not in (None, self.model, self.model_name):
            raise ChatInputError(
                f"model={kwargs['model']!r} per call: ChatGradguard hosts one local model ({self.model_name!r}); "
                "build another ChatGradguard(model=...) for another model"
            )
        max_new = kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))
        temperature = kwargs.get("temperature", self.temperature)
        top_p = kwargs.get("top_p", self.top_p)
        timeout = kwargs.get("timeout", self.timeout)
        logprobs = bool(kwargs.get("logprobs", self.logprobs))
        top = kwargs.get("top_logprobs", self.top_logprobs)
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise ChatInputError(f"max_tokens={max_new!r}: pass a positive number of tokens, e.g. 256")
        if temperature is not None and (not isinstance(temperature, (int, float)) or not temperature >= 0):
            raise ChatInputError(f"temperature={temperature!r}: pass a number >= 0 (0 or None = greedy)")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise ChatInputError(f"top_p={top_p!r}: pass a number in (0, 1]")
        if timeout is not None and (not isinstance(timeout, (int, float)) or not timeout > 0):
            raise ChatInputError(f"timeout={timeout!r}: pass a positive number of seconds, or None")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= _MAX_TOP_LOGPROBS):
            raise ChatInputError(f"top_logprobs={top!r}: pass an integer in [0, {_MAX_TOP_LOGPROBS}]")
        if top and not logprobs:
            logprobs = True  # asking for alternatives implies asking for logprobs
        stops = tuple(s for s in (stop if stop is not None else (self.stop or [])) if s)
        return _Options(
            max_new_tokens=max_new,
            temperature=temperature,
            top_p=top_p,
            timeout=timeout,
            stop=stops,
            logprobs=logprobs,
            top_logprobs=top or 0,
            task=kwargs.get("task", self.task),
        )

    # --- generation ----------------------------------------------------------------------------

    def _finish(self, scorer: GradScorer, dicts: list[dict[str, str]], result: ScoreResult, opts: _Options) -> tuple[ScoreResult, str]:
        """Cut the answer at a stop string (re-scoring the cut answer) and tell the finish reason."""
        cut = _first_stop(result.response, opts.stop) if opts.stop else None
        if cut is not None:
            rescored = scorer.score(dicts, result.response[:cut], task=opts.task)
            timings = Timings(generate_s=result.timings.generate_s, score_s=result.timings.score_s + rescored.timings.score_s)
            return rescored.model_copy(update={"timings": timings, "response": result.response[:cut]}), "stop"
        return result, ("length" if result.n_response_tokens >= opts.max_new_tokens else "stop")

    def _metadata(
        self, scorer: GradScorer, dicts: list[dict[str, str]], result: ScoreResult, opts: _Options, finish: str
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            GRADGUARD_KEY: result.metadata(),
            "model_name": result.model or self.model_name,
            "finish_reason": finish,
        }
        if opts.logprobs:
            top = _top_logprobs(scorer, dicts, result.token_ids, opts.top_logprobs) if opts.top_logprobs else None
            meta["logprobs"] = openai_logprobs(scorer.tokenizer, result.token_ids, result.token_logprobs, top)
        return meta

    @staticmethod
    def _usage(result: ScoreResult) -> dict[str, int]:
        return {
            "input_tokens": result.n_prompt_tokens,
            "output_tokens": result.n_response_tokens,
            "total_tokens": result.n_prompt_tokens + result.n_response_tokens,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        opts = self._options(kwargs, stop)
        dicts = to_chat_dicts(messages, self.system_prompt)
        scorer = self.gradscorer
        result = scorer.generate_and_score(
            dicts, max_new_tokens=opts.max_new_tokens, task=opts.task, **opts.generate_kwargs(scorer.tokenizer)
        )
        result, finish = self._finish(scorer, dicts, result, opts)
        message_id = f"gradguard-{uuid.uuid4().hex}"
        remember_result(message_id, result)
        message = AIMessage(
            content=result.response,
            id=message_id,
            response_metadata=self._metadata(scorer, dicts, result, opts, finish),
            usage_metadata=self._usage(result),
        )
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": self.model_name})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        opts = self._options(kwargs, stop)
        dicts = to_chat_dicts(messages, self.system_prompt)
        scorer = self.gradscorer
        streamer = TextIteratorStreamer(scorer.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = scorer.generate_and_score(
                    dicts,
                    max_new_tokens=opts.max_new_tokens,
                    streamer=streamer,
                    task=opts.task,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                    **opts.generate_kwargs(scorer.tokenizer),
                )
            except BaseException as exc:  # re-raised in the consumer's thread
                box["error"] = exc
                streamer.text_queue.put(streamer.stop_signal)

        message_id = f"gradguard-{uuid.uuid4().hex}"
        worker = threading.Thread(target=work, name="gradguard-stream", daemon=True)
        worker.start()
        text, emitted, stopped = "", 0, False
        try:
            for piece in streamer:
                if stopped or not piece:
                    continue
                text += piece
                cut = _first_stop(text, opts.stop) if opts.stop else None
                end = cut if cut is not None else len(text) - _held_back(text, opts.stop)
                if end > emitted:
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text[emitted:end], id=message_id))
                    emitted = end
                stopped = cut is not None
            worker.join()
        finally:
            cancel.set()  # no-op when generation is over; stops it when the consumer left early
        if "error" in box:
            raise box["error"]
        result, finish = self._finish(scorer, dicts, box["result"], opts)
        shown = text[:emitted]
        if not result.response.startswith(shown):
            logger.warning(
                "streamed text %r is not a prefix of the scored answer %r; the score is of the latter", shown, result.response
            )
        remember_result(message_id, result)
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=result.response[emitted:] if result.response.startswith(shown) else "",
                id=message_id,
                chunk_position="last",
                response_metadata=self._metadata(scorer, dicts, result, opts, finish),
                usage_metadata=self._usage(result),
            )
        )


def _top_logprobs(
    scorer: GradScorer, dicts: list[dict[str, str]], token_ids: Sequence[int], k: int
) -> list[list[tuple[int, float]]]:
    """The ``k`` most likely tokens and their log-probabilities at each response position (one forward pass)."""
    if not token_ids:
        return []
    with scorer.lock, torch.no_grad():
        prompt = scorer.prompt_ids(dicts)
        ids = torch.tensor([prompt + list(token_ids)], device=scorer.model.device)
        logits = scorer.model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(token_ids)]
        values, indices = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return [list(zip(row_i.tolist(), row_v.tolist())) for row_i, row_v in zip(indices, values)]
