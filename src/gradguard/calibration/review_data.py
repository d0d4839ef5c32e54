"""Resolved review items as calibration data: ``gradguard calibrate --from-review URL --task T``.

The loop: the guard holds back a low-confidence answer, a reviewer resolves it, and the verdict
becomes a label for the next fit of the task's calibration.

1. :func:`read_review_items` opens the queue (:func:`open_review_store`) and reads every item.
2. :func:`select_review_items` keeps the resolved items of task ``T`` answered by the model being
   calibrated and stored with their chat messages: ``approved`` → correct (1), ``edited`` or
   ``rejected`` → wrong (0). Pending items never count; items without a task only with
   ``include_untasked``. The rest are counted by reason (:meth:`ReviewSelection.summary`).
3. :func:`score_review_items` re-scores each kept item's original ``answer`` teacher-forced under
   its exact ``messages`` (``scorer.score(messages, answer, task=T)``) into :class:`ReviewRecord` rows,
   which carry the verdict as a fixed label and the reviewer's correction as the reference answer.
4. :func:`group_by_question` joins rows that share a question text (and a data file's rows that
   share a fold group) into one cross-validation group, so one question never lies on both sides
   of a fold; :func:`with_review_provenance` records in the fitted calibration how many labels
   came from review and from which queue (password masked).

Held-back items are a low-confidence sample, not a random one: see ``docs/review_calibration.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from gradguard.calibration.harness import CachedRecord, encode_hidden
from gradguard.calibration.model import scalar_features
from gradguard.errors import GradguardError, InputError
from gradguard.result import HiddenStates, ScoreResult
from gradguard.review.errors import ReviewStoreError
from gradguard.review.queue import ReviewItem
from gradguard.review.urls import is_url, mask_url, open_review_queue, sqlite_path_from_url
from gradguard.scores import FEATURES
from gradguard.tasks import BUILTIN_TASKS, Task

__all__ = [
    "REVIEW_SOURCE",
    "REVIEW_LABELS",
    "NO_MESSAGES_REASON",
    "ReviewCalibrationError",
    "ReviewRecord",
    "ReviewSelection",
    "mask_url",
    "open_review_store",
    "read_review_items",
    "select_review_items",
    "score_review_items",
    "group_by_question",
    "check_review_labels",
    "review_digest",
    "with_review_provenance",
]

#: The data "file" a calibration fitted on review items alone names.
REVIEW_SOURCE = "review queue"
#: Verdict → label: was the model's answer correct?
REVIEW_LABELS: dict[str, bool] = {"approved": True, "edited": False, "rejected": False}
#: Why an item without messages cannot be re-scored.
NO_MESSAGES_REASON = "enqueued before gradguard stored messages"
_NONE = "(none)"


class ReviewCalibrationError(InputError):
    """The review queue gives no usable labels for the task (none resolved, none usable, one class only)."""


class ReviewRecord(CachedRecord):
    """A re-scored review item: the model's original answer, scored under the item's messages, with the verdict.

    ``label`` is the human verdict (``approved`` → True; ``edited``/``rejected`` → False) and replaces
    the task's judge in the fit; ``reference`` is the reviewer's corrected answer of an ``edited`` item
    (also kept in ``answers``, the gold answers of the row; an approved answer is its own gold answer).
    """

    review_id: str
    verdict: Literal["approved", "edited", "rejected"]
    label: bool
    answer: str
    reference: str | None = None


def open_review_store(url: str) -> Any:
    """Open the review queue at ``url`` (``sqlite:///PATH``, a path, or ``postgresql://...``) with
    :func:`gradguard.review.open_review_queue`.

    A SQLite file that does not exist is a :class:`~gradguard.review.ReviewStoreError` (opening it would
    create an empty queue); every error names the URL with its password masked.
    """
    if not isinstance(url, str) or not url.strip():
        raise ReviewStoreError(f"--from-review {url!r} is not a review queue URL; pass sqlite:///PATH or a path")
    path: Path | None = None
    if not is_url(url):
        path = Path(url).expanduser()
    elif url.partition("://")[0].lower() == "sqlite":
        path = sqlite_path_from_url(url)
    if path is not None and not path.is_file():
        raise ReviewStoreError(
            f"the review database {mask_url(url)} does not exist ({path}); pass the queue the guard enqueues into "
            "(a path, sqlite:///PATH, or postgresql://...)"
        )
    return open_review_queue(url)


def read_review_items(url: str) -> tuple[list[ReviewItem], str]:
    """``(items, shown_url)``: the queue's items, oldest first, and its URL with the password masked."""
    store = open_review_store(url)
    try:
        items = list(store.list())
        shown = str(getattr(store, "url", None) or mask_url(url))
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    return items, shown


@dataclass(frozen=True)
class ReviewSelection:
    """Which review items of one task became labels, and why the others did not.

    ``items`` are the usable ones (resolved, this task, this model, with messages), oldest first.
    """

    task: str
    model: str
    url: str
    items: tuple[ReviewItem, ...]
    total: int
    by_status: dict[str, int]
    by_task: dict[str, int]
    pending: int
    resolved: int
    other_model: dict[str, int] = field(default_factory=dict)
    no_messages: int = 0
    untasked_resolved: int = 0
    include_untasked: bool = False

    @property
    def verdicts(self) -> dict[str, int]:
        """How many usable items have each verdict (``approved``, ``edited``, ``rejected``)."""
        counts: Counter[str] = Counter(str(item.status) for item in self.items)
        return {v: counts.get(v, 0) for v in REVIEW_LABELS}

    def summary(self) -> str:
        """One paragraph: what was taken from the queue, and each reason an item was left out."""
        v = self.verdicts
        lines = [
            f"review queue {self.url}: {len(self.items)} of {self.resolved} resolved item(s) of task {self.task!r} "
            f"taken as labels ({v['approved']} approved = correct; {v['edited']} edited, {v['rejected']} rejected "
            "= wrong)"
        ]
        if self.other_model:
            names = ", ".join(f"{name} ({n})" for name, n in sorted(self.other_model.items()))
            lines.append(
                f"  skipped {sum(self.other_model.values())} answered by another model than {self.model} "
                f"(a profile is per model): {names}"
            )
        if self.no_messages:
            lines.append(f"  skipped {self.no_messages} without messages ({NO_MESSAGES_REASON})")
        if self.pending:
            lines.append(f"  left out {self.pending} pending (no verdict yet)")
        if self.untasked_resolved and not self.include_untasked:
            lines.append(
                f"  left out {self.untasked_resolved} resolved without a task (take them with "
                "--review-include-untasked if they were asked as this task)"
            )
        return "\n".join(lines)


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def select_review_items(
    items: Sequence[ReviewItem],
    *,
    task: str,
    model: str,
    url: str = "the review queue",
    include_untasked: bool = False,
) -> ReviewSelection:
    """The resolved items of ``task`` usable for calibrating ``model`` (see the module docstring).

    Raises :class:`ReviewCalibrationError` when the queue holds no resolved item of the task (saying how
    many items it holds by status and by task, and the fix), or when none of them is usable.
    """
    by_status = _counts(item.status for item in items)
    by_task = _counts(item.task or _NONE for item in items)
    taken: list[ReviewItem] = []
    other_model: Counter[str] = Counter()
    pending = resolved = no_messages = 0
    untasked_resolved = sum(1 for item in items if item.task is None and not item.pending)
    for item in items:
        if not (item.task == task or (item.task is None and include_untasked)):
            continue
        if item.pending or item.status not in REVIEW_LABELS:
            pending += 1
            continue
        resolved += 1
        if item.model != model:
            other_model[item.model or "(no model recorded)"] += 1
        elif not item.messages:
            no_messages += 1
        else:
            taken.append(item)
    selection = ReviewSelection(
        task=task,
        model=model,
        url=url,
        items=tuple(taken),
        total=len(items),
        by_status=by_status,
        by_task=by_task,
        pending=pending,
        resolved=resolved,
        other_model=dict(sorted(other_model.items())),
        no_messages=no_messages,
        untasked_resolved=untasked_resolved,
        include_untasked=include_untasked,
    )
    if resolved == 0:
        statuses = ", ".join(f"{k} {v}" for k, v in by_status.items()) or "none"
        tasks = ", ".join(f"{k} {v}" for k, v in by_task.items()) or "none"
        hint = (
            f"; {untasked_resolved} resolved item(s) have no task: add --review-include-untasked if they were "
            f"asked as task {task!r}"
            if untasked_resolved and not include_untasked
            else ""
        )
        raise ReviewCalibrationError(
            f"the review queue {url} holds no resolved item of task {task!r} ({len(items)} item(s) in all; by "
            f"status: {statuses}; by task: {tasks}){hint}; resolve items with `gradguard review resolve ID --verdict "
            "approved|edited|rejected`, or pass the --task the items were enqueued under"
        )
    if not taken:
        raise ReviewCalibrationError(
            f"none of the {resolved} resolved item(s) of task {task!r} in {url} is usable:\n{selection.summary()}\n"
            f"calibrate the model that wrote them (--model NAME), or re-enqueue answers with their messages"
        )
    return selection


def _keep_layers(hidden: HiddenStates, layers: tuple[int, ...]) -> HiddenStates:
    """``hidden`` restricted to ``layers`` (in that order); every one must be present."""
    missing = [layer for layer in layers if layer not in hidden.layers]
    if missing:
        raise ReviewCalibrationError(
            f"the scoring pass kept hidden layers {list(hidden.layers)}, not {missing}; this is a gradguard bug"
        )
    rows = [hidden.layers.index(layer) for layer in layers]
    return HiddenStates(layers=layers, states={p: np.asarray(s)[rows] for p, s in hidden.states.items()})


_CONTEXT_SLOT, _QUESTION_SLOT = "GRADGUARDCONTEXTSLOT", "GRADGUARDQUESTIONSLOT"


def context_group(task: Task, messages: Sequence[Any]) -> str | None:
    """The fold group of a review item of a task with a context: ``"context:<text>"``, the retrieved context
    recovered from the last user message through the task's ``user_template`` (whitespace normalised), so that
    questions on one passage never lie on both sides of a fold (as a data file's rows are grouped by their
    context). ``None`` when the task has no context or the message does not have the template's shape."""
    if not task.needs_context:
        return None
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        return None
    filled = re.escape(task.user_template.format(context=_CONTEXT_SLOT, question=_QUESTION_SLOT))
    pattern = filled.replace(_CONTEXT_SLOT, "(?P<context>.*)", 1).replace(_QUESTION_SLOT, ".*")
    match = re.fullmatch(pattern, users[-1], flags=re.DOTALL)
    if match is None:
        return None
    return "context:" + " ".join(match.group("context").split())


def _score(scorer: Any, messages: list[dict[str, Any]], answer: str, task: Task) -> ScoreResult:
    profile = getattr(scorer, "profile", None)
    known = task.name in BUILTIN_TASKS or task.name in getattr(profile, "calibrations", {})
    if known:
        return scorer.score(messages, answer, task=task.name)
    # a task defined by --prompt-template that the profile does not calibrate yet: the scorer cannot name it
    return scorer.score(messages, answer)


def score_review_items(
    scorer: Any,
    selection: ReviewSelection,
    task: Task,
    *,
    hidden_layers: Sequence[int] = (),
    first_index: int = 0,
    progress: bool = True,
) -> list[ReviewRecord]:
    """Re-score every selected item's original answer under its exact messages (teacher-forced).

    ``hidden_layers`` are the layers each row keeps (as :func:`~gradguard.calibration.harness.run_harness`
    keeps them for a data file; pass the data rows' layers when merging). An answer whose scoring fails
    with a gradguard error (e.g. too long) is kept with ``error`` and no result: it counts as unscored.
    Rows are numbered from ``first_index`` (after a data file's questions).
    """
    layers = tuple(int(layer) for layer in hidden_layers)
    previous = tuple(getattr(scorer, "hidden_layers", ()))
    if layers:
        scorer.hidden_layers = tuple(sorted(set(previous) | set(layers)))
    out: list[ReviewRecord] = []
    try:
        bar = tqdm(selection.items, desc=f"review {task.name}", unit="item", disable=not progress)
        for i, item in enumerate(bar):
            messages = item.messages or []
            result: ScoreResult | None = None
            error: str | None = None
            try:
                result = _score(scorer, messages, item.answer, task)
            except GradguardError as exc:
                error = f"{type(exc).__name__}: {exc}"
            hidden, d = None, None
            if result is not None and layers:
                if result.hidden is None:
                    raise ReviewCalibrationError(
                        f"the scorer kept no hidden states for review item {item.id}; this is a gradguard bug"
                    )
                hidden, d = encode_hidden(_keep_layers(result.hidden, layers))
            if result is not None and result.hidden is not None:
                result = result.model_copy(update={"hidden": None})
            verdict = item.status
            reference = item.resolved_answer if verdict == "edited" else None
            gold = reference if verdict == "edited" else (item.answer if verdict == "approved" else None)
            out.append(
                ReviewRecord(
                    gen_key=f"review:{item.id}",
                    score_key=f"review:{item.id}",
                    index=first_index + i,
                    query=item.question,
                    answers=(gold,) if gold else (),
                    result=result,
                    error=error,
                    hidden_layers=layers if hidden is not None else (),
                    hidden=hidden,
                    hidden_d=d,
                    group=context_group(task, messages),
                    review_id=item.id,
                    verdict=verdict,
                    label=REVIEW_LABELS[verdict],
                    answer=item.answer,
                    reference=reference,
                )
            )
    finally:
        if layers:
            scorer.hidden_layers = previous
    return out


def _question_key(text: str) -> str:
    return "question:" + " ".join(text.split()).casefold()


def group_by_question(records: Sequence[CachedRecord]) -> list[CachedRecord]:
    """``records`` with fold groups joined so that rows sharing a question text share a group.

    A row's own group (a data file's title or context, else its line) is kept and joined with every
    other row asking the same question (whitespace and case ignored), transitively; the result's
    groups are ``"joined:<n>"``. Cross-validation then never puts one question (asked again in review,
    or in both the data file and the review queue) on both sides of a fold.
    """
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    own = [rec.group or f"index:{rec.index}" for rec in records]
    for rec, key in zip(records, own, strict=True):
        a, b = find(key), find(_question_key(rec.query))
        if a != b:
            parent[b] = a
    names: dict[str, str] = {}
    out: list[CachedRecord] = []
    for rec, key in zip(records, own, strict=True):
        root = find(key)
        name = names.setdefault(root, f"joined:{len(names)}")
        out.append(rec.model_copy(update={"group": name}))
    return out


def _scored(rec: CachedRecord) -> bool:
    return rec.result is not None and scalar_features(rec.result, FEATURES) is not None


def check_review_labels(review_records: Sequence[ReviewRecord], selection: ReviewSelection, *, has_data: bool) -> None:
    """Raise :class:`ReviewCalibrationError` when review alone gives labels of one class only (or none scored).

    With a data file (``has_data``) the fit's own check applies to the merged labels instead.
    """
    if has_data:
        return
    labels = [rec.label for rec in review_records if _scored(rec)]
    if not labels:
        raise ReviewCalibrationError(
            f"none of the {len(review_records)} review answers of task {selection.task!r} could be scored "
            f"(first error: {next((r.error for r in review_records if r.error), 'empty answers')}); nothing to "
            "calibrate"
        )
    if all(labels) or not any(labels):
        v = selection.verdicts
        kind = "correct (approved)" if all(labels) else "wrong (edited or rejected)"
        raise ReviewCalibrationError(
            f"all {len(labels)} scored review labels of task {selection.task!r} are {kind} ({v['approved']} "
            f"approved, {v['edited']} edited, {v['rejected']} rejected); a fit needs both correct and wrong answers "
            "— add --data FILE (a representative QA file of this task) to merge with the review labels, or "
            "resolve more items"
        )


def review_digest(records: Sequence[ReviewRecord]) -> str:
    """SHA-256 over the review rows' ``id:verdict`` pairs (sorted): which labels a fit used."""
    text = "\n".join(sorted(f"{rec.review_id}:{rec.verdict}" for rec in records))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def with_review_provenance(report: Any, review_records: Sequence[ReviewRecord], url: str) -> Any:
    """The :class:`~gradguard.calibration.fit.FitReport` with its calibration's data record naming the review labels.

    ``n_from_review`` counts the review rows that entered the fit (scored), ``review_verdicts`` their
    verdicts, ``review_url`` the queue (password masked) and ``review_sha256`` :func:`review_digest`.
    """
    used = [rec for rec in review_records if _scored(rec)]
    counts: Counter[str] = Counter(str(rec.verdict) for rec in used)
    cal = report.calibration
    data = cal.data.model_copy(
        update={
            "n_from_review": len(used),
            "review_url": mask_url(url),
            "review_verdicts": {v: counts.get(v, 0) for v in REVIEW_LABELS},
            "review_sha256": review_digest(used),
        }
    )
    return dataclasses.replace(report, calibration=cal.model_copy(update={"data": data}))
