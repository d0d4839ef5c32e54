"""One contract, run against both adapters: LangChain's ConfidenceRouter / ChatGradguard and LlamaIndex's
ConfidenceGuardQueryEngine / GradguardLLM answer routing, bad options, rejection and abandoned streams
the same way (the routing semantics themselves are tested once, in tests/test_router.py)."""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402
from llama_index.core.base.base_query_engine import BaseQueryEngine  # noqa: E402
from llama_index.core.base.response.schema import Response  # noqa: E402
from llama_index.core.schema import QueryBundle  # noqa: E402

from gradguard import GradScorer, ScoreResult  # noqa: E402
from gradguard.integrations._core import AnswerRejectedError, IntegrationError, UnknownOptionError  # noqa: E402
from gradguard.integrations.langchain import ChatGradguard, ConfidenceRouter  # noqa: E402
from gradguard.integrations.llama_index import ConfidenceGuardQueryEngine, GradguardLLM  # noqa: E402
from gradguard.integrations.llama_index.utils import CapturedScore, publish_score  # noqa: E402
from gradguard.routing import Action, EscalationResult, RoutingPolicy, Tier  # noqa: E402
from gradguard.testing import make_score_result, make_tiny_model  # noqa: E402

QUESTION = "Who wrote the report?"
ABSTAIN = "I don't know."


def result(
    confidence: float | None, *, hybridgrad: float = 0.01, empty: bool = False, text: str = "Ada."
) -> ScoreResult:
    return make_score_result(confidence=confidence, hybridgrad=hybridgrad, empty=empty, response=text, model="m")


# --- the two adapters, behind one interface ------------------------------------------------------------


class LangChainAdapter:
    name = "langchain"

    def route(
        self, score: ScoreResult | dict | None, policy: RoutingPolicy, *, text: str = "Ada.", **options: Any
    ) -> tuple[str, dict]:
        meta = {"gradguard": score.metadata() if isinstance(score, ScoreResult) else score} if score is not None else {}
        answerer = RunnableLambda(lambda _: AIMessage(content=text, response_metadata=meta))
        kwargs = {"on_reject": "raise"} if options.pop("raise_on_reject", False) else {}
        out = ConfidenceRouter(answerer, policy, **options, **kwargs).invoke(QUESTION)
        return str(out.content), out.response_metadata["gradguard_route"]

    def build(self, policy: RoutingPolicy, **options: Any) -> Any:
        return ConfidenceRouter(RunnableLambda(lambda _: AIMessage(content="x")), policy, **options)

    def model(self, scorer: GradScorer, **fields: Any) -> Any:
        return ChatGradguard(scorer=scorer, **fields)

    def call(self, model: Any, **options: Any) -> str:
        return str(model.invoke("Name a colour.", **options).content)

    def stream(self, model: Any, **options: Any) -> Any:
        return (chunk.content for chunk in model.stream("Name a colour.", **options))


class _Scripted(BaseQueryEngine):
    def __init__(self, text: str, score: ScoreResult | None) -> None:
        super().__init__(callback_manager=None)
        self.text, self.score = text, score

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}

    def _query(self, query_bundle: QueryBundle) -> Response:
        if self.score is not None:
            publish_score(
                CapturedScore(text=self.text, result=self.score, metadata=self.score.metadata(), source="llm")
            )
        return Response(self.text, [])

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        return self._query(query_bundle)


class LlamaIndexAdapter:
    name = "llama_index"

    def route(
        self, score: ScoreResult | dict | None, policy: RoutingPolicy, *, text: str = "Ada.", **options: Any
    ) -> tuple[str, dict]:
        targets = options.pop("targets", None)
        engine = ConfidenceGuardQueryEngine(
            _Scripted(text, score if isinstance(score, ScoreResult) else None), policy, escalations=targets, **options
        )
        response = engine.query(QUESTION)
        return str(response.response), response.metadata["gradguard"]

    def build(self, policy: RoutingPolicy, **options: Any) -> Any:
        targets = options.pop("targets", None)
        return ConfidenceGuardQueryEngine(_Scripted("x", None), policy, escalations=targets, **options)

    def model(self, scorer: GradScorer, **fields: Any) -> Any:
        max_tokens = fields.pop("max_tokens", 8)
        return GradguardLLM(scorer=scorer, max_new_tokens=max_tokens, **fields)

    def call(self, model: Any, **options: Any) -> str:
        return str(model.complete("Name a colour.", **options).text)

    def stream(self, model: Any, **options: Any) -> Any:
        return (chunk.delta for chunk in model.stream_complete("Name a colour.", **options))


ADAPTERS = [LangChainAdapter(), LlamaIndexAdapter()]
adapters = pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
TIERS = RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.5, Action.REJECT), Tier(0.0, Action.ABSTAIN)])


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, model_name="tiny-qwen2")


# --- routing: the adapters hand the router the score and report its outcome unchanged ----------------------


