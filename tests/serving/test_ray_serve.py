"""The server as a Ray Serve deployment: two replicas of the tiny-model app behind Ray's proxy on this machine.

Starts a local Ray instance (2 CPUs, half a CPU per replica; ~1 min here). A replica killed under load: every
request in flight either succeeds or fails with an HTTP error status in time, and Serve brings the replica back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")

import httpx  # noqa: E402

from gradguard.serving.settings import ServerSettings  # noqa: E402
from gradguard.testing import make_tiny_model  # noqa: E402

from .conftest import QUESTION, free_port  # noqa: E402

pytestmark = pytest.mark.ray

#: Every HTTP call's timeout, and the bound on every wait in this file.
TIMEOUT = 60.0
APP = "gradguard-test"


def _replica_names(ray: Any) -> list[str]:
    return sorted(
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#")
    )


def _running(serve: Any) -> int:
    status = serve.status().applications.get(APP)
    if status is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())


def _wait_for(what: str, check: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ray_server() -> Iterator[str]:
    ray = pytest.importorskip("ray")
    from ray import serve

    from gradguard.serving.ray import deployment

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(tempfile.mkdtemp(prefix="ggray"))  # short: Ray's socket paths must stay under 107 characters
    model_dir = root / "tiny"
    model, tok = make_tiny_model("qwen2")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    port = free_port()
    settings = ServerSettings(model=str(model_dir), port=port, max_wait_ms=0, served_model_name="tiny")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(root / "ray"))
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(settings, replicas=2, num_cpus=0.5, name="gradguard"), name=APP, blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(root, ignore_errors=True)


def test_score_and_chat_through_rays_proxy(ray_server: str) -> None:
    from ray import serve

    assert _running(serve) == 2
    with httpx.Client(base_url=ray_server, timeout=TIMEOUT) as client:
        assert client.get("/readyz").status_code == 200
        r = client.post("/v1/score", json={"messages": QUESTION, "responses": ["Paris.", ""]})
        assert r.status_code == 200, r.text
        first, empty = r.json()["results"]
        assert first["gradguard"]["scored"] is True and first["gradguard"]["uncertainty"]["hybridgrad"] > 0
        assert empty["gradguard"]["scored"] is False
        r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION, "max_tokens": 4})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert {"confidence", "uncertainty", "scored"} <= set(choice["gradguard"])
        assert "gradguard_requests" in client.get("/metrics").text  # one replica's own metrics


def test_a_replica_killed_under_load(ray_server: str) -> None:
    import ray
    from ray import serve

    names = _replica_names(ray)
    assert len(names) == 2, names
    outcomes: list[tuple[str, Any, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=ray_server, timeout=TIMEOUT) as client:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if i % 2:
                        r = client.post("/v1/score", json={"messages": QUESTION, "response": f"Paris {k}.{i}"})
                    else:
                        r = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 8})
                    outcome: tuple[str, Any, float] = ("status", r.status_code, time.monotonic() - started)
                except httpx.HTTPError as exc:
                    outcome = ("exception", repr(exc), time.monotonic() - started)
                with lock:
                    outcomes.append(outcome)
                i += 1

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    time.sleep(5.0)
    stop.set()
    for t in threads:
        t.join(timeout=TIMEOUT + 5)
    assert not any(t.is_alive() for t in threads), "a request hung past its timeout"

    statuses = [o[1] for o in outcomes if o[0] == "status"]
    print("statuses while a replica was killed:", {s: statuses.count(s) for s in sorted(set(statuses))})
    exceptions = [o[1] for o in outcomes if o[0] == "exception"]
    assert not exceptions, exceptions
    assert statuses.count(200) >= 4, statuses
    assert set(statuses) <= {200, 429, 500, 502, 503}, statuses
    assert max(o[2] for o in outcomes) < TIMEOUT

    # Serve replaces the killed replica; requests succeed afterwards
    def replaced() -> bool:
        now = _replica_names(ray)
        return len(now) == 2 and names[0] not in now and _running(serve) == 2

    _wait_for("a replacement replica", replaced)
    with httpx.Client(base_url=ray_server, timeout=TIMEOUT) as client:
        for i in range(6):
            r = client.post("/v1/score", json={"messages": QUESTION, "response": f"Paris {i}."})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["gradguard"]["scored"] is True
