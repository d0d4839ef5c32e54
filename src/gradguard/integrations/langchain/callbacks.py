"""``GradguardCallbackHandler``: score the completions of a chat model you already host (e.g. ``ChatHuggingFace``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers.context import register_configure_hook
from pydantic import BaseModel, ConfigDict, Field

from gradguard.errors import GradguardError
from gradguard.integrations._core import METADATA_KEY, LocalBackend, RemoteBackend, score_foreign, unscored_metadata
from gradguard.integrations._core.remote import ExpectedModel, model_warnings
from gradguard.integrations.langchain.chat_model import to_chat_dicts
from gradguard.integrations.langchain.metadata import is_scored, read_metadata, remember_result, result_for
from gradguard.result import ScoreResult
from gradguard.scorer import GradScorer

__all__ = ["GradguardCallbackHandler", "ScoreRecord", "UnknownRunError", "gradguard_callback"]

logger = logging.getLogger(__name__)


class UnknownRunError(GradguardError, KeyError):
    """No score was recorded for the given run id."""


class ScoreRecord(BaseModel):
    """The score of one completion seen by a :class:`GradguardCallbackHandler`: ``metadata`` is the shared
    ``response_metadata["gradguard"]`` dict, ``result`` the full :class:`~gradguard.ScoreResult` (``None`` when
    scoring failed: ``error`` says why and ``scored`` is False, so treat the answer as unconfident)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: UUID
    index: int = Field(0, description="Index of the generation within the run.")
    messages: list[dict[str, str]] | None = Field(None, description="The prompt as chat messages; None if unknown.")
    response: str
    metadata: dict[str, Any]
    result: ScoreResult | None = None
    error: str | None = None

    @property
    def scored(self) -> bool:
        """True when the completion has finite scores."""
        return is_scored(self.metadata)


