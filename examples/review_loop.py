"""A measured run of the loop guard -> human review -> recalibrate -> fewer answers held.

On the embedded default model (Qwen2.5-Coder-0.5B-Instruct), task ``closed-qa`` or ``rag`` (``--task``):

1. **Cold start.** The model's built-in profile minus the task's calibration is written to
   ``WORKDIR/cold.json``. Without a calibration an answer has no confidence, and the guard fails
   closed: every answer goes to review.
2. **Round 0.** ``--n`` questions from ``--data`` are answered and routed (accept when
   ``confidence >= t``, else escalate to the review queue ``WORKDIR/review.sqlite3``).
3. **Simulated reviewers.** Every held item is resolved by the task's gold-answer judge (the judge
   ``gradguard calibrate`` uses for the task): correct -> ``approved``; wrong -> ``edited`` with the
   first gold answer as the correction (``rejected`` when the line has no gold answer). No human
   looked at anything: the "reviewers" are the judge.
4. **Recalibrate.** ``gradguard calibrate --from-review sqlite:///WORKDIR/review.sqlite3 --task closed-qa
   --profile WORKDIR/cold.json --out WORKDIR/v1.json``, then ``gradguard profile threshold WORKDIR/v1.json
   --epsilon E`` (also printed for looser targets up to 0.9). When no threshold is certified at ``E``, the
   guard keeps holding every answer (``--if-uncertified hold``, the default: it fails closed);
   ``--if-uncertified tightest`` uses the threshold with the tightest Clopper-Pearson bound on the
   out-of-fold error instead (picked after seeing the labels, so no guarantee — it can switch the guard
   almost off, see below).
   Round 0 held *every* answer, so these review labels are a random sample of traffic, not the
   low-confidence slice docs/review_calibration.md warns about.
5. **Round 1.** ``--n`` *other* questions (disjoint by question text) from the same file, scored with
   ``WORKDIR/v1.json`` and routed with the new threshold into ``WORKDIR/review-round1.sqlite3``. The
   script prints how many answers were held in each round and the accuracy (95% Wilson interval) of
   the accepted, the held and all round-1 answers.

Run it from a clone::

    python examples/review_loop.py --data sciq-test.jsonl --workdir /tmp/review_loop \\
        --json /tmp/review_loop/figures.json

The data file is QA JSONL as ``gradguard calibrate --data`` reads it (``query``/``question`` and
``truthful answer``/``answers``). Rounds 0 and 1 are drawn from the same file, so round 1 measures
the refit on the distribution it was fitted on. ``--round2`` also resolves the round-1 held answers
and refits on them alone: the labels then come only from answers the guard held back, a sample chosen
by low confidence (see docs/review_calibration.md, "the bias").

Measured (2 CPU cores, ``--n 100``, reviewers simulated by the judge):

- ``--task rag --data squad2/dev-part.jsonl --epsilon 0.7`` (SQuAD 2.0, half unanswerable): round 0 holds
  100/100, 28 right (Wilson [0.20, 0.38]); the refit on those 100 labels has cv AUROC 0.676 [0.547, 0.810];
  nothing certifies at epsilon 0.3 or 0.5 (the tightest bound is 0.643), epsilon 0.7 certifies threshold
  0.299. Round 1 (100 other questions) holds **74/100**; the 26 accepted answers are 16/26 right (0.615,
  Wilson [0.425, 0.776]) against 21/74 (0.284) held and 37/100 (0.370) overall. With the default epsilon
  0.3 every round-1 answer stays held: 100 labels are too few for a tight guarantee on this model (the
  built-in rag calibration, 1,200 labels, certifies epsilon 0.5 at 37.8% coverage and nothing at 0.3).
- ``--task closed-qa --data sciq/test.jsonl`` (``--if-uncertified tightest``): 4 of 100 round-0 answers
  are right, so the refit sees 4 positive labels and nothing certifies at any epsilon up to 0.9. Seed 0: cv
  AUROC 0.625, threshold 0.041, round 1 holds 70/100 and its accepted answers are 2/30 right (no better than
  held, 3/70). Seed 1: cv AUROC 0.185, threshold 0.020, round 1 holds 1/100. An uncertified threshold can
  switch the guard off; this model needs far more labels (or is the wrong model) for closed-book SciQ.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: The task of this run (``--task``: ``closed-qa``, or ``rag`` on a file with contexts such as SQuAD 2.0).
TASK = "closed-qa"
#: The threshold of the round-0 policy. Without a calibration every answer decides as confidence 0.0,
#: so any threshold above 0 holds every answer; 0.5 is only a placeholder.
ROUND0_THRESHOLD = 0.5
REVIEWER = "sim"


@dataclass(frozen=True)
class Question:
    """One question of the data file with its gold answers."""

    index: int
    query: str
    answers: tuple[str, ...]
    context: str | None = None
    is_impossible: bool = False


@dataclass
class Answered:
    """One routed answer of a round, with what the gold-answer judge says about it."""

    round: int
    index: int
    question: str
    answer: str
    confidence: float | None
    accepted: bool
    reason: str
    review_id: str | None
    correct: bool
    seconds: float


def normalize_question(text: str) -> str:
    """Question text with case and spacing ignored (the key the rounds are kept disjoint on)."""
    return " ".join(text.lower().split())


def split_questions(items: Sequence[Question], n: int, seed: int) -> tuple[list[Question], list[Question]]:
    """Two disjoint random draws of ``n`` questions each; no question text (case and spacing ignored)
    is in both. Repeated question texts are kept once (the first line)."""
    if n < 1:
        raise ValueError(f"n={n} must be a positive number of questions")
    unique: dict[str, Question] = {}
    for item in items:
        unique.setdefault(normalize_question(item.query), item)
    pool = list(unique.values())
    if len(pool) < 2 * n:
        raise ValueError(
            f"the data file has {len(pool)} distinct questions, too few for two disjoint rounds of {n}; "
            f"pass --n {len(pool) // 2} or less"
        )
    random.Random(seed).shuffle(pool)
    return pool[:n], pool[n : 2 * n]


def simulated_verdict(correct: bool, golds: Sequence[str]) -> tuple[str, str | None]:
    """The simulated reviewer's verdict and corrected answer: approved when the judge says correct,
    else edited to the first gold answer (rejected when there is none)."""
    if correct:
        return "approved", None
    if golds:
        return "edited", golds[0]
    return "rejected", None


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion ``k / n`` (None when ``n == 0``)."""
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(rows: Sequence[Answered]) -> dict[str, Any]:
    """``{"n", "correct", "accuracy", "wilson95"}`` of a list of judged answers."""
    k = sum(r.correct for r in rows)
    ci = wilson(k, len(rows))
    return {
        "n": len(rows),
        "correct": k,
        "accuracy": k / len(rows) if rows else None,
        "wilson95": list(ci) if ci else None,
    }


