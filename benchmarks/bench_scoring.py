"""Scoring cost against generation and the oracle, over a matrix of answer lengths × prompt lengths.

    python benchmarks/bench_scoring.py [--model SRC] [--device cpu|cuda|auto] [--dtype float32|bfloat16|float16]
        [--answer-tokens 4,8,32,128] [--lengths 64,512,2048] [--repeats 3] [--no-oracle] [--json PATH]

Every prompt is built in this script (a science question preceded by RAG-like context made of other
questions and answers): nothing outside the repository is read. The model defaults to the embedded
Qwen2.5-Coder-0.5B-Instruct. For each cell (prompt of about ``L`` tokens, answer of exactly ``n`` tokens,
greedy) and each of ``--repeats`` runs (a different question per run) it measures:

- ``generate_s`` and ``score_s``: :meth:`GradScorer.generate_and_score`'s own timings, and their ratio
  (computed per run; a cell shows the median of the per-run ratios);
- ``oracle_s``: the straightforward computation (:meth:`GradScorer.oracle`) on the same answer, and
  ``oracle_x`` = oracle_s / score_s, plus ``max_rel_diff``, the largest relative difference of the four
  scores between the two;
- ``peak_extra_mb``: the peak extra memory of the scoring phase alone (the high-water mark above the
  memory in use when scoring starts): resident memory on the CPU (the kernel's VmHWM, reset before the
  phase, after the heap's free memory is handed back to the kernel), allocated memory on a GPU;
  ``oracle_peak_mb`` the same for the oracle;
- ``score_path``: ``reuse`` (scoring ran on what generation saved) or ``exact``.

Targets: scoring ≤ 15% of generation for answers of ≥ 8 tokens and ≤ 25% for 4-token answers; ≥ 20× faster
than the oracle at 2,048-token prompts; peak extra memory at 256-token answers ≤ 2× that at 32-token answers
(add 256 to ``--answer-tokens`` to check it; the default matrix compares 128 with 32).

Timings on a shared machine are noisy: keep ``--repeats`` ≥ 3 (medians are reported), and keep other work
off the machine. The default matrix takes a while on a CPU; each cell's line is printed as it finishes.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from gradguard import GradScorer

T = TypeVar("T")

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

#: The four scores compared between the fast path and the oracle.
SCORES: tuple[str, ...] = ("hybridgrad", "semgrad", "paragrad", "exgrad")

#: Keys every JSON row carries (one row per cell, medians over its runs).
ROW_KEYS: tuple[str, ...] = (
    "target_prompt_tokens",
    "target_answer_tokens",
    "runs",
    "prompt_tokens",
    "answer_tokens",
    "generate_s",
    "score_s",
    "ratio",
    "oracle_s",
    "oracle_x",
    "peak_extra_mb",
    "oracle_peak_mb",
    "max_rel_diff",
    "score_path",
)

#: Per-run figures whose cell value is the median over the runs (None values are left out; all None gives None).
MEDIAN_KEYS: tuple[str, ...] = ROW_KEYS[3:-1]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

MIB = 2**20


# --------------------------------------------------------------------------------------------- arguments


def parse_int_list(text: str) -> list[int]:
    """``"4,8,32"`` → ``[4, 8, 32]``: positive integers, comma-separated, duplicates dropped (order kept)."""
    items = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, got {text!r}")
    values: list[int] = []
    for part in items:
        try:
            value = _positive_int(part)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (in {text!r}: positive numbers of tokens)") from None
        if value not in values:
            values.append(value)
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id, folder or .gguf file (default: the embedded model)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where the model runs")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="the model's dtype")
    parser.add_argument(
        "--answer-tokens",
        type=parse_int_list,
        default=[4, 8, 32, 128],
        help="answer lengths in tokens, comma-separated (default 4,8,32,128; add 256 for the memory target)",
    )
    parser.add_argument(
        "--lengths",
        type=parse_int_list,
        default=[64, 512, 2048],
        help="prompt lengths in tokens, comma-separated (default 64,512,2048)",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, default=3, help="runs per cell, one question each (medians are reported)"
    )
    parser.add_argument("--no-oracle", action="store_true", help="skip the oracle (its fields are then null)")
    parser.add_argument(
        "--json", type=Path, default=None, help="write the cell rows here (a JSON list; metadata in PATH.meta.json)"
    )
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ prompts


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


def question_index(length: int, repeat: int) -> int:
    """The question asked in run ``repeat`` at prompt length ``length``: a different one per run (7 and 24 are
    coprime, so 24 runs never repeat a question)."""
    return 7 * repeat + length % 11


# ------------------------------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc


def release_free_heap() -> None:
    """Hand the heap's free memory back to the kernel (glibc's ``malloc_trim``; nothing elsewhere), so that a phase's
    allocations show in the RSS instead of hiding in memory an earlier phase freed but the allocator kept."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _reset_hwm() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS; False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@functools.cache
