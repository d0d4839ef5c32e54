"""Scoring cost against generation and the oracle, on the embedded model, at three prompt lengths.

    python benchmarks/bench_scoring.py [--model SRC] [--answer-tokens 32] [--repeats 2]

For prompts of about 64, 512 and 2048 tokens (science questions preceded by RAG-like context
built from other questions and answers, all written into this script: nothing outside the
repository is read) and answers of exactly ``--answer-tokens``
tokens, it prints the generation time, the fast scoring time (reusing the generation's KV
cache), the oracle's time, their ratios, and the peak extra resident memory of each scorer.
Targets: fast ≤ 25% of generation at every length; ≥ 5× faster than the oracle at 2048;
fast at 2048 within 1.5× of fast at 64.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradguard import GradScorer

#: Short science questions with their answers: the questions asked, and (cycled) the RAG-like context.
FACTS: tuple[tuple[str, str], ...] = (
    ("Who proposed the theory of evolution by natural selection?", "Charles Darwin"),
    ("What gas do plants take in for photosynthesis?", "carbon dioxide"),
    ("Which organelle produces most of a cell's ATP?", "the mitochondrion"),
    ("What is the chemical symbol of gold?", "Au"),
    ("What force keeps the planets in orbit around the Sun?", "gravity"),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees"),
    ("Which blood cells carry oxygen?", "red blood cells"),
    ("What is the most abundant gas in Earth's atmosphere?", "nitrogen"),
    ("What kind of bond shares electron pairs between atoms?", "a covalent bond"),
    ("What is the powerhouse molecule that stores cell energy?", "ATP"),
    ("Which layer of the atmosphere contains the ozone layer?", "the stratosphere"),
    ("What is the unit of electrical resistance?", "the ohm"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What carries genetic information in most organisms?", "DNA"),
    ("What is the process by which water vapor becomes liquid?", "condensation"),
    ("Which particle in an atom has no electric charge?", "the neutron"),
    ("What type of rock forms from cooled magma?", "igneous rock"),
    ("What is the study of fungi called?", "mycology"),
    ("Which gland produces insulin?", "the pancreas"),
    ("What is the speed of light in a vacuum, roughly?", "300,000 kilometres per second"),
    ("What is the largest organ of the human body?", "the skin"),
    ("What do herbivores eat?", "plants"),
    ("What is the pH of pure water?", "7"),
    ("Which scientist formulated the laws of motion?", "Isaac Newton"),
)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_rss(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """Run ``fn``; return its value, wall time and the peak RSS above the starting RSS (sampled every ms)."""
    start = _rss_bytes()
    peak = start
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    value = fn()
    elapsed = time.perf_counter() - t0
    done.set()
    sampler.join()
    return value, elapsed, max(0, max(peak, _rss_bytes()) - start)


def build_prompt(scorer: GradScorer, target_tokens: int, index: int) -> list[dict[str, str]]:
    """A question from :data:`FACTS` preceded by as many other question-answer pairs as make ``target_tokens``."""
    question = FACTS[index % len(FACTS)][0]
    context: list[str] = []
    j = index + 1
    while True:
        messages = [{"role": "user", "content": _render(context, question)}]
        if len(scorer.prompt_ids(messages)) >= target_tokens:
            return messages
        q, a = FACTS[j % len(FACTS)]
        context.append(f"Q: {q} A: {a}.")
        j += 1


def _render(context: list[str], question: str) -> str:
    if not context:
        return f"Answer the question in one or two sentences.\n\nQuestion: {question}"
    docs = "\n".join(f"[{i + 1}] {c}" for i, c in enumerate(context))
    return f"Use the documents to answer in one or two sentences.\n\nDocuments:\n{docs}\n\nQuestion: {question}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--lengths", default="64,512,2048")
    parser.add_argument("--repeats", type=int, default=2, help="questions per length (medians are reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    t0 = time.perf_counter()
    scorer = GradScorer.from_pretrained(args.model)
    print(f"model {scorer.model_name} loaded in {time.perf_counter() - t0:.1f}s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    n = args.answer_tokens
    gen_kwargs = {"max_new_tokens": n, "min_new_tokens": n}
    figures: list[dict[str, float]] = []
    for length in (int(x) for x in args.lengths.split(",")):
        runs = []
        for rep in range(args.repeats):
            messages = build_prompt(scorer, length, index=7 * rep + length % 11)
            scorer.generate_and_score(messages, max_new_tokens=4)  # warm-up at this length
            result, _, fast_mem = peak_extra_rss(functools.partial(scorer.generate_and_score, messages, **gen_kwargs))
            oracle, oracle_s, oracle_mem = peak_extra_rss(
                functools.partial(scorer.oracle, messages, list(result.token_ids))
            )
            rel = max(
                abs(getattr(result, k) / getattr(oracle, k) - 1)
                for k in ("hybridgrad", "semgrad", "paragrad", "exgrad")
            )
            runs.append(
                {
                    "prompt_tokens": result.n_prompt_tokens,
                    "answer_tokens": result.n_response_tokens,
                    "generate_s": result.timings.generate_s or 0.0,
                    "fast_s": result.timings.score_s,
                    "oracle_s": oracle_s,
                    "fast_peak_mb": fast_mem / 2**20,
                    "oracle_peak_mb": oracle_mem / 2**20,
                    "max_rel_diff": rel,
                }
            )
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        figures.append(med)
        print(
            f"prompt {med['prompt_tokens']:5.0f} tok, answer {med['answer_tokens']:3.0f} tok"
            f" | generate {med['generate_s']:6.2f}s"
            f" | fast {med['fast_s']:5.2f}s ({100 * med['fast_s'] / med['generate_s']:4.1f}% of generation)"
            f" | oracle {med['oracle_s']:6.2f}s ({med['oracle_s'] / med['fast_s']:4.1f}x fast)"
            f" | peak extra RSS fast {med['fast_peak_mb']:5.0f} MB, oracle {med['oracle_peak_mb']:5.0f} MB"
            f" | max rel diff {med['max_rel_diff']:.1e}",
            flush=True,
        )
    first, last = figures[0], figures[-1]
    print()
    print(
        f"fast / generation, worst length : {max(f['fast_s'] / f['generate_s'] for f in figures):.1%}  (target <= 25%)"
    )
    print(f"oracle / fast at longest prompt : {last['oracle_s'] / last['fast_s']:.1f}x  (target >= 5x)")
    print(f"fast longest / fast shortest    : {last['fast_s'] / first['fast_s']:.2f}x  (target <= 1.5x)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
