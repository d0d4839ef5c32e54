"""``ConfidenceGuardQueryEngine``: applies a gradguard routing policy to any query engine's answer."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    PydanticResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms.llm import LLM
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from llama_index.core.tools import QueryEngineTool, ToolMetadata, ToolOutput

from gradguard.errors import GradguardError
from gradguard.integrations._core import AnswerRejectedError, LocalBackend, score_foreign
from gradguard.integrations.llama_index.utils import (
    METADATA_KEY,
    CapturedScore,
    GradguardLlamaIndexError,
    Signal,
    SignalFn,
    capture_scores,
    messages_to_dicts,
    missing_score_metadata,
    same_answer,
)
from gradguard.result import ScoreResult
from gradguard.routing import Action, EscalationResult, EscalationTarget, RouteOutcome, Router, RoutingPolicy

if TYPE_CHECKING:
    from gradguard.scorer import GradScorer

__all__ = ["ConfidenceGuardQueryEngine", "GuardedQueryEngineTool", "AnswerRejectedError", "Escalation", "verdict_line"]

#: What an escalation tier may name: a query engine (e.g. wider retrieval or a bigger LLM), an LLM
#: (re-answers over the same retrieved nodes), or any routing ``EscalationTarget`` (e.g.
#: ``gradguard.review.human_review_target(queue)``).
Escalation = BaseQueryEngine | LLM | EscalationTarget


@dataclass
class _Candidate:
    """One answer considered while routing a query: the initial one or an escalation's."""

    response: Response
    result: ScoreResult | dict[str, Any] | None
    score_source: str
    error: str | None = None
    target: str | None = None


