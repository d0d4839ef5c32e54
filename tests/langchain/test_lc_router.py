"""ConfidenceRouter: every routing outcome, escalation adapters, callbacks/tags, and a killed review writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402
from lc_support import scored_message, tiny_scorer  # noqa: E402

from gradguard.integrations.langchain import (  # noqa: E402
    ROUTE_EVENT,
    ChatGradguard,
    ConfidenceRouter,
    GuardConfigError,
    RouterInputError,
    chat_model_target,
    human_review_target,
    runnable_target,
)
from gradguard.review import SQLiteReviewQueue  # noqa: E402
from gradguard.routing import Action, RoutingPolicy, Tier  # noqa: E402

TIERS = RoutingPolicy(
    [
        Tier(0.8, Action.ACCEPT),
        Tier(0.6, Action.ESCALATE, "retrieval"),
        Tier(0.4, Action.REJECT),
        Tier(0.0, Action.ABSTAIN),
    ]
)


def answering(confidence: float | None, text: str = "first answer", **kwargs: Any) -> RunnableLambda:
    return RunnableLambda(lambda _: scored_message(text, confidence=confidence, **kwargs))


class Recorder(BaseCallbackHandler):
    """Collects custom events and the tags of every chain / chat-model run."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.tags: list[list[str]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self.tags.append(list(kwargs.get("tags") or []))

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.tags.append(list(kwargs.get("tags") or []))


def route(
    router: ConfidenceRouter, question: Any = "What is the capital of France?", **config: Any
) -> tuple[AIMessage, dict]:
    out = router.invoke(question, config=config or None)
    meta = out.response_metadata["gradguard_route"]
    json.dumps(out.response_metadata)  # JSON-able, NaN-free
    return out, meta


def retrieval_target(confidence: float | None = 0.95) -> RunnableLambda:
    return RunnableLambda(lambda q: scored_message(f"retrieved: {q}", confidence=confidence))


def test_escalate_to_retrieval_runnable_accepts_the_rescored_answer() -> None:
    recorder = Recorder()
    router = ConfidenceRouter(answering(0.7), TIERS, targets={"retrieval": retrieval_target(0.95)})
    out, meta = route(router, "Where is the Louvre?", callbacks=[recorder])
    assert out.content == "retrieved: Where is the Louvre?" and meta["action"] == "accept"
    assert [(s["action"], s["outcome"]) for s in meta["trail"]] == [("escalate", "escalated"), ("accept", "accepted")]
    assert [s["confidence"] for s in meta["trail"]] == [0.7, 0.95]
    assert out.response_metadata["gradguard"]["confidence"] == 0.95  # the score of the answer returned
    # The decision and trail reach the run's callbacks, and the escalation run is tagged.
    assert [name for name, _ in recorder.events] == [ROUTE_EVENT]
    assert recorder.events[0][1] == meta
    assert any("gradguard:target:retrieval" in tags and "gradguard:escalation" in tags for tags in recorder.tags)
    assert any("gradguard:answer" in tags for tags in recorder.tags)


def test_escalate_to_human_review(tmp_path: Path) -> None:
    with SQLiteReviewQueue(tmp_path / "review.sqlite3") as queue:
        policy = RoutingPolicy.threshold(0.8, Action.ESCALATE, "human")
        router = ConfidenceRouter(answering(0.3, "maybe 42"), policy, targets={"human": human_review_target(queue)})
        out, meta = route(router, {"question": "What is the answer?"})
        assert meta["action"] == "abstain" and meta["review_id"] and out.content == "I don't know."
        assert [s["outcome"] for s in meta["trail"]] == ["pending_review"]
        item = queue.get(meta["review_id"])
        assert item.pending and item.question == "What is the answer?" and item.answer == "maybe 42"
        assert item.confidence == 0.3 and item.metadata["score"]["confidence"] == 0.3


def test_escalate_to_a_larger_chat_model() -> None:
    small = ChatGradguard(scorer=tiny_scorer("qwen2", 0), max_tokens=6)
    larger = ChatGradguard(scorer=tiny_scorer("llama", 0), max_tokens=6)
    larger_answer = larger.invoke("Name a prime.")
    policy = RoutingPolicy([Tier(0.5, Action.ACCEPT), Tier(0.0, Action.ESCALATE, "larger")])
    router = ConfidenceRouter(
        small,
        policy,
        targets={"larger": chat_model_target(larger, name="larger")},
        confidence_fn=lambda r: 1.0 if r.model == "tiny-llama-0" else 0.1,
    )
    out, meta = route(router, "Name a prime.")
    assert meta["action"] == "accept" and out.content == larger_answer.content
    assert out.response_metadata["gradguard"]["model"] == "tiny-llama-0"
    assert [s["outcome"] for s in meta["trail"]] == ["escalated", "accepted"]


