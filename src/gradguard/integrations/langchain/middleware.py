"""``ConfidenceToolGuard``: an agent middleware for ``langchain.agents.create_agent`` that stops unconfident tool calls.

Needs ``pip install 'gradguard[agents]'`` (``langchain`` and ``langgraph``); see ``docs/langchain_agents.md``.
"""

from __future__ import annotations

import inspect
import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired, TypedDict, cast, get_args

from gradguard.errors import MissingExtraError
from gradguard.extras import require

require("langchain.agents.middleware", "agents", "ConfidenceToolGuard (gradguard's agent middleware)")
require("langgraph.types", "agents", "ConfidenceToolGuard (gradguard's agent middleware)")

from langchain.agents.middleware import HumanInTheLoopMiddleware, InterruptOnConfig  # noqa: E402
from langchain.agents.middleware.human_in_the_loop import DecisionType, InterruptMode  # noqa: E402
from langchain.agents.middleware.types import AgentState, OmitFromInput, ToolCallRequest  # noqa: E402
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, ToolMessage  # noqa: E402
from langgraph.config import get_config  # noqa: E402
from langgraph.constants import CONFIG_KEY_CHECKPOINTER  # noqa: E402
from langgraph.runtime import Runtime  # noqa: E402
from langgraph.types import Command  # noqa: E402
from pydantic import (  # noqa: E402
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from gradguard.integrations._core import METADATA_KEY, ROUTE_KEY, IntegrationError  # noqa: E402
from gradguard.integrations.langchain.chat_model import to_chat_dicts  # noqa: E402
from gradguard.integrations.langchain.metadata import result_for  # noqa: E402
from gradguard.review.queue import ReviewQueue, enqueue_item  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = [
    "ConfidenceToolGuard", "ToolGuardState", "ToolRoute", "ToolGuardConfigError", "CheckpointerRequiredError",
    "ToolGuardSettings", "LowAction", "LOW_ACTIONS", "tool_call_scores",
]

if "when" not in InterruptOnConfig.__annotations__:  # pragma: no cover - depends on the installed langchain
    raise MissingExtraError(
        "ConfidenceToolGuard needs HumanInTheLoopMiddleware's `when` predicate and `interrupt_mode`, which this "
        "langchain lacks; upgrade it: pip install -U 'gradguard[agents]'",
        package="langchain", extra="agents", name="langchain.agents.middleware",
    )

#: What :class:`ConfidenceToolGuard` does with a low-confidence tool call.
LowAction = Literal["interrupt", "review", "reject"]
LOW_ACTIONS: tuple[str, ...] = get_args(LowAction)
#: A decision recorded in the trail: the call ran (``pass``) or one of the :data:`LowAction` s.
RouteAction = Literal["pass", "interrupt", "review", "reject"]

_DECISIONS: tuple[str, ...] = get_args(DecisionType)
_DEFAULT_DECISIONS: tuple[DecisionType, ...] = ("approve", "edit", "reject")
# HumanInTheLoopMiddleware's own default reviewer-edit notice, read from its signature (not retyped).
_HITL_EDIT_NOTICE: str | None = inspect.signature(HumanInTheLoopMiddleware.__init__).parameters["edit_notice"].default


class ToolGuardConfigError(IntegrationError):
    """:class:`ConfidenceToolGuard` was configured wrongly (the message names the value and the fix)."""


class CheckpointerRequiredError(ToolGuardConfigError):
    """``on_low="interrupt"`` was used by an agent without a checkpointer or without a ``thread_id``."""


class ToolRoute(TypedDict):
    """One entry of the trail: what the guard decided for one tool call, and why."""

    tool_call_id: str | None
    name: str
    action: RouteAction
    reason: str
    confidence: float | None
    threshold: float
    decision: NotRequired[str | None]
    """``on_low="interrupt"``: the reviewer's decision (approve/edit/reject/respond; ``None`` in ``per_call`` mode,
    where the reviewer answers when the tool starts)."""
    review_id: NotRequired[str]
    """``on_low="review"``: the id of the review-queue item."""



if TYPE_CHECKING:
    _HITLState = AgentState[Any]
else:  # HITL's state (its private reviewer-edit map), extended rather than copied
    _HITLState = HumanInTheLoopMiddleware.state_schema


class ToolGuardState(_HITLState):
    """The agent state of :class:`ConfidenceToolGuard`: HITL's state plus the thread's trail.

    ``gradguard_route`` (:data:`~gradguard.integrations._core.ROUTE_KEY`) accumulates every :class:`ToolRoute` of
    the thread, oldest first; it is part of the agent's output (``agent.invoke(...)["gradguard_route"]``).
    """

    gradguard_route: NotRequired[Annotated[list[ToolRoute], operator.add, OmitFromInput]]


def tool_call_scores(message: Any) -> dict[str, dict[str, Any]]:
    """The per-call score entries of ``message`` (``response_metadata["gradguard"]["tool_calls"]``) by tool-call id.

    An entry without a string ``id`` cannot be matched and is skipped; an id listed twice is left out (which of
    the two scores belongs to the call is unknown, so the call counts as unscored: fail closed).
    """
    bag = getattr(message, "response_metadata", None)
    block = bag.get(METADATA_KEY) if isinstance(bag, Mapping) else None
    entries = block.get("tool_calls") if isinstance(block, Mapping) else None
    if not isinstance(entries, list | tuple):
        return {}
    found: dict[str, dict[str, Any]] = {}
    twice: set[str] = set()
    for entry in entries:
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            if entry["id"] in found:
                twice.add(entry["id"])
            found[entry["id"]] = dict(entry)
    for call_id in twice:
        del found[call_id]
    return found


class ToolGuardSettings(BaseModel):
    """The validated arguments of :class:`ConfidenceToolGuard` (see its docstring for each one)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    threshold: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    on_low: LowAction = "interrupt"
    require_in_domain: StrictBool = False
    review_queue: Any = None
    exempt_tools: tuple[str, ...] = ()
    interrupt_on: dict[str, bool | dict[str, Any]] | None = None
    allowed_decisions: tuple[DecisionType, ...] = Field(_DEFAULT_DECISIONS, min_length=1)
    interrupt_mode: InterruptMode = "batched"
    description_prefix: str = "Low-confidence tool call: approval needed"
    edit_notice: str | None = _HITL_EDIT_NOTICE

    @field_validator("threshold", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"threshold={value!r} is not a number")
        return value

    @field_validator("review_queue")
    @classmethod
    def _queue(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, ReviewQueue):
            raise ValueError(
                f"review_queue={value!r} is not a ReviewQueue (it needs enqueue/get/list/resolve); "
                "pass e.g. SQLiteReviewQueue(path)"
            )
        return value

    @field_validator("interrupt_on")
    @classmethod
    def _tool_configs(cls, value: dict[str, bool | dict[str, Any]] | None) -> dict[str, bool | dict[str, Any]] | None:
        for name, config in (value or {}).items():
            if config is False:
                raise ValueError(
                    f"interrupt_on[{name!r}]=False: every tool is guarded; to let {name!r} run unguarded, "
                    f"pass exempt_tools=[{name!r}]"
                )
            if config is True:
                continue
            assert isinstance(config, dict)
            if "when" in config:
                raise ValueError(
                    f"interrupt_on[{name!r}] has a 'when' predicate: the guard's confidence test decides when to "
                    "interrupt; drop it (add a HumanInTheLoopMiddleware of your own for other conditions)"
                )
            unknown = sorted(set(config) - set(InterruptOnConfig.__annotations__))
            if unknown:
                keys = sorted(set(InterruptOnConfig.__annotations__) - {"when"})
                raise ValueError(f"interrupt_on[{name!r}] has unknown keys {unknown}; its keys are {keys}")
            decisions = config.get("allowed_decisions")
            if not decisions or not isinstance(decisions, list | tuple) or set(decisions) - set(_DECISIONS):
                raise ValueError(
                    f"interrupt_on[{name!r}]['allowed_decisions']={decisions!r} is not a non-empty list of "
                    f"{list(_DECISIONS)}; pass e.g. ['approve', 'reject']"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ToolGuardSettings:
        if self.on_low == "review" and self.review_queue is None:
            raise ValueError(
                "on_low='review' needs review_queue=...; pass e.g. review_queue=SQLiteReviewQueue('review.sqlite3') "
                "(from gradguard.review)"
            )
        if self.on_low != "review" and self.review_queue is not None:
            raise ValueError(f"review_queue is only used with on_low='review' (got on_low={self.on_low!r}); drop it")
        interrupt_only = sorted(
            self.model_fields_set & {"interrupt_on", "allowed_decisions", "interrupt_mode", "description_prefix",
                                     "edit_notice"}
        )
        if self.on_low != "interrupt" and interrupt_only:
            raise ValueError(
                f"{interrupt_only} only apply to on_low='interrupt' (got on_low={self.on_low!r}); drop them"
            )
        both = sorted(set(self.exempt_tools) & set(self.interrupt_on or {}))
        if both:
            raise ValueError(f"tools {both} are both exempt and in interrupt_on; keep them in one of the two")
        return self


# What to do about each bad argument (pydantic's own message says what is wrong with it).
_FIXES = {
    "threshold": "pass the calibrated confidence a call needs, a number in [0, 1] (e.g. threshold=0.6)",
    "on_low": f"pass one of {list(LOW_ACTIONS)}",
    "require_in_domain": "pass True or False",
    "exempt_tools": "pass a list of tool names",
    "interrupt_on": "pass {tool_name: True | InterruptOnConfig}",
    "allowed_decisions": f"pass a non-empty list of {list(_DECISIONS)}",
    "interrupt_mode": f"pass one of {list(get_args(InterruptMode))}",
    "description_prefix": "pass a string",
    "edit_notice": "pass a string or None",
}


def _settings(**kwargs: Any) -> ToolGuardSettings:
    """``ToolGuardSettings(**kwargs)``, its validation errors raised as one :class:`ToolGuardConfigError`."""
    try:
        return ToolGuardSettings(**kwargs)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err.get("loc") else ""
            if err.get("type") == "value_error":
                parts.append(str(err["ctx"]["error"]) if "ctx" in err else err["msg"])
            else:
                fix = _FIXES.get(field, "see the ConfidenceToolGuard docstring")
                parts.append(f"{field}={err.get('input')!r}: {err['msg']}; {fix}")
        raise ToolGuardConfigError("ConfidenceToolGuard: " + "; ".join(parts)) from None


@dataclass(frozen=True)
class _Assessment:
    """The guard's reading of one tool call's score."""

    low: bool
    reason: str
    confidence: float | None


class _ToolConfigs(dict[str, InterruptOnConfig]):
    """HITL's ``interrupt_on`` for the guard: explicit per-tool configs, and ``default`` for every other tool that
    is not exempt (the guard does not know the agent's tools when it is built)."""

    def __init__(
        self, explicit: Mapping[str, InterruptOnConfig], default: InterruptOnConfig | None, exempt: Iterable[str]
    ) -> None:
        super().__init__(explicit)
        self.default = default
        self.exempt = frozenset(exempt)

    def __missing__(self, name: str) -> InterruptOnConfig:
        if self.default is None or name in self.exempt:
            raise KeyError(name)
        return self.default

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


def _last_ai(messages: Sequence[AnyMessage]) -> tuple[int, AIMessage] | None:
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], AIMessage):
            return index, cast(AIMessage, messages[index])
    return None


