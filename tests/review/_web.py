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
