"""What scoring each tool call on its own costs, relative to generating the turn.

    python benchmarks/bench_tool_call_scoring.py [--model SRC] [--repeats 3]

For a few tool-calling questions (built in below; nothing is downloaded) it generates the turn with the
tools bound, then times three ways of scoring the same answer, teacher-forced:

- ``message``: the message-level score only (what an answer without tools costs);
- ``per call``: the message-level score plus one score per call, in the one batched pass, with the
  parsing and span mapping (what ``generate_turn`` does after generation).

It prints the generation time and, per call, the extra scoring time over ``message`` as a share of
generation. Medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

from gradguard import GradScorer
from gradguard.integrations._core import GenerationOptions, ToolBinding, generate_turn, score_turn


def _tool(name: str, description: str, **params: str) -> dict[str, Any]:
    properties = {k: {"type": v, "description": k} for k, v in params.items()}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": list(params)},
        },
    }


WEATHER = _tool("get_weather", "Current weather in a city.", city="string", unit="string")
AREA = _tool("triangle_area", "Area of a triangle from its base and height.", base="number", height="number")
CONVERT = _tool("convert_currency", "Convert an amount between currencies.", amount="number", source="string",
                target="string")  # fmt: skip
QUESTIONS: list[tuple[str, list[dict[str, Any]]]] = [
    ("What is the weather in Paris in celsius?", [WEATHER]),
    ("Find the area of a triangle with base 10 and height 5.", [AREA, WEATHER]),
    ("Convert 250 US dollars to euros.", [CONVERT]),
    ("What's the weather in Oslo and in Rome, in fahrenheit?", [WEATHER]),
]


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    scorer = GradScorer.from_pretrained(args.model)
    tok = scorer.tokenizer
    print(f"model {scorer.model_name}; medians of {args.repeats}")
    print(f"{'question':44s} {'calls':>5s} {'gen s':>7s} {'message s':>9s} {'per call s':>10s} "
          f"{'extra/call':>10s}")  # fmt: skip
    shares = []
    for question, tools in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        binding = ToolBinding.create(tok, tools, "auto")
        turn = generate_turn(scorer, messages, binding, GenerationOptions(max_new_tokens=args.max_new_tokens))
        generate_s = turn.result.timings.generate_s or float("nan")
        answer = turn.result.response
        template, rendered = binding.template_messages(messages), binding.template_tools()
        message_s = _median_time(partial(scorer.score, template, answer, tools=rendered, task="tools"), args.repeats)
        per_call_s = _median_time(partial(score_turn, scorer, messages, binding, answer), args.repeats)
        n = len(turn.calls)
        extra = (per_call_s - message_s) / n / generate_s if n else float("nan")
        if n:
            shares.append(extra)
        print(f"{question[:44]:44s} {n:5d} {generate_s:7.2f} {message_s:9.2f} {per_call_s:10.2f} "
              f"{extra:10.1%}")  # fmt: skip
    if shares:
        print(f"median extra scoring time per call: {statistics.median(shares):.1%} of generation")


if __name__ == "__main__":
    main()
