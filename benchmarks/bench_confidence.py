"""What computing the calibrated confidence adds to scoring, per task, on the embedded model.

    python benchmarks/bench_confidence.py [--model SRC] [--repeats 3]

For each built-in task it scores the same answers twice — with the task's calibration (the scoring
pass keeps the probe's hidden states, then the probe, logistic model and domain distance run) and
with no calibration (the bare scores) — and prints the median scoring time of each, the median of
their paired differences (runs alternate, so a drifting machine hurts both alike), and the time to
apply the calibration alone to one result — the probe, logistic model and domain distance — as a
share of the bare scoring time (the part of the difference that is not noise). Prompts and answers
are written into this script; nothing is read from outside the repository. Target: the confidence
adds at most 2% to the scoring time.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from gradguard import GradScorer
from gradguard.tasks import BUILTIN_TASKS

PASSAGE = (
    "The Rhine is a river that begins in the Swiss canton of Graubünden in the southeastern Swiss Alps, "
    "forms part of the Swiss-Austrian, Swiss-Liechtenstein, Swiss-German and then the Franco-German border, "
    "then flows through the German Rhineland and the Netherlands and eventually empties into the North Sea. "
    "It is the second-longest river in Central and Western Europe, at about 1,230 km."
)
CASES = {
    "chat": [
        ("Who proposed the theory of evolution by natural selection?", "It was proposed by Charles Darwin in 1859."),
        ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air for photosynthesis."),
        ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ],
    "closed-qa": [
        ("What is the chemical symbol of gold?", "Au"),
        ("Which organelle makes ATP?", "mitochondria"),
        ("What force keeps planets in orbit?", "gravity"),
    ],
    "rag": [
        ("Where does the Rhine begin?", "the Swiss canton of Graubünden"),
        ("How long is the Rhine?", "about 1,230 km"),
        ("Who owns the Rhine?", "unanswerable"),
    ],
}


def paired(bare: GradScorer, calibrated: GradScorer, task: str, repeats: int) -> tuple[float, float, float]:
    """Median scoring time bare, calibrated, and the median of the paired differences (runs alternate)."""
    spec = BUILTIN_TASKS[task]
    bare_t, cal_t, diffs = [], [], []
    for _ in range(repeats):
        for question, answer in CASES[task]:
            messages = spec.messages(question, PASSAGE) if spec.needs_context else spec.messages(question)
            pair = []
            for scorer in (bare, calibrated):
                started = time.perf_counter()
                scorer.score(messages, answer, task=task)
                pair.append(time.perf_counter() - started)
            bare_t.append(pair[0])
            cal_t.append(pair[1])
            diffs.append(pair[1] - pair[0])
    return statistics.median(bare_t), statistics.median(cal_t), statistics.median(diffs)


def apply_time(scorer: GradScorer, task: str, n: int = 50) -> float:
    """Seconds to apply the task's calibration to one kept result (the probe, the logistic model, the domain)."""
    from gradguard.calibration.model import predict, required_layers

    spec = BUILTIN_TASKS[task]
    cal = scorer.profile.calibrations[task]
    question, answer = CASES[task][0]
    messages = spec.messages(question, PASSAGE) if spec.needs_context else spec.messages(question)
    scorer.hidden_layers = required_layers(cal.calibrator, cal.domain)
    try:
        result = scorer.score(messages, answer, task=task)
    finally:
        scorer.hidden_layers = ()
    started = time.perf_counter()
    for _ in range(n):
        predict(cal.calibrator, cal.domain, result)
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    calibrated = GradScorer.from_pretrained(args.model)
    bare = GradScorer(
        calibrated.model,
        calibrated.tokenizer,
        model_name=calibrated.model_name,
        profile=calibrated.profile.model_copy(update={"calibrations": {}}),
    )
    print(f"model {calibrated.model_name}; {args.repeats} x 3 answers per task, bare and calibrated runs alternating")
    print(f"{'task':<10} {'bare':>9} {'calibrated':>11} {'paired diff':>12} {'apply':>8} {'apply/bare':>11}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bare scorer warns that it has no calibration
        for task in CASES:
            paired(bare, calibrated, task, 1)  # warm-up
            b, c, d = paired(bare, calibrated, task, args.repeats)
            a = apply_time(calibrated, task)
            print(
                f"{task:<10} {b * 1000:8.1f}ms {c * 1000:10.1f}ms {d * 1000:+11.1f}ms {a * 1000:6.2f}ms"
                f" {100 * a / b:10.2f}%"
            )


if __name__ == "__main__":
    main()