def fmt_acc(a: dict[str, Any]) -> str:
    """``0.123 (12/97, 95% Wilson [0.07, 0.20])`` or ``n/a (0 answers)``."""
    if not a["n"]:
        return "n/a (0 answers)"
    lo, hi = a["wilson95"]
    return f"{a['accuracy']:.3f} ({a['correct']}/{a['n']}, 95% Wilson [{lo:.3f}, {hi:.3f}])"


def load_questions(path: str, keep_impossible: bool = False) -> list[Question]:
    """The questions of a QA JSONL file (``gradguard.data.load_qa``), with their contexts; questions marked
    ``is_impossible`` only with ``keep_impossible`` (a task that can decline, such as ``rag``)."""
    from gradguard.data import load_qa

    return [
        Question(q.index, q.query, tuple(q.answers), q.context, bool(q.is_impossible))
        for q in load_qa(path)
        if keep_impossible or not q.is_impossible
    ]


def make_cold_profile(profile: Any, out: Path) -> Path:
    """Write ``profile`` without its ``closed-qa`` calibration to ``out`` (the cold start)."""
    from gradguard.profiles.io import profile_from_dict, save_profile

    data = profile.model_dump()
    data["calibrations"].pop(TASK, None)
    data["notes"] = (str(data.get("notes") or "") + f" Cold start: the {TASK} calibration was dropped.").strip()
    return save_profile(profile_from_dict(data, source="cold start"), out)


