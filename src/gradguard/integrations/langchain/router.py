"""``ConfidenceRouter``: a Runnable that answers, then accepts, abstains, rejects or escalates by confidence.

The decisions come from the framework-free :class:`gradguard.routing.RoutingPolicy`; this
module adapts LangChain Runnables and chat models into escalation targets and puts the
decision, its reason and the escalation trail into the output message's metadata, the
run's callbacks (a ``gradguard_route`` custom event) and the escalation runs' tags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForChainRun, dispatch_custom_event
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import ensure_config
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError

from gradguard.errors import GradguardError
from gradguard.integrations.langchain.metadata import (
    GRADGUARD_KEY,
    ROUTE_KEY,
    GuardConfigError,
    GuardSignal,
    read_metadata,
    result_for,
    unscored_metadata,
)
from gradguard.result import ScoreResult
from gradguard.review import human_review_target
from gradguard.routing import Action, EscalationResult, EscalationTarget, RouteOutcome, Router, RoutingPolicy
from gradguard.scorer import GradScorer

__all__ = [
    "ROUTE_EVENT",
    "AnswerRejectedError",
    "ConfidenceRouter",
    "RouterInputError",
    "answer_and_result",
    "chat_model_target",
    "human_review_target",
    "runnable_target",
]

#: Name of the custom callback event a ConfidenceRouter dispatches with its outcome.
ROUTE_EVENT = "gradguard_route"


class RouterInputError(GradguardError, ValueError):
    """The router cannot find the question in its input, or an option is unusable."""


class AnswerRejectedError(GradguardError):
    """The policy rejected the answer (raised only with ``on_reject="raise"``); ``outcome`` holds the trail."""

    def __init__(self, outcome: RouteOutcome) -> None:
        super().__init__(f"the routing policy rejected the answer: {outcome.decision.reason}")
        self.outcome = outcome


# --- reading answers ---------------------------------------------------------------------------


def answer_and_result(output: Any) -> tuple[str, ScoreResult | None]:
    """The answer text of a Runnable's output and its full score, if this process scored it.

    ``output`` is a message (scored by ``ChatGradguard`` or a ``GradguardCallbackHandler``),
    a string (never scored), or a dict with an ``"answer"`` entry. A missing score is
    ``None``: the policy then treats the answer as unconfident (fail closed).
    """
    if isinstance(output, Mapping) and "answer" in output:
        return answer_and_result(output["answer"])
    if isinstance(output, BaseMessage):
        return output.text, result_for(output)
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


def _child_config(tags: Sequence[str], run_name: str, handler: BaseCallbackHandler | None = None) -> RunnableConfig:
    """A config for a nested run: inherits the current run's callbacks and adds ``tags`` (and ``handler``)."""
    base = ensure_config()
    callbacks = base.get("callbacks")
    if handler is not None:
        if callbacks is None:
            callbacks = [handler]
        elif isinstance(callbacks, list):
            callbacks = [*callbacks, handler]
        else:
            callbacks = callbacks.copy()
            callbacks.add_handler(handler, inherit=True)
    return {**base, "callbacks": callbacks, "tags": [*base.get("tags", []), *tags], "run_name": run_name}


# --- escalation targets from Runnables ----------------------------------------------------------

InputFn = Callable[[str, str, ScoreResult | None], Any]


def runnable_target(
    runnable: Runnable,
    *,
    name: str = "runnable",
    input_fn: InputFn | None = None,
    scorer: GradScorer | None = None,
) -> EscalationTarget:
    """An escalation target that answers again with ``runnable`` (e.g. a RAG chain with more context).

    ``runnable`` gets ``input_fn(question, answer, result)`` (default: the question string)
    and must return a message scored in this process: end it with a ``ChatGradguard``, or pass
    ``scorer`` to score whatever chat model runs inside it (a ``GradguardCallbackHandler``
    over that scorer is attached to the run). The nested run is tagged
    ``gradguard:escalation`` and ``gradguard:target:<name>``. An answer without a score is
    returned with ``result=None``, which the policy treats as unconfident.
    """
    if not isinstance(runnable, Runnable):
        raise RouterInputError(f"runnable={runnable!r} is not a LangChain Runnable; pass a chain or a chat model")

    def escalate(question: str, answer: str, result: ScoreResult | None) -> EscalationResult:
        from gradguard.integrations.langchain.callbacks import GradguardCallbackHandler

        handler = GradguardCallbackHandler(scorer) if scorer is not None else None
        payload = input_fn(question, answer, result) if input_fn is not None else question
        config = _child_config(["gradguard:escalation", f"gradguard:target:{name}"], f"gradguard_escalation:{name}", handler)
        output = runnable.invoke(payload, config=config)
        text, new_result = answer_and_result(output)
        meta = read_metadata(output) if isinstance(output, BaseMessage) else None
        return EscalationResult(answer=text, result=new_result, metadata={"target": name, "gradguard": meta})

    escalate.__name__ = escalate.__qualname__ = f"runnable_target[{name}]"
    return escalate


