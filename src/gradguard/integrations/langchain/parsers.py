"""``ConfidenceGuardParser``: an output parser that lets only confident answers through."""

from __future__ import annotations

from typing import Any, Literal, get_args

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.outputs import ChatGeneration, Generation
from pydantic import BaseModel, ConfigDict, PrivateAttr

from gradguard.errors import GradguardError
from gradguard.integrations._core import GUARD_KEY
from gradguard.integrations.langchain.metadata import GuardConfigError, GuardSignal, _validation_as, read_metadata
from gradguard.routing import DEFAULT_ABSTAIN_TEXT

__all__ = ["ConfidenceGuardParser", "GuardVerdict", "GuardedText", "LowConfidenceError", "ON_FAIL_MODES"]

OnFail = Literal["exception", "abstain", "noop"]
#: What :class:`ConfidenceGuardParser` does with an unconfident answer.
ON_FAIL_MODES: tuple[str, ...] = get_args(OnFail)


class GuardVerdict(BaseModel):
    """What a guard decided about one answer: ``passed`` (it met the rule ``signal``/``threshold``), ``action``
    (``"pass"``, or the ``on_fail`` mode applied), ``value`` (the signal read; ``None`` when missing: fail closed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    action: Literal["pass"] | OnFail
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
    """The answer did not meet the guard's confidence rule (or had no score: guards fail closed). An
    ``OutputParserException``, so ``with_fallbacks`` and agent executors handle it like any parsing failure;
    ``verdict`` says what was read, ``llm_output`` (and ``answer``) is the answer held back."""

    def __init__(self, verdict: GuardVerdict, answer: str) -> None:
        message = f"answer held back by the confidence guard: {verdict.reason}"
        OutputParserException.__init__(self, message, observation=verdict.reason, llm_output=answer)
        self.verdict = verdict
        self.answer = answer


class ConfidenceGuardParser(BaseOutputParser[str]):
    """Reads the gradguard score of a chat model's answer and stops unconfident answers.

    Put it after a scored chat model: ``prompt | ChatGradguard() | ConfidenceGuardParser()``. The rule: the
    calibrated ``confidence`` is at least ``min_confidence`` (default 0.5); on an uncalibrated model a raw
    uncertainty instead, e.g. ``signal="hybridgrad", max_uncertainty=0.02`` (larger = less confident).
    ``on_fail``: ``"exception"`` (default) raises :class:`LowConfidenceError`, ``"abstain"`` returns
    ``abstain_text``, ``"noop"`` returns the answer with the failed verdict. It fails closed (no score, an unscored
    answer, a missing/NaN signal). The output is a :class:`GuardedText` (a ``str`` with ``.verdict``), or with
    ``output="message"`` an ``AIMessage`` with the verdict in ``response_metadata["gradguard_guard"]``.
    """

    model_config = ConfigDict(extra="forbid")

    on_fail: OnFail = "exception"
    signal: str = "confidence"
    min_confidence: float | None = None
    max_uncertainty: float | None = None
    abstain_text: str = DEFAULT_ABSTAIN_TEXT
    output: Literal["text", "message"] = "text"

    _guard: GuardSignal = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        with _validation_as(ConfidenceGuardParser, GuardConfigError):
            super().__init__(**kwargs)
        self._guard = GuardSignal.from_options(
            self.signal, self.max_uncertainty, min_confidence=self.min_confidence, owner="ConfidenceGuardParser"
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
        guard = self._guard
        reading = guard.read(obj)
        action = "pass" if reading.passed else self.on_fail
        return GuardVerdict(**reading._asdict(), action=action, signal=guard.name, threshold=guard.threshold)

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        """Apply the guard to the first generation (its message's metadata holds the score)."""
        generation = result[0] if result else None
        text = generation.text if generation is not None else ""
        verdict = self.verdict(generation)
        if not verdict.passed and self.on_fail == "exception":
            raise LowConfidenceError(verdict, text)
        answer = self.abstain_text if not verdict.passed and self.on_fail == "abstain" else text
        if self.output == "message":
            base = generation.message if isinstance(generation, ChatGeneration) else None
            bag = {**(getattr(base, "response_metadata", None) or {}), GUARD_KEY: verdict.metadata()}
            message = base if isinstance(base, AIMessage) else AIMessage(content="")
            return message.model_copy(update={"content": answer, "response_metadata": bag})
        return GuardedText(answer, verdict, read_metadata(generation))

    def parse(self, text: str) -> Any:
        """Plain text carries no score: it fails closed (``on_fail`` applies)."""
        return self.parse_result([Generation(text=text)])

