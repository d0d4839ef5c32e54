"""`gradguard calibrate --from-review URL --task T`: resolved review items become labels for a refit.

A SQLite queue holds resolved items of the task (approved, edited, rejected), pending ones, items of
another task, of another model, without messages and without a task. The labelled set is exactly
the usable resolved items (approved = correct, edited/rejected = wrong, the correction kept); each
is re-scored under its own messages; the refit runs alone and merged with a QA file on a tiny
config-built model; the profile records how many labels came from review.
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gradguard import GradScorer
from gradguard.calibration import review_data
from gradguard.calibration.cli import main
from gradguard.calibration.harness import CachedRecord
from gradguard.calibration.review_data import (
    NO_MESSAGES_REASON,
    ReviewCalibrationError,
    ReviewRecord,
    check_review_labels,
    context_group,
    group_by_question,
    mask_url,
    score_review_items,
    select_review_items,
)
from gradguard.data import DEFAULT_SYSTEM_PROMPT, file_sha256
from gradguard.profiles import load_profile
from gradguard.profiles.io import save_profile
from gradguard.profiles.schema import TaskCalibration
from gradguard.review import ReviewItem, SQLiteReviewQueue
from gradguard.tasks import BUILTIN_TASKS, builtin_task
from gradguard.testing import make_tiny_model, make_tiny_profile
from gradguard.testing.calibration import synthetic_records

TASK = "closed-qa"
CONTEXT_MESSAGES = [
    {"role": "system", "content": "Answer from the notes only. Notes: the river Vo rises in the Alps near Lake Tamo."},
    {"role": "user", "content": "Notes above.\n\nQuestion: Where does the Vo rise?"},
]
#: Whether this gradguard's SQLite store keeps what a refit needs (else the tests use an in-memory stand-in).
SQLITE_KEEPS_MESSAGES = "messages" in inspect.signature(SQLiteReviewQueue.enqueue).parameters


@dataclass(frozen=True)
class Spec:
    """One review item to enqueue: ``verdict`` None = pending; ``messages`` "task" = the task's own messages."""

    question: str
    answer: str
    verdict: str | None
    task: str | None = TASK
    model: str | None = "MODEL"
    messages: Any = "task"
    correction: str | None = None


def _messages(spec: Spec) -> list[dict[str, Any]] | None:
    if spec.messages == "task":
        return BUILTIN_TASKS[TASK].messages(spec.question)
    return spec.messages  # type: ignore[no-any-return]


class _MemoryStore:
    """Stands in for the SQLite store while it does not yet keep messages/task/model."""

    def __init__(self, url: str, items: list[ReviewItem]) -> None:
        self.url = url
        self.items = items

    def list(self, status: str | None = None, limit: int | None = None) -> list[ReviewItem]:
        return [i for i in self.items if status is None or i.status == status][:limit]

    def close(self) -> None:
        pass


def make_queue(path: Path, specs: list[Spec], model: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[str]]:
    """``(url, ids)``: a review queue at ``path`` holding ``specs`` (``model="MODEL"`` → ``model``)."""
    ids: list[str] = []
    if SQLITE_KEEPS_MESSAGES:
        with SQLiteReviewQueue(path) as queue:
            for s in specs:
                item_id = queue.enqueue(
                    s.question,
                    s.answer,
                    confidence=0.2,
                    messages=_messages(s),
                    task=s.task,
                    model=model if s.model == "MODEL" else s.model,
                )
                if s.verdict is not None:
                    queue.resolve(item_id, s.verdict, answer=s.correction, note="checked")
                ids.append(item_id)
        return f"sqlite:///{path}", ids
    items = []
    for n, s in enumerate(specs):
        resolved = {"approved": s.answer, "edited": s.correction, "rejected": None}.get(s.verdict or "")
        items.append(
            ReviewItem(
                id=f"{n:032x}", created_at=datetime.now(UTC), question=s.question, answer=s.answer, confidence=0.2,
                messages=_messages(s), task=s.task, model=model if s.model == "MODEL" else s.model,
                status=s.verdict or "pending", resolved_answer=resolved,
            )
        )  # fmt: skip
        ids.append(items[-1].id)
    path.touch()
    url = f"sqlite:///{path}"
    store, real = _MemoryStore(url, items), review_data.open_review_store
    monkeypatch.setattr(review_data, "open_review_store", lambda u: store if u == url else real(u))
    return url, ids