def run_round(
    scorer: Any, questions: Sequence[Question], router: Any, round_no: int, *, progress: bool = True
) -> list[Answered]:
    """Answer, score and route every question; judge each answer against its gold answers (for the report)."""
    from tqdm.auto import tqdm

    from gradguard.calibration.labels import label_answer
    from gradguard.tasks import builtin_task

    task = builtin_task(TASK)
    out: list[Answered] = []
    bar = tqdm(questions, desc=f"round {round_no}", unit="q", disable=not progress)
    for q in bar:
        t0 = time.perf_counter()
        messages = task.messages(q.query, q.context)
        result = scorer.generate_and_score(messages, max_new_tokens=task.max_new_tokens, task=TASK)
        outcome = router.route(q.query, result.response, result)
        out.append(
            Answered(
                round=round_no,
                index=q.index,
                question=q.query,
                answer=result.response,
                confidence=result.confidence,
                accepted=outcome.accepted,
                reason=outcome.decision.reason,
                review_id=outcome.review_id,
                correct=label_answer(task, result.response, q.answers, q.is_impossible),
                seconds=time.perf_counter() - t0,
            )
        )
        bar.set_postfix(held=sum(not a.accepted for a in out), refresh=False)
    return out


def simulate_reviewers(queue: Any, rows: Sequence[Answered], golds: dict[int, tuple[str, ...]]) -> dict[str, int]:
    """Resolve every held answer with the gold-answer judge's verdict; returns the counts by verdict."""
    counts = {"approved": 0, "edited": 0, "rejected": 0}
    for row in rows:
        if row.review_id is None:
            continue
        verdict, corrected = simulated_verdict(row.correct, golds[row.index])
        queue.resolve(row.review_id, verdict, answer=corrected, reviewer=REVIEWER, note="simulated: gold-answer judge")
        counts[verdict] += 1
    return counts


