"""A gradguard server in a background thread on a free loopback port (tests, benchmarks, notebooks).

Needs ``pip install 'gradguard[serve]'``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gradguard.errors import GradguardError
from gradguard.scorer import GradScorer

__all__ = ["free_port", "serve_in_thread", "serve_app_in_thread"]


def free_port() -> int:
    """A TCP port on ``127.0.0.1`` that nothing listens on (at the time of the call)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_app_in_thread(
    app: Any, *, sock: socket.socket | None = None, start_timeout_s: float = 30.0, name: str = "the app"
) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a daemon thread on ``sock`` (default: a free ``127.0.0.1`` port);
    yields the base URL (``http://127.0.0.1:PORT``) once it accepts connections and stops it on exit. Raises
    :class:`GradguardError` naming ``name`` when it does not start within ``start_timeout_s``."""
    from gradguard.extras import require

    uvicorn: Any = require("uvicorn", "serve", "serving in a thread")
    if sock is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gradguard-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise GradguardError(f"{name} did not start within {start_timeout_s:g} s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def serve_in_thread(scorer: GradScorer, *, start_timeout_s: float = 60.0, **settings: Any) -> Iterator[str]:
    """Serve ``scorer`` with ``create_app(ServerSettings(**settings))`` under uvicorn in a daemon thread on a free
    ``127.0.0.1`` port; yields the base URL (``http://127.0.0.1:PORT``) once the server accepts connections, and
    stops it on exit. Raises :class:`GradguardError` when it does not start within ``start_timeout_s``."""
    from gradguard.integrations._core.backend import LocalBackend
    from gradguard.serving.app import create_app
    from gradguard.serving.settings import ServerSettings

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    app = create_app(ServerSettings(port=port, **settings), backend=LocalBackend(scorer=scorer))
    with serve_app_in_thread(app, sock=sock, start_timeout_s=start_timeout_s, name="the gradguard server") as url:
        yield url
