"""Fixtures of the server tests: one tiny qwen2 scorer, apps over it, and a real uvicorn in a thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from gradguard import GradScorer  # noqa: E402
from gradguard.integrations._core.backend import LocalBackend  # noqa: E402
from gradguard.serving.app import create_app  # noqa: E402
from gradguard.serving.settings import ServerSettings  # noqa: E402
from gradguard.testing import make_tiny_model  # noqa: E402
from gradguard.testing.server import free_port, serve_in_thread  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, model_name="tiny-qwen2")


@pytest.fixture()
def make_client(scorer: GradScorer) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**settings: Any) -> TestClient:
        app = create_app(ServerSettings(**settings), backend=LocalBackend(scorer=scorer))
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture()
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(max_wait_ms=0)


__all__ = ["QUESTION", "free_port", "live_server"]

live_server = serve_in_thread  # a real uvicorn on a free loopback port in a thread; yields its base URL