def gradguard_cli(args: Sequence[str]) -> tuple[int, str]:
    """Run ``python -m gradguard.cli ARGS``, echoing its output; returns the exit status and stdout."""
    cmd = [sys.executable, "-m", "gradguard.cli", *args]
    print("$ gradguard " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    print(proc.stdout, end="", flush=True)
    return proc.returncode, proc.stdout


def recalibrate(url: str, base: Path, out: Path, cache: Path) -> float:
    """``gradguard calibrate --from-review URL`` into ``out``; returns the seconds it took.

    Raises ``RuntimeError`` when the command fails (e.g. every review label is wrong: a fit needs both classes).
    """
    t0 = time.perf_counter()
    rc, _ = gradguard_cli(
        [
            "calibrate",
            "--from-review",
            url,
            "--task",
            TASK,
            "--profile",
            str(base),
            "--out",
            str(out),
            "--cache",
            str(cache),
            "--no-progress",
        ]
    )
    if rc != 0:
        raise RuntimeError(f"gradguard calibrate failed (exit {rc}); see its message above")
    return time.perf_counter() - t0


def best_bound_threshold(confidences: Sequence[float], correct: Sequence[int], delta: float) -> dict[str, Any]:
    """The grid threshold whose one-sided Clopper-Pearson upper bound on the accepted error is lowest
    (at the level ``gradguard profile threshold`` tests, ``delta / 10``): the threshold its
    "tightest certifiable upper bound" message names. Chosen after seeing the labels, so the bound is optimistic.
    """
    from gradguard.calibration.thresholds import DEFAULT_GRID, DEFAULT_STARTS, clopper_pearson_upper

    pairs = sorted(zip(confidences, correct, strict=True), key=lambda p: -p[0])
    best: dict[str, Any] = {}
    for lam in DEFAULT_GRID:
        accepted = [ok for c, ok in pairs if c >= lam]
        if not accepted:
            continue
        wrong = len(accepted) - sum(accepted)
        bound = float(clopper_pearson_upper(wrong, len(accepted), delta / DEFAULT_STARTS))
        if not best or bound < best["upper_bound"]:
            best = {"threshold": lam, "upper_bound": bound, "n_accepted": len(accepted), "n_wrong": wrong}
    return best


def choose_threshold(profile_path: Path, epsilon: float, delta: float, uncertified: str = "hold") -> dict[str, Any]:
    """Run ``gradguard profile threshold``; when it certifies none at ``epsilon``: ``uncertified="hold"`` keeps
    every answer held (threshold 1.0: the guard fails closed), ``"tightest"`` falls back to the threshold with the
    tightest bound (what the command's message names), and says so."""
    from gradguard.calibration.thresholds import task_threshold
    from gradguard.profiles.io import load_profile

    # --epsilon E first (the one routed on), then looser targets, so the reader sees what these labels certify
    ladder = [f"{e:g}" for e in dict.fromkeys([epsilon, *(e for e in (0.5, 0.7, 0.8, 0.9) if e > epsilon)])]
    cmd = ["profile", "threshold", str(profile_path), "--task", TASK, "--epsilon", *ladder, "--delta", f"{delta:g}"]
    gradguard_cli(cmd)
    cal = load_profile(profile_path).calibrations[TASK]
    r = task_threshold(load_profile(profile_path), TASK, epsilon, delta)  # what the command above computed
    info: dict[str, Any] = {"epsilon": epsilon, "delta": delta, "certified": r.feasible, "message": r.message}
    n_total = len(cal.holdout_confidence) + cal.n_unscored
    if r.feasible:
        info.update(
            threshold=r.threshold,
            rule=f"risk-controlled: error <= {epsilon:g} w.p. >= {1 - delta:g} (Learn-then-Test)",
            calibration_coverage=r.expected_coverage,
            upper_bound=r.upper_bound,
        )
        return info
    if uncertified == "hold":
        info.update(threshold=1.0, rule=f"NOT certified at epsilon={epsilon:g}: every answer stays held (fail closed)")
        print(f"NOT CERTIFIED at epsilon={epsilon:g}: the guard keeps holding every answer (--if-uncertified hold).")
        return info
    best = best_bound_threshold(cal.holdout_confidence, cal.holdout_correct, delta)
    if not best:
        raise SystemExit("the refit has no out-of-fold confidences; cannot choose a threshold")
    info.update(
        threshold=best["threshold"],
        rule=f"NOT certified at epsilon={epsilon:g}; tightest-bound threshold (bound {best['upper_bound']:.3f})",
        upper_bound=best["upper_bound"],
        calibration_coverage=best["n_accepted"] / n_total,
        best_bound=best,
    )
    print(
        f"NOT CERTIFIED: no threshold guarantees an error <= {epsilon:g} among accepted answers at delta={delta:g} "
        f"on these {n_total} review labels. Falling back to the threshold with the tightest bound: "
        f"confidence >= {best['threshold']:.3f} ({best['n_accepted']} of {n_total} out-of-fold answers accepted, "
        f"{best['n_wrong']} wrong; Clopper-Pearson upper bound {best['upper_bound']:.3f} on their error, optimistic "
        "because the threshold was picked after seeing the labels)."
    )
    return info


def calibration_summary(profile_path: Path) -> dict[str, Any]:
    """The refit's sample: labels, correct, cross-validated AUROC and the review verdicts it used."""
    from gradguard.profiles.io import load_profile

    cal = load_profile(profile_path).calibrations[TASK]
    return {
        "n": cal.n,
        "n_correct": cal.n_correct,
        "base_rate": cal.n_correct / cal.n if cal.n else None,
        "cv_auroc": cal.cv.auroc,
        "cv_auroc_ci": list(cal.cv.auroc_ci) if cal.cv.auroc_ci else None,
        "n_from_review": cal.data.n_from_review,
        "review_verdicts": dict(cal.data.review_verdicts or {}),
    }


def router_for(threshold: float, queue: Any, round_no: int) -> Any:
    """Accept when confidence >= ``threshold``, else escalate to the human review queue."""
    from gradguard.review import human_review_target
    from gradguard.routing import Action, Router, RoutingPolicy

    policy = RoutingPolicy.threshold(threshold, Action.ESCALATE, "human")
    return Router(policy, targets={"human": human_review_target(queue, metadata={"round": round_no})})


def summarize_round(rows: Sequence[Answered]) -> dict[str, Any]:
    """Held count and accuracies (accepted, held, all) of one round."""
    held = [r for r in rows if not r.accepted]
    accepted = [r for r in rows if r.accepted]
    reasons: dict[str, int] = {}
    for r in held:
        key = r.reason.split(";")[0].split(":")[0] if r.confidence is None else "below threshold / out of domain"
        reasons[key] = reasons.get(key, 0) + 1
    confs = [r.confidence for r in rows if r.confidence is not None]
    return {
        "n": len(rows),
        "held": len(held),
        "held_share": len(held) / len(rows) if rows else None,
        "held_reasons": reasons,
        "accepted": accuracy(accepted),
        "held_accuracy": accuracy(held),
        "all": accuracy(rows),
        "mean_confidence": sum(confs) / len(confs) if confs else None,
        "seconds": sum(r.seconds for r in rows),
        "seconds_per_question": sum(r.seconds for r in rows) / len(rows) if rows else None,
    }


def print_round(name: str, s: dict[str, Any]) -> None:
    """Print one round's figures."""
    print(f"{name}: held {s['held']}/{s['n']} ({s['held_share']:.1%}); reasons {s['held_reasons']}")
    print(f"  accepted answers: {fmt_acc(s['accepted'])}")
    print(f"  held answers:     {fmt_acc(s['held_accuracy'])}")
    print(f"  all answers:      {fmt_acc(s['all'])}")
    print(f"  time: {s['seconds']:.0f} s ({s['seconds_per_question']:.2f} s/question)")


def write_json(fig: dict[str, Any], path: str | None, rows: Sequence[Answered]) -> None:
    """Write the figures and every routed answer to ``path`` (nothing when None)."""
    if path is None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**fig, "rows": [asdict(r) for r in rows]}, indent=2), encoding="utf-8")
    print(f"wrote {path}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="QA JSONL file (query/question, truthful answer/answers)")
    p.add_argument(
        "--task", default="closed-qa", choices=["closed-qa", "rag"], help="the task (rag needs contexts in the file)"
    )
    p.add_argument(
        "--if-uncertified",
        default="hold",
        choices=["hold", "tightest"],
        help="when no threshold is certified at --epsilon: keep holding every answer (default), or use the "
        "tightest-bound threshold (unsafe: it may switch the guard almost off)",
    )
    p.add_argument(
        "--workdir", default="review_loop", help="folder for profiles, queues and cache (default ./review_loop)"
    )
    p.add_argument("--n", type=int, default=150, help="questions per round (default 150)")
    p.add_argument("--seed", type=int, default=0, help="seed of the disjoint split into rounds (default 0)")
    p.add_argument("--epsilon", type=float, default=0.3, help="target error among accepted answers (default 0.3)")
    p.add_argument("--delta", type=float, default=0.1, help="failure probability of the threshold (default 0.1)")
    p.add_argument("--round2", action="store_true", help="also refit on the round-1 held answers alone (the bias)")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        p.error(f'--data {args.data!r}: no such file; pass a QA JSONL file (one {{"query", "answers"}} per line)')
    if not 0 < args.epsilon < 1:
        p.error(f"--epsilon {args.epsilon}: must lie in (0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the loop and print (and optionally write) its figures."""
    args = parse_args(argv)
    global TASK
    TASK = args.task  # every step of this run uses the chosen task
    from gradguard import GradScorer
    from gradguard.data import DataFormatError
    from gradguard.review import open_review_queue

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("review.sqlite3", "review-round1.sqlite3"):
        if (work / stale).exists():
            raise SystemExit(f"{work / stale} exists from an earlier run; pass a fresh --workdir or delete it")
    try:
        questions = load_questions(args.data, keep_impossible=TASK == "rag")
        round0_q, round1_q = split_questions(questions, args.n, args.seed)
    except (DataFormatError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    golds = {q.index: q.answers for q in questions}
    fig: dict[str, Any] = {
        "data": str(args.data),
        "n": args.n,
        "seed": args.seed,
        "task": TASK,
        "reviewers": "simulated by the gold-answer judge (containment), not humans",
    }
    print(
        f"{len(questions)} questions in {args.data}; round 0 and round 1 each take {args.n} distinct questions "
        f"(disjoint by text, seed {args.seed}) from this same file, so both rounds share one distribution."
    )
    print("Reviewers are SIMULATED: each held answer is resolved by the task's gold-answer judge.")

    t0 = time.perf_counter()
    scorer = GradScorer.from_pretrained(task=TASK)
    fig["load_s"] = time.perf_counter() - t0
    cold = make_cold_profile(scorer.profile, work / "cold.json")
    del scorer
    scorer = GradScorer.from_pretrained(profile=str(cold), task=TASK)
    print(
        f"model {scorer.model_name} loaded in {fig['load_s']:.1f} s; cold-start profile {cold} "
        f"(calibrated tasks: {sorted(scorer.profile.calibrations)})"
    )

    url0 = f"sqlite:///{work / 'review.sqlite3'}"
    queue0 = open_review_queue(url0)
    rows0 = run_round(scorer, round0_q, router_for(ROUND0_THRESHOLD, queue0, 0), 0, progress=not args.no_progress)
    fig["round0"] = summarize_round(rows0)
    fig["round0"]["threshold"] = ROUND0_THRESHOLD
    print_round("round 0 (cold start, no calibration: fail closed)", fig["round0"])
    fig["round0"]["verdicts"] = simulate_reviewers(queue0, rows0, golds)
    print(f"simulated reviewers resolved the held items: {fig['round0']['verdicts']}")
    queue0.close()

    try:
        fig["recalibrate_s"] = recalibrate(url0, cold, work / "v1.json", work / "cache")
    except RuntimeError as exc:
        fig["error"] = str(exc)
        write_json(fig, args.json, [*rows0])
        print(f"stopped after round 0: {exc}")
        return 1
    fig["v1"] = calibration_summary(work / "v1.json")
    fig["threshold"] = choose_threshold(work / "v1.json", args.epsilon, args.delta, args.if_uncertified)
    t = float(fig["threshold"]["threshold"])
    print(f"round-1 threshold: {t:.3f} ({fig['threshold']['rule']})")

    del scorer
    scorer = GradScorer.from_pretrained(profile=str(work / "v1.json"), task=TASK)
    url1 = f"sqlite:///{work / 'review-round1.sqlite3'}"
    queue1 = open_review_queue(url1)
    rows1 = run_round(scorer, round1_q, router_for(t, queue1, 1), 1, progress=not args.no_progress)
    fig["round1"] = summarize_round(rows1)
    fig["round1"]["threshold"] = t
    print_round(f"round 1 (v1 profile, threshold {t:.3f}; other questions of the same file)", fig["round1"])

    if args.round2:
        fig["round1"]["verdicts"] = simulate_reviewers(queue1, rows1, golds)
        queue1.close()
        if fig["round1"]["held"] and 0 < fig["round1"]["held_accuracy"]["correct"] < fig["round1"]["held"]:
            try:
                fig["recalibrate_round2_s"] = recalibrate(url1, cold, work / "v2-held-only.json", work / "cache")
                fig["v2_held_only"] = calibration_summary(work / "v2-held-only.json")
                fig["v2_threshold"] = choose_threshold(
                    work / "v2-held-only.json", args.epsilon, args.delta, args.if_uncertified
                )
            except RuntimeError as exc:
                fig["round2_error"] = str(exc)
                print(f"round 2 refit failed: {exc}")
        else:
            print("round 2 skipped: the round-1 held answers are all right or all wrong (a refit needs both)")
    else:
        queue1.close()

    fig["total_s"] = time.perf_counter() - t0
    print("\nSUMMARY (reviewers simulated by the gold-answer judge; both rounds from the same file)")
    print(
        f"  held: round 0 {fig['round0']['held']}/{args.n}, round 1 {fig['round1']['held']}/{args.n} "
        f"({fig['round1']['held_share']:.1%}) at threshold {t:.3f} ({fig['threshold']['rule']})"
    )
    print(
        f"  v1 refit: {fig['v1']['n']} review labels, {fig['v1']['n_correct']} correct, "
        f"cv AUROC {fig['v1']['cv_auroc']}"
    )
    print(f"  round 1 accepted: {fmt_acc(fig['round1']['accepted'])}")
    print(f"  round 1 held:     {fmt_acc(fig['round1']['held_accuracy'])}")
    print(f"  round 1 all:      {fmt_acc(fig['round1']['all'])}")
    if "v2_held_only" in fig:
        v1, v2 = fig["v1"], fig["v2_held_only"]
        print(
            f"  round-2 refit on round-1 held answers only: base rate {v2['base_rate']:.3f} "
            f"(v1, fitted on all round-0 traffic: {v1['base_rate']:.3f}); threshold "
            f"{fig['v2_threshold']['threshold']:.3f} ({fig['v2_threshold']['rule']})"
        )
    print(f"  total {fig['total_s']:.0f} s")
    write_json(fig, args.json, [*rows0, *rows1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
