"""ConfidenceGuardQueryEngine: every routing outcome, escalation targets, fail-closed scoring, tools, async."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, SummaryIndex, VectorStoreIndex  # noqa: E402
from llama_index.core.base.base_query_engine import BaseQueryEngine  # noqa: E402
from llama_index.core.base.response.schema import Response  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402

from gradguard import GradScorer, ScoreResult  # noqa: E402
from gradguard.integrations.llama_index import (  # noqa: E402
    ConfidenceGuardQueryEngine,
    GradguardLlamaIndexError,
    GradguardLLM,
    Signal,
    capture_scores,
)
from gradguard.integrations.llama_index.utils import CapturedScore, publish_score  # noqa: E402
from gradguard.review import SQLiteReviewQueue, human_review_target  # noqa: E402
from gradguard.routing import Action, RoutingPolicy, Tier  # noqa: E402

QUESTION = "Who wrote the report?"
DOCS = [
    "The 2023 audit report was written by Ada Lovelace.",
    "The cafeteria opens at 8 am on weekdays.",
    "Ada Lovelace also wrote the 2024 budget summary.",
]


class ScriptedEngine(BaseQueryEngine):
    """A query engine whose LLM 'answers' ``answer`` and publishes ``result`` as GradguardLLM would."""

    def __init__(
        self,
        answer: str,
        result: ScoreResult | None = None,
        *,
        nodes: int = 1,
        scored_text: str | None = None,
        fail: bool = False,
    ) -> None:
        super().__init__(callback_manager=None)
        self.answer, self.result, self.nodes, self.fail = answer, result, nodes, fail
        self.scored_text = answer if scored_text is None else scored_text
        self.calls: list[str] = []

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}

    def _query(self, query_bundle: QueryBundle) -> Response:
        self.calls.append(query_bundle.query_str)
        if self.fail:
            raise RuntimeError("retriever down")
        if self.result is not None:
            publish_score(
                CapturedScore(text=self.scored_text, result=self.result, metadata=self.result.metadata(), source="llm")
            )
        nodes = [NodeWithScore(node=TextNode(text=DOCS[i % len(DOCS)]), score=1.0) for i in range(self.nodes)]
        return Response(self.answer, source_nodes=nodes, metadata={"engine": "scripted"})

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        return self._query(query_bundle)


def _g(response: Any) -> dict[str, Any]:
    meta = response.metadata["gradguard"]
    json.dumps(meta)  # the metadata is JSON-able
    return meta


# ---------------------------------------------------------------------------- the four actions


def test_escalation_to_a_wider_engine_replaces_answer_and_sources(result_factory: Any) -> None:
    narrow = ScriptedEngine("Not sure.", result_factory(0.4), nodes=1)
    wide = ScriptedEngine("Ada Lovelace wrote it.", result_factory(0.95, hybridgrad=0.002), nodes=3)
    policy = RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "wide")])
    response = ConfidenceGuardQueryEngine(narrow, policy, escalations={"wide": wide}).query(QUESTION)
    meta = _g(response)
    assert wide.calls == [QUESTION]
    assert response.response == "Ada Lovelace wrote it." and len(response.source_nodes) == 3
    assert meta["action"] == "accept" and meta["target"] == "wide"
    assert [s["outcome"] for s in meta["trail"]] == ["escalated", "accepted"]
    assert meta["trail"][0]["confidence"] == pytest.approx(0.4)
    assert meta["score"]["uncertainty"]["hybridgrad"] == pytest.approx(0.002)  # the escalated answer's score


def test_escalation_to_human_review_queues_the_original_answer(tmp_path: Any, result_factory: Any) -> None:
    queue = SQLiteReviewQueue(tmp_path / "review.sqlite3")
    inner = ScriptedEngine("Maybe Ada.", result_factory(0.3))
    policy = RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "human")])
    guard = ConfidenceGuardQueryEngine(inner, policy, escalations={"human": human_review_target(queue)})
    response = guard.query(QUESTION)
    meta = _g(response)
    assert meta["action"] == "abstain" and meta["review_id"]
    assert response.response == policy.abstain_text
    item = queue.get(meta["review_id"])
    assert (item.question, item.answer, item.status) == (QUESTION, "Maybe Ada.", "pending")
    assert item.confidence == pytest.approx(0.3)  # the original score, not a signal-derived value
    assert item.metadata["score"]["uncertainty"]["hybridgrad"] == pytest.approx(0.01)


def test_escalation_to_a_larger_llm_reanswers_over_the_same_nodes(
    result_factory: Any, li_other_scorer: GradScorer
) -> None:
    inner = ScriptedEngine("Not sure.", result_factory(0.2), nodes=2)
    big = GradguardLLM(scorer=li_other_scorer, max_new_tokens=5)
    policy = RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "big")])

    def trust_the_big_model(result: ScoreResult) -> float | None:
        return 1.0 if result.model == li_other_scorer.model_name else result.confidence

    guard = ConfidenceGuardQueryEngine(inner, policy, escalations={"big": big}, signal=trust_the_big_model)
    with capture_scores() as captured:
        response = guard.query(QUESTION)
    meta = _g(response)
    assert meta["action"] == "accept" and meta["target"] == "big" and meta["score_source"] == "llm"
    assert meta["score"]["model"] == li_other_scorer.model_name
    assert [n.node.get_content() for n in response.source_nodes] == DOCS[:2]
    # The big model answered over the retrieved context, not the bare question ...
    messages = _qa_messages(QUESTION, DOCS[:2])
    big_result = captured[-1].result
    assert big_result.n_prompt_tokens == len(li_other_scorer.prompt_ids(messages))
    # ... and the reported score is the teacher-forced score of that answer to that prompt.
    expected = li_other_scorer.score(messages, list(big_result.token_ids))
    assert meta["score"]["uncertainty"]["hybridgrad"] == pytest.approx(expected.hybridgrad, rel=1e-4)


# ---------------------------------------------------------------------------- fail closed


def test_a_score_for_a_different_text_is_not_used(result_factory: Any) -> None:
    inner = ScriptedEngine("Ada.", result_factory(0.99), scored_text="Something else entirely.")
    meta = _g(ConfidenceGuardQueryEngine(inner, RoutingPolicy.threshold(0.5)).query(QUESTION))
    assert meta["action"] == "abstain" and meta["score_source"] == "missing"


# ---------------------------------------------------------------------------- signals on uncalibrated models


# ---------------------------------------------------------------------------- real LLM, real indices


def _qa_messages(question: str, texts: list[str]) -> list[dict[str, str]]:
    chat = CHAT_TEXT_QA_PROMPT.format_messages(context_str="\n\n".join(texts), query_str=question)
    return [{"role": m.role.value, "content": m.content} for m in chat]


def test_score_comes_from_the_gradguard_llm_that_answered(tiny_llm: GradguardLLM, li_scorer: GradScorer) -> None:
    engine = SummaryIndex([Document(text=DOCS[0])]).as_query_engine(llm=tiny_llm)
    with capture_scores() as captured:
        response = ConfidenceGuardQueryEngine(engine, RoutingPolicy.threshold(0.5)).query(QUESTION)
    meta = _g(response)
    assert meta["score_source"] == "llm" and meta["score"]["scored"] is True
    assert meta["action"] == "abstain"  # uncalibrated model + confidence signal: fail closed
    # It is the score of the answer to the QA prompt the engine sent.
    [llm_score] = captured
    messages = _qa_messages(QUESTION, [DOCS[0]])
    assert llm_score.result.n_prompt_tokens == len(li_scorer.prompt_ids(messages))
    expected = li_scorer.score(messages, list(llm_score.result.token_ids))
    assert meta["score"]["uncertainty"]["hybridgrad"] == pytest.approx(expected.hybridgrad, rel=1e-4)


def test_rescoring_when_the_llm_attaches_no_score(li_scorer: GradScorer) -> None:
    engine = SummaryIndex([Document(text=DOCS[0])]).as_query_engine(llm=MockLLM(max_tokens=3))
    expected = li_scorer.score(_qa_messages(QUESTION, [DOCS[0]]), "text text text")
    policy = RoutingPolicy.threshold(0.5)
    accept = ConfidenceGuardQueryEngine(
        engine, policy, scorer=li_scorer, signal="hybridgrad", max_uncertainty=expected.hybridgrad * 1.01
    ).query(QUESTION)
    meta = _g(accept)
    assert meta["score_source"] == "rescored" and meta["action"] == "accept"
    assert meta["score"]["uncertainty"]["hybridgrad"] == pytest.approx(expected.hybridgrad, rel=1e-5)
    abstain = ConfidenceGuardQueryEngine(
        engine, policy, scorer=li_scorer, signal="hybridgrad", max_uncertainty=expected.hybridgrad * 0.99
    ).query(QUESTION)
    assert _g(abstain)["action"] == "abstain"


def test_rescoring_failure_is_unconfident(li_scorer: GradScorer) -> None:
    engine = SummaryIndex([Document(text="x" * 1500)]).as_query_engine(llm=MockLLM(max_tokens=3))
    guard = ConfidenceGuardQueryEngine(
        engine, RoutingPolicy.threshold(0.5), scorer=li_scorer, signal="hybridgrad", max_uncertainty=1e9
    )
    meta = _g(guard.query(QUESTION))
    assert meta["action"] == "abstain" and meta["score_source"] == "missing"
    assert "ContextLengthError" in meta["score"]["error"]


def test_wider_retrieval_escalation_on_a_vector_index(tiny_llm: GradguardLLM) -> None:
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=MockEmbedding(embed_dim=8))
    narrow = index.as_query_engine(llm=tiny_llm, similarity_top_k=1)
    wide = index.as_query_engine(llm=tiny_llm, similarity_top_k=3)
    narrow_prompt = _prompt_tokens(narrow)
    assert _prompt_tokens(wide) > narrow_prompt

    # The tiny model is uncalibrated: decide on a signal the test controls (more context => confident).
    def more_context(result: ScoreResult) -> float:
        return 1.0 if result.n_prompt_tokens > narrow_prompt else 0.0

    policy = RoutingPolicy([Tier(0.5, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "wide")])
    guard = ConfidenceGuardQueryEngine(narrow, policy, escalations={"wide": wide}, signal=more_context)
    response = guard.query(QUESTION)
    meta = _g(response)
    assert meta["action"] == "accept" and meta["target"] == "wide" and meta["score_source"] == "llm"
    assert len(response.source_nodes) == 3
    assert [s["outcome"] for s in meta["trail"]] == ["escalated", "accepted"]
    assert meta["trail"][0]["signal_value"] == 0.0 and meta["trail"][0]["confidence"] is None  # uncalibrated
    # Without the wide engine the same question abstains.
    alone = ConfidenceGuardQueryEngine(narrow, RoutingPolicy.threshold(0.5), signal=more_context).query(QUESTION)
    assert _g(alone)["action"] == "abstain" and alone.source_nodes == []


def _prompt_tokens(engine: BaseQueryEngine) -> int:
    with capture_scores() as captured:
        engine.query(QUESTION)
    return captured[-1].result.n_prompt_tokens


def test_streaming_inner_engine_is_drained_and_scored(tiny_llm: GradguardLLM) -> None:
    engine = SummaryIndex([Document(text=DOCS[0])]).as_query_engine(llm=tiny_llm, streaming=True)
    guard = ConfidenceGuardQueryEngine(engine, RoutingPolicy.threshold(0.5), signal="hybridgrad", max_uncertainty=1e9)
    response = guard.query(QUESTION)
    assert isinstance(response, Response)
    meta = _g(response)
    assert meta["score_source"] == "llm" and meta["action"] == "accept" and response.response


# ---------------------------------------------------------------------------- async, concurrency, tools


def test_aquery_routes_like_query(result_factory: Any, tiny_llm: GradguardLLM) -> None:
    narrow = ScriptedEngine("Not sure.", result_factory(0.4))
    wide = ScriptedEngine("Ada Lovelace.", result_factory(0.9), nodes=3)
    policy = RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "wide")])
    guard = ConfidenceGuardQueryEngine(narrow, policy, escalations={"wide": wide})
    real = ConfidenceGuardQueryEngine(
        SummaryIndex([Document(text=DOCS[0])]).as_query_engine(llm=tiny_llm),
        RoutingPolicy.threshold(0.5),
        signal="hybridgrad",
        max_uncertainty=1e9,
    )

    async def run() -> tuple[Any, Any]:
        return await guard.aquery(QUESTION), await real.aquery(QUESTION)

    scripted, live = asyncio.run(run())
    assert scripted.response == "Ada Lovelace." and _g(scripted)["target"] == "wide"
    assert _g(live)["score_source"] == "llm" and _g(live)["action"] == "accept"


def test_concurrent_queries_are_serialised_and_keep_their_own_scores(
    tiny_llm: GradguardLLM, li_scorer: GradScorer
) -> None:
    engine = SummaryIndex([Document(text=DOCS[0])]).as_query_engine(llm=tiny_llm)
    guard = ConfidenceGuardQueryEngine(engine, RoutingPolicy.threshold(0.5), signal="hybridgrad", max_uncertainty=1e9)
    questions = ["Who wrote it?", "When?", "Which report?", "Why?"]
    expected = {q: _g(guard.query(q))["score"]["uncertainty"]["hybridgrad"] for q in questions}
    assert len(set(expected.values())) == len(questions)

    model = li_scorer.model
    original = model.generate
    state = {"active": 0, "max": 0}
    lock = threading.Lock()

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        with lock:
            state["active"] += 1
            state["max"] = max(state["max"], state["active"])
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                state["active"] -= 1

    got: dict[str, float] = {}
    model.generate = counting_generate
    try:
        threads = [
            threading.Thread(
                target=lambda q=q: got.__setitem__(q, _g(guard.query(q))["score"]["uncertainty"]["hybridgrad"])
            )
            for q in questions
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        del model.generate
    assert state["max"] == 1
    assert got.keys() == expected.keys()
    for q in questions:
        assert got[q] == pytest.approx(expected[q], rel=1e-5)


def test_tool_output_carries_the_verdict(result_factory: Any) -> None:
    good = ConfidenceGuardQueryEngine(
        ScriptedEngine("Ada Lovelace.", result_factory(0.91)), RoutingPolicy.threshold(0.8)
    )
    bad = ConfidenceGuardQueryEngine(ScriptedEngine("A guess.", result_factory(0.2)), RoutingPolicy.threshold(0.8))
    tool = good.as_tool(name="reports", description="Company reports.")
    assert tool.metadata.name == "reports"
    out = tool.call(QUESTION)
    assert out.content.startswith("Ada Lovelace.")
    assert "action=accept" in out.content and "confidence=0.91" in out.content
    assert out.raw_output.metadata["gradguard"]["action"] == "accept"
    bad_out = asyncio.run(bad.as_tool().acall(input=QUESTION))
    assert bad_out.content.startswith("I don't know.") and "action=abstain" in bad_out.content
    assert "A guess." not in bad_out.content


# ---------------------------------------------------------------------------- configuration errors


def test_bad_configuration_names_the_value_and_the_fix(result_factory: Any) -> None:
    inner = ScriptedEngine("x", result_factory(0.9))
    with pytest.raises(GradguardLlamaIndexError, match="not a LlamaIndex query engine"):
        ConfidenceGuardQueryEngine("engine")  # type: ignore[arg-type]
    with pytest.raises(GradguardLlamaIndexError, match="RoutingPolicy"):
        ConfidenceGuardQueryEngine(inner, 0.8)  # type: ignore[arg-type]
    with pytest.raises(GradguardLlamaIndexError, match="needs a finite max_uncertainty"):
        ConfidenceGuardQueryEngine(inner, signal="hybridgrad")
    with pytest.raises(GradguardLlamaIndexError, match="max_uncertainty=0.1 goes with"):
        ConfidenceGuardQueryEngine(inner, signal=Signal.confidence(), max_uncertainty=0.1)
    with pytest.raises(GradguardLlamaIndexError, match=r"escalations\['wide'\]=42"):
        ConfidenceGuardQueryEngine(inner, escalations={"wide": 42})  # type: ignore[dict-item]


def test_llm_escalation_without_retrieved_nodes_asks_the_bare_question(
    result_factory: Any, li_other_scorer: GradScorer
) -> None:
    inner = ScriptedEngine("Not sure.", result_factory(0.2), nodes=0)
    big = GradguardLLM(scorer=li_other_scorer, max_new_tokens=4)
    policy = RoutingPolicy([Tier(0.8, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "big")])

    def big_is_confident(result: ScoreResult) -> float:
        return 1.0 if result.model == li_other_scorer.model_name else 0.0

    guard = ConfidenceGuardQueryEngine(inner, policy, escalations={"big": big}, signal=big_is_confident)
    with capture_scores() as captured:
        response = guard.query(QUESTION)
    meta = _g(response)
    assert meta["target"] == "big" and meta["score_source"] == "llm" and meta["action"] == "accept"
    assert response.response == captured[-1].text
    assert captured[-1].result.n_prompt_tokens == len(
        li_other_scorer.prompt_ids([{"role": "user", "content": QUESTION}])
    )


def test_prompts_of_the_wrapped_engine_are_reachable(li_scorer: GradScorer) -> None:
    engine = SummaryIndex([Document(text=DOCS[0])]).as_query_engine(llm=MockLLM())
    guard = ConfidenceGuardQueryEngine(engine, scorer=li_scorer)
    prompts = guard.get_prompts()
    assert any(k.startswith("query_engine:") and k.endswith("text_qa_template") for k in prompts)