class GradguardCallbackHandler(BaseCallbackHandler):
    """Scores every chat completion of the runs it watches (e.g. ``ChatHuggingFace`` over a local pipeline)
    teacher-forced with a :class:`~gradguard.GradScorer` over the same model, sets ``response_metadata["gradguard"]``
    and keeps a thread-safe record by run id (:meth:`record`: where a streamed answer's score is). It never raises
    into the chain: an unscorable completion is recorded with ``scored=False`` and an ``error`` (unconfident); one
    already scored (by ``ChatGradguard``) is recorded, not scored again. Build it with
    ``GradguardCallbackHandler(scorer)`` or ``GradguardCallbackHandler.from_chat_model(chat_hf)``.

    Side-car mode: ``GradguardCallbackHandler(scorer_url="http://127.0.0.1:8000", api_key=...)`` scores the answers
    of any chat model (``ChatOpenAI`` over vLLM, ``ChatOllama``, ...) on a ``gradguard serve`` server
    (``/v1/score``). The scores are only that model's uncertainty when the server hosts the same model: the
    generator's name (``response_metadata["model_name"]``/``["model"]``, ``llm_output``, or the model's
    parameters) is checked against the server's through ``expected_model`` (see
    :func:`~gradguard.integrations._core.remote.model_warnings`); a mismatch adds a sentence to the metadata's
    ``warnings`` list (never an exception). A server that cannot be reached gives ``scored=False`` and an ``error``.
    """

    raise_error: bool = False

    def __init__(
        self,
        scorer: GradScorer | None = None,
        *,
        attach: bool = True,
        max_records: int | None = 10_000,
        scorer_url: str | None = None,
        api_key: str | None = None,
        expected_model: ExpectedModel = None,
        timeout: float = 120.0,
    ) -> None:
        super().__init__()
        if scorer is not None and scorer_url is not None:
            raise GradguardError(
                f"GradguardCallbackHandler got scorer=... and scorer_url={scorer_url!r}; pass only one: scorer= for a "
                "model in this process, scorer_url= for a `gradguard serve` server"
            )
        self.scorer = scorer
        self.scorer_url = scorer_url
        self.expected_model = expected_model
        self._remote = RemoteBackend(scorer_url, api_key=api_key, timeout=timeout) if scorer_url is not None else None
        self._generators: dict[UUID, str | None] = {}
        self.attach = attach
        self.max_records = max_records
        self._lock = threading.Lock()
        self._prompts: dict[UUID, list[BaseMessage]] = {}
        self._records: dict[UUID, list[ScoreRecord]] = {}  # in the order the runs ended

    @classmethod
    def from_chat_model(cls, llm: Any, **kwargs: Any) -> GradguardCallbackHandler:
        """A handler scoring with the model inside a ``ChatHuggingFace`` / ``HuggingFacePipeline`` / pipeline."""
        inner = getattr(llm, "llm", llm)  # ChatHuggingFace -> HuggingFacePipeline
        pipe = getattr(inner, "pipeline", inner)  # HuggingFacePipeline -> transformers pipeline
        model = getattr(pipe, "model", None)
        tokenizer = getattr(llm, "tokenizer", None) or getattr(pipe, "tokenizer", None)
        if model is None or tokenizer is None or not hasattr(model, "generate"):
            raise GradguardError(
                f"cannot find a local Hugging Face model and tokenizer in {type(llm).__name__}; pass a ChatHuggingFace "
                "over a HuggingFacePipeline, or build GradguardCallbackHandler(scorer=GradScorer(model, tokenizer))"
            )
        name = getattr(inner, "model_id", None) or getattr(llm, "model_id", None)
        return cls(GradScorer(model, tokenizer, model_name=name if isinstance(name, str) else None), **kwargs)

    @property
    def records(self) -> dict[UUID, list[ScoreRecord]]:
        """A snapshot of every record, by run id (one record per generation of the run)."""
        with self._lock:
            return {k: list(v) for k, v in self._records.items()}

    def record(self, run_id: UUID | str) -> ScoreRecord:
        """The record of the (first) completion of run ``run_id``; raises :class:`UnknownRunError`."""
        with self._lock:
            found = self._records.get(UUID(str(run_id)))
        if not found:
            raise UnknownRunError(
                f"no completion of run {run_id} was scored by this handler; pass the handler in the run's "
                "config (config={'callbacks': [handler]}) or use `with gradguard_callback(...)`"
            )
        return found[0]

    def all_records(self) -> list[ScoreRecord]:
        """Every record, in the order the runs ended."""
        with self._lock:
            return [r for v in self._records.values() for r in v]

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Remember the prompt of the run (one message list per chat-model run) and the model's name."""
        name = _model_name(kwargs.get("invocation_params"), (serialized or {}).get("kwargs"))
        with self._lock:
            if messages:
                self._prompts[run_id] = list(messages[0])
            self._generators[run_id] = name
            while len(self._generators) > 10_000:
                self._generators.pop(next(iter(self._generators)))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Forget the prompt of a run that failed (nothing to score)."""
        with self._lock:
            self._prompts.pop(run_id, None)
            self._generators.pop(run_id, None)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Score each completion of the run and attach its metadata; never raises."""
        with self._lock:
            prompt = self._prompts.pop(run_id, None)
            started_name = self._generators.pop(run_id, None)
        records = []
        for index, generation in enumerate(response.generations[0] if response.generations else []):
            text = generation.text if isinstance(generation.text, str) else str(generation.text)
            fields: dict[str, Any] = {"run_id": run_id, "index": index, "response": text}
            try:
                fields.update(self._score(prompt, generation, text))
            except Exception as exc:  # noqa: BLE001 - the handler must never break the chain
                error = f"{type(exc).__name__}: {exc}"
                logger.warning("gradguard could not score run %s: %s", run_id, error)
                fields.update(metadata=unscored_metadata(error), error=error)
            already = fields.pop("already", False)
            if self._remote is not None and not already:
                message = getattr(generation, "message", None)
                name = _model_name(getattr(message, "response_metadata", None), response.llm_output) or started_name
                self._check_model(fields["metadata"], name)
            record = ScoreRecord(**fields)
            message = getattr(generation, "message", None)
            if message is not None and self.attach:
                message.response_metadata.setdefault(METADATA_KEY, record.metadata)
            if message is not None and record.result is not None and isinstance(message.id, str):
                remember_result(message.id, record.result)
            records.append(record)
        with self._lock:
            self._records.setdefault(run_id, []).extend(records)
            while self.max_records is not None and len(self._records) > self.max_records:
                self._records.pop(next(iter(self._records)))

    def _score(self, prompt: list[BaseMessage] | None, generation: Any, text: str) -> dict[str, Any]:
        """The record fields of one completion; raises when it cannot be scored."""
        dicts = to_chat_dicts(prompt) if prompt is not None else None
        existing = read_metadata(generation) if isinstance(generation, ChatGeneration) else None
        if existing is not None:  # already scored (e.g. by ChatGradguard)
            return {"messages": dicts, "metadata": existing, "result": result_for(generation.message), "already": True}
        if dicts is None:
            raise GradguardError(
                "the handler saw no prompt for this run: it scores chat models (on_chat_model_start), "
                "not plain LLMs; wrap the LLM in ChatHuggingFace"
            )
        if self._remote is not None:  # side-car: the server scores (a full-text echo cannot be told apart here)
            result, meta = score_foreign(self._remote, dicts, text)
            return {"messages": dicts, "response": text, "metadata": meta, "result": result, "error": meta.get("error")}
        if self.scorer is None:
            raise GradguardError(
                "the handler has no scorer; build it with GradguardCallbackHandler(GradScorer(model, tokenizer)) "
                "or GradguardCallbackHandler.from_chat_model(chat_hf)"
            )
        prompt_text = self.scorer.tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
        if isinstance(prompt_text, str) and prompt_text and text.startswith(prompt_text):
            text = text[len(prompt_text) :]  # pipelines with return_full_text=True echo the templated prompt first
        result, meta = score_foreign(LocalBackend(scorer=self.scorer), dicts, text)
        return {"messages": dicts, "response": text, "metadata": meta, "result": result, "error": meta.get("error")}


    def _check_model(self, meta: dict[str, Any], generator: str | None) -> None:
        """Add ``warnings`` to ``meta`` when the generator and the scoring server's model may differ."""
        assert self._remote is not None
        scorer_names = [meta.get("model"), self._remote.model_name]
        warnings = model_warnings(generator, scorer_names, self.expected_model)
        if warnings:
            for warning in warnings:
                logger.warning("gradguard: %s", warning)
            meta["warnings"] = [*meta.get("warnings", []), *warnings]


