"""The review app under uvicorn in a background thread on a free loopback port (browser tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gradguard.errors import GradguardError

__all__ = ["serve_app_in_thread"]


@contextmanager
def serve_app_in_thread(app: Any, *, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a daemon thread on a free ``127.0.0.1`` port; yields the base URL
    (``http://127.0.0.1:PORT``) once it accepts connections and stops it on exit. Raises
    :class:`~gradguard.errors.GradguardError` when it does not start within ``start_timeout_s``."""
    from gradguard.extras import require

    uvicorn: Any = require("uvicorn", "review-web", "serving the review app in a thread")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gradguard-review", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise GradguardError(f"the review app did not start within {start_timeout_s:g} s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
