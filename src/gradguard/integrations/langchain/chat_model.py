"""``ChatGradguard``: a LangChain chat model over a local Hugging Face model whose every answer is scored."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from gradguard.integrations._core import (
    CALL_OPTIONS,
    METADATA_KEY,
    GenerationOptions,
    IntegrationError,
    LocalBackend,
    RemoteBackend,
    ToolBinding,
    ToolTurn,
    UnknownOptionError,
    with_system_prompt,
)
from gradguard.integrations._core.streaming import StreamPiece
from gradguard.integrations._core.tool_turn import TurnPiece, reasoning_spans
from gradguard.integrations.langchain.metadata import _validation_as, remember_result
from gradguard.integrations.langchain.structured import StructuredMethod, json_instruction, structured_output
from gradguard.result import ScoreResult
from gradguard.scorer import GradScorer

__all__ = ["ChatGradguard", "ChatInputError", "to_chat_dicts"]



class ChatInputError(IntegrationError):
    """A message, option or field value that ``ChatGradguard`` cannot use (the message says which, and the fix)."""


_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}
_CLASSES = ((SystemMessage, "system"), (HumanMessage, "user"), (AIMessage, "assistant"))
#: Content blocks of an AI message that repeat its ``tool_calls`` (Anthropic-style): skipped, the calls are rendered.
_CALL_BLOCKS = frozenset({"tool_use", "tool_call", "function_call"})
#: Call options of ChatGradguard alone (not generation options): tools bound for the call, and a JSON answer.
MODEL_CALL_OPTIONS = ("tools", "tool_choice", "response_format")


def _text(message: BaseMessage, i: int, skip: frozenset[str] = frozenset()) -> str:
    blocks = message.content if isinstance(message.content, list) else []
    kinds = sorted({str(b.get("type")) for b in blocks if isinstance(b, dict)} - {"text"} - skip)
    if kinds:
        raise ChatInputError(
            f"message {i} has content blocks of type {kinds}; ChatGradguard hosts a text-only model: pass text"
        )
    return message.text


def _arguments(args: str | None) -> dict[str, Any]:
    """An invalid call's arguments as a dict for the template (``{}`` when they are not a JSON object)."""
    try:
        value = json.loads(args) if args else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _past_calls(message: AIMessage) -> list[dict[str, Any]]:
    """The calls of an AI message as OpenAI dicts (arguments as dicts), its invalid calls too: an agent answers
    those with an error ``ToolMessage`` (``create_agent`` does), which must match a call."""
    calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": dict(c["args"])}}
             for c in message.tool_calls]
    calls += [{"id": c["id"], "type": "function",
               "function": {"name": c.get("name") or "unknown", "arguments": _arguments(c.get("args"))}}
              for c in message.invalid_tool_calls if c.get("id")]
    return calls


