"""``ConfidenceGuardParser``: an output parser that lets only confident answers through."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.outputs import ChatGeneration, Generation
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from gradguard.errors import GradguardError
from gradguard.integrations.langchain.metadata import GUARD_KEY, GuardConfigError, GuardSignal, read_metadata
from gradguard.routing import DEFAULT_ABSTAIN_TEXT

__all__ = ["ConfidenceGuardParser", "GuardVerdict", "GuardedText", "LowConfidenceError", "ON_FAIL_MODES"]

#: What :class:`ConfidenceGuardParser` does with an unconfident answer.
ON_FAIL_MODES: tuple[str, ...] = ("exception", "abstain", "noop")


class GuardVerdict(BaseModel):
    """What a guard decided about one answer.

    ``passed`` is True when the answer met the rule (``signal``/``threshold``); ``action``
    is what the parser did: ``"pass"``, or for a failed answer its ``on_fail`` mode.
    ``value`` is the signal read (``None`` when missing: unscored answers fail closed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    action: Literal["pass", "exception", "abstain", "noop"]
    signal: str
    threshold: float
    value: float | None
    reason: str

    def metadata(self) -> dict[str, Any]:
        """The verdict as a JSON-able dict (stored under ``response_metadata["gradguard_guard"]``)."""
        return self.model_dump(mode="json")


class GuardedText(str):
    """The parser's text output: a ``str`` that also carries the guard's ``verdict`` and the ``gradguard`` metadata."""

    verdict: GuardVerdict
    gradguard: dict[str, Any] | None

    def __new__(cls, text: str, verdict: GuardVerdict, gradguard: dict[str, Any] | None) -> GuardedText:
        obj = super().__new__(cls, text)
        obj.verdict = verdict
        obj.gradguard = gradguard
        return obj


class LowConfidenceError(GradguardError, OutputParserException):
    """The answer did not meet the guard's confidence rule (or had no score: guards fail closed).

    A LangChain ``OutputParserException``, so ``with_fallbacks`` and agent executors handle
    it like any parsing failure. ``verdict`` says what was read; ``llm_output`` is the
    answer that was held back.
    """

    def __init__(self, verdict: GuardVerdict, answer: str) -> None:
        message = f"answer held back by the confidence guard: {verdict.reason}"
        OutputParserException.__init__(self, message, observation=verdict.reason, llm_output=answer)
        self.verdict = verdict
        self.answer = answer


class ConfidenceGuardParser(BaseOutputParser[str]):
    """Reads the gradguard score of a chat model's answer and stops unconfident answers.

    Put it after a scored chat model (``ChatGradguard``, or any chat model watched by a
    ``GradguardCallbackHandler``): ``chain = prompt | ChatGradguard() | ConfidenceGuardParser()``.

    The rule (``signal``): by default the calibrated ``confidence`` must be at least
    ``min_confidence`` (default 0.5). On an uncalibrated model, guard on a raw uncertainty
    instead: ``signal="hybridgrad", max_uncertainty=0.02`` passes answers whose HybridGrad
    is at most 0.02 (larger = less confident).

    ``on_fail`` says what happens to an answer that fails the rule:

    - ``"exception"`` (default): raise :class:`LowConfidenceError` (an ``OutputParserException``);
    - ``"abstain"``: return ``abstain_text`` instead of the answer;
    - ``"noop"``: return the answer, with the failed verdict attached.

    It fails closed: an answer with no score in its metadata, an unscored (empty) answer,
    or a missing/NaN signal fails. The output is a :class:`GuardedText` (a ``str`` with
    ``.verdict``), or with ``output="message"`` an ``AIMessage`` whose
    ``response_metadata["gradguard_guard"]`` holds the verdict.
    """

    model_config = ConfigDict(extra="forbid")

    on_fail: str = "exception"
    signal: str = "confidence"
    min_confidence: float | None = None
    max_uncertainty: float | None = None
    abstain_text: str = DEFAULT_ABSTAIN_TEXT
    output: str = "text"

    _guard: GuardSignal = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
            if err.get("type") == "extra_forbidden":
                raise GuardConfigError(
                    f"ConfidenceGuardParser has no option {loc!r}; use on_fail, signal, min_confidence, "
                    "max_uncertainty, abstain_text or output"
                ) from None
            raise GuardConfigError(f"ConfidenceGuardParser {loc}={err.get('input')!r}: {err.get('msg')}") from None
        if self.on_fail not in ON_FAIL_MODES:
            raise GuardConfigError(f"on_fail={self.on_fail!r} is not a mode; use one of {list(ON_FAIL_MODES)}")
        if self.output not in ("text", "message"):
            raise GuardConfigError(f"output={self.output!r}: use 'text' (a str) or 'message' (an AIMessage)")
        self._guard = GuardSignal.from_options(
            signal=self.signal,
            min_confidence=self.min_confidence,
            max_uncertainty=self.max_uncertainty,
            owner="ConfidenceGuardParser",
        )

    @property
    def guard(self) -> GuardSignal:
        """The rule this parser applies."""
        return self._guard

    @property
    def _type(self) -> str:
        return "gradguard_confidence_guard"

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        """``str`` (a :class:`GuardedText`) or ``AIMessage`` with ``output="message"``."""
        return AIMessage if self.output == "message" else str

    def get_format_instructions(self) -> str:
        """The guard asks nothing of the model's output format."""
        return ""

    def verdict(self, obj: Any) -> GuardVerdict:
        """The verdict for a message, generation, ``ScoreResult`` or metadata dict, without acting on it."""
        reading = self._guard.read(obj)
        return GuardVerdict(
            passed=reading.passed,
            action="pass" if reading.passed else self.on_fail,
            signal=self._guard.name,
            threshold=self._guard.threshold,
            value=reading.value,
            reason=reading.reason,
        )

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        """Apply the guard to the first generation (its message's metadata holds the score)."""
        generation = result[0] if result else None
        text = generation.text if generation is not None else ""
        verdict = self.verdict(generation)
        if not verdict.passed and self.on_fail == "exception":
            raise LowConfidenceError(verdict, text)
        answer = self.abstain_text if not verdict.passed and self.on_fail == "abstain" else text
        meta = read_metadata(generation)
        if self.output == "message":
            base = generation.message if isinstance(generation, ChatGeneration) else None
            response_metadata = dict(getattr(base, "response_metadata", {}) or {})
            response_metadata[GUARD_KEY] = verdict.metadata()
            if isinstance(base, AIMessage):
                return base.model_copy(update={"content": answer, "response_metadata": response_metadata})
            return AIMessage(content=answer, response_metadata=response_metadata)
        return GuardedText(answer, verdict, meta)

    def parse(self, text: str) -> Any:
        """Plain text carries no score: it fails closed (``on_fail`` applies)."""
        return self.parse_result([Generation(text=text)])