# 8 approved, 4 edited, 4 rejected usable items (one with its own system prompt and context, two asking one
# question), and one item for each reason to leave an item out.
LABELLED = (
    [Spec("Where does the Vo rise?", "in the Alps", "approved", messages=CONTEXT_MESSAGES)]
    + [Spec(f"Question {i}?", "vo i", "approved") for i in range(1, 8)]
    + [Spec(f"Question {i}?", "zzzq", "edited", correction=f"vo {i} (corrected)") for i in range(8, 12)]
    + [Spec("question   1?", "beta", "rejected")]
    + [Spec(f"Question {i}?", "beta", "rejected") for i in range(12, 15)]
)
LEFT_OUT = [
    Spec("Question 20?", "vo i", None),
    Spec("Question 21?", "beta", None),
    Spec("Question 22?", "vo i", "approved", task="rag"),
    Spec("Question 23?", "beta", "rejected", task="rag"),
    Spec("Question 24?", "vo i", "approved", model="other/model"),
    Spec("Question 25?", "vo i", "rejected", model=None),
    Spec("Question 26?", "vo i", "rejected", messages=None),
    Spec("Question 27?", "vo i", "approved", task=None),
]
SPECS = LABELLED + LEFT_OUT


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny model folder, its profile and a 16-question QA file (the tiny model gets half of them right)."""
    tmp = tmp_path_factory.mktemp("from-review")
    model, tok = make_tiny_model("qwen2")
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    save_profile(make_tiny_profile(tok, model_id=None), tmp / "profile.json")
    with (tmp / "qa.jsonl").open("w") as fh:
        for i in range(16):
            fh.write(json.dumps({"query": f"Question {i}?", "answers": ["vo" if i % 2 else "zzzq"]}) + "\n")
    return {"tmp": tmp, "model": str(tmp / "model"), "profile": tmp / "profile.json", "data": tmp / "qa.jsonl"}


@pytest.fixture()
def quick_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer bootstrap resamples: the figures do not matter here, the rows and the profile do."""
    from gradguard.calibration import fit

    real = fit.fit_task_calibration
    monkeypatch.setattr(fit, "fit_task_calibration", lambda *a, **k: real(*a, **{**k, "n_boot": 20}))


def _args(setup: dict[str, Any], out: Path, *extra: str) -> list[str]:
    return [
        "calibrate", "--model", setup["model"], "--profile", str(setup["profile"]), "--task", TASK,
        "--cache", str(out.parent / f"{out.stem}-cache"), "--out", str(out), "--no-progress", "--folds", "2",
        "--max-new-tokens", "8", "--hidden-layers", "3", *extra,
    ]  # fmt: skip


def _items(url: str) -> list[ReviewItem]:
    return review_data.read_review_items(url)[0]


# -- which items become which labels --------------------------------------------------------------------------