def to_chat_dicts(messages: Sequence[BaseMessage], system_prompt: str | None = None) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI-style dicts for the chat template, ``system_prompt`` first when none is a system
    message: system, human and AI messages (or a ``ChatMessage`` with such a role) with text content, an AI
    message's tool calls as ``tool_calls`` (``{"id", "type", "function": {"name", "arguments": dict}}``), a
    ``ToolMessage`` as ``{"role": "tool", "content", "tool_call_id"}``. Raises :class:`ChatInputError` for
    anything else (a tool message that answers no call raises the core's ``ToolMessageError`` when rendered)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            out.append({"role": "tool", "content": _text(message, i), "tool_call_id": message.tool_call_id})
            continue
        role = next((name for kind, name in _CLASSES if isinstance(message, kind)), None)
        if isinstance(message, ChatMessage):
            role = _ROLES.get(message.role.lower())
        if role is None:
            raise ChatInputError(
                f"message {i} is a {type(message).__name__} (type {message.type!r}); ChatGradguard takes system, "
                "human, AI and tool messages"
            )
        is_ai = isinstance(message, AIMessage)
        entry: dict[str, Any] = {"role": role, "content": _text(message, i, _CALL_BLOCKS if is_ai else frozenset())}
        if isinstance(message, AIMessage) and (calls := _past_calls(message)):
            entry["tool_calls"] = calls
        out.append(entry)
    if not out:
        raise ChatInputError("no messages were given; pass at least one HumanMessage")
    return with_system_prompt(out, system_prompt)


def _untitled(node: Any) -> Any:
    """A JSON schema without its ``title`` keywords (pydantic adds them; property names are kept)."""
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    if not isinstance(node, dict):
        return node
    return {
        k: {p: _untitled(s) for p, s in v.items()} if k in ("properties", "$defs") and isinstance(v, dict)
        else _untitled(v)
        for k, v in node.items() if not (k == "title" and isinstance(v, str))
    }


def _unique(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tools`` without repeats of one tool (same name and parameters, titles aside: a pydantic model and its
    JSON schema); two different tools under one name are left for the core to reject."""
    seen: set[tuple[str, str]] = set()
    out = []
    for tool in tools:
        fn = tool["function"]
        key = (fn["name"], json.dumps(_untitled(fn.get("parameters", {})), sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append(tool)
    return out


class ChatGradguard(BaseChatModel):
    """A local Hugging Face chat model whose every answer, and every tool call, carries its gradient-based uncertainty.

    Setup:
        ``ChatGradguard()`` hosts the embedded Qwen2.5-Coder-0.5B-Instruct; ``model=`` a Hub id in the local
        cache, a folder or a ``.gguf`` (loaded on first use); ``scorer=GradScorer(model, tokenizer)`` a loaded one;
        ``base_url="http://host:8000"`` (with ``api_key=`` or ``$GRADGUARD_API_KEY``) the model of a
        ``gradguard serve`` server: the same answers, scores and metadata, computed there (docs/clients.md).
    Invoke:
        ``chat.invoke("Who proposed natural selection?")``; greedy unless ``temperature > 0``. Per-call options:
        :data:`~gradguard.integrations._core.CALL_OPTIONS` (and ``max_tokens``) plus ``tools``, ``tool_choice``
        and ``response_format``; any other raises :class:`~gradguard.integrations._core.UnknownOptionError`.
        Calls are serialised by the scorer's lock.
    Stream:
        Text as it is generated; the last chunk carries the score. A consumer that stops early stops generation.
    Tools:
        ``chat.bind_tools([get_weather], tool_choice="auto")`` renders the tools through the model's own chat
        template (Qwen/Hermes, Llama 3.1+, Mistral formats; ``gradguard.integrations._core.register_tool_call_format``
        adds one) and parses its calls into ``tool_calls``; a malformed call, a call to a tool that is not bound
        or arguments that do not match the schema go to ``invalid_tool_calls`` with the reason. ``tool_choice``:
        ``"auto"``, ``"none"`` (tools not rendered), ``"any"``/``"required"``/``True`` or a tool's name (the answer
        starts with the template's call opening). ``ToolMessage`` s and past calls go back into the template.
        Streaming yields each call as one ``tool_call_chunk`` once it is complete; invalid calls are listed in the
        last chunk's ``response_metadata["invalid_tool_calls"]``. A template without tool support, a schema it
        cannot render, an unenforceable ``tool_choice`` raise in ``bind_tools``; a ``ToolMessage`` whose id
        answers no call raises ``ToolMessageError``.
    Structured output:
        ``with_structured_output(schema, method=...)`` for pydantic models, TypedDicts and JSON schemas:
        ``"function_calling"`` (default) forces a call to the schema as a tool; ``"json_schema"`` asks for a JSON
        object matching the schema in a system instruction, then parses and validates it (prompting, not
        constrained decoding); ``"json_mode"`` asks for any JSON object. A failure raises
        ``OutputParserException``, or with ``include_raw=True`` comes back as ``parsing_error`` next to ``raw`` (whose
        ``response_metadata["gradguard"]`` holds the confidence) and ``parsed=None``. A ``<think>…</think>``
        section is left out of parsing and of every score unless ``score_reasoning=True``.
    Metadata:
        ``response_metadata["gradguard"]`` is :meth:`gradguard.ScoreResult.metadata`: ``confidence`` (``None``
        when uncalibrated), ``uncertainty`` (**larger = less confident**), ``scored`` (False: unconfident), ...
        With tools bound it adds ``tool_calls``: one ``{id, name, confidence, uncertainty, in_domain, scored}``
        per call, the call's own span scored on its own (same ids as ``message.tool_calls``; ``confidence`` None
        or ``scored`` False: treat the call as unconfident), and the message-level confidence uses the ``tools``
        task. ``logprobs=True`` adds OpenAI-style ``logprobs`` (alternatives from the scoring pass: no extra pass).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    model: str | None = Field(None, description="Model source: Hub id, folder or .gguf; None = embedded default.")
    scorer: GradScorer | None = Field(None, exclude=True, description="A ready scorer (instead of `model`).")
    base_url: str | None = Field(None, description="A `gradguard serve` server's URL (instead of model/scorer).")
    api_key: SecretStr | None = Field(None, exclude=True, description="The server's key (default $GRADGUARD_API_KEY).")
    max_new_tokens: int = Field(
        256, validation_alias=AliasChoices("max_new_tokens", "max_tokens"), description="Most tokens to generate."
    )
    temperature: float | None = Field(None, description="Sampling temperature; None or 0 = greedy.")
    top_p: float | None = Field(None, description="Nucleus sampling mass (only with temperature > 0).")
    stop: list[str] | None = Field(None, description="Stop strings; the answer ends before the first one.")
    timeout: float | None = Field(None, description="Most seconds to spend generating (transformers' max_time).")
    system_prompt: str | None = Field(None, description="System message used when the conversation has none.")
    logprobs: bool = Field(False, description="Add OpenAI-style logprobs to response_metadata.")
    top_logprobs: int | None = Field(None, description="Alternatives per token in logprobs (0-20).")
    streaming: bool = Field(False, description="Stream by default in invoke (LangChain's flag).")
    task: str | None = Field(None, description="Calibration task ('chat', 'rag', ...); None: the profile's default.")
    score_reasoning: bool = Field(
        False, description="Score a <think>...</think> section too (default: only the answer after it is scored)."
    )

    _backend: LocalBackend | RemoteBackend = PrivateAttr()
    _defaults: GenerationOptions = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        with _validation_as(ChatGradguard, ChatInputError):  # a local model: no API key, retries, ...
            super().__init__(**kwargs)
        self._defaults = _options(GenerationOptions(), self.model_dump(include=set(CALL_OPTIONS)), None)
        if self.base_url is not None:
            given = [name for name in ("model", "scorer") if getattr(self, name) is not None]
            if given:
                raise ChatInputError(
                    f"ChatGradguard got base_url={self.base_url!r} and {given[0]}=...; pass only one: base_url= for "
                    f"a model served by `gradguard serve`, model=/scorer= for a model in this process"
                )
            key = self.api_key.get_secret_value() if self.api_key is not None else None
            try:
                self._backend = RemoteBackend(self.base_url, api_key=key, timeout=self.timeout or 120.0)
            except IntegrationError as exc:
                raise ChatInputError(f"ChatGradguard: {exc}") from None
        elif self.api_key is not None:
            raise ChatInputError(
                "ChatGradguard got api_key= without base_url=: a model in this process needs no key; pass "
                "base_url= for a `gradguard serve` server"
            )
        else:
            self._backend = LocalBackend(self.model, self.scorer)

    @property
    def _llm_type(self) -> str:
        return "gradguard"

    @property
    def model_name(self) -> str:
        """The hosted model's name (without loading it)."""
        return self._backend.model_name

    @property
    def gradscorer(self) -> GradScorer:
        """The scorer behind this model, loaded on first use (a remote model has none here: raises)."""
        if isinstance(self._backend, RemoteBackend):
            raise ChatInputError(
                f"ChatGradguard(base_url={self.base_url!r}) has no scorer in this process: the model is served by "
                "`gradguard serve`; read scores from response_metadata['gradguard'] (or result_for(message))"
            )
        return self._backend.scorer

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, **self._defaults.model_dump(), "system_prompt": self.system_prompt}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        kwargs.setdefault("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens))
        return super()._get_ls_params(stop=stop or self.stop, **kwargs)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with ``tools`` bound (anything ``convert_to_openai_tool`` reads: ``@tool`` functions, pydantic
        models, TypedDicts, functions, OpenAI dicts).

        ``tool_choice``: ``None``/``"auto"``, ``"none"``, ``"any"``/``"required"``/``True``, a tool's name or
        ``{"type": "function", "function": {"name": ...}}``. ``strict=True`` forbids arguments outside the
        schema. Checked now (loads the model): raises ``ToolsUnsupportedError`` (the template has no tool
        support), ``ToolSchemaError`` (a tool it cannot render, two different tools with one name) or
        ``ToolChoiceError``. ``kwargs`` are bound too (per-call options).
        """
        formatted = _unique([convert_to_openai_tool(t, strict=strict) for t in tools])
        self._backend.bind(formatted, tool_choice)
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: StructuredMethod = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable answering with an instance of ``schema`` (pydantic model) or a dict (TypedDict, JSON schema).

        ``method``: ``"function_calling"`` (the schema as the one tool, call forced), ``"json_schema"`` (a system
        instruction with the schema, then parse and validate; no constrained decoding) or ``"json_mode"`` (any
        JSON object, validated when a schema is given). ``include_raw=True`` returns ``{"raw", "parsed",
        "parsing_error"}`` (the confidence is in ``raw.response_metadata["gradguard"]``: for function calling,
        ``["tool_calls"][0]["confidence"]`` is the call's own). Otherwise a failure raises ``OutputParserException``.
        """
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        return structured_output(self, schema, method=method, include_raw=include_raw, strict=strict)

    def _call(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], GenerationOptions, ToolBinding | None]:
        """The chat dicts, the generation options and the tool binding (None: a plain answer) of one call."""
        kwargs.pop("stream", None)  # LangChain's own flag
        model = kwargs.pop("model", None)
        if model not in (None, self.model, self.model_name):
            raise ChatInputError(
                f"model={model!r} per call: ChatGradguard hosts one local model ({self.model_name!r}); "
                "build another ChatGradguard(model=...) for another model"
            )
        tools = kwargs.pop("tools", None) or []
        choice = kwargs.pop("tool_choice", None)
        response_format = kwargs.pop("response_format", None)
        dicts = to_chat_dicts(messages, self.system_prompt)
        options = _options(self._defaults, kwargs, stop)
        if response_format is not None:
            try:
                dicts = _with_instruction(dicts, json_instruction(response_format))
            except ValueError as exc:
                raise ChatInputError(f"ChatGradguard: {exc}") from None
        history = any(d["role"] == "tool" or d.get("tool_calls") for d in dicts)
        if not (tools or choice not in (None, "auto", "none") or history):
            return dicts, options, None
        # Tool messages without tools bound still go through the binding (rendered, ids checked), with choice none.
        return dicts, options, self._backend.bind(tools, choice if tools or choice not in (None, "auto") else "none")

    def _plain(self, dicts: list[dict[str, Any]], options: GenerationOptions) -> ScoreResult:
        if isinstance(self._backend, RemoteBackend):  # the server keeps reasoning apart itself
            return self._backend.generate(dicts, options, reasoning=not self.score_reasoning)
        spans = {} if self.score_reasoning else {"spans": reasoning_spans(self._backend.scorer.tokenizer)}
        return self._backend.generate(dicts, options, **spans)

    def _plain_stream(self, dicts: list[dict[str, Any]], options: GenerationOptions) -> Iterator[StreamPiece]:
        if isinstance(self._backend, RemoteBackend):
            return self._backend.stream(dicts, options, reasoning=not self.score_reasoning)
        spans = {} if self.score_reasoning else {"spans": reasoning_spans(self._backend.scorer.tokenizer)}
        return self._backend.stream(dicts, options, **spans)

    def _scored(
        self, message_id: str, result: ScoreResult, options: GenerationOptions, turn: ToolTurn | None = None
    ) -> dict[str, Any]:
        """The fields of the message carrying ``result`` (kept for :func:`result_for` by ``message_id``); with a
        tool ``turn``, its metadata (per-call scores) and its unscored reasoning."""
        remember_result(message_id, result)
        meta: dict[str, Any] = {METADATA_KEY: result.metadata(), "model_name": result.model or self.model_name}
        meta["finish_reason"] = result.finish_reason or "stop"
        if options.logprobs:
            meta["logprobs"] = self._backend.logprobs(result)
        usage = {"input_tokens": result.n_prompt_tokens, "output_tokens": result.n_response_tokens,
                 "total_tokens": result.n_prompt_tokens + result.n_response_tokens}
        fields: dict[str, Any] = {"id": message_id, "response_metadata": meta, "usage_metadata": usage}
        if turn is not None:
            meta[METADATA_KEY] = turn.metadata()
            if turn.calls and result.finish_reason != "length":
                meta["finish_reason"] = "tool_calls"
            if turn.reasoning:
                fields["additional_kwargs"] = {"reasoning_content": turn.reasoning}
        return fields

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        dicts, options, binding = self._call(messages, stop, kwargs)
        if binding is None:
            return self._plain_result(self._plain(dicts, options), options)
        turn = self._backend.generate_turn(dicts, binding, options, reasoning=not self.score_reasoning)
        return self._turn_result(turn, options)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not isinstance(self._backend, RemoteBackend):
            return await super()._agenerate(messages, stop, run_manager, **kwargs)  # a worker thread
        dicts, options, binding = self._call(messages, stop, kwargs)
        reasoning = not self.score_reasoning
        if binding is None:
            return self._plain_result(await self._backend.agenerate(dicts, options, reasoning=reasoning), options)
        turn = await self._backend.agenerate_turn(dicts, binding, options, reasoning=reasoning)
        return self._turn_result(turn, options)

    def _plain_result(self, result: ScoreResult, options: GenerationOptions) -> ChatResult:
        message_id = f"gradguard-{uuid.uuid4().hex}"
        message = AIMessage(content=result.response, **self._scored(message_id, result, options))
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": self.model_name})

    def _turn_result(self, turn: ToolTurn, options: GenerationOptions) -> ChatResult:
        message_id = f"gradguard-{uuid.uuid4().hex}"
        message = AIMessage(
            content=turn.content,
            tool_calls=[tool_call(name=c.call.name, args=c.call.arguments, id=c.call.id) for c in turn.calls],
            invalid_tool_calls=_invalid(turn),
            **self._scored(message_id, turn.result, options, turn),
        )
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": self.model_name})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        dicts, options, binding = self._call(messages, stop, kwargs)
        message_id = f"gradguard-{uuid.uuid4().hex}"
        if binding is None:
            for piece in self._plain_stream(dicts, options):
                yield self._piece_chunk(message_id, piece, options)
            return
        counter = [0]
        for turn_piece in self._backend.stream_turn(dicts, binding, options, reasoning=not self.score_reasoning):
            yield self._turn_chunk(message_id, turn_piece, options, counter)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if not isinstance(self._backend, RemoteBackend):
            async for chunk in super()._astream(messages, stop, run_manager, **kwargs):  # a worker thread
                yield chunk
            return
        dicts, options, binding = self._call(messages, stop, kwargs)
        message_id = f"gradguard-{uuid.uuid4().hex}"
        reasoning = not self.score_reasoning
        if binding is None:
            async for piece in self._backend.astream(dicts, options, reasoning=reasoning):
                yield self._piece_chunk(message_id, piece, options)
            return
        counter = [0]
        async for turn_piece in self._backend.astream_turn(dicts, binding, options, reasoning=reasoning):
            yield self._turn_chunk(message_id, turn_piece, options, counter)

    def _piece_chunk(self, message_id: str, piece: StreamPiece, options: GenerationOptions) -> ChatGenerationChunk:
        if piece.result is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=piece.text, id=message_id))
        parts = self._scored(message_id, piece.result, options)
        return ChatGenerationChunk(message=AIMessageChunk(content=piece.text, chunk_position="last", **parts))

    def _turn_chunk(
        self, message_id: str, turn_piece: TurnPiece, options: GenerationOptions, counter: list[int]
    ) -> ChatGenerationChunk:
        """One chunk of a streamed turn; ``counter[0]`` is the index of the next tool-call chunk."""
        chunks = []
        for call in turn_piece.calls:
            chunks.append(tool_call_chunk(name=call.name, args=json.dumps(call.arguments), id=call.id,
                                          index=counter[0]))
            counter[0] += 1
        if turn_piece.turn is None:
            return ChatGenerationChunk(
                message=AIMessageChunk(content=turn_piece.content, id=message_id, tool_call_chunks=chunks)
            )
        # Invalid calls are not streamed as chunks: LangChain would re-parse their arguments into tool_calls.
        parts = self._scored(message_id, turn_piece.turn.result, options, turn_piece.turn)
        if turn_piece.turn.invalid:
            parts["response_metadata"]["invalid_tool_calls"] = _invalid(turn_piece.turn)
        chunk = AIMessageChunk(content=turn_piece.content, tool_call_chunks=chunks, chunk_position="last", **parts)
        return ChatGenerationChunk(message=chunk)


def _invalid(turn: ToolTurn) -> list[Any]:
    return [invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error) for c in turn.invalid]


def _with_instruction(dicts: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """``dicts`` with ``instruction`` at the end of their system message (or as one, first)."""
    if dicts and dicts[0]["role"] == "system":
        return [{**dicts[0], "content": f"{dicts[0]['content']}\n\n{instruction}".lstrip()}, *dicts[1:]]
    return [{"role": "system", "content": instruction}, *dicts]


def _options(base: GenerationOptions, call: dict[str, Any], stop: list[str] | None) -> GenerationOptions:
    try:
        return base.merged(call, owner="ChatGradguard", stop=stop)
    except UnknownOptionError as exc:
        raise UnknownOptionError(f"{exc}; ChatGradguard also takes {list(MODEL_CALL_OPTIONS)}") from None
    except IntegrationError as exc:
        raise ChatInputError(str(exc)) from None
