"""Latency of the reviewers' web app (``gradguard review serve``) over a full review store.

    python benchmarks/bench_review_page.py [--db URL] [--items 10000] [--loads 100] [--json PATH]

Fills the store (``--db``: a file path, ``sqlite:///PATH`` or ``postgresql://...``; default a fresh SQLite
file in a temporary folder, deleted afterwards) with ``--items`` realistic items: RAG, QA, tool and summary
questions with a system prompt and retrieved context, answers of 20-160 tokens with per-token log-probabilities
and entropies, a router trail, four route reasons; about a third of them already resolved. Then it serves the
app with uvicorn on a free 127.0.0.1 port in this process and, with an authenticated HTTP client (bearer token),
loads each page ``--loads`` times, one request at a time:

- ``queue``: the queue's first page (pending items, 50 rows),
- ``queue deep``: a page in the middle of all items (``?status=all&page=N``),
- ``queue filtered``: task, reason and a confidence range (``?task=rag&reason=low_confidence&min_confidence=0.2``),
- ``item``: one item page (its tokens shaded),

and prints p50 / p95 / max latency in milliseconds (client side, full response read). ``--json PATH`` also
writes the rows.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from gradguard.review.queue import ReviewStore
from gradguard.review.urls import open_review_queue
from gradguard.review.web import create_app
from gradguard.testing.server import serve_app_in_thread

TOKEN = "bench-token-0123456789abcdef"
TASKS = ("rag", "qa", "tools", "summarize")
REASONS = ("low_confidence", "out_of_domain", "unscored", "tool_call")
WORDS = (
    "the contract may be terminated by either party with written notice of sixty days and any prepaid fees are "
    "refunded pro rata unless the agreement says otherwise the service level is measured monthly and credits "
    "apply when availability falls below the committed level support requests are answered within one business "
    "day for priority incidents the vendor provides a named engineer"
).split()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _answer(rng: random.Random) -> tuple[str, dict[str, Any]]:
    n = rng.randint(20, 160)
    pieces = [("" if i == 0 else " ") + rng.choice(WORDS) for i in range(n)]
    pieces[-1] += "."
    logprobs = [-rng.expovariate(1.6) for _ in pieces]
    entropies = [abs(lp) * 0.8 + rng.random() for lp in logprobs]
    return "".join(pieces), {"text": pieces, "logprob": logprobs, "entropy": entropies, "span": [0, n]}


def fill(store: ReviewStore, items: int, seed: int = 0) -> float:
    """Enqueue ``items`` realistic items (a third of them resolved); returns the seconds it took."""
    rng = random.Random(seed)
    started = time.perf_counter()
    for i in range(items):
        task, reason = rng.choice(TASKS), rng.choice(REASONS)
        confidence = None if reason == "unscored" else round(rng.random(), 4)
        answer, tokens = _answer(rng)
        context = "\n".join(
            f"[{k}] doc_{rng.randint(1, 999)}.pdf §{rng.randint(1, 20)} — " + " ".join(rng.choices(WORDS, k=60))
            for k in range(1, rng.randint(2, 5))
        )
        question = f"Question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(6, 18))) + "?"
        score = {
            "schema_version": 3,
            "confidence": confidence,
            "uncertainty": {"hybridgrad": rng.random(), "semgrad": rng.random(), "mean_nll": rng.random() * 2},
            "task": task,
            "calibration": {"task": task, "data": f"{task}_dev.jsonl", "n": 800, "judge": "exact", "cv_auroc": 0.83},
            "in_domain": reason != "out_of_domain",
            "domain_percentile": rng.random() * 100,
            "model": "Qwen/Qwen3-0.6B",
            "profile": "family:qwen3",
            "tokens": tokens,
        }
        route = [
            {"step": 0, "action": "accept", "target": None, "confidence": confidence, "outcome": "rejected",
             "error": None, "signal_value": confidence, "tier_index": 0, "reason": "below threshold"},
            {"step": 1, "action": "escalate", "target": "human_review", "confidence": confidence,
             "outcome": "pending_review", "error": None, "signal_value": confidence, "tier_index": 1,
             "reason": "last tier"},
        ]  # fmt: skip
        item_id = store.enqueue(
            question, answer, confidence=confidence, metadata={"score": score},
            messages=[{"role": "system", "content": "Answer from the passages only."},
                      {"role": "user", "content": f"{context}\n\n{question}"}],
            task=task, model="Qwen/Qwen3-0.6B", profile="family:qwen3", reason=reason, route=route,
        )  # fmt: skip
        if rng.random() < 0.33:
            store.resolve(item_id, rng.choice(("approved", "rejected")), note="bench", reviewer="bench")
    return time.perf_counter() - started


def measure(client: httpx.Client, path: str, loads: int, warmup: int = 3) -> dict[str, Any]:
    """Load ``path`` ``loads`` times (after ``warmup`` loads); latency percentiles in milliseconds."""
    for _ in range(warmup):
        client.get(path).raise_for_status()
    times: list[float] = []
    size = 0
    for _ in range(loads):
        started = time.perf_counter()
        reply = client.get(path)
        size = len(reply.content)
        times.append((time.perf_counter() - started) * 1000)
        reply.raise_for_status()
    times.sort()
    p95 = times[min(len(times) - 1, max(0, round(0.95 * len(times)) - 1))]
    return {"path": path, "loads": loads, "p50_ms": statistics.median(times), "p95_ms": p95, "max_ms": times[-1],
            "bytes": size}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", default=None, help="review store URL or path (default: a temporary SQLite file)")
    parser.add_argument("--items", type=_positive_int, default=10000, help="items to enqueue (default 10000)")
    parser.add_argument("--loads", type=_positive_int, default=100, help="loads of each page (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the items")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gradguard-bench-review-") as tmp:
        store = open_review_queue(args.db or str(Path(tmp) / "review.sqlite3"))
        try:
            fill_s = fill(store, args.items, args.seed)
            print(f"filled {store.url} with {args.items} items in {fill_s:.1f} s", file=sys.stderr)
            total = store.query(None, limit=1).total
            some = store.query(None, offset=total // 2, limit=1).items[0].id
            middle = max(1, total // 50 // 2)
            pages = {
                "queue": "/",
                "queue deep": f"/?status=all&page={middle}",
                "queue filtered": "/?task=rag&reason=low_confidence&min_confidence=0.2",
                "item": f"/items/{some}",
            }
            rows: list[dict[str, Any]] = []
            with serve_app_in_thread(create_app(store, {TOKEN: "bench"})) as url:
                headers = {"Authorization": f"Bearer {TOKEN}"}
                with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                    for name, path in pages.items():
                        row = {"page": name, "items_in_store": total, **measure(client, path, args.loads)}
                        rows.append(row)
        finally:
            store.close()

    print(f"{'page':<16} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'KiB':>6}  path")
    for row in rows:
        print(f"{row['page']:<16} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['max_ms']:>8.1f} "
              f"{row['bytes'] / 1024:>6.0f}  {row['path']}")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"items": args.items, "loads": args.loads, "fill_s": fill_s, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
