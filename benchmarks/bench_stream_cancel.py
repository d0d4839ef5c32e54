"""How long the model stays locked after a stream's consumer leaves, in both integrations.

    python benchmarks/bench_stream_cancel.py [--model SRC] [--max-new-tokens 600] [--read 5]

For LangChain's ``ChatGradguard.stream`` and LlamaIndex's ``GradguardLLM.stream_complete`` it reads
``--read`` pieces of a long answer, closes the stream, and measures the time until the scorer's lock
can be taken (generation stopped, nothing scored), next to the median time between pieces (the decode
step). Target: the lock is free within 2x the median decode step (before issue 9, LlamaIndex held it
until the whole answer had been generated and scored: 18.5 s at 600 tokens). Needs the ``langchain``
and ``llama-index`` extras.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

from gradguard import GradScorer
from gradguard.integrations.langchain import ChatGradguard
from gradguard.integrations.llama_index import GradguardLLM

PROMPT = "Write a long, detailed essay about the history of the river Rhine, century by century."


def measure(scorer: GradScorer, open_stream: Callable[[], Iterator[object]], read: int) -> tuple[float, float]:
    """``(median decode step, seconds until the lock is free after closing)``."""
    stream = open_stream()
    steps, last = [], time.perf_counter()
    for _ in range(read + 1):
        next(stream)
        now = time.perf_counter()
        steps.append(now - last)
        last = now
    step = statistics.median(steps[1:])  # the first piece includes the prompt's prefill
    stream.close()  # type: ignore[attr-defined]
    left = time.perf_counter()
    while not scorer.lock.acquire(blocking=False):
        time.sleep(0.0005)
    freed = time.perf_counter() - left
    scorer.lock.release()
    return step, freed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    parser.add_argument("--max-new-tokens", type=int, default=600)
    parser.add_argument("--read", type=int, default=5, help="pieces read before the consumer leaves")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    scorer = GradScorer.from_pretrained(args.model)
    chat = ChatGradguard(scorer=scorer, max_tokens=args.max_new_tokens)
    llm = GradguardLLM(scorer=scorer, max_new_tokens=args.max_new_tokens)
    streams: dict[str, Callable[[], Iterator[object]]] = {
        "langchain ChatGradguard.stream": lambda: iter(chat.stream(PROMPT)),
        "llama-index GradguardLLM.stream_complete": lambda: iter(llm.stream_complete(PROMPT)),
    }
    print(f"model {scorer.model_name}, max_new_tokens {args.max_new_tokens}, consumer leaves after {args.read} pieces")
    print(f"{'stream':<42} {'decode step':>12} {'lock free after':>16} {'ratio':>6}")
    for name, open_stream in streams.items():
        step, freed = measure(scorer, open_stream, args.read)
        print(f"{name:<42} {step * 1000:>10.1f}ms {freed * 1000:>14.1f}ms {freed / step:>6.2f}")


if __name__ == "__main__":
    main()
