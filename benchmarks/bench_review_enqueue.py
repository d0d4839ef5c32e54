"""Review-queue enqueue throughput with several writer processes, and a check that nothing was lost.

    python benchmarks/bench_review_enqueue.py [--db URL_OR_PATH] [--writers 4] [--items 500] [--json PATH] [--keep]

``--db`` is what :func:`gradguard.review.open_review_queue` takes: a file path, ``sqlite:///PATH`` or
``postgresql://user:password@host:port/database`` (default: a SQLite file in a temporary folder,
removed afterwards). Each of ``--writers`` processes opens its own store and, once all are ready,
enqueues ``--items`` realistic items in a loop: a question, chat messages with about 1 KB of retrieved
context, an answer, route and reason, and ``metadata["score"]`` shaped like
:meth:`~gradguard.result.ScoreResult.metadata` with per-token lists of about 40 tokens (about 4 KB of
JSON per item). Every enqueue is its own committed transaction, as in production.

Afterwards the script checks that nothing was lost: the store holds exactly ``writers × items`` more
items than before, and every id a writer got back is there with its question. It prints the total
rate (all items / wall time from the common start to the last writer's end), each writer's rate,
and the p50/p95/max latency of one ``enqueue`` call. ``--json PATH`` writes the figures.
The benchmark's items are deleted at the end unless ``--keep`` (a temporary SQLite file goes anyway).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gradguard.review import open_review_queue
from gradguard.review.urls import mask_url

CONTEXT = (
    "Paris is the capital and most populous city of France. Situated on the Seine River, in the north of "
    "the country, it is at the heart of the Ile-de-France region. The City of Paris has an estimated "
    "population of about two million residents. Lyon is the third-largest city of France and lies at the "
    "confluence of the Rhone and Saone rivers; it is known for its cuisine and its historical and "
    "architectural landmarks. Marseille, on the Mediterranean coast, is the second-largest city and the "
    "main French port. "
) * 2  # about 1 KB


def make_item(writer: int, i: int) -> dict[str, Any]:
    """One realistic item (the keyword arguments of ``enqueue`` plus question and answer)."""
    n_tokens = 40
    words = [f"tok{k}" for k in range(n_tokens)]
    return {
        "question": f"[w{writer} #{i}] What is the capital of France, and which river flows through it?",
        "answer": "The capital of France is Lyon, on the Seine. " * 4,
        "confidence": ((writer * 7919 + i) % 1000) / 1000,
        "metadata": {
            "app": "bench",
            "writer": writer,
            "score": {
                "model": "qwen2.5-0.5b-instruct",
                "profile": "qwen2.5",
                "hybridgrad": 0.0512,
                "semgrad": 0.0431,
                "paragrad": 0.0644,
                "exgrad": 0.0398,
                "confidence": 0.31,
                "n_response_tokens": n_tokens,
                "spt_offset": -3,
                "scored": True,
                "tokens": {
                    "text": words,
                    "logprob": [-0.01 * (k % 17) - 0.002 * k for k in range(n_tokens)],
                    "entropy": [0.05 * (k % 11) + 0.001 * k for k in range(n_tokens)],
                    "span": [0, n_tokens],
                },
            },
        },
        "messages": [
            {"role": "system", "content": "Answer from the context only.\n\nContext:\n" + CONTEXT},
            {"role": "user", "content": "What is the capital of France, and which river flows through it?"},
        ],
        "task": "qa",
        "model": "qwen2.5-0.5b-instruct",
        "profile": "qwen2.5",
        "reason": "low_confidence",
        "route": [{"tier": "accept", "passed": False, "confidence": 0.31}, {"tier": "human", "action": "escalate"}],
    }


def _writer(url: str, writer: int, n_items: int, barrier: Any, results: Any) -> None:
    """A writer process: open its own store, wait for the others, enqueue, report ids and latencies."""
    items = [make_item(writer, i) for i in range(n_items)]  # built before the clock starts
    ids: list[str] = []
    latencies: list[float] = []
    with open_review_queue(url) as store:
        barrier.wait()
        start = time.perf_counter()
        for kwargs in items:
            question, answer = kwargs.pop("question"), kwargs.pop("answer")
            t0 = time.perf_counter()
            ids.append(store.enqueue(question, answer, **kwargs))
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    results.put({"writer": writer, "ids": ids, "latencies": latencies, "elapsed_s": elapsed, "end": time.time()})


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run(url: str, writers: int, n_items: int, keep: bool) -> dict[str, Any]:
    """Run the benchmark on ``url``; returns the figures (raises AssertionError when items were lost)."""
    with open_review_queue(url) as store:  # create the schema before the writers race for it
        before = store.query(limit=1).total
        shown_url = store.url
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(writers + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, w, n_items, barrier, results)) for w in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()  # every writer has opened its store
    start = time.time()
    reports = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a writer exited with code {p.exitcode}")
    wall = max(r["end"] for r in reports) - start

    ids = [item_id for r in reports for item_id in r["ids"]]
    with open_review_queue(url) as store:
        after = store.query(limit=1).total
        found = {item.id: item for item in store.export(ids=ids)}
        lost = [item_id for item_id in ids if item_id not in found]
        wrong = [
            item_id
            for r in reports
            for i, item_id in enumerate(r["ids"])
            if item_id in found and not found[item_id].question.startswith(f"[w{r['writer']} #{i}]")
        ]
        if not keep:
            store.delete(ids=ids)
    assert len(set(ids)) == writers * n_items, "duplicate ids were returned"
    assert lost == [], f"{len(lost)} enqueued items are missing: {lost[:5]}"
    assert wrong == [], f"{len(wrong)} items hold another item's content: {wrong[:5]}"
    assert after - before == writers * n_items, f"the store grew by {after - before}, not {writers * n_items}"

    latencies = [lat for r in reports for lat in r["latencies"]]
    return {
        "db": shown_url,
        "writers": writers,
        "items_per_writer": n_items,
        "items_total": writers * n_items,
        "wall_s": round(wall, 3),
        "items_per_s_total": round(writers * n_items / wall, 1),
        "items_per_s_per_writer": [
            round(n_items / r["elapsed_s"], 1) for r in sorted(reports, key=lambda r: r["writer"])
        ],
        "latency_ms": {
            "p50": round(1000 * _percentile(latencies, 0.50), 3),
            "p95": round(1000 * _percentile(latencies, 0.95), 3),
            "max": round(1000 * max(latencies), 3),
            "mean": round(1000 * statistics.fmean(latencies), 3),
        },
        "verified": {"lost": 0, "count_delta": after - before},
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmark, print (and optionally write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None, metavar="URL_OR_PATH", help="the store (default: a temp SQLite file)")
    parser.add_argument("--writers", type=_positive_int, default=4, help="writer processes (default 4)")
    parser.add_argument("--items", type=_positive_int, default=500, help="items per writer (default 500)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's items in the store")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        url = args.db if args.db else str(Path(tmp) / "review.sqlite3")
        print(f"{args.writers} writers x {args.items} items into {mask_url(url)} ...", file=sys.stderr)
        figures = run(url, args.writers, args.items, args.keep)
    lat = figures["latency_ms"]
    print(f"db:               {figures['db']}")
    print(f"items:            {figures['items_total']} ({figures['writers']} writers x {figures['items_per_writer']})")
    print(f"wall:             {figures['wall_s']:.2f} s")
    print(f"total:            {figures['items_per_s_total']:.1f} items/s")
    print(f"per writer:       {', '.join(f'{r:.1f}' for r in figures['items_per_s_per_writer'])} items/s")
    print(f"enqueue latency:  p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms, max {lat['max']:.2f} ms")
    print("verified:         every returned id present, count grew by exactly the items enqueued")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
