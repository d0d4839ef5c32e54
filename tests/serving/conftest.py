"""Fixtures of the server tests: one tiny qwen2 scorer, apps over it, and a real uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytest.importorskip("fastapi")

import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gradguard import GradScorer  # noqa: E402
from gradguard.integrations._core.backend import LocalBackend  # noqa: E402
from gradguard.serving.app import create_app  # noqa: E402
from gradguard.serving.settings import ServerSettings  # noqa: E402
from gradguard.testing import make_tiny_model  # noqa: E402

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(scorer: GradScorer, **settings: Any) -> Iterator[str]:
    """A real uvicorn on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    app = create_app(ServerSettings(port=port, **settings), backend=LocalBackend(scorer=scorer))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