def _ai_with_call(messages: Sequence[AnyMessage], call_id: str | None) -> tuple[int, AIMessage] | None:
    """The latest AI message with a tool call of this id, and its index."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, AIMessage) and any(call.get("id") == call_id for call in message.tool_calls):
            return index, message
    return None


def _answered(messages: Iterable[BaseMessage]) -> set[str]:
    return {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}


def _trail_of(message: BaseMessage) -> list[ToolRoute]:
    trail = message.response_metadata.get(ROUTE_KEY)
    return [cast(ToolRoute, entry) for entry in trail if isinstance(entry, Mapping)] if isinstance(trail, list) else []


def _question(messages: Sequence[BaseMessage]) -> str:
    """The text of the latest human message (what the agent was asked)."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return str(message.text)
    return ""


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and anything JSON cannot hold as its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _args_text(args: Any) -> str:
    return json.dumps(_jsonable(args), sort_keys=True)


class ConfidenceToolGuard(HumanInTheLoopMiddleware[ToolGuardState, Any, Any]):
    """Holds the tool calls of a ``create_agent`` agent that gradguard is not confident about.

    After each model call it reads every tool call's calibrated confidence from the message's
    ``response_metadata["gradguard"]["tool_calls"]`` (what ``ChatGradguard`` puts there with tools bound; matched
    by tool-call id) and lets a call run only when its confidence is at least ``threshold`` (and, with
    ``require_in_domain=True``, the call is in the calibration domain). A call with no score entry, a ``None`` or
    non-numeric confidence, or an ambiguous entry is *low*: the guard fails closed and never runs an unscored call
    without a person's approval. It is a ``HumanInTheLoopMiddleware`` (same requests, decisions and resume)
    whose ``when`` is the confidence test.

    Setup:
        ``pip install 'gradguard[agents]'`` (``langchain`` and ``langgraph``). ``on_low="interrupt"`` pauses the
        run with LangGraph's ``interrupt``, so the agent needs a checkpointer and every run a ``thread_id``:
        ``create_agent(..., checkpointer=InMemorySaver())`` and
        ``config={"configurable": {"thread_id": "..."}}``. Without them the first step of the run raises
        :class:`CheckpointerRequiredError` (before any model call). ``on_low="review"`` needs a
        ``review_queue`` (e.g. :class:`gradguard.review.SQLiteReviewQueue`); ``"reject"`` needs nothing.

    Usage:
        ::

            from langchain.agents import create_agent
            from langgraph.checkpoint.memory import InMemorySaver
            from langgraph.types import Command

            guard = ConfidenceToolGuard(threshold=0.6)  # on_low="interrupt"
            agent = create_agent(ChatGradguard(), tools=[get_weather, send_email], middleware=[guard],
                                 checkpointer=InMemorySaver())
            config = {"configurable": {"thread_id": "t1"}}
            state = agent.invoke({"messages": [{"role": "user", "content": "..."}]}, config)
            if "__interrupt__" in state:  # a call was held: its description states the confidence and why
                agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)

        Arguments: ``threshold`` (the calibrated confidence a call needs, in [0, 1]; default 0.5);
        ``on_low`` (``"interrupt"``, ``"review"`` or ``"reject"``); ``require_in_domain`` (also hold calls whose
        ``in_domain`` is not ``True``); ``review_queue`` (for ``"review"``); ``exempt_tools`` (tool names whose
        calls always run, scored or not: you opt them out of the guard). Interrupt only: ``interrupt_on``
        (``{tool: True | InterruptOnConfig}``, HITL's per-tool ``allowed_decisions`` and ``description``; no
        ``when``), ``allowed_decisions`` for every other tool (default approve, edit, reject), and HITL's
        ``interrupt_mode``, ``description_prefix`` and ``edit_notice``. Bad values raise
        :class:`ToolGuardConfigError`.

    Decisions:
        A confident call passes untouched. A low call, by ``on_low``:

        - ``"interrupt"``: held for a person through ``HumanInTheLoopMiddleware``: one ``HITLRequest`` per model
          turn (``interrupt_mode="batched"``) or one ``ToolApprovalRequest`` per call (``"per_call"``), whose
          description states the confidence and the reason; resume exactly as with HITL
          (``Command(resume={"decisions": [...]})``, or ``{interrupt_id: decision}`` per call; approve / edit /
          reject / respond).
          Confident calls of the same turn are not asked about.
        - ``"review"``: not executed; enqueued in ``review_queue`` (question = the latest user message, answer =
          the proposed call as JSON, the score entry, reason and threshold in the item's metadata) and the model
          gets an error ``ToolMessage`` saying the call is held for review with the item id. Resolving the item
          does not resume the agent: your application acts on the verdict.
        - ``"reject"``: not executed; the model gets an error ``ToolMessage`` with the confidence and the
          threshold, so it can answer differently.

        As a last line, a call reaching the tool node that the guard never assessed (added after it ran) is not
        executed either.

    Metadata:
        Every decision goes into the trail, a list of :class:`ToolRoute`
        (``{tool_call_id, name, action, reason, confidence, threshold}``, plus ``decision`` for an interrupt in
        batched mode, written once the person has answered, and ``review_id`` for a review): appended to the AI
        message's ``response_metadata["gradguard_route"]`` (:data:`~gradguard.integrations._core.ROUTE_KEY`) and
        accumulated for the thread in the agent state under the same key (:class:`ToolGuardState`). The
        ``ToolMessage`` s the guard writes carry their entry in ``response_metadata["gradguard_route"]``.
    """

    state_schema = ToolGuardState  # type: ignore[assignment]  # HITL's state extended

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        on_low: LowAction = "interrupt",
        require_in_domain: bool = False,
        review_queue: ReviewQueue | None = None,
        exempt_tools: Sequence[str] = (),
        interrupt_on: Mapping[str, bool | InterruptOnConfig] | None = None,
        allowed_decisions: Sequence[DecisionType] | None = None,
        interrupt_mode: InterruptMode | None = None,
        description_prefix: str | None = None,
        edit_notice: str | None = _HITL_EDIT_NOTICE,
    ) -> None:
        given: dict[str, Any] = {
            "interrupt_on": None if interrupt_on is None else dict(interrupt_on),
            "allowed_decisions": None if allowed_decisions is None else tuple(allowed_decisions),
            "interrupt_mode": interrupt_mode,
            "description_prefix": description_prefix,
        }
        options = {key: value for key, value in given.items() if value is not None}
        if edit_notice != _HITL_EDIT_NOTICE:
            options["edit_notice"] = edit_notice
        exempt = [exempt_tools] if isinstance(exempt_tools, str) else exempt_tools
        self.settings = settings = _settings(
            threshold=threshold,
            on_low=on_low,
            require_in_domain=require_in_domain,
            review_queue=review_queue,
            exempt_tools=tuple(exempt) if isinstance(exempt, Iterable) else exempt,
            **options,
        )
        super().__init__(
            {},
            description_prefix=settings.description_prefix,
            edit_notice=settings.edit_notice,
            interrupt_mode=settings.interrupt_mode,
        )
        self.threshold = settings.threshold
        self.on_low: LowAction = settings.on_low
        self.require_in_domain = settings.require_in_domain
        self.review_queue: ReviewQueue | None = settings.review_queue
        self.exempt_tools = frozenset(settings.exempt_tools)
        explicit: dict[str, InterruptOnConfig] = {}
        default: InterruptOnConfig | None = None
        if self.on_low == "interrupt":
            for name, config in (settings.interrupt_on or {}).items():
                own = {"allowed_decisions": list(_DECISIONS)} if config is True else config
                explicit[name] = self._gated(cast(InterruptOnConfig, own))
            default = self._gated(cast(InterruptOnConfig, {"allowed_decisions": list(settings.allowed_decisions)}))
        self.interrupt_on = _ToolConfigs(explicit, default, self.exempt_tools)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(threshold={self.threshold!r}, on_low={self.on_low!r}, "
            f"require_in_domain={self.require_in_domain!r}, exempt_tools={sorted(self.exempt_tools)!r})"
        )

    # -- reading a call's score ---------------------------------------------------------------------------------

    def _assess(self, tool_call: Mapping[str, Any], scores: Mapping[str, Mapping[str, Any]]) -> _Assessment:
        """Whether ``tool_call`` is low, by its entry in ``scores`` (from :func:`tool_call_scores`), and why."""
        call_id, name, t = tool_call.get("id"), tool_call.get("name"), self.threshold
        held = "an unscored call is held (fail closed)"
        entry = scores.get(call_id) if isinstance(call_id, str) else None
        if entry is None:
            where = f"response_metadata[{METADATA_KEY!r}]['tool_calls']"
            return _Assessment(True, f"no score for this call (no entry with its id in {where}); {held}", None)
        if entry.get("name") not in (None, name):
            return _Assessment(
                True, f"its score entry names the tool {entry.get('name')!r}, not {name!r}; {held}", None
            )
        value = entry.get("confidence")
        if value is None:
            why = "it has no calibrated confidence" if entry.get("scored") else "the call was not scored"
            return _Assessment(True, f"{why} (confidence None); {held}", None)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            return _Assessment(True, f"its confidence {value!r} is not a probability in [0, 1]; {held}", None)
        confidence = float(value)
        if confidence < t:
            return _Assessment(True, f"its confidence {confidence:.3f} is below the threshold {t:.3f}", confidence)
        if self.require_in_domain and entry.get("in_domain") is not True:
            where = "out of" if entry.get("in_domain") is False else "not known to be in"
            return _Assessment(
                True,
                f"its confidence {confidence:.3f} meets the threshold {t:.3f}, but the call is {where} the "
                f"calibration domain (in_domain={entry.get('in_domain')!r}) and require_in_domain=True",
                confidence,
            )
        return _Assessment(False, f"its confidence {confidence:.3f} meets the threshold {t:.3f}", confidence)

    def _route(self, call: Mapping[str, Any], scores: Mapping[str, Mapping[str, Any]]) -> ToolRoute:
        """The trail entry for ``call``: ``pass``, or ``on_low`` for a low call."""
        name = str(call.get("name"))
        found = self._assess(call, scores)
        if name in self.exempt_tools:
            action: RouteAction = "pass"
            reason = f"tool {name!r} is in exempt_tools, so it runs unguarded ({found.reason})"
        else:
            action, reason = (self.on_low if found.low else "pass"), found.reason
        return ToolRoute(
            tool_call_id=call.get("id"), name=name, action=action, reason=reason,
            confidence=found.confidence, threshold=self.threshold,
        )

    # -- the HITL side -------------------------------------------------------------------------------------------

    def _gated(self, config: InterruptOnConfig) -> InterruptOnConfig:
        """``config`` with the guard's ``when`` (interrupt only low calls) and a description stating the reason."""
        own = config.get("description")

        def describe(tool_call: Any, state: Any, runtime: Any) -> str:
            route = self._route_in_state(tool_call, state)
            why = f"gradguard: {route['reason']}" if route else "gradguard: held"
            if callable(own):
                return f"{own(tool_call, state, runtime)}\n\n{why}"
            head = own if isinstance(own, str) else self.description_prefix
            return f"{head}\n\n{why}\n\nTool: {tool_call['name']}\nArgs: {_args_text(tool_call.get('args'))}"

        def when(request: ToolCallRequest) -> bool:
            route = self._route_in_state(request.tool_call, request.state)
            return route is not None and route["action"] == "interrupt"

        return InterruptOnConfig(**{**config, "description": describe, "when": when})

    def _route_in_state(self, tool_call: Mapping[str, Any], state: Any) -> ToolRoute | None:
        """The guard's decision for ``tool_call``, recomputed from the AI message holding it in ``state``
        (deterministic, as HITL's ``when`` must be on resume); ``None`` when the call was already answered."""
        messages = list(state.get("messages") or []) if isinstance(state, Mapping) else []
        found = _ai_with_call(messages, tool_call.get("id"))
        if found is None:
            return None
        index, message = found
        if tool_call.get("id") in _answered(messages[index + 1 :]):
            return None
        return self._route(tool_call, tool_call_scores(message))

    # -- hooks ---------------------------------------------------------------------------------------------------

    def _require_checkpointer(self) -> None:
        """Raise :class:`CheckpointerRequiredError` unless this run can be interrupted and resumed."""
        try:
            configurable = get_config().get("configurable") or {}
        except RuntimeError:  # not inside a graph run: nothing to check
            return
        fix = (
            "pass a checkpointer to create_agent (e.g. checkpointer=InMemorySaver() from langgraph.checkpoint.memory, "
            "or a durable saver) and run it with config={'configurable': {'thread_id': '...'}}; or use "
            "on_low='review' or on_low='reject', which need neither"
        )
        if configurable.get(CONFIG_KEY_CHECKPOINTER) is None:
            raise CheckpointerRequiredError(
                "ConfidenceToolGuard(on_low='interrupt') holds low-confidence tool calls with LangGraph's interrupt, "
                f"which can only be resumed from a checkpoint, and this agent has no checkpointer: {fix}"
            )
        if not configurable.get("thread_id"):
            raise CheckpointerRequiredError(
                f"ConfidenceToolGuard(on_low='interrupt') needs a thread_id to resume a held call: {fix}"
            )

    def before_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Fail fast, before any model call, when ``on_low="interrupt"`` has no checkpointer or ``thread_id``."""
        if self.on_low == "interrupt":
            self._require_checkpointer()
        return None

    async def abefore_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async :meth:`before_agent`."""
        return self.before_agent(state, runtime)

    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Decide every tool call of the latest AI message, act on the low ones and write the trail."""
        messages = list(state.get("messages") or [])
        found = _last_ai(messages)
        if found is None or not found[1].tool_calls:
            return None
        index, message = found
        answered = _answered(messages[index + 1 :])
        scores = tool_call_scores(message)
        calls = [call for call in message.tool_calls if call.get("id") not in answered]
        if not calls and self.on_low != "interrupt":
            return None
        routes = [self._route(call, scores) for call in calls]
        update: dict[str, Any] = {}
        out: list[AnyMessage] = []
        if self.on_low == "interrupt":
            if any(route["action"] == "interrupt" for route in routes):
                self._require_checkpointer()
            message = message.model_copy()
            patched = [*messages[:index], message, *messages[index + 1 :]]
            result = super().after_model({**state, "messages": patched}, runtime) or {}
            out = list(result.get("messages") or [])[1:]
            update.update({key: value for key, value in result.items() if key != "messages"})
            self._record_decisions(routes, out, update)
        for call, route in zip(calls, routes, strict=True):
            if route["action"] == "review":
                route["review_id"] = self._enqueue(
                    call, route, scores.get(call.get("id") or ""), messages[:index], message
                )
            if route["action"] in ("review", "reject"):
                out.append(self._blocked(call, route))
        trail = [*_trail_of(message), *routes]
        guarded = message.model_copy(update={"response_metadata": {**message.response_metadata, ROUTE_KEY: trail}})
        return {**update, "messages": [guarded, *out], ROUTE_KEY: routes}

    async def aafter_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async :meth:`after_model` (the review queue is written synchronously)."""
        return self.after_model(state, runtime)

    def _record_decisions(self, routes: list[ToolRoute], answers: list[AnyMessage], update: Mapping[str, Any]) -> None:
        """Put the reviewer's decision of each held call (batched mode) into its trail entry."""
        if self.interrupt_mode != "batched":
            for route in routes:
                if route["action"] == "interrupt":
                    route["decision"] = None
            return
        by_id = {m.tool_call_id: m for m in answers if isinstance(m, ToolMessage)}
        # HITL's state update besides "messages" is its reviewer-edit map, keyed by tool-call id.
        edited = {key for value in update.values() if isinstance(value, Mapping) for key in value}
        for route in routes:
            if route["action"] != "interrupt":
                continue
            answer = by_id.get(route["tool_call_id"] or "")
            if answer is not None:
                route["decision"] = "respond" if answer.status == "success" else "reject"
            else:
                route["decision"] = "edit" if route["tool_call_id"] in edited else "approve"

    def _enqueue(
        self,
        call: Mapping[str, Any],
        route: ToolRoute,
        score: Mapping[str, Any] | None,
        before: list[AnyMessage],
        message: AIMessage,
    ) -> str:
        """Put the held call into the review queue (with the messages the model answered, for a refit); its id."""
        assert self.review_queue is not None  # checked at construction
        proposed = {"id": call.get("id"), "name": call.get("name"), "args": call.get("args")}
        thread_id = None
        try:
            thread_id = (get_config().get("configurable") or {}).get("thread_id")
        except RuntimeError:
            pass
        metadata = _jsonable({
            "source": type(self).__name__, "kind": "tool_call", "tool_call": proposed, "reason": route["reason"],
            "threshold": self.threshold, METADATA_KEY: dict(score) if score is not None else None,
            "thread_id": thread_id,
        })
        result = result_for(message)
        if result is not None and result.prompt_messages:
            prompt = [dict(m) for m in result.prompt_messages]  # exactly what was scored, system prompt included
        else:
            prompt = to_chat_dicts([m for m in before if isinstance(m, BaseMessage)])
        turn = message.response_metadata.get(METADATA_KEY) or {}
        return enqueue_item(
            self.review_queue, _question(before), json.dumps(_jsonable(proposed), sort_keys=True),
            confidence=route["confidence"], metadata=metadata, messages=_jsonable(prompt),
            task=turn.get("task"), model=turn.get("model"), profile=turn.get("profile"), reason="tool_call",
        )

    def _blocked(self, call: Mapping[str, Any], route: ToolRoute) -> ToolMessage:
        """The error ``ToolMessage`` the model sees instead of the result of a call that was not executed."""
        what = f"The tool call `{call.get('name')}` (id {call.get('id')}) was not executed"
        if route["action"] == "review":
            text = (
                f"{what}: it is held for human review as item {route.get('review_id')} because {route['reason']}. "
                "Do not retry it; tell the user it awaits review."
            )
        else:
            text = (
                f"{what}: it was rejected for low confidence because {route['reason']}. Do not retry the same call; "
                "answer differently (ask the user for what is missing, or say you cannot do it reliably)."
            )
        return ToolMessage(
            content=text, name=call.get("name"), tool_call_id=call.get("id") or "", status="error",
            response_metadata={ROUTE_KEY: dict(route)},
        )

    # -- the last line: nothing unassessed runs -------------------------------------------------------------------

    def _unvetted(self, request: ToolCallRequest) -> ToolMessage | None:
        """The error message for a call the guard did not let through, ``None`` for one it did."""
        call = request.tool_call
        messages = request.state.get("messages") if isinstance(request.state, Mapping) else None
        found = _ai_with_call(messages or [], call.get("id"))
        routes = [r for r in _trail_of(found[1]) if r.get("tool_call_id") == call.get("id")] if found else []
        if routes and routes[-1]["action"] in ("pass", "interrupt"):
            return None
        reason = (
            routes[-1]["reason"] if routes else "the guard never assessed this call (it was added after the guard ran)"
        )
        route = ToolRoute(
            tool_call_id=call.get("id"), name=str(call.get("name")), action="reject", reason=reason,
            confidence=routes[-1]["confidence"] if routes else None, threshold=self.threshold,
        )
        return self._blocked(call, route)

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]]
    ) -> ToolMessage | Command[Any]:
        """Run a call the guard let through (via HITL, which applies a reviewer's edit); refuse any other."""
        blocked = self._unvetted(request)
        if blocked is not None:
            return blocked
        return super().wrap_tool_call(request, handler)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """Async :meth:`wrap_tool_call`."""
        blocked = self._unvetted(request)
        if blocked is not None:
            return blocked
        return await super().awrap_tool_call(request, handler)
