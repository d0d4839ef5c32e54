"""``ConfidenceRouter``: a Runnable that answers, then accepts, abstains, rejects or escalates by confidence.

The decisions are :class:`gradguard.routing.Router`'s; this module adapts Runnables into escalation targets and
reports the outcome in the message metadata, a ``gradguard_route`` callback event and the nested runs' tags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForChainRun, dispatch_custom_event
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import ensure_config, merge_configs
from pydantic import ConfigDict, Field, PrivateAttr

from gradguard.errors import GradguardError
from gradguard.integrations._core import (
    METADATA_KEY,
    ROUTE_EVENT,
    ROUTE_KEY,
    AnswerRejectedError,
    IntegrationError,
    metadata_of,
)
from gradguard.integrations.langchain.callbacks import GradguardCallbackHandler
from gradguard.integrations.langchain.metadata import (
    GuardConfigError,
    GuardSignal,
    _validation_as,
    read_metadata,
    result_for,
)
from gradguard.result import ScoreResult
from gradguard.review import human_review_target
from gradguard.routing import Action, EscalationResult, EscalationTarget, Router, RoutingPolicy
from gradguard.routing.router import Score
from gradguard.scorer import GradScorer

__all__ = [
    "ROUTE_EVENT", "AnswerRejectedError", "ConfidenceRouter", "RouterInputError", "answer_and_result",
    "chat_model_target", "human_review_target", "runnable_target",
]


class RouterInputError(IntegrationError):
    """The router cannot find the question in its input, or an option is unusable."""


def answer_and_result(output: Any) -> tuple[str, Score]:
    """The answer text of a Runnable's output (a message, a string, or a dict with an ``"answer"``) and its score:
    the full result when this process scored it, else the metadata the message carries, else ``None`` (never
    scored: the policy treats the answer as unconfident)."""
    if isinstance(output, Mapping) and "answer" in output:
        return answer_and_result(output["answer"])
    if isinstance(output, BaseMessage):
        return output.text, result_for(output) or read_metadata(output)
    if isinstance(output, str):
        return output, None
    raise RouterInputError(
        f"cannot read an answer from a {type(output).__name__}; the Runnable must return a chat message "
        "(end the chain with the chat model, not a StrOutputParser), a string, or a dict with 'answer'"
    )


def _question_of(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, PromptValue):
        value = value.to_messages()
    if isinstance(value, BaseMessage):
        return value.text
    if isinstance(value, Mapping):
        if key not in value:
            raise RouterInputError(
                f"the router's input has no {key!r} entry (keys: {sorted(map(str, value))}); pass "
                f"question_key= naming the entry that holds the question"
            )
        return _question_of(value[key], key)
    if isinstance(value, Sequence):
        humans = [m for m in value if isinstance(m, HumanMessage)]
        if humans:
            return humans[-1].text
        if value and isinstance(value[-1], tuple) and len(value[-1]) == 2:
            return str(value[-1][1])
    raise RouterInputError(
        f"cannot find the question in a {type(value).__name__}; pass a string, a dict with a {key!r} entry, "
        "or a list of messages ending with a HumanMessage"
    )


def _child_config(tags: list[str], run_name: str, handler: BaseCallbackHandler | None = None) -> RunnableConfig:
    """A config for a nested run: the current run's callbacks and tags, plus ``tags`` (and ``handler``)."""
    callbacks = [handler] if handler is not None else []
    return merge_configs(ensure_config(), {"tags": tags, "run_name": run_name, "callbacks": callbacks})


InputFn = Callable[[str, str, ScoreResult | None], Any]


def runnable_target(
    runnable: Runnable, *, name: str = "runnable", input_fn: InputFn | None = None, scorer: GradScorer | None = None
) -> EscalationTarget:
    """An escalation target that answers again with ``runnable`` (e.g. a RAG chain with more context), given
    ``input_fn(question, answer, result)`` (default: the question). It must return a message scored in this process
    (end it with ``ChatGradguard``, or pass ``scorer`` to watch it with a ``GradguardCallbackHandler``); an unscored
    answer is unconfident. The nested run is tagged ``gradguard:escalation`` and ``gradguard:target:<name>``."""
    if not isinstance(runnable, Runnable):
        raise RouterInputError(f"runnable={runnable!r} is not a LangChain Runnable; pass a chain or a chat model")

    def escalate(question: str, answer: str, result: ScoreResult | None) -> EscalationResult:
        handler = GradguardCallbackHandler(scorer) if scorer is not None else None
        payload = input_fn(question, answer, result) if input_fn is not None else question
        tags = ["gradguard:escalation", f"gradguard:target:{name}"]
        config = _child_config(tags, f"gradguard_escalation:{name}", handler)
        text, score = answer_and_result(runnable.invoke(payload, config=config))
        return EscalationResult(answer=text, result=score, metadata={"target": name})

    escalate.__name__ = escalate.__qualname__ = f"runnable_target[{name}]"
    return escalate