def hwm_reset_works() -> bool:
    """Whether resetting VmHWM works here (checked once: after a reset it must be close to the current RSS)."""
    try:
        if not _reset_hwm():
            return False
        return _vm_hwm_bytes() <= _rss_bytes() + 4 * MIB
    except OSError:
        return False


def _sampled_peak(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn`` while a thread reads the RSS every millisecond; its value and the peak RSS above the start."""
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
    try:
        value = fn()
    finally:
        done.set()
        sampler.join()
    return value, max(0, max(peak, _rss_bytes()) - start)


def measure_peak(fn: Callable[[], T], device: torch.device | None = None) -> tuple[T, float, int | None]:
    """Run ``fn``; return its value, its wall time and its peak extra memory in bytes (None when unmeasurable).

    On a CUDA ``device``: the peak of ``torch.cuda.max_memory_allocated`` above what was allocated at the start.
    Elsewhere: the resident set's high-water mark (VmHWM, reset just before) above the RSS at the start; where the
    kernel cannot reset VmHWM, a thread samples the RSS every millisecond instead (it may miss short spikes). The
    heap's free memory is handed back to the kernel first (:func:`release_free_heap`), else allocations reusing it
    would not show.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        value = fn()
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        return value, elapsed, max(0, torch.cuda.max_memory_allocated(device) - base)
    if not os.path.exists("/proc/self/statm"):
        t0 = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - t0, None
    release_free_heap()
    if hwm_reset_works():
        before = _rss_bytes()
        _reset_hwm()
        t0 = time.perf_counter()
        value = fn()
        elapsed = time.perf_counter() - t0
        return value, elapsed, max(0, _vm_hwm_bytes() - before)
    t0 = time.perf_counter()
    value, peak = _sampled_peak(fn)
    return value, time.perf_counter() - t0, peak


class ScoringProbe:
    """Peak extra memory of each scoring phase: installed on a scorer by :func:`install_scoring_probe`."""

    def __init__(self, device: torch.device | None) -> None:
        self.device = device
        self.peaks: list[int | None] = []


def install_scoring_probe(scorer: GradScorer) -> ScoringProbe:
    """Wrap ``scorer._score_ids`` (on this instance only) so that each call's peak extra memory is recorded.

    :meth:`GradScorer.generate_and_score` calls ``self._score_ids`` once generation is over: that call is the
    scoring phase, and the wrapper measures it alone (generation's memory is not counted).
    """
    probe = ScoringProbe(device=_model_device(scorer))
    original = scorer._score_ids

    @functools.wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        value, _, peak = measure_peak(lambda: original(*args, **kwargs), probe.device)
        probe.peaks.append(peak)
        return value

    scorer._score_ids = wrapped  # type: ignore[method-assign]
    return probe


def _model_device(scorer: GradScorer) -> torch.device:
    return next(scorer.model.parameters()).device


# --------------------------------------------------------------------------------------------------- runs


def max_rel_diff(result: Any, oracle: Any) -> float:
    """The largest relative difference of :data:`SCORES` between ``result`` and ``oracle`` (the reference)."""
    return max(abs(getattr(result, k) - getattr(oracle, k)) / max(abs(getattr(oracle, k)), 1e-12) for k in SCORES)


def run_once(
    scorer: GradScorer, probe: ScoringProbe, messages: list[dict[str, str]], n: int, oracle: bool = True
) -> dict[str, Any]:
    """One run: an answer of exactly ``n`` tokens (greedy) generated and scored, then (unless not ``oracle``)
    the oracle on the same answer. Returns the run's figures (keys as in :data:`ROW_KEYS`, less the cell's)."""
    probe.peaks.clear()
    result = scorer.generate_and_score(messages, max_new_tokens=n, min_new_tokens=n)
    peak = probe.peaks[-1] if probe.peaks else None
    timings = result.timings
    generate_s = timings.generate_s
    run: dict[str, Any] = {
        "prompt_tokens": result.n_prompt_tokens,
        "answer_tokens": result.n_response_tokens,
        "generate_s": generate_s,
        "score_s": timings.score_s,
        "ratio": timings.score_s / generate_s if generate_s else None,
        "oracle_s": None,
        "oracle_x": None,
        "peak_extra_mb": None if peak is None else peak / MIB,
        "oracle_peak_mb": None,
        "max_rel_diff": None,
        "score_path": getattr(timings, "score_path", None),
    }
    if oracle:
        reference, oracle_s, oracle_peak = measure_peak(
            lambda: scorer.oracle(messages, list(result.token_ids)), probe.device
        )
        run["oracle_s"] = oracle_s
        run["oracle_x"] = oracle_s / timings.score_s if timings.score_s > 0 else None
        run["oracle_peak_mb"] = None if oracle_peak is None else oracle_peak / MIB
        run["max_rel_diff"] = max_rel_diff(result, reference)
    return run


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def aggregate(runs: Sequence[dict[str, Any]], target_prompt_tokens: int, target_answer_tokens: int) -> dict[str, Any]:
    """A cell's row: the median of each per-run figure (the ratios are medians of the per-run ratios, not ratios
    of medians); ``score_path`` is the runs' common path, or ``"mixed"``."""
    if not runs:
        raise ValueError("a cell needs at least one run")
    row: dict[str, Any] = {
        "target_prompt_tokens": target_prompt_tokens,
        "target_answer_tokens": target_answer_tokens,
        "runs": len(runs),
    }
    for key in MEDIAN_KEYS:
        row[key] = _median([r.get(key) for r in runs])
    paths = {r.get("score_path") for r in runs} - {None}
    row["score_path"] = paths.pop() if len(paths) == 1 else ("mixed" if paths else None)
    return row


# ------------------------------------------------------------------------------------------------ summary


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures the targets are about, from the cell rows (None where the matrix lacks the cells):

    - ``worst_ratio_ge8``: the largest ratio among cells with answers of ≥ 8 tokens (target ≤ 0.15);
    - ``worst_ratio_lt8``: the largest ratio among cells with shorter answers, 4 by default (target ≤ 0.25);
    - ``oracle_x_longest``: the smallest oracle/score among cells at the longest prompt (target ≥ 20), and
      ``longest_prompt`` its target length;
    - ``memory``: peak extra memory at the longest answer against 32-token answers (target ≤ 2× with 256 tokens),
      at the prompt length where that ratio is worst: ``{"prompt", "answer", "peak_mb", "peak_32_mb", "x"}``
      (``x`` None: unbounded, nothing extra at 32 tokens).
    """

    def worst(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    summary: dict[str, Any] = {
        "worst_ratio_ge8": worst([r["ratio"] for r in rows if r["target_answer_tokens"] >= 8]),
        "worst_ratio_lt8": worst([r["ratio"] for r in rows if r["target_answer_tokens"] < 8]),
        "longest_prompt": None,
        "oracle_x_longest": None,
        "memory": None,
    }
    if rows:
        longest = max(r["target_prompt_tokens"] for r in rows)
        xs = [r["oracle_x"] for r in rows if r["target_prompt_tokens"] == longest and r["oracle_x"] is not None]
        summary["longest_prompt"] = longest
        summary["oracle_x_longest"] = min(xs) if xs else None
        answers = {r["target_answer_tokens"] for r in rows}
        top = max(answers)
        if 32 in answers and top > 32:
            found: dict[str, Any] | None = None
            for prompt in sorted({r["target_prompt_tokens"] for r in rows}):
                cells = {r["target_answer_tokens"]: r for r in rows if r["target_prompt_tokens"] == prompt}
                if top not in cells or 32 not in cells:
                    continue
                peak, base = cells[top]["peak_extra_mb"], cells[32]["peak_extra_mb"]
                if peak is None or base is None:
                    continue
                x = peak / base if base > 0 else (1.0 if peak <= 0 else None)  # None: unbounded (nothing at 32)
                if found is None or (found["x"] is not None and (x is None or x > found["x"])):
                    found = {"prompt": prompt, "answer": top, "peak_mb": peak, "peak_32_mb": base, "x": x}
            summary["memory"] = found
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary, as printed at the end."""

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    lines: list[str] = []
    ge8, lt8, ox = summary["worst_ratio_ge8"], summary["worst_ratio_lt8"], summary["oracle_x_longest"]
    if ge8 is not None:
        lines.append(
            f"score / generate, worst cell with answers >= 8 tok: {ge8:.1%} (target <= 15%) {verdict(ge8 <= 0.15)}"
        )
    if lt8 is not None:
        lines.append(
            f"score / generate, worst cell with answers < 8 tok: {lt8:.1%} (target <= 25%) {verdict(lt8 <= 0.25)}"
        )
    if ox is not None:
        longest = summary["longest_prompt"]
        check = verdict(ox >= 20) if longest >= 2048 else "(the target is for 2048-token prompts)"
        lines.append(f"oracle / score, worst cell at {longest}-tok prompts: {ox:.1f}x (target >= 20x) {check}")
    mem = summary["memory"]
    if mem is not None:
        x = "unbounded (nothing at 32)" if mem["x"] is None else f"{mem['x']:.2f}x"
        ok = mem["x"] is not None and mem["x"] <= 2
        check = verdict(ok) if mem["answer"] >= 256 else "(the target is for 256-token answers)"
        lines.append(
            f"peak extra memory, {mem['answer']} vs 32-tok answers at {mem['prompt']}-tok prompts:"
            f" {mem['peak_mb']:.1f} MB vs {mem['peak_32_mb']:.1f} MB = {x} (target <= 2x) {check}"
        )
    return lines


def format_row(row: dict[str, Any]) -> str:
    """One cell's line."""

    def num(key: str, spec: str, suffix: str = "", scale: float = 1.0) -> str:
        value = row.get(key)
        if value is None:
            width = len(format(0.0, spec)) + len(suffix)
            return "-".rjust(width)
        return f"{value * scale:{spec}}{suffix}"

    return (
        f"prompt {row['prompt_tokens']:5.0f} tok, answer {row['answer_tokens']:4.0f} tok"
        f" | generate {num('generate_s', '7.3f', 's')} | score {num('score_s', '6.3f', 's')}"
        f" ({num('ratio', '5.1f', '%', 100)} of generate)"
        f" | oracle {num('oracle_s', '7.3f', 's')} ({num('oracle_x', '6.1f', 'x')} score)"
        f" | peak extra {num('peak_extra_mb', '7.1f', ' MB')} (oracle {num('oracle_peak_mb', '7.1f', ' MB')})"
        f" | max rel diff {num('max_rel_diff', '.1e')} | path {row.get('score_path') or '-'}"
    )


# --------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    dtype = DTYPES[args.dtype]
    scorer = GradScorer.from_pretrained(args.model, device=args.device, dtype=dtype)
    device = _model_device(scorer)
    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    meta = {
        "model": scorer.model_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": args.dtype,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "oracle": not args.no_oracle,
        "memory": "cuda allocated" if device.type == "cuda" else ("VmHWM" if hwm_reset_works() else "sampled RSS"),
    }
    print(
        f"model {meta['model']} loaded in {time.perf_counter() - t0:.1f}s | torch {meta['torch']}"
        f" | {meta['threads']} threads | device {where} | dtype {args.dtype}"
        f" | {meta['cpu']}, {meta['cpus']} CPUs | peak memory: {meta['memory']}",
        flush=True,
    )
    probe = install_scoring_probe(scorer)
    cells = [(length, n) for length in args.lengths for n in args.answer_tokens]
    rows: list[dict[str, Any]] = []
    prompts: dict[tuple[int, int], list[dict[str, str]]] = {}
    warmed: set[int] = set()
    started = time.perf_counter()
    for k, (length, n) in enumerate(cells, 1):
        print(
            f"cell {k}/{len(cells)}: prompt ~{length} tok, answer {n} tok, {args.repeats} run(s)"
            f" [{time.perf_counter() - started:.0f}s elapsed] ...",
            flush=True,
        )
        for rep in range(args.repeats):
            if (length, rep) not in prompts:
                prompts[length, rep] = build_prompt(scorer, length, question_index(length, rep))
        if length not in warmed:
            scorer.generate_and_score(prompts[length, 0], max_new_tokens=2)
            warmed.add(length)
        runs = [
            run_once(scorer, probe, prompts[length, rep], n, oracle=not args.no_oracle) for rep in range(args.repeats)
        ]
        row = aggregate(runs, length, n)
        rows.append(row)
        print("  " + format_row(row), flush=True)
    summary = summarize(rows)
    print()
    for line in summary_lines(summary):
        print(line)
    print(f"({len(cells)} cells in {time.perf_counter() - started:.0f}s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        meta_path = args.json.with_name(args.json.name + ".meta.json")
        meta_path.write_text(json.dumps({**meta, "args": _jsonable(vars(args)), "summary": summary}, indent=2) + "\n")
        print(f"rows written to {args.json}, metadata to {meta_path}")


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


if __name__ == "__main__":
    main()
