"""GradScorer.ascore / agenerate_and_score: the sync results, off the event loop; cancelling stops generation."""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from gradguard import GradScorer
from gradguard.errors import GenerationCancelled
from gradguard.testing import make_tiny_model

MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]
OTHER = [{"role": "user", "content": "What is 2 + 2?"}]
WAIT = 60.0  # seconds: only against hangs
KEYS = ("hybridgrad", "semgrad", "paragrad", "exgrad", "mean_nll")


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, model_name="tiny-qwen2")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no calibration.*")
        yield


def lock_is_free(scorer: GradScorer) -> bool:
    box: list[bool] = []

    def probe() -> None:  # from another thread: the lock is reentrant
        got = scorer.lock.acquire(blocking=False)
        box.append(got)
        if got:
            scorer.lock.release()

    t = threading.Thread(target=probe)
    t.start()
    t.join(WAIT)
    return box[0]


@pytest.mark.asyncio
async def test_ascore_equals_score(scorer: GradScorer) -> None:
    answer = "A cat sat on the mat."
    result = await scorer.ascore(MESSAGES, answer, top_logprobs=2)
    expected = scorer.score(MESSAGES, answer, top_logprobs=2)
    assert result.token_ids == expected.token_ids
    for key in KEYS:
        assert getattr(result, key) == pytest.approx(getattr(expected, key), rel=1e-6), key
    assert result.top_logprobs == expected.top_logprobs


@pytest.mark.asyncio
async def test_agenerate_and_score_equals_generate_and_score(scorer: GradScorer) -> None:
    a, b = await asyncio.gather(
        scorer.agenerate_and_score(MESSAGES, max_new_tokens=12),
        scorer.agenerate_and_score(OTHER, max_new_tokens=7, prefill="Four"),
    )
    for got, expected in (
        (a, scorer.generate_and_score(MESSAGES, max_new_tokens=12)),
        (b, scorer.generate_and_score(OTHER, max_new_tokens=7, prefill="Four")),
    ):
        assert got.token_ids == expected.token_ids and got.finish_reason == expected.finish_reason
        for key in KEYS:
            assert getattr(got, key) == pytest.approx(getattr(expected, key), rel=1e-6), key
    assert lock_is_free(scorer)


class FirstToken:
    """A streamer that counts generated tokens and signals the first one."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self.calls = 0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:  # the first put is the prompt
            self.started.set()

    def end(self) -> None:
        self.ended.set()


@pytest.mark.asyncio
async def test_cancelling_the_task_stops_generation(scorer: GradScorer) -> None:
    budget = scorer.context_window - len(scorer.prompt_ids(MESSAGES))
    streamer = FirstToken()
    cancel = threading.Event()
    task = asyncio.create_task(
        scorer.agenerate_and_score(
            MESSAGES,
            max_new_tokens=budget,
            streamer=streamer,
            cancel=cancel,
            suppress_tokens=sorted(scorer._eot_ids),  # no early end of turn: only the cancel can stop it early
        )
    )
    assert await asyncio.to_thread(streamer.started.wait, WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert cancel.is_set() and streamer.ended.is_set()
    assert streamer.calls - 1 < budget  # it stopped well before max_new_tokens ran out
    assert lock_is_free(scorer)  # the worker thread let go of the lock before CancelledError was raised
    again = await scorer.agenerate_and_score(MESSAGES, max_new_tokens=3)  # the scorer is usable again
    assert again.n_response_tokens == 3


@pytest.mark.asyncio
async def test_a_set_cancel_event_raises_generation_cancelled(scorer: GradScorer) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelled):
        await scorer.agenerate_and_score(MESSAGES, max_new_tokens=3, cancel=cancel)