def test_only_usable_resolved_items_of_the_task_become_labels(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = make_queue(tmp_path / "q.sqlite3", SPECS, setup["model"], monkeypatch)
    sel = select_review_items(_items(url), task=TASK, model=setup["model"], url=url)
    assert [i.id for i in sel.items] == ids[: len(LABELLED)]
    assert sel.verdicts == {"approved": 8, "edited": 4, "rejected": 4}
    assert sel.pending == 2 and sel.no_messages == 1 and sel.untasked_resolved == 1
    assert sel.other_model == {"(no model recorded)": 1, "other/model": 1}
    text = sel.summary()
    assert "16 of 19 resolved item(s) of task 'closed-qa'" in text
    assert "skipped 2 answered by another model" in text and "other/model (1)" in text
    assert f"skipped 1 without messages ({NO_MESSAGES_REASON})" in text
    assert "left out 2 pending" in text and "--review-include-untasked" in text
    # items without a task only with the flag
    with_untasked = select_review_items(_items(url), task=TASK, model=setup["model"], include_untasked=True)
    assert [i.id for i in with_untasked.items] == [*ids[: len(LABELLED)], ids[-1]]


def test_rescoring_uses_each_items_exact_messages_and_keeps_the_correction(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = make_queue(tmp_path / "q.sqlite3", SPECS, setup["model"], monkeypatch)
    sel = select_review_items(_items(url), task=TASK, model=setup["model"], url=url)
    model, tok = make_tiny_model("qwen2")
    scorer = GradScorer(model, tok, profile=make_tiny_profile(tok, model_id=None), model_name=setup["model"])
    calls: list[tuple[Any, Any, Any, list[int]]] = []
    real = GradScorer.score

    def spy(self: GradScorer, messages: Any, response: Any, **kw: Any) -> Any:
        calls.append((messages, response, kw.get("task"), self.prompt_ids(messages)))
        return real(self, messages, response, **kw)

    monkeypatch.setattr(GradScorer, "score", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no calibration for the task in the tiny profile
        records = score_review_items(scorer, sel, BUILTIN_TASKS[TASK], hidden_layers=(3,), first_index=16)
    assert [c[0] for c in calls] == [i.messages for i in sel.items]  # the stored messages, untouched
    assert [c[1] for c in calls] == [i.answer for i in sel.items]  # the model's original answer, not the fix
    assert {c[2] for c in calls} == {TASK}
    # the first item's own system prompt and context are what the scoring pass read
    asked_plainly = scorer.prompt_ids(BUILTIN_TASKS[TASK].messages("Where does the Vo rise?"))
    assert calls[0][3] == scorer.prompt_ids(CONTEXT_MESSAGES) != asked_plainly
    notes = tok.encode("Lake Tamo", add_special_tokens=False)
    assert any(calls[0][3][i : i + len(notes)] == notes for i in range(len(calls[0][3])))
    assert calls[1][3] == scorer.prompt_ids([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                             {"role": "user", "content": "Question 1?"}])  # fmt: skip

    by_id = {r.review_id: r for r in records}
    assert list(by_id) == ids[: len(LABELLED)]
    for spec, item_id in zip(LABELLED, ids, strict=False):
        rec = by_id[item_id]
        assert isinstance(rec, ReviewRecord) and rec.result is not None and rec.error is None
        assert rec.label is (spec.verdict == "approved") and rec.verdict == spec.verdict
        assert rec.answer == spec.answer and rec.query == spec.question
        assert rec.hidden_layers == (3,) and rec.hidden_d == 32
    edited = [(s, by_id[i]) for s, i in zip(LABELLED, ids, strict=False) if s.verdict == "edited"]
    assert edited and all(r.reference == s.correction and r.answers == (s.correction,) for s, r in edited)
    assert all(r.reference is None for r in records if r.verdict != "edited")
    assert [r.index for r in records] == list(range(16, 32))
    assert scorer.hidden_layers == ()  # restored


def test_one_question_never_spans_two_fold_groups() -> None:
    def rec(i: int, query: str, group: str | None) -> CachedRecord:
        return CachedRecord(gen_key=str(i), score_key=str(i), index=i, query=query, answers=("a",), group=group)

    rows = [
        rec(0, "Question 1?", "title:A"),
        rec(1, "Question 2?", "title:A"),
        rec(2, "Question 3?", "title:B"),
        rec(3, "question   1?", None),  # review, same question as row 0 → joins title A
        rec(4, "Question 3?", None),  # review, same as row 2 → title B
        rec(5, "Question 9?", None),
        rec(6, "QUESTION 9?", None),
    ]
    groups = [r.group for r in group_by_question(rows)]
    assert groups[0] == groups[1] == groups[3]
    assert groups[2] == groups[4] != groups[0]
    assert groups[5] == groups[6] and len(set(groups)) == 3


def test_review_items_on_one_passage_share_a_fold_group() -> None:
    rag = builtin_task("rag")
    passage = "Lyon is a city in France.\nIt lies on the Rhône."
    a = context_group(rag, rag.messages("Where is Lyon?", passage))
    b = context_group(rag, rag.messages("Which river runs through Lyon?", passage.replace("\n", "  \n ")))
    c = context_group(rag, rag.messages("Where is Lyon?", "Another passage."))
    assert a == b == "context:Lyon is a city in France. It lies on the Rhône." and c != a
    # a task without a context, or a message not in the task's shape: no context group (question text decides)
    assert context_group(builtin_task("closed-qa"), builtin_task("closed-qa").messages("Where is Lyon?")) is None
    assert context_group(rag, [{"role": "user", "content": "free text"}]) is None


# -- the refit ------------------------------------------------------------------------------------------------


def test_refit_from_review_alone_records_the_review_labels(
    setup: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quick_fit: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = make_queue(tmp_path / "q.sqlite3", SPECS, setup["model"], monkeypatch)
    out = tmp_path / "review.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_args(setup, out, "--from-review", url)) == 0
    text = capsys.readouterr().out
    assert "16 of 19 resolved item(s)" in text and "skipped 1 without messages" in text
    assert "16 scored answers from the review queue (8 correct, by reviewers' verdicts)" in text
    assert "review-sourced: 16 of 16 labels" in text and "(8 approved = correct; 4 edited, 4 rejected = wrong)" in text
    cal = load_profile(out).calibrations[TASK]
    assert cal.n == 16 and cal.n_correct == 8 and sorted(cal.holdout_correct) == [0] * 8 + [1] * 8
    d = cal.data
    assert d.n_from_review == 16 and d.review_verdicts == {"approved": 8, "edited": 4, "rejected": 4}
    assert d.file == "review queue" and d.sha256 is None and d.review_url == url and d.review_sha256
    # survives a save and a load
    again = tmp_path / "again.json"
    save_profile(load_profile(out), again)
    assert load_profile(again).calibrations[TASK].data == d


def test_refit_merged_with_a_data_file_groups_questions_across_sources(
    setup: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quick_fit: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gradguard.calibration import fit

    url, _ = make_queue(tmp_path / "q.sqlite3", SPECS, setup["model"], monkeypatch)
    seen: list[CachedRecord] = []
    real = fit.fit_data_from_records

    def capture(records: Any, *a: Any, **k: Any) -> Any:
        seen.extend(records)
        return real(records, *a, **k)

    monkeypatch.setattr(fit, "fit_data_from_records", capture)
    out = tmp_path / "merged.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_args(setup, out, "--data", str(setup["data"]), "--from-review", url)) == 0
    text = capsys.readouterr().out
    assert "32 scored answers from qa.jsonl and the review queue" in text and "review-sourced: 16 of 32" in text
    cal = load_profile(out).calibrations[TASK]
    assert cal.n == 32 and cal.data.n_from_review == 16 and cal.data.file == "qa.jsonl"
    assert cal.data.sha256 == file_sha256(setup["data"]) and cal.data.n_questions == 32
    review_rows = [r for r in seen if isinstance(r, ReviewRecord)]
    assert len(seen) == 32 and len(review_rows) == 16
    group_of: dict[str, set[str | None]] = {}
    for r in seen:
        group_of.setdefault(" ".join(r.query.split()).casefold(), set()).add(r.group)
    assert all(len(g) == 1 for g in group_of.values())  # a question (file or review, any spelling): one group
    asked = [" ".join(r.query.split()).casefold() for r in seen]
    assert asked.count("question 1?") == 3  # the file's, the approved and the rejected review item's


def test_one_class_from_review_is_an_error_that_data_fixes(
    setup: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quick_fit: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    approved = [Spec(f"Question {i}?", "vo i", "approved") for i in range(30, 34)]
    url, _ = make_queue(tmp_path / "q.sqlite3", approved, setup["model"], monkeypatch)
    out = tmp_path / "one-class.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_args(setup, out, "--from-review", url)) == 2
        err = capsys.readouterr().err
        assert "all 4 scored review labels of task 'closed-qa' are correct (approved)" in err
        assert "needs both correct and wrong answers" in err and "add --data FILE" in err and not out.exists()
        assert main(_args(setup, out, "--from-review", url, "--data", str(setup["data"]))) == 0
    cal = load_profile(out).calibrations[TASK]
    assert cal.n == 20 and cal.data.n_from_review == 4 and cal.data.review_verdicts["approved"] == 4


# -- errors ---------------------------------------------------------------------------------------------------


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gradguard:") or "Traceback" in x]
    assert len(lines) == 1 and lines[0].startswith("gradguard: error: "), lines
    return lines[0]


def test_no_resolved_items_of_the_task_says_what_the_queue_holds(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = [s for s in LEFT_OUT if s.verdict is None or s.task != TASK]  # pending, other task, untasked
    url, _ = make_queue(tmp_path / "q.sqlite3", specs, setup["model"], monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_args(setup, tmp_path / "x.json", "--from-review", url)) == 2
    line = _one_error_line(capsys)
    assert "holds no resolved item of task 'closed-qa' (5 item(s) in all" in line
    assert "by status: approved 2, pending 2, rejected 1" in line and "by task: (none) 1, closed-qa 2, rag 2" in line
    assert "--review-include-untasked" in line and "gradguard review resolve ID" in line


def test_resolved_items_of_other_models_only_are_not_usable(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = make_queue(tmp_path / "q.sqlite3", [LEFT_OUT[4], LEFT_OUT[6]], setup["model"], monkeypatch)
    with pytest.raises(ReviewCalibrationError, match=r"none of the 2 resolved item\(s\).*is usable") as info:
        select_review_items(_items(url), task=TASK, model=setup["model"], url=url)
    assert "other/model" in str(info.value) and "--model NAME" in str(info.value)


def test_review_labels_of_one_class_are_fine_with_a_data_file() -> None:
    sel = select_review_items(
        [ReviewItem(id="a", created_at=datetime.now(UTC), question="Q?", answer="A", status="approved",
                    resolved_answer="A", task=TASK, model="m", messages=[{"role": "user", "content": "Q?"}])],
        task=TASK, model="m",
    )  # fmt: skip
    rec = ReviewRecord(
        gen_key="g", score_key="s", index=0, query="Q?", answers=("A",), review_id="a", verdict="approved",
        label=True, answer="A", result=synthetic_records(1)[0].result,
    )  # fmt: skip
    check_review_labels([rec], sel, has_data=True)
    with pytest.raises(ReviewCalibrationError, match="add --data FILE"):
        check_review_labels([rec], sel, has_data=False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("{tmp}/missing.sqlite3", r"the review database .*missing\.sqlite3 does not exist"),
        ("sqlite:///{tmp}/missing.sqlite3", r"the review database sqlite:///.*missing\.sqlite3 does not exist"),
        ("postgresql://bob:s3cret@127.0.0.1:1/reviews?connect_timeout=1", r"postgresql://bob:\*\*\*@127\.0\.0\.1:1"),
    ],
)
def test_a_queue_that_cannot_be_opened_is_the_stores_error_without_the_password(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    import re

    assert main(_args(setup, tmp_path / "x.json", "--from-review", url.format(tmp=tmp_path))) == 2
    line = _one_error_line(capsys)
    assert "s3cret" not in line
    if "postgresql" not in url or "postgresql" in line:  # an install without the postgres extra names the extra
        assert re.search(message, line), line
    assert not (tmp_path / "missing.sqlite3").exists()  # nothing was created


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "pass --data FILE, --from-review URL, or both"),
        (["--from-review", "q.sqlite3", "--task", "tools"], "--from-review does not calibrate --task tools"),
    ],
)
def test_bad_combinations_fail_before_anything_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["calibrate", "--out", str(tmp_path / "x.json"), "--no-progress", *extra]) == 2
    assert message in _one_error_line(capsys)


# -- the profile record ---------------------------------------------------------------------------------------


def test_a_profile_without_review_fields_loads_with_zero_review_labels() -> None:
    from gradguard.calibration.fit import fit_task_calibration

    plain = {"hidden": None, "hidden_layers": (), "hidden_d": None}
    records = [r.model_copy(update=plain) for r in synthetic_records(40)]
    fitted = fit_task_calibration(
        records, BUILTIN_TASKS[TASK], data_path="x.jsonl", data_sha256=None, max_new_tokens=8, folds=2, n_boot=10
    )
    data = fitted.calibration.model_dump()
    for key in ("n_from_review", "review_url", "review_verdicts", "review_sha256"):
        data["data"].pop(key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cal = TaskCalibration.model_validate(data)
    assert cal.data.n_from_review == 0 and cal.data.review_url is None and cal.data.review_verdicts == {}


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("postgresql://bob:s3cret@db.example:5432/reviews") == "postgresql://bob:***@db.example:5432/reviews"
    assert mask_url("postgresql://db.example/reviews") == "postgresql://db.example/reviews"
    assert mask_url("sqlite:////var/lib/review.sqlite3") == "sqlite:////var/lib/review.sqlite3"
    assert mask_url("/var/lib/review.sqlite3") == "/var/lib/review.sqlite3"
