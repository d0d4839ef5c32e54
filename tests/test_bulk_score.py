"""Bulk scoring of a JSONL file (`gradguard score --jsonl IN --out OUT`): results, bad lines, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gradguard import GradScorer
from gradguard.bulk import score_jsonl
from gradguard.cli import main
from gradguard.testing import make_tiny_model

GOOD: list[dict[str, Any]] = [
    {"id": "a", "messages": [{"role": "user", "content": "What is 2+2?"}], "response": "4"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}], "response": "Hello"},
    {"id": 7, "question": "Capital of France?", "answer": "Paris"},
    {"id": "rag", "question": "Who wrote it?", "context": "The book was written by Ann.", "response": "Ann"},
]


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    return GradScorer(model, tok, model_name="tiny-qwen2")


def _write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def _read(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    return [json.loads(line) for line in text.splitlines()]


def test_each_line_is_the_scorers_metadata(scorer: GradScorer, tmp_path: Path) -> None:
    src = _write_lines(tmp_path / "in.jsonl", GOOD)
    summary = score_jsonl(scorer, src, tmp_path / "out.jsonl", progress=False)
    assert (summary.scored, summary.unscored, summary.skipped, summary.total) == (4, 0, 0, 4)
    out = _read(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ["a", 1, 7, "rag"]
    assert [r["line"] for r in out] == [0, 1, 2, 3]
    assert all("error" not in r for r in out)
    want = [
        scorer.score(GOOD[0]["messages"], "4").metadata(),
        scorer.score(GOOD[1]["messages"], "Hello").metadata(),
        scorer.score([{"role": "user", "content": "Capital of France?"}], "Paris").metadata(),
    ]
    from gradguard.tasks import BUILTIN_TASKS

    rag_messages = BUILTIN_TASKS["rag"].messages("Who wrote it?", "The book was written by Ann.")
    rag = scorer.score(rag_messages, "Ann", task="rag")
    want.append(rag.metadata())
    assert [r["gradguard"] for r in out] == json.loads(json.dumps(want))
    assert out[3]["gradguard"]["task"] == "rag"


def test_bad_lines_are_recorded_unscored(scorer: GradScorer, tmp_path: Path) -> None:
    lines: list[Any] = [
        "{not json",
        {"id": "x", "messages": [{"role": "user", "content": "Hi"}]},  # no response
        [1, 2],
        {"id": "t", "messages": [{"role": "user", "content": "Hi"}], "response": "ok", "task": "no-such-task"},
        {"id": "long", "messages": [{"role": "user", "content": "Hi"}], "response": "word " * 2000},
        {"id": "bad-messages", "messages": "Hi", "response": "ok"},
        {"id": "empty", "messages": [{"role": "user", "content": "Hi"}], "response": ""},
        "",
        GOOD[0],
    ]
    src = _write_lines(tmp_path / "in.jsonl", lines)
    summary = score_jsonl(scorer, src, tmp_path / "out.jsonl", progress=False)
    assert (summary.scored, summary.unscored, summary.blank, summary.total) == (1, 7, 1, 9)
    out = _read(tmp_path / "out.jsonl")
    assert [r["line"] for r in out] == [0, 1, 2, 3, 4, 5, 6, 8]
    assert [r["id"] for r in out] == [0, "x", 2, "t", "long", "bad-messages", "empty", "a"]
    for r in out[:6]:
        assert r["error"] and r["gradguard"]["scored"] is False and r["gradguard"]["error"] == r["error"]
        assert r["gradguard"]["confidence"] is None and set(r["gradguard"]["uncertainty"].values()) == {None}
        assert r["gradguard"]["model"] == "tiny-qwen2"
        assert set(scorer.score(GOOD[0]["messages"], "4").metadata()) <= set(r["gradguard"])
    assert "not JSON" in out[0]["error"] and "response" in out[1]["error"] and "object" in out[2]["error"]
    assert "no-such-task" in out[3]["error"] and "context window" in out[4]["error"]
    # an empty answer is scored-as-unscorable (the scorer's own result), not an error line
    assert "error" not in out[6] and out[6]["gradguard"]["scored"] is False
    assert out[7]["gradguard"]["scored"] is True


def test_resume_after_an_interruption(scorer: GradScorer, tmp_path: Path) -> None:
    lines = GOOD + [{"id": f"n{i}", "messages": [{"role": "user", "content": f"Q{i}?"}], "response": f"A{i}"}
                    for i in range(4)]
    src = _write_lines(tmp_path / "in.jsonl", lines)
    full = tmp_path / "full.jsonl"
    score_jsonl(scorer, src, full, progress=False)
    # an interrupted run: three lines written, the fourth cut off mid-write
    text = full.read_text(encoding="utf-8").splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(text[:3]) + text[3][: len(text[3]) // 2], encoding="utf-8")
    summary = score_jsonl(scorer, src, part, progress=False)
    assert (summary.scored, summary.skipped, summary.total) == (len(lines) - 3, 3, len(lines))
    assert part.read_text(encoding="utf-8") == full.read_text(encoding="utf-8")
    # once more: nothing left to do
    again = score_jsonl(scorer, src, part, progress=False)
    assert (again.scored, again.unscored, again.skipped) == (0, 0, len(lines))
    assert part.read_text(encoding="utf-8") == full.read_text(encoding="utf-8")


def test_resume_after_a_partial_json_line_that_parses(scorer: GradScorer, tmp_path: Path) -> None:
    """A last line without its newline is redone even if it happens to be complete JSON."""
    src = _write_lines(tmp_path / "in.jsonl", GOOD[:2])
    full = tmp_path / "full.jsonl"
    score_jsonl(scorer, src, full, progress=False)
    part = tmp_path / "part.jsonl"
    part.write_text(full.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")
    assert score_jsonl(scorer, src, part, progress=False).skipped == 1
    assert part.read_text(encoding="utf-8") == full.read_text(encoding="utf-8")


def test_a_foreign_out_file_is_refused(scorer: GradScorer, tmp_path: Path) -> None:
    from gradguard.errors import InputError

    src = _write_lines(tmp_path / "in.jsonl", GOOD[:1])
    other = tmp_path / "other.jsonl"
    other.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(InputError, match="not an output file"):
        score_jsonl(scorer, src, other, progress=False)
    assert other.read_text(encoding="utf-8") == "hello\nworld\n"


def test_cli_bulk_mode(scorer: GradScorer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    loaded: list[dict[str, Any]] = []

    def fake_from_pretrained(source: Any = None, **kwargs: Any) -> GradScorer:
        loaded.append({"source": source, **kwargs})
        return scorer

    monkeypatch.setattr(GradScorer, "from_pretrained", staticmethod(fake_from_pretrained))
    src = _write_lines(tmp_path / "in.jsonl", GOOD)
    out = tmp_path / "out.jsonl"
    assert main(["score", "--jsonl", str(src), "--out", str(out), "--model", "tiny", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"scored": 4, "unscored": 0, "skipped": 0, "blank": 0, "total": 4}
    assert loaded == [{"source": "tiny", "spt_offset": None, "task": None}]
    assert [r["line"] for r in _read(out)] == [0, 1, 2, 3]
    assert main(["score", "--jsonl", str(src), "--out", str(out), "--model", "tiny"]) == 0
    assert "0 scored, 0 unscored, 4 skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["--jsonl", "in.jsonl"],
        ["--question", "Hi?"],
        ["--jsonl", "in.jsonl", "--out", "o.jsonl", "--question", "Hi?", "--answer", "x"],
        [],
    ],
)
def test_cli_incomplete_modes_name_both(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["score", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--question" in err and "--answer" in err and "--jsonl" in err and "--out" in err