def _model_name(*bags: Any) -> str | None:
    """The first model name in ``bags`` (``model_name``, ``model``, ``model_id``), or None."""
    for bag in bags:
        if isinstance(bag, dict):
            for key in ("model_name", "model", "model_id"):
                if isinstance(bag.get(key), str) and bag[key]:
                    return str(bag[key])
    return None


_handler_var: ContextVar[GradguardCallbackHandler | None] = ContextVar("gradguard_callback", default=None)
register_configure_hook(_handler_var, inheritable=True)


@contextmanager
def gradguard_callback(
    scorer: GradScorer | None = None, *, llm: Any = None, handler: GradguardCallbackHandler | None = None
) -> Iterator[GradguardCallbackHandler]:
    """Score every chat-model run inside the ``with`` block: ``with gradguard_callback(llm=chat_hf) as cb:
    chain.invoke(...)`` attaches a :class:`GradguardCallbackHandler` to every LangChain run started in the block
    (threads started by ``batch`` included) and yields it (``cb.records`` holds the scores). Pass a ``scorer``,
    the hosted ``llm`` (``ChatHuggingFace`` / ``HuggingFacePipeline``), or a ready ``handler``."""
    if handler is None:
        use_llm = scorer is None and llm is not None
        handler = GradguardCallbackHandler.from_chat_model(llm) if use_llm else GradguardCallbackHandler(scorer)
    token = _handler_var.set(handler)
    try:
        yield handler
    finally:
        _handler_var.reset(token)