@adapters
@pytest.mark.parametrize(
    ("confidence", "action", "text"), [(0.9, "accept", "Ada."), (0.6, "reject", ABSTAIN), (0.2, "abstain", ABSTAIN)]
)
def test_the_policy_decides_and_the_metadata_carries_the_real_confidence(
    adapter: Any, confidence: float, action: str, text: str
) -> None:
    answer, meta = adapter.route(result(confidence), TIERS)
    json.dumps(meta)
    assert answer == text and meta["action"] == action
    assert meta["confidence"] == pytest.approx(confidence) and meta["signal"] == "confidence"
    assert meta["trail"][-1]["confidence"] == pytest.approx(confidence)


@adapters
@pytest.mark.parametrize(
    "score",
    [None, result(0.99, empty=True), result(None), result(math.nan)],
    ids=["unscored", "empty", "uncalibrated", "nan"],
)
def test_no_usable_score_fails_closed(adapter: Any, score: ScoreResult | None) -> None:
    answer, meta = adapter.route(score, TIERS)
    assert answer == ABSTAIN and meta["action"] == "abstain" and meta["confidence"] is None


@adapters
def test_a_raw_signal_reports_its_value_never_a_fake_confidence(adapter: Any) -> None:
    """D2: an uncalibrated model guarded on a raw HybridGrad line has no confidence to report."""
    answer, meta = adapter.route(result(None, hybridgrad=0.01), TIERS, signal="hybridgrad", max_uncertainty=0.02)
    assert answer == "Ada." and meta["action"] == "accept"
    assert meta["confidence"] is None and meta["signal_value"] == pytest.approx(0.01)
    assert meta["signal"] == "hybridgrad <= 0.02"
    answer, meta = adapter.route(result(0.7, hybridgrad=0.5), TIERS, signal="hybridgrad", max_uncertainty=0.02)
    assert answer == ABSTAIN and meta["confidence"] == pytest.approx(0.7) and meta["signal_value"] == pytest.approx(0.5)


@adapters
def test_a_rejection_raises_the_one_core_error(adapter: Any) -> None:
    with pytest.raises(AnswerRejectedError) as info:
        adapter.route(result(0.6), TIERS, raise_on_reject=True)
    assert info.value.outcome.action is Action.REJECT


@adapters
def test_escalation_to_a_callable_target_is_routed_again(adapter: Any) -> None:
    policy = RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "big")])
    seen: list[str] = []

    def big(question: str, answer: str, res: ScoreResult | None) -> EscalationResult:
        seen.append(question)
        return EscalationResult("Ada Lovelace.", result(0.95, text="Ada Lovelace."))

    answer, meta = adapter.route(result(0.3), policy, targets={"big": big})
    assert seen == [QUESTION] and answer == "Ada Lovelace." and meta["action"] == "accept"
    assert [s["outcome"] for s in meta["trail"]] == ["escalated", "accepted"]
    assert meta["confidence"] == pytest.approx(0.95)


@adapters
def test_a_missing_escalation_target_raises_at_construction(adapter: Any) -> None:
    policy = RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "human")])
    with pytest.raises(IntegrationError, match="'human'"):
        adapter.build(policy)


# --- the chat models: one options policy, one model pass, streams that stop --------------------------------


@adapters
def test_an_unknown_call_option_raises_naming_the_supported_ones(adapter: Any, scorer: GradScorer) -> None:
    model = adapter.model(scorer, max_tokens=4)
    with pytest.raises(UnknownOptionError, match=r"\['frequency_penaltyy'\].*max_new_tokens"):
        adapter.call(model, frequency_penaltyy=0.5)
    assert adapter.call(model, max_tokens=2, temperature=0) is not None


@adapters
def test_an_abandoned_stream_frees_the_model_at_once(adapter: Any, scorer: GradScorer) -> None:
    """D1: after the consumer leaves, generation (and scoring) stop within 2x the median decode step."""
    model = adapter.model(scorer, max_tokens=400)
    steps: list[float] = []
    stream = adapter.stream(model, stop=["\x00never"])
    last = time.perf_counter()
    for _ in range(6):
        next(stream)
        now = time.perf_counter()
        steps.append(now - last)
        last = now
    step = statistics.median(steps[1:])
    stream.close()
    left = time.perf_counter()
    while not scorer.lock.acquire(blocking=False):
        assert time.perf_counter() - left < 5.0, "the model lock was never released"
        time.sleep(step / 20)
    waited = time.perf_counter() - left
    scorer.lock.release()
    assert waited <= max(2 * step, 0.05), f"lock held {waited:.3f}s after the consumer left (decode step {step:.3f}s)"


@adapters
def test_stop_strings_end_the_answer_scored_in_one_pass(adapter: Any, scorer: GradScorer) -> None:
    model = adapter.model(scorer, max_tokens=12)
    full = adapter.call(model)
    if len(full) < 4:
        pytest.skip("the tiny model answered too briefly to cut")
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = adapter.call(model, stop=[stop])
    streamed = "".join(adapter.stream(model, stop=[stop]))
    assert stop not in cut and full.startswith(cut) and streamed == cut