def chat_model_target(
    model: BaseChatModel,
    *,
    name: str = "larger_model",
    system_prompt: str | None = None,
    scorer: GradScorer | None = None,
) -> EscalationTarget:
    """An escalation target that asks another (e.g. larger) chat model the question afresh. A ``ChatGradguard``
    scores its own answers; for another chat model pass ``scorer`` (a :class:`~gradguard.GradScorer` over a local
    model) to score its answer teacher-forced, else the new answer is unconfident."""
    head: list[BaseMessage] = [SystemMessage(system_prompt)] if system_prompt else []
    return runnable_target(model, name=name, input_fn=lambda q, a, r: [*head, HumanMessage(q)], scorer=scorer)


class ConfidenceRouter(RunnableSerializable[Any, AIMessage]):
    """Answers with ``answerer``, then routes the answer through a :class:`~gradguard.routing.Router`.

    ``answerer`` must return a scored message (end it with ``ChatGradguard``, or watch its chat model with a
    ``GradguardCallbackHandler``; one scored in another process is routed from its metadata). Escalate tiers name
    entries of ``targets``: :data:`~gradguard.routing.EscalationTarget` functions (e.g. ``human_review_target``)
    or Runnables / chat models (adapted by :func:`runnable_target`). The signal: the calibrated ``confidence``
    (default), a raw uncertainty (``signal="hybridgrad", max_uncertainty=x``; larger = less confident) or
    ``confidence_fn(result) -> float | None``; it fails closed. The output is an ``AIMessage`` (the accepted
    answer or the policy's ``abstain_text``) with ``response_metadata["gradguard"]`` (the last answer's score)
    and ``["gradguard_route"]`` (:meth:`~gradguard.routing.RouteOutcome.metadata`, also the ``gradguard_route``
    callback event). ``on_reject="raise"`` raises :class:`AnswerRejectedError` on a rejection.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    answerer: Runnable
    policy: RoutingPolicy
    targets: dict[str, Any] = Field(default_factory=dict)
    signal: str = "confidence"
    max_uncertainty: float | None = None
    confidence_fn: Callable[[ScoreResult], float | None] | None = None
    question_key: str = "question"
    on_reject: Literal["mark", "raise"] = "mark"

    _router: Router = PrivateAttr()

    def __init__(self, answerer: Runnable | None = None, policy: RoutingPolicy | None = None, **kwargs: Any) -> None:
        with _validation_as(ConfidenceRouter, RouterInputError):
            super().__init__(answerer=answerer, policy=policy, **kwargs)
        if self.confidence_fn is not None and self.signal != "confidence":  # from_options checks max_uncertainty
            raise GuardConfigError(f"ConfidenceRouter: confidence_fn replaces signal={self.signal!r}; drop one")
        signal = GuardSignal.from_options(
            self.confidence_fn or self.signal, self.max_uncertainty, owner="ConfidenceRouter"
        )
        targets: dict[str, EscalationTarget] = {}
        for name, target in self.targets.items():
            if not isinstance(target, Runnable) and not callable(target):
                raise RouterInputError(
                    f"targets[{name!r}] is a {type(target).__name__}; pass a Runnable, a chat model, or a function "
                    "(question, answer, result) -> EscalationResult"
                )
            targets[name] = runnable_target(target, name=name) if isinstance(target, Runnable) else target
        try:
            self._router = Router(self.policy, targets, signal=signal)
        except GradguardError as exc:
            raise RouterInputError(f"ConfidenceRouter: {exc}") from None

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        """Whatever the answerer takes."""
        return self.answerer.InputType

    @property
    def guard(self) -> GuardSignal:
        """The signal the policy decides on."""
        return self._router.signal  # type: ignore[return-value]

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        """Answer ``input``, route the answer, and return the guarded answer message."""
        return self._call_with_config(self._route, input, config, run_type="chain", **kwargs)

    def _route(self, input: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> AIMessage:
        question = _question_of(input, self.question_key)
        first = self.answerer.invoke(input, config=_child_config(["gradguard:answer"], "gradguard_answer"))
        answer, score = answer_and_result(first)
        outcome = self._router.route(question, answer, score)
        route_meta = outcome.metadata()
        dispatch_custom_event(ROUTE_EVENT, route_meta, config=config)
        if outcome.action is Action.REJECT and self.on_reject == "raise":
            raise AnswerRejectedError(outcome)
        last = outcome.result
        score_meta = dict(last) if isinstance(last, Mapping) else metadata_of(
            last, "no score for this answer (end the answering chain with ChatGradguard)"
        )
        return AIMessage(content=outcome.answer, response_metadata={METADATA_KEY: score_meta, ROUTE_KEY: route_meta})
