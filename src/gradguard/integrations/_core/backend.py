"""The scoring backend the integrations call, and the streaming worker.

A backend generates and scores answers; the integrations only translate types. Today's is
:class:`LocalBackend` (a :class:`~gradguard.GradScorer` in this process, loaded lazily); a remote
scoring server implements the same :class:`ScoringBackend` protocol.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from gradguard.embedded import EMBEDDED_MODEL_ID
from gradguard.integrations._core.errors import IntegrationError
from gradguard.integrations._core.metadata import metadata_of, openai_logprobs
from gradguard.integrations._core.options import GenerationOptions
from gradguard.integrations._core.streaming import StreamPiece, stream_generation
from gradguard.integrations._core.tool_turn import ToolMessages, ToolTurn, TurnPiece, generate_turn, stream_turn
from gradguard.integrations._core.tools import ToolBinding
from gradguard.result import ScoreResult
from gradguard.scorer import GradScorer

__all__ = ["ScoringBackend", "LocalBackend", "StreamPiece", "Messages", "with_system_prompt", "score_foreign"]

logger = logging.getLogger(__name__)

#: Chat messages in the scorer's format: ``[{"role": "system" | "user" | "assistant", "content": str}]``.
Messages = list[dict[str, str]]


@runtime_checkable
class ScoringBackend(Protocol):
    """What the integrations need from a model host: generate-and-score, stream, score a given answer, and the
    same for a turn with tools bound."""

    @property
    def model_name(self) -> str: ...

    @property
    def context_window(self) -> int: ...

    def generate(self, messages: Messages, options: GenerationOptions) -> ScoreResult: ...

    def stream(self, messages: Messages, options: GenerationOptions) -> Iterator[StreamPiece]: ...

    def score(self, messages: Messages, answer: str, *, task: str | None = None) -> ScoreResult: ...

    def logprobs(self, result: ScoreResult) -> dict[str, Any]: ...

    def bind(self, tools: Any, tool_choice: Any = None) -> ToolBinding: ...

    def generate_turn(
        self, messages: ToolMessages, binding: ToolBinding, options: GenerationOptions, *, reasoning: bool = True
    ) -> ToolTurn: ...

    def stream_turn(
        self, messages: ToolMessages, binding: ToolBinding, options: GenerationOptions, *, reasoning: bool = True
    ) -> Iterator[TurnPiece]: ...


def with_system_prompt(messages: Messages, system_prompt: str | None) -> Messages:
    """``messages`` with ``system_prompt`` first when they have no system message of their own."""
    if not messages:
        raise IntegrationError("no messages were given; pass at least one user message")
    if system_prompt and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


class LocalBackend:
    """A :class:`~gradguard.GradScorer` in this process: a ready ``scorer``, or a ``model`` source
    (Hub id in the local cache, folder, ``.gguf``; ``None`` = the embedded default) loaded on first use, on
    ``device`` (see :meth:`GradScorer.from_pretrained`).
    Calls are serialised by the scorer's lock."""

    def __init__(
        self, model: str | None = None, scorer: GradScorer | None = None, *, device: str | None = None
    ) -> None:
        if scorer is not None and model is not None:
            raise IntegrationError(
                f"got both model={model!r} and scorer=...; pass only one (scorer= for a model already loaded, "
                "model= for a source to load)"
            )
        if scorer is not None and not isinstance(scorer, GradScorer):
            raise IntegrationError(
                f"scorer={scorer!r} is not a gradguard GradScorer; build one with GradScorer(model, tokenizer) "
                "or GradScorer.from_pretrained(...)"
            )
        self.source = model
        self.device = device
        self._scorer = scorer
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """True once the scorer exists (given, or loaded by a first call)."""
        return self._scorer is not None

    @property
    def scorer(self) -> GradScorer:
        """The scorer, loaded from the model source on first use (the embedded default loads in ~10 s)."""
        if self._scorer is None:
            with self._load_lock:
                if self._scorer is None:
                    self._scorer = GradScorer.from_pretrained(self.source, device=self.device)
        return self._scorer

    @property
    def model_name(self) -> str:
        """The hosted model's name (without loading it)."""
        return self._scorer.model_name if self._scorer is not None else (self.source or EMBEDDED_MODEL_ID)

    @property
    def context_window(self) -> int:
        """The model's context window in tokens (loads the model)."""
        return int(self.scorer.context_window)

    def generate(self, messages: Messages, options: GenerationOptions, **extra: Any) -> ScoreResult:
        """Generate an answer to ``messages`` and score it in the same call (one scoring pass)."""
        return self.scorer.generate_and_score(
            messages, max_new_tokens=options.max_new_tokens, task=options.task, **options.generate_kwargs(), **extra
        )

    def score(self, messages: Messages, answer: str, *, task: str | None = None) -> ScoreResult:
        """Score ``answer`` to ``messages`` teacher-forced (an answer another model produced)."""
        return self.scorer.score(messages, answer, task=task)

    def logprobs(self, result: ScoreResult) -> dict[str, Any]:
        """``result``'s log-probabilities in OpenAI's chat format (alternatives when ``top_logprobs`` was asked)."""
        return openai_logprobs(self.scorer.tokenizer, result.token_ids, result.token_logprobs, result.top_logprobs)

    def stream(self, messages: Messages, options: GenerationOptions, **extra: Any) -> Iterator[StreamPiece]:
        """Stream the answer as it is generated; the last piece carries the score (``extra``: as in :meth:`generate`).

        Generation runs in a worker thread. When the consumer stops iterating (``close()``, a
        ``break``, garbage collection) generation stops at the next token and no scoring is
        done, so the model is free at once. Text that could still turn into a stop string is
        held back, and only whole tokens that the scored answer keeps are sent, so the pieces
        add up to exactly ``result.response``.
        """

        def run(streamer: Any, cancel: threading.Event) -> ScoreResult:
            return self.generate(messages, options, streamer=streamer, cancel=cancel, **extra)

        return stream_generation(self.scorer.tokenizer, run, options.stop)

    def bind(self, tools: Any, tool_choice: Any = None) -> ToolBinding:
        """Bind ``tools`` for this model's chat template (loads the model). Raises when the template has no tool
        support, a tool cannot be rendered, or ``tool_choice`` cannot be enforced."""
        return ToolBinding.create(self.scorer.tokenizer, tools, tool_choice)

    def generate_turn(
        self, messages: ToolMessages, binding: ToolBinding, options: GenerationOptions, *, reasoning: bool = True
    ) -> ToolTurn:
        """One assistant turn with ``binding``'s tools: content, checked calls, a score per call (see
        :func:`~gradguard.integrations._core.tool_turn.generate_turn`)."""
        return generate_turn(self.scorer, messages, binding, options, reasoning=reasoning)

    def stream_turn(
        self, messages: ToolMessages, binding: ToolBinding, options: GenerationOptions, *, reasoning: bool = True
    ) -> Iterator[TurnPiece]:
        """Stream one turn with tools (see :func:`~gradguard.integrations._core.tool_turn.stream_turn`)."""
        return stream_turn(self.scorer, messages, binding, options, reasoning=reasoning)


def score_foreign(
    backend: ScoringBackend, messages: Messages, answer: str, *, task: str | None = None
) -> tuple[ScoreResult | None, dict[str, Any]]:
    """Score an answer another component produced: ``(result, metadata)``, or ``(None, unscored metadata)``
    with the error recorded when it cannot be scored (the answer is then unconfident: fail closed)."""
    try:
        result = backend.score(messages, answer, task=task)
    except Exception as exc:  # noqa: BLE001 - an unscorable answer is unconfident, never a crash
        logger.warning("gradguard could not score an answer: %s: %s", type(exc).__name__, exc)
        return None, metadata_of(None, f"scoring failed: {type(exc).__name__}: {exc}", model=backend.model_name)
    return result, result.metadata()

