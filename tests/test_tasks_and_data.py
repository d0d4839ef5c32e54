"""Tasks (prompt formats) and the QA line format: RAG fields, aliases, and bad input named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradguard.data import DataFormatError, load_qa
from gradguard.errors import InputError
from gradguard.tasks import (
    BUILTIN_TASKS,
    RAG_SYSTEM_PROMPT,
    Task,
    UnknownTaskError,
    builtin_task,
    check_task_name,
    load_task_file,
)


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_squad_lines_read_as_they_are(tmp_path: Path) -> None:
    f = write_lines(
        tmp_path / "squad.jsonl",
        [
            {"id": "a", "title": "Rhine", "context": "The Rhine flows north.", "question": "Where does it flow?",
             "answers": ["north"], "is_impossible": False},
            {"id": "b", "title": "Rhine", "context": "The Rhine flows north.", "question": "Who owns it?",
             "answers": [], "is_impossible": True},
            {"query": "What is H2O?", "truthful answer": ["water"]},
        ],
    )
    a, b, c = load_qa(f)
    assert (a.query, a.context, a.is_impossible, a.title, a.id) == (
        "Where does it flow?",
        "The Rhine flows north.",
        False,
        "Rhine",
        "a",
    )
    assert b.is_impossible and b.answers == ()
    assert a.group == b.group == "title:Rhine"
    assert c.context is None and c.group == "index:2"


def test_shuffled_sample_is_reproducible(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "q.jsonl", [{"query": f"q{i}?", "answers": ["x"]} for i in range(20)])
    first = [i.query for i in load_qa(f, 5, shuffle_seed=3)]
    assert first == [i.query for i in load_qa(f, 5, shuffle_seed=3)]
    assert first != [i.query for i in load_qa(f, 5)]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"context": "Some passage.", "answers": ["x"]},
            r"q.jsonl:2: missing or empty \"question\".*on a line with a \"context\"",
        ),
        (
            {"question": "Q?", "answers": [], "is_impossible": "yes"},
            r"q.jsonl:2: \"is_impossible\" must be true or false, got 'yes'",
        ),
        (
            {"question": "Q?", "answers": [], "is_impossible": False},
            r"q.jsonl:2: \"answers\" is empty on an answerable question",
        ),
        ({"question": "Q?"}, r"q.jsonl:2: no gold answers.*is_impossible"),
        ({"question": "Q?", "answers": ["x"], "context": 3}, r"q.jsonl:2: \"context\" must be a string"),
    ],
)
def test_bad_lines_are_named_with_the_fix(tmp_path: Path, row: dict[str, object], message: str) -> None:
    f = write_lines(tmp_path / "q.jsonl", [{"query": "fine?", "answers": ["x"]}, row])
    with pytest.raises(DataFormatError, match=message):
        load_qa(f)


def test_builtin_tasks_format_their_prompts() -> None:
    rag = builtin_task("rag")
    assert rag.messages("Where?", "Passage.") == [
        {"role": "system", "content": RAG_SYSTEM_PROMPT},
        {"role": "user", "content": "Context: Passage.\n\nQuestion: Where?"},
    ]
    assert builtin_task("chat").messages("Who?") == [{"role": "user", "content": "Who?"}]
    assert builtin_task("closed-qa").messages("Who?")[0]["role"] == "system"
    with pytest.raises(InputError, match="pass context="):
        rag.messages("Where?")
    assert set(BUILTIN_TASKS) == {"closed-qa", "rag", "chat", "tools"}
    assert builtin_task("tools").tool_calls and not builtin_task("rag").tool_calls


def test_unknown_or_malformed_task_names_are_errors() -> None:
    with pytest.raises(UnknownTaskError, match=r"unknown task 'summarise'.*calibrate --task summarise"):
        builtin_task("summarise")
    with pytest.raises(UnknownTaskError, match="not valid"):
        check_task_name("My Task!")
    with pytest.raises(ValueError, match=r"must contain \{question\}"):
        Task(name="x", user_template="Context: {context}")
    with pytest.raises(ValueError, match="only use"):
        Task(name="x", user_template="{question} {answer}")


def test_a_prompt_template_file_defines_a_user_task(tmp_path: Path) -> None:
    f = tmp_path / "my-rag.json"
    f.write_text(
        json.dumps(
            {
                "system_prompt": "Use the notes.",
                "user_template": "Notes:\n{context}\n\nQ: {question}",
                "judge": "f1",
                "declines": {"phrases": ["no idea"]},
            }
        )
    )
    task = load_task_file(f, "my-rag")
    assert task.name == "my-rag" and task.needs_context and task.declined("No idea, sorry")
    f.write_text(json.dumps({"user_template": "no placeholder"}))
    with pytest.raises(InputError, match=r"my-rag.json is not a valid task.*question"):
        load_task_file(f, "my-rag")
    with pytest.raises(InputError, match="does not exist"):
        load_task_file(tmp_path / "missing.json", "my-rag")
