"""Helpers of the review web-app tests: realistic items, a signed-in client, the CSRF token of a page."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from gradguard.review.queue import ReviewStore

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
REVIEWERS = {ALICE: "alice", BOB: "bob"}

RAG_MESSAGES = [
    {"role": "system", "content": "You answer from the context only. If the context does not say, say so."},
    {
        "role": "user",
        "content": "Context:\n[1] The Eiffel Tower was completed in March 1889 for the World's Fair.\n"
        "[2] Its height is 330 metres including antennas.\n\nQuestion: When was the Eiffel Tower completed?",
    },
]
TOKENS = {
    "text": ["It", " was", " completed", " in", " March", " 1889", "."],
    "logprob": [-0.05, -0.3, -0.7, -0.02, -1.6, -2.9, None],
    "entropy": [0.4, 0.9, 1.2, 0.1, 2.2, 4.6, 0.3],
}


def score_metadata(confidence: float, *, tokens: dict[str, Any] | None = TOKENS) -> dict[str, Any]:
    """``metadata`` as a router stores it: the result's metadata (tokens included) under ``score``."""
    score: dict[str, Any] = {
        "schema_version": 2,
        "confidence": confidence,
        "uncertainty": {"hybridgrad": 0.41, "semgrad": 0.12, "mean_nll": 0.79, "mean_entropy": 1.39},
        "task": "rag",
        "calibration": {"task": "rag", "data": "rag_dev.jsonl", "n": 812, "judge": "exact", "cv_auroc": 0.834},
        "in_domain": True,
        "domain_percentile": 63.5,
        "model": "Qwen/Qwen3-0.6B",
        "profile": "family:qwen3",
    }
    if tokens is not None:
        score["tokens"] = tokens
    return {"score": score}


ROUTE = [
    {
        "step": 0,
        "action": "accept",
        "target": None,
        "confidence": 0.42,
        "outcome": "rejected",
        "error": None,
        "signal_value": 0.42,
        "tier_index": 0,
        "reason": "confidence 0.42 < 0.80",
    },
    {
        "step": 1,
        "action": "escalate",
        "target": "human_review",
        "confidence": 0.42,
        "outcome": "pending_review",
        "error": None,
        "signal_value": 0.42,
        "tier_index": 1,
        "reason": "last tier: human review",
    },
]


def add_item(
    store: ReviewStore,
    question: str = "When was the Eiffel Tower completed?",
    answer: str = "It was completed in March 1889.",
    *,
    confidence: float | None = 0.42,
    task: str | None = "rag",
    reason: str | None = "low_confidence",
    tokens: dict[str, Any] | None = TOKENS,
) -> str:
    return store.enqueue(
        question,
        answer,
        confidence=confidence,
        metadata=score_metadata(confidence or 0.0, tokens=tokens),
        messages=RAG_MESSAGES,
        task=task,
        model="Qwen/Qwen3-0.6B",
        profile="family:qwen3",
        reason=reason,
        route=ROUTE,
    )


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def login(client: TestClient, token: str = ALICE) -> None:
    """Sign ``client`` in through the form (the session cookie stays in its jar)."""
    form = client.get("/login")
    assert form.status_code == 200
    r = client.post("/login", data={"token": token, "csrf": csrf_of(form.text)}, follow_redirects=False)
    assert r.status_code == 303, r.text


def _tokens(pieces: list[tuple[str, float, float]]) -> dict[str, Any]:
    return {
        "text": [p[0] for p in pieces],
        "logprob": [-p[1] for p in pieces],
        "entropy": [p[2] for p in pieces],
        "span": [0, len(pieces)],
    }


