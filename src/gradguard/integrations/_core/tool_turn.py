"""A turn with tools bound: generate, parse the calls, score each call's span on its own.

Both integrations (and the scoring server) call :func:`generate_turn` / :func:`stream_turn` with a
:class:`~gradguard.integrations._core.tools.ToolBinding`; they only translate the resulting
:class:`ToolTurn` into their framework's message types. One generation and one batched scoring pass
per turn: the message-level score and one score per call (the loss restricted to the call's tokens,
from its name to its last argument token).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gradguard.integrations._core.options import GenerationOptions
from gradguard.integrations._core.streaming import stream_generation
from gradguard.integrations._core.tool_formats import InvalidToolCall, ParsedTurn, ToolCall
from gradguard.integrations._core.tools import ToolBinding
from gradguard.prompting import token_span
from gradguard.result import ScoreResult
from gradguard.scorer import GradScorer, SpanFn, SpanPlan

__all__ = [
    "TOOLS_TASK",
    "ToolMessages",
    "REASONING_TAGS",
    "ScoredCall",
    "ToolTurn",
    "TurnPiece",
    "generate_turn",
    "score_turn",
    "stream_turn",
    "split_reasoning",
    "reasoning_spans",
]

#: OpenAI-style chat messages: role/content, assistant ``tool_calls``, tool messages with ``tool_call_id``.
ToolMessages = Sequence[Mapping[str, Any]]

#: The task whose calibration gives tool calls (and turns with tools bound) their confidence.
TOOLS_TASK = "tools"
#: The tags around a reasoning model's thinking, which is not scored (``reasoning=False`` scores it too).
REASONING_TAGS = ("<think>", "</think>")


def split_reasoning(text: str, tags: tuple[str, str] = REASONING_TAGS) -> tuple[str, int]:
    """``(reasoning, answer_start)``: the thinking section of ``text`` (without tags) and the character index
    where the final answer starts (0 when there is no closed section)."""
    opening, closing = tags
    end = text.find(closing)
    if end < 0:
        return "", 0
    start = text.find(opening)
    begin = start + len(opening) if 0 <= start < end else 0
    return text[begin:end].strip(), end + len(closing)


def reasoning_spans(tokenizer: Any) -> SpanFn:
    """The span plan of a plain answer (no tools bound) that keeps a ``<think>…</think>`` section out of its
    score: the message-level range starts after the section (empty, hence unscored, when nothing follows it).
    An answer without a closed section gets the default plan, so its score is exactly the one without spans."""

    def plan(answer_ids: list[int]) -> SpanPlan:
        text = str(tokenizer.decode(answer_ids, skip_special_tokens=True))
        _, offset = split_reasoning(text)
        if not offset:
            return SpanPlan()
        start = len(answer_ids) if offset >= len(text) else token_span(tokenizer, answer_ids, 0, offset)[1]
        return SpanPlan(main=(min(start, len(answer_ids)), len(answer_ids)))

    return plan


@dataclass(frozen=True)
class ScoredCall:
    """A parsed tool call and the score of its own span (``None``: it could not be scored: unconfident)."""

    call: ToolCall
    result: ScoreResult | None

    @property
    def confidence(self) -> float | None:
        """Calibrated P(the call is right) from the ``tools`` calibration; None when uncalibrated or unscored."""
        return self.result.confidence if self.result is not None else None

    def metadata(self) -> dict[str, Any]:
        """``{"id", "name", "confidence", "uncertainty": {...}, "in_domain", "scored"}`` (larger uncertainty =
        less sure; ``scored`` False or ``confidence`` None: treat the call as unconfident)."""
        meta = self.result.metadata() if self.result is not None else None
        return {
            "id": self.call.id,
            "name": self.call.name,
            "confidence": self.confidence,
            "uncertainty": meta["uncertainty"] if meta is not None else None,
            "in_domain": self.result.in_domain if self.result is not None else None,
            "scored": bool(meta and meta["scored"]),
        }


@dataclass(frozen=True)
class ToolTurn:
    """One assistant turn with tools bound: its text ``content``, its checked ``calls`` (each with its own score),
    its ``invalid`` calls (unparsable, unbound tool, arguments against the schema; with the reason), the
    message-level ``result``, and the ``reasoning`` section that was not scored."""

    result: ScoreResult
    content: str
    calls: list[ScoredCall] = field(default_factory=list)
    invalid: list[InvalidToolCall] = field(default_factory=list)
    reasoning: str = ""

    def metadata(self) -> dict[str, Any]:
        """The message's metadata (:meth:`ScoreResult.metadata`) plus ``tool_calls``: one entry per call
        (:meth:`ScoredCall.metadata`), in the order of :attr:`calls`."""
        meta = self.result.metadata()
        meta["tool_calls"] = [c.metadata() for c in self.calls]
        return meta


class TurnPiece(NamedTuple):
    """One piece of a streamed turn: new ``content`` text, the ``calls`` completed since the last piece, and
    on the last piece only, the whole scored ``turn``."""

    content: str
    calls: Sequence[ToolCall] = ()
    turn: ToolTurn | None = None


_MAX_IDS = 64


class _Planner:
    """The scorer's span callable for one turn: parses the answer once and remembers the parse."""

    def __init__(self, scorer: GradScorer, binding: ToolBinding, reasoning: bool) -> None:
        self.scorer, self.binding, self.reasoning = scorer, binding, reasoning
        # The ids of the turn's calls in order, fixed up front: a streamed call and the final parse agree.
        self.ids = [binding.fmt.new_id() for _ in range(_MAX_IDS)]
        self.parsed = ParsedTurn("")
        self.thinking = ""

    def __call__(self, answer_ids: list[int]) -> SpanPlan:
        tokenizer = self.scorer.tokenizer
        text = str(tokenizer.decode(answer_ids, skip_special_tokens=True))
        thinking, offset = split_reasoning(text) if self.reasoning else ("", 0)
        self.thinking = thinking
        parsed = self.binding.parse(text[offset:], ids=self.ids)
        self.parsed = parsed
        prefill = self.binding.prefill
        main_start = len(tokenizer(prefill, add_special_tokens=False)["input_ids"]) if prefill else 0
        if offset >= len(text):
            main_start = len(answer_ids)  # nothing after the reasoning section: nothing to score
        elif offset:
            main_start = max(main_start, token_span(tokenizer, answer_ids, 0, offset)[1])
        spans = [token_span(tokenizer, answer_ids, offset + a, offset + b) for a, b in (c.span for c in parsed.calls)]
        # A call's name written by a tool_choice prefill is teacher-forced, not scored: its span starts after it.
        parts = [(max(a, main_start), b) for a, b in spans]
        return SpanPlan(main=(min(main_start, len(answer_ids)), len(answer_ids)), parts=parts)

    def turn(self, result: ScoreResult) -> ToolTurn:
        calls = [
            ScoredCall(call, part if part.scored else None)
            for call, part in zip(self.parsed.calls, _padded(result.parts, len(self.parsed.calls)), strict=True)
        ]
        return ToolTurn(result, self.parsed.content, calls, list(self.parsed.invalid), self.thinking)