class ConfidenceGuardQueryEngine(BaseQueryEngine):
    """Wraps any query engine and accepts, abstains, rejects or escalates its answer by a routing policy.

    Setup:
        ``ConfidenceGuardQueryEngine(index.as_query_engine(llm=GradguardLLM()), RoutingPolicy.threshold(0.8))``;
        ``escalations={name: ...}`` names the targets of the policy's escalate tiers (a name it lacks raises
        here): a query engine (wider retrieval, a larger LLM), an ``LLM`` (re-answers over the nodes
        retrieved so far) or any ``EscalationTarget`` such as ``human_review_target(queue)``.

    Score (``score_source``): ``"llm"``/``"handler"``, the score a :class:`GradguardLLM` or a
    :class:`GradguardEventHandler` attached to the call that produced the answer (captured during
    the query, matched by text); else ``"rescored"`` with ``scorer=`` (teacher-forced against the
    question and the retrieved nodes in ``qa_template``); else ``"missing"``: unconfident.

    Signal: ``signal="confidence"`` (calibrated; ``None`` on an uncalibrated model, so unconfident), a
    raw uncertainty with ``max_uncertainty`` (larger = **less** confident), or a function; handed
    to the core :class:`~gradguard.routing.Router`, which fails closed.

    Metadata: the returned ``Response`` carries ``metadata["gradguard"]``, the routing outcome
    (:meth:`gradguard.routing.RouteOutcome.metadata`: ``action``, ``reason``, ``confidence`` (the
    calibrated one or ``None``), ``signal``, ``signal_value``, ``tier``, ``trail``, ``review_id``)
    plus ``score`` (:meth:`gradguard.ScoreResult.metadata` of the last answer), ``score_source`` and
    ``target``. Abstained and rejected responses carry the ``abstain_text`` and no source nodes;
    ``raise_on_reject=True`` raises :class:`AnswerRejectedError` instead. A streaming inner engine
    is drained first. Tools: :meth:`as_tool` gives an agent the guarded engine with a verdict line.
    """

    def __init__(
        self,
        query_engine: BaseQueryEngine,
        policy: RoutingPolicy | None = None,
        *,
        escalations: Mapping[str, Escalation] | None = None,
        signal: str | Signal | SignalFn = "confidence",
        max_uncertainty: float | None = None,
        scorer: GradScorer | None = None,
        qa_template: BasePromptTemplate | None = None,
        raise_on_reject: bool = False,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        """Guard ``query_engine`` with ``policy`` (default: accept at confidence >= 0.8, else abstain)."""
        if not isinstance(query_engine, BaseQueryEngine):
            raise GradguardLlamaIndexError(
                f"query_engine={query_engine!r} is not a LlamaIndex query engine; "
                "pass e.g. index.as_query_engine(llm=...)"
            )
        policy = RoutingPolicy.threshold(0.8) if policy is None else policy
        guard_signal = Signal.from_options(signal, max_uncertainty)
        escalations = dict(escalations or {})
        for name, target in escalations.items():
            if not isinstance(name, str) or not (isinstance(target, (BaseQueryEngine, LLM)) or callable(target)):
                raise GradguardLlamaIndexError(
                    f"escalations[{name!r}]={target!r} is not a query engine, an LLM or an escalation target "
                    "callable (question, answer, result) -> EscalationResult"
                )
        try:  # the router checks the policy and that every target it names is given
            Router(policy, dict.fromkeys(escalations, _unused_target), signal=guard_signal)
        except GradguardError as exc:
            raise GradguardLlamaIndexError(f"ConfidenceGuardQueryEngine (escalations=): {exc}") from None
        if scorer is not None and not hasattr(scorer, "score"):
            raise GradguardLlamaIndexError(
                f"scorer={scorer!r} is not a gradguard GradScorer; pass GradScorer(model, tokenizer)"
            )
        self._query_engine = query_engine
        self._policy = policy
        self._escalations = escalations
        self._signal: Signal = guard_signal
        self._scorer = scorer
        self._qa_template = qa_template or CHAT_TEXT_QA_PROMPT
        self._raise_on_reject = bool(raise_on_reject)
        super().__init__(callback_manager=callback_manager or getattr(query_engine, "callback_manager", None))

    # ------------------------------------------------------------------ properties

    @property
    def query_engine(self) -> BaseQueryEngine:
        """The wrapped query engine."""
        return self._query_engine

    @property
    def policy(self) -> RoutingPolicy:
        """The routing policy applied to every answer."""
        return self._policy

    @property
    def signal(self) -> Signal:
        """What the policy's confidence is read from (see the class docs); a function given as
        ``signal=`` is wrapped in a :class:`Signal` (its ``function``)."""
        return self._signal

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_engine": self._query_engine}

    # ------------------------------------------------------------------ scoring

    def _rescore(self, question: str, response: Response) -> tuple[ScoreResult | None, str | None]:
        """Score ``response`` against the question and its source nodes with ``self._scorer``."""
        if self._scorer is None:
            return None, "no score was attached to the answer and no scorer= was given to re-score it"
        try:
            messages = self._qa_messages(question, response.source_nodes)
        except GradguardError as exc:
            return None, f"re-scoring failed: {type(exc).__name__}: {exc}"
        result, meta = score_foreign(LocalBackend(scorer=self._scorer), messages, response.response or "")
        return result, None if result is not None else f"re-{meta['error']}"

    def _qa_messages(self, question: str, nodes: Sequence[NodeWithScore]) -> list[dict[str, str]]:
        if not nodes:
            return [{"role": "user", "content": question}]
        context = "\n\n".join(n.node.get_content(metadata_mode=MetadataMode.LLM) for n in nodes)
        chat = self._qa_template.format_messages(context_str=context, query_str=question)
        return messages_to_dicts(chat)

    def _find_score(
        self, question: str, response: Response, captured: Sequence[CapturedScore]
    ) -> tuple[ScoreResult | None, str, str | None]:
        """``(result, score_source, error)`` for the final answer of ``response``."""
        answer = response.response
        for item in reversed(captured):
            if same_answer(item.text, answer):
                if item.result is not None:
                    return item.result, item.source, None
                break  # scoring that answer failed: try re-scoring, else unconfident
        result, error = self._rescore(question, response)
        if result is not None:
            return result, "rescored", None
        return None, "missing", error

    def _answer(self, engine: BaseQueryEngine, bundle: QueryBundle) -> _Candidate:
        with capture_scores() as captured:
            response = _materialize(engine.query(bundle))
        return _Candidate(response, *self._find_score(bundle.query_str, response, captured))

    async def _aanswer(self, engine: BaseQueryEngine, bundle: QueryBundle) -> _Candidate:
        with capture_scores() as captured:
            response = await _amaterialize(await engine.aquery(bundle))
        return _Candidate(response, *await asyncio.to_thread(self._find_score, bundle.query_str, response, captured))

    # ------------------------------------------------------------------ escalation

    def _targets(self, bundle: QueryBundle, candidates: list[_Candidate]) -> dict[str, EscalationTarget]:
        return {name: self._wrap(name, target, bundle, candidates) for name, target in self._escalations.items()}

    def _wrap(
        self, name: str, target: Escalation, bundle: QueryBundle, candidates: list[_Candidate]
    ) -> EscalationTarget:
        def run(question: str, answer: str, result: ScoreResult | None) -> EscalationResult:
            escalated: Any = None
            if isinstance(target, BaseQueryEngine):
                candidate = self._answer(target, _same_bundle(bundle, question))
            elif isinstance(target, LLM):
                candidate = self._answer_with_llm(target, question, candidates)
            else:
                escalated = target(question, answer, result)
                if not isinstance(escalated, EscalationResult) or escalated.pending_review_id is not None:
                    return escalated  # garbage: the router records a target error; review: it abstains
                source = "target" if escalated.result is not None else "missing"
                candidate = _Candidate(Response(escalated.answer, []), escalated.result, source)
            candidate.target = name
            candidates.append(candidate)
            return escalated or EscalationResult(
                answer=candidate.response.response or "",
                result=candidate.result,
                metadata={"target": name, "score_source": candidate.score_source},
            )

        run.__name__ = run.__qualname__ = f"escalate_to_{name}"
        return run

    def _answer_with_llm(self, llm: LLM, question: str, candidates: list[_Candidate]) -> _Candidate:
        from llama_index.core.response_synthesizers import ResponseMode, get_response_synthesizer

        nodes = list(candidates[-1].response.source_nodes) if candidates else []
        with capture_scores() as captured:
            if nodes:
                synthesizer = get_response_synthesizer(llm=llm, response_mode=ResponseMode.COMPACT)
                response = _materialize(synthesizer.synthesize(QueryBundle(question), nodes=nodes))
            else:  # nothing was retrieved: ask the LLM the bare question
                reply = llm.chat([ChatMessage(role=MessageRole.USER, content=question)])
                response = Response(reply.message.content or "", [])
        return _Candidate(response, *self._find_score(question, response, captured))

    # ------------------------------------------------------------------ routing

    def _route(self, bundle: QueryBundle, candidates: list[_Candidate]) -> Response:
        first = candidates[0]
        router = Router(self._policy, self._targets(bundle, candidates), signal=self._signal)
        outcome = router.route(bundle.query_str, first.response.response or "", first.result)
        return self._finish(outcome, candidates[-1])

    def _finish(self, outcome: RouteOutcome, last: _Candidate) -> Response:
        if isinstance(last.result, ScoreResult):
            score = last.result.metadata()
        else:
            score = dict(last.result or missing_score_metadata(last.error or "no score for the answer", model=None))
        meta = {**outcome.metadata(), "score": score, "score_source": last.score_source, "target": last.target}
        base_meta = dict(last.response.metadata or {}) if outcome.action is Action.ACCEPT else {}
        base_meta[METADATA_KEY] = meta
        nodes = list(last.response.source_nodes) if outcome.action is Action.ACCEPT else []
        response = Response(response=outcome.answer, source_nodes=nodes, metadata=base_meta)
        if outcome.action is Action.REJECT and self._raise_on_reject:
            raise AnswerRejectedError(
                outcome,
                response,
                f"gradguard rejected the answer: {outcome.decision.reason}; handle AnswerRejectedError "
                "or build the engine with raise_on_reject=False to get the abstain text",
            )
        return response

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        return self._route(query_bundle, [self._answer(self._query_engine, query_bundle)])

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        first = await self._aanswer(self._query_engine, query_bundle)
        # Escalation targets are synchronous (they may run a whole query); keep the event loop free.
        return await asyncio.to_thread(self._route, query_bundle, [first])

    # ------------------------------------------------------------------ tool

    def as_tool(
        self,
        name: str = "guarded_query_engine",
        description: str | None = None,
        *,
        return_direct: bool = False,
    ) -> GuardedQueryEngineTool:
        """This engine as an agent tool whose output text states the action and confidence."""
        description = description or (
            "Answers a natural-language question from a knowledge base. The output ends with a gradguard line "
            "giving the action (accept, abstain, reject) and the answer's confidence; if the action is not "
            "accept, the knowledge base could not answer reliably."
        )
        return GuardedQueryEngineTool(
            query_engine=self,
            metadata=ToolMetadata(name=name, description=description, return_direct=return_direct),
        )


class GuardedQueryEngineTool(QueryEngineTool):
    """A ``QueryEngineTool`` over a :class:`ConfidenceGuardQueryEngine`; the output text carries the verdict.

    The tool's content is the (guarded) answer followed by a line such as
    ``[gradguard] action=accept confidence=0.91 signal=confidence hybridgrad=0.0123``
    (``confidence=none`` when there is none). ``raw_output`` is the ``Response`` with
    ``metadata["gradguard"]``.
    """

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Run the guarded query and return the answer with its verdict."""
        output = super().call(*args, **kwargs)
        return _with_verdict(output)

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Async :meth:`call`."""
        output = await super().acall(*args, **kwargs)
        return _with_verdict(output)


def verdict_line(meta: Mapping[str, Any] | None) -> str:
    """One line summarising ``Response.metadata["gradguard"]`` for an agent."""
    if not meta:
        return "[gradguard] action=abstain confidence=none (no gradguard metadata: unconfident)"
    score = meta.get("score") or {}
    unc = (score.get("uncertainty") or {}) if isinstance(score, Mapping) else {}
    conf, value, hg = (_number(meta.get("confidence"), ".3g"), _number(meta.get("signal_value"), ".4g"),
                       _number(unc.get("hybridgrad"), ".4g"))
    return (
        f"[gradguard] action={meta.get('action')} confidence={conf} "
        f"signal={meta.get('signal')} signal_value={value} hybridgrad={hg}"
    )


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "none"


def _with_verdict(output: ToolOutput) -> ToolOutput:
    raw = output.raw_output
    meta = raw.metadata.get(METADATA_KEY) if isinstance(getattr(raw, "metadata", None), dict) else None
    content = f"{output.content}\n\n{verdict_line(meta)}"
    return ToolOutput(
        tool_name=output.tool_name,
        content=content,
        raw_input=output.raw_input,
        raw_output=raw,
        is_error=output.is_error,
    )


def _unused_target(question: str, answer: str, result: ScoreResult | None) -> EscalationResult:
    raise AssertionError("only used to validate the policy's targets")


def _same_bundle(bundle: QueryBundle, question: str) -> QueryBundle:
    return bundle if bundle.query_str == question else QueryBundle(question)


def _materialize(response: RESPONSE_TYPE) -> Response:
    """A plain ``Response`` (a streaming one is drained; a pydantic one is serialised)."""
    if isinstance(response, Response):
        return response
    if isinstance(response, (StreamingResponse, PydanticResponse)):
        return response.get_response()
    if isinstance(response, AsyncStreamingResponse):
        raise GradguardLlamaIndexError(
            "the wrapped engine returned an AsyncStreamingResponse to a synchronous query; use guard.aquery(...)"
        )
    text = getattr(response, "response", None)
    return Response(str(text) if text is not None else str(response), list(getattr(response, "source_nodes", []) or []))


async def _amaterialize(response: RESPONSE_TYPE) -> Response:
    if isinstance(response, AsyncStreamingResponse):
        return await response.get_response()
    return await asyncio.to_thread(_materialize, response)

