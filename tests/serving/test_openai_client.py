"""A real uvicorn: the official openai client works unchanged; a client that disconnects cancels its generation."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from gradguard import GradScorer

from .conftest import QUESTION, live_server

openai = pytest.importorskip("openai")


def test_official_client(scorer: GradScorer) -> None:
    with live_server(scorer, api_key="k", max_wait_ms=0) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", timeout=60, max_retries=0)
        completion = client.chat.completions.create(model="tiny-qwen2", messages=QUESTION, max_tokens=6)
        choice = completion.choices[0]
        meta = choice.model_extra["gradguard"]
        assert meta["scored"] is True and "uncertainty" in meta
        stream = client.chat.completions.create(
            model="tiny-qwen2", messages=QUESTION, max_tokens=6, stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == choice.message.content
        assert chunks[-1].usage is not None and chunks[-1].choices == []
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals[0].choices[0].model_extra["gradguard"]["scored"] is True
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="bad", max_retries=0).models.list()


def test_disconnect_cancels_generation(scorer: GradScorer) -> None:
    with live_server(scorer, max_wait_ms=0, max_batch=1) as url:
        def call() -> None:
            try:
                httpx.post(f"{url}/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 64}, timeout=0.5)
            except httpx.TimeoutException:
                pass  # the client gives up and disconnects

        with scorer.lock:  # the model is busy: the request waits in the queue (then its generation is cancelled)
            t = threading.Thread(target=call)
            t.start()
            t.join(30)
            assert not t.is_alive()
        # once the lock is free the cancelled request must not generate: the batcher empties and the lock frees
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            if 'gradguard_requests_total{endpoint="chat_completions",status="499"} 1.0' in metrics:
                break
            time.sleep(0.1)
        assert 'status="499"' in metrics
        assert scorer.lock.acquire(timeout=30)
        scorer.lock.release()
