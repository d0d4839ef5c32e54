"""/metrics after requests, and micro-batching: concurrent requests share a batch, each scored as if alone."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from gradguard import GradScorer
from gradguard.serving.wire import RESULT_KEY, result_from_wire

from .conftest import QUESTION

NAMES = (
    "gradguard_requests_total", "gradguard_errors_total", "gradguard_generation_seconds", "gradguard_scoring_seconds",
    "gradguard_request_seconds", "gradguard_queue_depth", "gradguard_batch_size", "gradguard_confidence",
    "gradguard_out_of_domain_total", "gradguard_unscored_total",
)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_metrics_names_after_requests(client: TestClient) -> None:
    assert client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4}).status_code == 200
    assert client.post("/v1/chat/completions", json={"messages": QUESTION, "seed": 1}).status_code == 400
    assert client.post("/v1/score", json={"messages": QUESTION, "response": ""}).status_code == 200
    text = client.get("/metrics").text
    for name in NAMES:
        assert name in text, name
    assert 'gradguard_requests_total{endpoint="chat_completions",status="200"} 1.0' in text
    assert 'gradguard_errors_total{endpoint="chat_completions",type="invalid_request_error"} 1.0' in text
    assert metric(text, "gradguard_unscored_total") == 1.0
    assert metric(text, "gradguard_generation_seconds_count") == 1.0


def test_concurrent_requests_share_a_batch(make_client: Callable[..., TestClient], scorer: GradScorer) -> None:
    client = make_client(max_batch=4, max_wait_ms=200)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    questions = [[{"role": "user", "content": q}] for q in ("Hi", "What is 2+2?", "Name a colour.", "Why?")]
    out: dict[int, Any] = {}

    def ask(i: int) -> None:
        out[i] = client.post("/v1/chat/completions",
                             json={"messages": questions[i], "max_tokens": 6, "gradguard_result": True})

    with scorer.lock:  # the model is busy until all four are queued
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while engine.depth + engine.batcher.running < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    for t in threads:
        t.join(120)
    assert sorted(out) == [0, 1, 2, 3]
    text = client.get("/metrics").text
    assert metric(text, 'gradguard_batch_size_bucket{le="1.0"}') < metric(text, "gradguard_batch_size_count")
    for i, r in out.items():
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        alone = scorer.score(questions[i], list(result_from_wire(choice[RESULT_KEY]).token_ids))
        for key, value in alone.uncertainty().items():
            assert math.isclose(choice["gradguard"]["uncertainty"][key], value, rel_tol=1e-4, abs_tol=1e-9), key
