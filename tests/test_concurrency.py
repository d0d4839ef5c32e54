"""One model shared between a scoring thread and other threads running it."""

from __future__ import annotations

import threading

import pytest
import torch

from gradguard import GradScorer
from gradguard.testing import make_tiny_model

Q = [{"role": "user", "content": "What is the capital of France?"}]
ANSWERS = ["Paris is the capital.", "Lyon", "Marseille, I think."]


def test_scoring_is_unaffected_by_another_thread_running_the_model() -> None:
    model, tok = make_tiny_model("qwen2")
    scorer = GradScorer(model, tok)
    expected = [scorer.score(Q, a).hybridgrad for a in ANSWERS]
    stop = threading.Event()
    errors: list[BaseException] = []
    other_grad_modes: list[bool] = []

    def run_model_elsewhere() -> None:  # e.g. a transformers pipeline generating outside gradguard's lock
        ids = torch.tensor([scorer.prompt_ids(Q)])
        try:
            while not stop.is_set():
                with torch.no_grad():
                    out = model(input_ids=ids)
                other_grad_modes.append(out.logits.requires_grad)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    other = threading.Thread(target=run_model_elsewhere)
    other.start()
    try:
        for _ in range(15):
            got = [scorer.score(Q, a).hybridgrad for a in ANSWERS]
            assert got == pytest.approx(expected, rel=1e-6)
    finally:
        stop.set()
        other.join()
    assert not errors
    assert other_grad_modes and not any(other_grad_modes)  # the other thread never saw our graph


def test_concurrent_scorers_on_one_model_are_serialised() -> None:
    model, tok = make_tiny_model("llama")
    scorer = GradScorer(model, tok)
    expected = {a: scorer.score(Q, a).semgrad for a in ANSWERS}
    results: dict[str, list[float]] = {a: [] for a in ANSWERS}

    def work(answer: str) -> None:
        for _ in range(5):
            results[answer].append(scorer.score(Q, answer).semgrad)

    threads = [threading.Thread(target=work, args=(a,)) for a in ANSWERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for answer, values in results.items():
        assert values == pytest.approx([expected[answer]] * 5, rel=1e-6)
