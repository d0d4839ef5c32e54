"""Throughput and latency of ``gradguard serve`` under concurrent clients, with and without micro-batching.

    python benchmarks/bench_serve.py [--model SRC] [--clients 1,4,8] [--requests 16] [--max-tokens 32]
                                     [--style short|explain]
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --model SRC   # a server you started

By default it starts the server in this process (uvicorn on 127.0.0.1, a free port) twice, with
``--max-batch 1`` (one request at a time: micro-batching off) and with ``--max-batch B``, and for each number
of clients sends ``--requests`` chat completions (greedy, ``--max-tokens`` each; built-in questions, nothing is
downloaded: ``--style short`` factual questions whose answers vary in length, ``--style explain`` questions whose
answers run to ``--max-tokens``) from that many concurrent client threads over HTTP. It prints, per setting:

- throughput (completed requests per second, and generated tokens per second),
- p50 / p95 request latency (client side, seconds),
- errors (any non-200 answer),
- the scoring time's share of each request (the server's ``score_s / (generate_s + score_s)``, median; under
  micro-batching ``generate_s`` is the whole batch's generation time),
- a check that every answer's scores equal a direct ``GradScorer.score`` of the same answer tokens (relative
  1e-4): what a request is batched with must not change its scores.

With ``--url`` it measures that server instead (one setting, whatever it was started with); the check then
loads ``--model`` here to score the answers directly.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from gradguard import GradScorer
from gradguard.serving.wire import RESULT_FIELD, RESULT_KEY, result_from_wire
from gradguard.testing.server import serve_in_thread

QUESTIONS = [
    "What is the capital of France?",
    "Name a planet of the solar system.",
    "What does DNA stand for?",
    "Give one use of a hammer.",
    "What colour is the sky on a clear day?",
    "What is the boiling point of water at sea level, in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is 7 times 8?",
    "Which gas do plants take in for photosynthesis?",
    "What is the largest ocean on Earth?",
    "Name a programming language created in the 1990s.",
    "What is the freezing point of water in Fahrenheit?",
]
#: Questions whose answers run to a few sentences (``--style explain``): answers of similar, longer lengths.
EXPLAIN = [
    "Explain in three sentences why the sky is blue.",
    "Explain in three sentences how a refrigerator keeps food cold.",
    "Explain in three sentences what a hash table is.",
    "Explain in three sentences why leaves change colour in autumn.",
    "Explain in three sentences how vaccines train the immune system.",
    "Explain in three sentences what recursion is in programming.",
    "Explain in three sentences why the Moon has phases.",
    "Explain in three sentences how a bicycle stays upright.",
    "Explain in three sentences what inflation means in economics.",
    "Explain in three sentences how photosynthesis works.",
    "Explain in three sentences what a compiler does.",
    "Explain in three sentences why ice floats on water.",
]
SCORE_KEYS = ("hybridgrad", "semgrad", "paragrad", "exgrad", "mean_nll")


@dataclass
class Run:
    """What one setting measured."""

    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    answers: list[tuple[list[dict[str, str]], dict[str, Any]]] = field(default_factory=list)
    wall: float = 0.0


def _measure(
    url: str, clients: int, requests: int, max_tokens: int, api_key: str | None, questions: Sequence[str] = QUESTIONS
) -> Run:
    """Send ``requests`` chat completions from ``clients`` concurrent threads."""
    run = Run()
    lock = threading.Lock()
    jobs = list(range(requests))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = threading.Barrier(clients)  # the clients' first requests arrive together, not as their threads start

    def client() -> None:
        with httpx.Client(base_url=url, timeout=3600, headers=headers) as http:
            start.wait()
            while True:
                with lock:
                    if not jobs:
                        return
                    i = jobs.pop(0)
                messages = [{"role": "user", "content": questions[i % len(questions)]}]
                body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, RESULT_FIELD: True}
                started = time.perf_counter()
                try:
                    reply = http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        run.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    if reply.status_code != 200:
                        run.errors.append(f"HTTP {reply.status_code}: {reply.text[:200]}")
                        continue
                    choice = reply.json()["choices"][0]
                    run.latencies.append(elapsed)
                    run.tokens += int(reply.json()["usage"]["completion_tokens"])
                    timings = choice[RESULT_KEY]["timings"]
                    total = (timings["generate_s"] or 0.0) + timings["score_s"]
                    if total > 0:
                        run.shares.append(timings["score_s"] / total)
                    run.answers.append((messages, choice[RESULT_KEY]))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall = time.perf_counter() - started
    return run


def _check(scorer: GradScorer, answers: Sequence[tuple[list[dict[str, str]], dict[str, Any]]]) -> tuple[int, float]:
    """How many answers' scores differ from a direct score of the same tokens, and the largest relative gap."""
    worst, bad = 0.0, 0
    for messages, wire in answers:
        served = result_from_wire(wire)
        direct = scorer.score(messages, list(served.token_ids), task=served.task)
        gaps = []
        for key in SCORE_KEYS:
            a, b = getattr(served, key), getattr(direct, key)
            if math.isnan(a) and math.isnan(b):
                continue
            gaps.append(abs(a - b) / max(abs(b), 1e-12))
        gap = max(gaps, default=0.0)
        worst = max(worst, gap)
        bad += gap > 1e-4
    return bad, worst


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _report(label: str, clients: int, run: Run, bad: int, worst: float) -> dict[str, Any]:
    done = len(run.latencies)
    row = {
        "setting": label,
        "clients": clients,
        "requests": done,
        "errors": len(run.errors),
        "req_per_s": done / run.wall if run.wall else math.nan,
        "tok_per_s": run.tokens / run.wall if run.wall else math.nan,
        "p50_s": _quantile(run.latencies, 0.5),
        "p95_s": _quantile(run.latencies, 0.95),
        "score_share": statistics.median(run.shares) if run.shares else math.nan,
        "scores_differ": bad,
        "max_rel_gap": worst,
    }
    print(
        f"{label:<14} clients={clients:<2} done={done:<3} errors={len(run.errors):<2} "
        f"{row['req_per_s']:.3f} req/s {row['tok_per_s']:.2f} tok/s  p50={row['p50_s']:.2f}s p95={row['p95_s']:.2f}s  "
        f"scoring share={row['score_share']:.1%}  scores differ from direct: {bad}/{done} (max rel gap {worst:.1e})",
        flush=True,
    )
    for error in run.errors[:3]:
        print(f"    error: {error}", flush=True)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id, folder or .gguf (default: the embedded model)")
    parser.add_argument("--url", default=None, help="measure this running server instead of starting one")
    parser.add_argument("--api-key", default=None, help="the server's API key (with --url)")
    parser.add_argument("--clients", default="1,4,8", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--requests", type=int, default=16, help="requests per setting (spread over the clients)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--style", choices=("short", "explain"), default="short",
                        help="short factual questions (answers of varied length, often < max-tokens) or "
                        "'explain in three sentences' (answers that run to max-tokens)")
    parser.add_argument("--max-batch", type=int, default=8, help="micro-batch size of the batching setting")
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    counts = [int(c) for c in args.clients.split(",")]
    questions = QUESTIONS if args.style == "short" else EXPLAIN
    print("loading the model ...", flush=True)
    scorer = GradScorer.from_pretrained(args.model)
    print(f"model: {scorer.model_name}", flush=True)
    rows = []
    if args.url:
        for clients in counts:
            run = _measure(args.url, clients, args.requests, args.max_tokens, args.api_key, questions)
            rows.append(_report("server", clients, run, *_check(scorer, run.answers)))
    else:
        for label, batch in (("one-at-a-time", 1), (f"batch<={args.max_batch}", args.max_batch)):
            limits = {"max_queue": 256, "request_timeout_s": 3600}  # a queued request must not time out here
            with serve_in_thread(scorer, max_batch=batch, max_wait_ms=args.max_wait_ms, **limits) as url:
                _measure(url, 1, 1, args.max_tokens, None)  # warm-up
                for clients in counts:
                    run = _measure(url, clients, args.requests, args.max_tokens, None, questions)
                    rows.append(_report(label, clients, run, *_check(scorer, run.answers)))
        by = {(r["setting"], r["clients"]): r["req_per_s"] for r in rows}
        top = max(counts)
        speedup = by[(f"batch<={args.max_batch}", top)] / by[("one-at-a-time", top)]
        print(f"micro-batching speed-up at {top} clients: {speedup:.2f}x (target >= 2x)", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