def test_runnable_target_with_scorer_scores_a_foreign_chat_model() -> None:
    """A chain around a non-gradguard chat model is scored by a handler over the given scorer."""
    from langchain_core.language_models import GenericFakeChatModel

    foreign = GenericFakeChatModel(messages=iter([AIMessage("forty-two")]))
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | foreign
    target = runnable_target(chain, name="foreign", input_fn=lambda q, a, r: {"question": q}, scorer=tiny_scorer())
    escalated = target("What is six times seven?", "old", None)
    direct = tiny_scorer().score([{"role": "user", "content": "What is six times seven?"}], "forty-two")
    assert escalated.answer == "forty-two"
    assert escalated.result.hybridgrad == pytest.approx(direct.hybridgrad, rel=1e-5)


def test_batch_and_ainvoke() -> None:
    router = ConfidenceRouter(
        RunnableLambda(lambda q: scored_message(q, confidence=0.9 if "easy" in q else 0.1)),
        TIERS,
        targets={"retrieval": retrieval_target()},
    )
    outs = router.batch(["easy one", "hard one", "easy two"], config={"max_concurrency": 4})
    assert [o.response_metadata["gradguard_route"]["action"] for o in outs] == ["accept", "abstain", "accept"]
    assert [o.content for o in outs] == ["easy one", "I don't know.", "easy two"]


@pytest.mark.asyncio
async def test_ainvoke() -> None:
    router = ConfidenceRouter(answering(0.7), TIERS, targets={"retrieval": retrieval_target(0.9)})
    out = await router.ainvoke("async question")
    assert out.content == "retrieved: async question"


def test_bad_router_configuration() -> None:
    with pytest.raises(RouterInputError, match=r"escalates to \['retrieval'\]"):
        ConfidenceRouter(answering(0.9), TIERS)
    with pytest.raises(RouterInputError, match="targets\\['retrieval'\\] is a int"):
        ConfidenceRouter(answering(0.9), TIERS, targets={"retrieval": 3})
    with pytest.raises(GuardConfigError, match="needs max_uncertainty"):
        ConfidenceRouter(answering(0.9), TIERS, targets={"retrieval": retrieval_target()}, signal="semgrad")
    with pytest.raises(GuardConfigError, match="negative"):
        ConfidenceRouter(
            answering(0.9), TIERS, targets={"retrieval": retrieval_target()}, signal="semgrad", max_uncertainty=-1
        )
    with pytest.raises(RouterInputError, match="on_reject"):
        ConfidenceRouter(answering(0.9), TIERS, targets={"retrieval": retrieval_target()}, on_reject="ignore")
    router = ConfidenceRouter(answering(0.9), TIERS, targets={"retrieval": retrieval_target()})
    with pytest.raises(RouterInputError, match="no 'question' entry"):
        router.invoke({"query": "x"})


def test_review_queue_survives_a_killed_router_process(tmp_path: Path) -> None:
    db = tmp_path / "review.sqlite3"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from langchain_core.runnables import RunnableLambda
        from lc_support import scored_message
        from gradguard.review import SQLiteReviewQueue
        from gradguard.routing import Action, RoutingPolicy
        from gradguard.integrations.langchain import ConfidenceRouter, human_review_target
        queue = SQLiteReviewQueue({str(db)!r})
        router = ConfidenceRouter(
            RunnableLambda(lambda q: scored_message("held back", confidence=0.2)),
            RoutingPolicy.threshold(0.8, Action.ESCALATE, "human"),
            targets={{"human": human_review_target(queue)}},
        )
        for i in range(3):
            out = router.invoke(f"question {{i}}")
            print(out.response_metadata["gradguard_route"]["review_id"], flush=True)
        time.sleep(120)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        ids = [proc.stdout.readline().strip() for _ in range(3)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the writer dies without closing the queue
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and all(ids)
    with SQLiteReviewQueue(db) as queue:
        items = {item.id: item for item in queue.list(status="pending")}
        assert set(items) == set(ids)
        assert sorted(item.question for item in items.values()) == ["question 0", "question 1", "question 2"]
        resolved = queue.resolve(ids[0], "edited", answer="The reviewed answer.")
        assert resolved.resolved_answer == "The reviewed answer."


def test_a_custom_review_queue_plugs_in_through_the_protocol() -> None:
    class ListQueue:
        def __init__(self) -> None:
            self.items: list[tuple[str, str, float | None, dict]] = []

        def enqueue(self, question: str, answer: str, *, confidence: float | None = None, metadata: Any = None) -> str:
            self.items.append((question, answer, confidence, dict(metadata or {})))
            return f"item-{len(self.items)}"

        def get(self, item_id: str) -> Any:
            raise NotImplementedError

        def list(self, status: str | None = None, limit: int | None = None) -> list:
            return []

        def resolve(self, item_id: str, verdict: str, *, answer: str | None = None, note: str | None = None) -> Any:
            raise NotImplementedError

    queue = ListQueue()
    router = ConfidenceRouter(
        answering(0.1, "unsure"),
        RoutingPolicy.threshold(0.9, Action.ESCALATE, "human"),
        targets={"human": human_review_target(queue)},
    )
    out, meta = route(router, "Custom queue?")
    assert meta["review_id"] == "item-1" and queue.items[0][:3] == ("Custom queue?", "unsure", 0.1)
    # A queue written against the older protocol (no messages/task/... keywords) gets them in metadata["item"].
    assert queue.items[0][3]["item"]["reason"] == "low_confidence" and queue.items[0][3]["item"]["route"]