def _padded(parts: Sequence[ScoreResult], n: int) -> list[Any]:
    out: list[Any] = list(parts[:n])
    return out + [None] * (n - len(out))


def _turn_kwargs(binding: ToolBinding, options: GenerationOptions) -> dict[str, Any]:
    return {
        "max_new_tokens": options.max_new_tokens,
        "task": options.task or (TOOLS_TASK if binding.template_tools() else None),
        "tools": binding.template_tools() or None,
        "prefill": binding.prefill,
        **options.generate_kwargs(),
    }


def generate_turn(
    scorer: GradScorer,
    messages: ToolMessages,
    binding: ToolBinding,
    options: GenerationOptions,
    *,
    reasoning: bool = True,
) -> ToolTurn:
    """Generate one assistant turn with ``binding``'s tools, parse its calls and score each call's span.

    ``messages`` are OpenAI-style dicts (past tool calls and tool results included; see
    :meth:`ToolBinding.template_messages`). The turn's confidence uses the ``tools`` task unless
    ``options.task`` names another. ``reasoning=True`` keeps a ``<think>…</think>`` section out of every
    score and out of the parsed content.
    """
    planner = _Planner(scorer, binding, reasoning)
    result = scorer.generate_and_score(
        binding.template_messages(messages), spans=planner, **_turn_kwargs(binding, options)
    )
    return planner.turn(result)


def score_turn(
    scorer: GradScorer,
    messages: ToolMessages,
    binding: ToolBinding,
    answer: str,
    *,
    task: str | None = None,
    reasoning: bool = True,
) -> ToolTurn:
    """Score a given assistant turn (``answer``: its raw text, prefill included, calls in the template's format) as
    :func:`generate_turn` scores a generated one: teacher-forced, one score per call."""
    planner = _Planner(scorer, binding, reasoning)
    tools = binding.template_tools() or None
    result = scorer.score(
        binding.template_messages(messages),
        answer,
        task=task or (TOOLS_TASK if tools else None),
        tools=tools,
        prefill=binding.prefill,
        spans=planner,
    )
    return planner.turn(result)


def stream_turn(
    scorer: GradScorer,
    messages: ToolMessages,
    binding: ToolBinding,
    options: GenerationOptions,
    *,
    reasoning: bool = True,
) -> Iterator[TurnPiece]:
    """Stream one turn: content as it is generated (text that may open a call is held back), each call once it is
    complete (with a stable id), and the scored :class:`ToolTurn` on the last piece. Leaving early stops generation
    at the next token; nothing is scored then."""
    planner = _Planner(scorer, binding, reasoning)
    template = binding.template_messages(messages)
    kwargs = _turn_kwargs(binding, options)
    prefix_ids = scorer.tokenizer(binding.prefill, add_special_tokens=False)["input_ids"] if binding.prefill else []

    def run(streamer: Any, cancel: threading.Event) -> ScoreResult:
        return scorer.generate_and_score(template, spans=planner, streamer=streamer, cancel=cancel, **kwargs)

    text, sent, emitted = "", "", 0
    for piece in stream_generation(scorer.tokenizer, run, options.stop, prefix_ids=prefix_ids):
        if piece.result is not None:
            turn = planner.turn(piece.result)
            rest = turn.content[len(sent) :] if turn.content.startswith(sent) else ""
            yield TurnPiece(rest, [c.call for c in turn.calls[emitted:]], turn)
            return
        text += piece.text
        _, offset = split_reasoning(text) if reasoning else ("", 0)
        if reasoning and offset == 0 and REASONING_TAGS[0] in text:
            continue  # still thinking
        parsed = binding.parse(text[offset:], partial=True, ids=planner.ids)
        new_calls = parsed.calls[emitted:]
        content = parsed.content if parsed.content.startswith(sent) else sent
        if len(content) > len(sent) or new_calls:
            yield TurnPiece(content[len(sent) :], new_calls)
            sent, emitted = content, emitted + len(new_calls)