SHOWCASE_ANSWER_PIECES = [
    ("Either", 0.21, 0.9),
    (" party", 0.05, 0.3),
    (" may", 0.12, 0.6),
    (" terminate", 0.08, 0.4),
    (" the", 0.01, 0.1),
    (" support", 0.35, 1.1),
    (" contract", 0.02, 0.2),
    (" with", 0.15, 0.8),
    (" 60", 2.65, 3.4),
    (" days", 0.04, 0.3),
    ("'", 0.6, 1.3),
    (" written", 0.74, 1.6),
    (" notice", 0.03, 0.2),
    (".", 0.02, 0.4),
    (" Termination", 0.9, 2.1),
    (" for", 0.3, 0.9),
    (" cause", 0.11, 0.5),
    (" takes", 1.2, 2.0),
    (" effect", 0.05, 0.3),
    (" after", 0.45, 1.4),
    (" 30", 1.7, 2.6),
    (" days", 0.02, 0.2),
    (" if", 0.4, 1.0),
    (" the", 0.06, 0.3),
    (" breach", 0.5, 1.5),
    (" is", 0.1, 0.5),
    (" not", 0.03, 0.2),
    (" remedied", 1.1, 2.2),
    (",", 0.8, 1.7),
    (" and", 0.6, 1.4),
    (" fees", 2.2, 3.1),
    (" are", 0.3, 0.9),
    (" refunded", 4.3, 4.4),
    (" pro", 0.9, 1.9),
    (" rata", 0.01, 0.1),
    (".", 0.05, 0.3),
]
SHOWCASE_ANSWER = "".join(p[0] for p in SHOWCASE_ANSWER_PIECES)
SHOWCASE_QUESTION = "What notice period applies when terminating the Acme support contract?"
SHOWCASE_MESSAGES = [
    {
        "role": "system",
        "content": "You are the contracts assistant. Answer only from the retrieved passages and cite none you "
        "did not use. If the passages do not answer the question, say that you do not know.",
    },
    {
        "role": "user",
        "content": "Retrieved passages:\n"
        "[1] acme_support_2025.pdf §12.1 — Either party may terminate this Agreement for convenience by giving "
        "the other party sixty (60) days' prior written notice.\n"
        "[2] acme_support_2025.pdf §12.2 — Either party may terminate for material breach if the breach remains "
        "uncured thirty (30) days after written notice of it.\n"
        "[3] acme_support_2025.pdf §14.3 — Prepaid fees are non-refundable except as stated in §12.4.\n\n"
        f"Question: {SHOWCASE_QUESTION}",
    },
]
SHOWCASE_ROUTE = [
    {
        "step": 0,
        "action": "accept",
        "target": None,
        "confidence": 0.38,
        "outcome": "rejected",
        "error": None,
        "signal_value": 0.38,
        "tier_index": 0,
        "reason": "confidence 0.38 < 0.85 (risk-controlled, alpha 0.1)",
    },
    {
        "step": 1,
        "action": "escalate",
        "target": "retrieve_more",
        "confidence": 0.38,
        "outcome": "escalated",
        "error": None,
        "signal_value": 0.38,
        "tier_index": 1,
        "reason": "confidence 0.38 < 0.70",
    },
    {
        "step": 2,
        "action": "escalate",
        "target": "human_review",
        "confidence": 0.41,
        "outcome": "pending_review",
        "error": None,
        "signal_value": 0.41,
        "tier_index": 2,
        "reason": "last tier: human review",
    },
]


def add_showcase_item(store: ReviewStore) -> str:
    """A realistic RAG item: system prompt, retrieved context, an answer with one unsupported claim, a trail."""
    metadata = score_metadata(0.41, tokens=_tokens(SHOWCASE_ANSWER_PIECES))
    metadata["score"].update(
        uncertainty={
            "hybridgrad": 0.532,
            "semgrad": 0.187,
            "paragrad": 0.344,
            "exgrad": 0.091,
            "g_nll": 4.3,
            "mean_nll": 0.664,
            "mean_entropy": 1.283,
        },
        calibration={
            "task": "rag",
            "data": "contracts_dev.jsonl",
            "n": 1240,
            "judge": "llm:qwen3-8b",
            "cv_auroc": 0.861,
        },
        domain_percentile=78.4,
    )
    metadata["request_id"] = "req_7f3a9c"
    return store.enqueue(
        SHOWCASE_QUESTION,
        SHOWCASE_ANSWER,
        confidence=0.41,
        metadata=metadata,
        messages=SHOWCASE_MESSAGES,
        task="rag",
        model="Qwen/Qwen3-0.6B",
        profile="family:qwen3",
        reason="low_confidence",
        route=SHOWCASE_ROUTE,
    )