def chat_model_target(
    model: BaseChatModel,
    *,
    name: str = "larger_model",
    system_prompt: str | None = None,
    scorer: GradScorer | None = None,
) -> EscalationTarget:
    """An escalation target that asks another (e.g. larger) chat model the question afresh.

    A ``ChatGradguard`` scores its own answers. For any other chat model pass ``scorer`` (a
    :class:`~gradguard.GradScorer` over a local model) to score its answer teacher-forced;
    without a score the new answer is treated as unconfident.
    """

    def messages(question: str, answer: str, result: ScoreResult | None) -> list[BaseMessage]:
        head: list[BaseMessage] = [SystemMessage(system_prompt)] if system_prompt else []
        return [*head, HumanMessage(question)]

    return runnable_target(model, name=name, input_fn=messages, scorer=scorer)


# --- the router ------------------------------------------------------------------------------------


class ConfidenceRouter(RunnableSerializable[Any, AIMessage]):
    """Answers with ``answerer``, then routes the answer through a :class:`~gradguard.routing.RoutingPolicy`.

    ``answerer`` is the chain that answers first; it must return a scored message (end it
    with ``ChatGradguard``). The policy's tiers map the answer's confidence to accept,
    abstain, reject or escalate; escalate tiers name entries of ``targets``, each an
    :data:`~gradguard.routing.EscalationTarget` (e.g. ``human_review_target(queue)``) or a
    Runnable / chat model (adapted with :func:`runnable_target`). An escalated answer is
    scored and decided again; a target that fails is recorded and the next tier down
    applies; the router never returns an unguarded answer.

    The signal: the calibrated ``confidence`` by default. On an uncalibrated model set
    ``signal="hybridgrad", max_uncertainty=x``: answers with HybridGrad <= x count as
    confidence 1.0, the rest as 0.0 (so a threshold policy accepts exactly the former), or
    give ``confidence_fn(result) -> float | None`` to map a score to a confidence yourself (a
    function that raises, or returns anything but a number in [0, 1], counts as unconfident).
    The signal is a :class:`~gradguard.routing.GuardSignal` (:attr:`guard`).

    The output is an ``AIMessage``: the accepted answer, or the policy's ``abstain_text``.
    ``response_metadata["gradguard"]`` scores the last answer considered;
    ``response_metadata["gradguard_route"]`` holds ``{"action", "reason", "confidence",
    "tier", "trail", "review_id", "signal"}``, also dispatched as the custom callback
    event ``gradguard_route``. With ``on_reject="raise"`` a rejected answer raises
    :class:`AnswerRejectedError` instead.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    answerer: Runnable
    policy: RoutingPolicy
    targets: dict[str, Any] = Field(default_factory=dict)
    signal: str = "confidence"
    max_uncertainty: float | None = None
    confidence_fn: Callable[[ScoreResult], float | None] | None = None
    question_key: str = "question"
    on_reject: str = "mark"

    _guard: GuardSignal = PrivateAttr()
    _targets: dict[str, EscalationTarget] = PrivateAttr(default_factory=dict)

    def __init__(self, answerer: Runnable | None = None, policy: RoutingPolicy | None = None, **kwargs: Any) -> None:
        if answerer is not None:
            kwargs["answerer"] = answerer
        if policy is not None:
            kwargs["policy"] = policy
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
            raise RouterInputError(f"ConfidenceRouter {loc}={err.get('input', '(missing)')!r}: {err.get('msg')}") from None
        if self.on_reject not in ("mark", "raise"):
            raise RouterInputError(f"on_reject={self.on_reject!r}: use 'mark' (abstain text, action reject) or 'raise'")
        if self.confidence_fn is not None and (self.signal != "confidence" or self.max_uncertainty is not None):
            raise GuardConfigError(
                "ConfidenceRouter: confidence_fn replaces signal/max_uncertainty; pass one or the other"
            )
        self._guard = GuardSignal.from_options(
            self.confidence_fn if self.confidence_fn is not None else self.signal,
            self.max_uncertainty,
            owner="ConfidenceRouter",
        )
        for name, target in self.targets.items():
            if isinstance(target, Runnable):
                self._targets[name] = runnable_target(target, name=name)
            elif callable(target):
                self._targets[name] = target
            else:
                raise RouterInputError(
                    f"targets[{name!r}] is a {type(target).__name__}; pass a Runnable, a chat model, or a function "
                    "(question, answer, result) -> EscalationResult"
                )
        missing = [t for t in self.policy.targets() if t not in self._targets]
        if missing:
            raise RouterInputError(
                f"the policy escalates to {missing} but targets has only {sorted(self._targets)}; "
                "register each target name used by an escalate tier"
            )

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        """An ``AIMessage``."""
        return AIMessage

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        """Whatever the answerer takes."""
        return self.answerer.InputType

    # --- confidence ---------------------------------------------------------------------------------

    @property
    def guard(self) -> GuardSignal:
        """The signal the policy decides on (from ``signal``/``max_uncertainty`` or ``confidence_fn``)."""
        return self._guard

    def _signal_info(self, result: ScoreResult | None) -> dict[str, Any]:
        if self.confidence_fn is not None:
            return {"name": "confidence_fn", "threshold": None, "value": None}
        if self._guard.is_confidence:
            return {"name": "confidence", "threshold": None, "value": result.confidence if result is not None else None}
        return {"name": self._guard.name, "threshold": self._guard.threshold, "value": self._guard.value(result)}

    # --- running ------------------------------------------------------------------------------------

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        """Answer ``input``, route the answer, and return the guarded answer message."""
        return self._call_with_config(self._route, input, config, run_type="chain", **kwargs)

    def _route(self, input: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> AIMessage:
        question = _question_of(input, self.question_key)
        first = self.answerer.invoke(input, config=_child_config(["gradguard:answer"], "gradguard_answer"))
        answer, result = answer_and_result(first)

        originals: dict[int, tuple[ScoreResult, ScoreResult]] = {}

        def to_policy(res: ScoreResult | None) -> ScoreResult | None:
            if res is None or self._guard.is_confidence:
                return res
            mapped = res.model_copy(update={"confidence": self._guard.confidence_of(res)})
            originals[id(mapped)] = (mapped, res)
            return mapped

        def original(res: ScoreResult | None) -> ScoreResult | None:
            return originals[id(res)][1] if res is not None and id(res) in originals else res

        def wrap(name: str, target: EscalationTarget) -> EscalationTarget:
            def call(q: str, a: str, res: ScoreResult | None) -> EscalationResult:
                escalated = target(q, a, original(res))
                if isinstance(escalated, EscalationResult) and escalated.result is not None:
                    escalated = escalated.model_copy(update={"result": to_policy(escalated.result)})
                return escalated

            call.__name__ = call.__qualname__ = name
            return call

        router = Router(self.policy, {name: wrap(name, t) for name, t in self._targets.items()})
        outcome = router.route(question, answer, to_policy(result))
        final = original(outcome.result)
        route_meta = {**outcome.metadata(), "signal": self._signal_info(final)}
        if self._guard.is_raw and final is not None:
            reading = self._guard.check(final)
            counted = "1.0" if reading.passed else "0.0"
            route_meta["reason"] = f"{reading.reason}, counted as confidence {counted}; {outcome.decision.reason}"
        dispatch_custom_event(ROUTE_EVENT, route_meta, config=config)
        if outcome.action is Action.REJECT and self.on_reject == "raise":
            raise AnswerRejectedError(outcome)
        score_meta = final.metadata() if final is not None else unscored_metadata(error="no score for this answer in this process (end the answering chain with ChatGradguard)")
        return AIMessage(
            content=outcome.answer,
            response_metadata={GRADGUARD_KEY: score_meta, ROUTE_KEY: route_meta},
        )
