"""Durability: every enqueue whose id was returned survives its writer being SIGKILLed mid-enqueue, on both stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import gradguard.review
from gradguard.review import ReviewItem, open_review_queue

SRC = Path(gradguard.review.__file__).resolve().parents[2]

#: What the writer enqueues as item ``i``: every field, JSON with nesting, non-ASCII text.
ITEM_CODE = r"""
def item(i):
    tokens = [f"tok{k}é" for k in range(40)]
    return dict(
        question=f"question {i} " + "é" * (i % 7),
        answer=f"answer {i} ✓",
        confidence=None if i % 5 == 0 else (i % 10) / 10,
        metadata={"i": i, "app": "kill-test", "score": {"tokens": tokens, "nll": [k / 7 for k in range(40)]}},
        messages=[{"role": "system", "content": "context " * 50}, {"role": "user", "content": f"question {i}"}],
        task=f"task{i % 3}",
        model="tiny",
        profile=None if i % 2 else "tiny-profile",
        reason="low_confidence",
        route=[{"tier": "accept", "passed": False, "i": i}],
    )
"""

CHILD = (
    ITEM_CODE
    + r"""
import sys
from gradguard.review import open_review_queue
store = open_review_queue(sys.argv[1])
i = 0
while True:
    kwargs = item(i)
    item_id = store.enqueue(kwargs.pop("question"), kwargs.pop("answer"), **kwargs)
    print(i, item_id, flush=True)
    i += 1
"""
)


def expected_item(i: int) -> dict[str, Any]:
    scope: dict[str, Any] = {}
    exec(ITEM_CODE, scope)  # the same code the child runs
    return dict(scope["item"](i))


def check_complete(item: ReviewItem, i: int) -> None:
    want = expected_item(i)
    got = item.model_dump()
    for key, value in want.items():
        assert got[key] == value, (i, key)
    assert item.status == "pending" and item.created_at.tzinfo is not None
    assert (item.verdict_note, item.resolved_answer, item.resolved_at, item.reviewer) == (None, None, None, None)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_returned_ids_survive_a_sigkilled_writer(store_url: str) -> None:
    open_review_queue(store_url).close()  # create the schema first, so the child starts enqueueing at once
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, store_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    watchdog = threading.Timer(60, proc.kill)  # never hang the suite if the child stalls
    watchdog.start()
    printed: dict[int, str] = {}
    try:
        assert proc.stdout is not None
        while len(printed) < 30:
            line = proc.stdout.readline()
            assert line, f"the writer died early: {proc.stderr.read() if proc.stderr else ''}"
            i, item_id = line.split()
            printed[int(i)] = item_id
        time.sleep(0.005)  # let it get into the next enqueue: the kill lands mid-write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        rest = proc.stdout.read()  # ids printed between our last read and the kill
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for line in rest.splitlines():
        if len(line.split()) == 2:  # a line cut by the kill has no id
            i, item_id = line.split()
            printed[int(i)] = item_id
    with open_review_queue(store_url) as store:
        items = store.export()
    by_id = {item.id: item for item in items}
    missing = [item_id for item_id in printed.values() if item_id not in by_id]
    assert missing == [], f"{len(missing)} returned ids were lost"
    # Every row present is whole: the printed ones, and at most one more (committed, killed before printing).
    assert len(items) - len(printed) in (0, 1)
    for i, item_id in printed.items():
        check_complete(by_id[item_id], i)
    for item in items:
        if item.id not in printed.values():
            check_complete(item, max(printed) + 1)
    assert [item.id for item in items][: len(printed)] == [printed[i] for i in sorted(printed)]
