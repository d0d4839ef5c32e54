"""Tasks: what a calibration is a calibration *of* — a prompt format, a judge and a domain.

A calibrated confidence means "P(correct) for answers produced the way the calibration data
was produced". Four tasks are built in:

- ``closed-qa``: a short answer from the model's own knowledge (system prompt
  :data:`~gradguard.data.DEFAULT_SYSTEM_PROMPT`, the question as the user message; judge
  ``containment``).
- ``rag``: an answer from a supplied context (system prompt :data:`RAG_SYSTEM_PROMPT`, user
  message ``"Context: …\\n\\nQuestion: …"``); a question the context does not answer must be
  declined. Judge ``f1`` (SQuAD token F1 ≥ 0.5) on answerable questions; on unanswerable ones
  the answer is correct exactly when it declines (:class:`DeclineRule`).
- ``chat``: a free-form answer in sentences to a bare question (no system prompt), as
  ``gradguard ask`` asks it; judge ``containment``.
- ``tools``: a turn with tools bound: the conversation as it is, the tools rendered by the model's own
  chat template (``tools=``); its confidence is **per tool call** (the call's own token span) and
  its judge ``bfcl`` is BFCL's checker (:mod:`gradguard.evaluation.tool_calls`): the right function,
  every argument among the acceptable values; on a question no tool fits, right = no call.

A user's own prompt is its own task: any other name, defined by a :class:`Task` record (from a
JSON file given to ``gradguard calibrate --task NAME --prompt-template FILE``) and stored in the
profile with the calibration fitted on it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gradguard.data import DEFAULT_SYSTEM_PROMPT, QAItem
from gradguard.errors import InputError

__all__ = [
    "TASK_NAME_PATTERN",
    "RAG_SYSTEM_PROMPT",
    "RAG_USER_TEMPLATE",
    "TOOLS_MAX_NEW_TOKENS",
    "DEFAULT_DECLINE_PHRASES",
    "DeclineRule",
    "Task",
    "BUILTIN_TASKS",
    "UnknownTaskError",
    "builtin_task",
    "load_task_file",
    "check_task_name",
]

#: What a task name may look like (lower case, digits, ``-`` and ``_``; starts with a letter).
TASK_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"

#: The ``rag`` task's system message.
RAG_SYSTEM_PROMPT = (
    "You answer questions about a document. First decide whether the document states the answer. "
    "If it does, reply with the shortest exact phrase from the document. If it does not, reply: unanswerable."
)
#: The ``rag`` task's user message; ``{context}`` and ``{question}`` are filled in.
RAG_USER_TEMPLATE = "Context: {context}\n\nQuestion: {question}"

#: The ``tools`` task's answer length: room for a call with several arguments (a text reply stops early).
TOOLS_MAX_NEW_TOKENS = 128

#: Phrases that mark a declined answer (matched on lower-cased text with curly quotes straightened).
DEFAULT_DECLINE_PHRASES: tuple[str, ...] = (
    "i don't know",
    "i do not know",
    "don't know",
    "unanswerable",
    "cannot be answered",
    "can't be answered",
    "cannot answer",
    "can't answer",
    "not mentioned",
    "not stated",
    "not specified",
    "not provided",
    "no information",
    "does not contain",
    "doesn't contain",
    "does not say",
    "doesn't say",
    "does not mention",
    "doesn't mention",
    "not in the context",
)


class UnknownTaskError(InputError):
    """A task name that is neither built in nor calibrated in the profile."""


class DeclineRule(BaseModel):
    """Decides whether an answer declines to answer: any phrase contained, or the regex ``pattern`` found.

    Matching is case-insensitive; curly apostrophes count as straight ones.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    phrases: tuple[str, ...] = DEFAULT_DECLINE_PHRASES
    pattern: str | None = Field(None, description="A Python regular expression searched in the answer.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"decline pattern {v!r} is not a valid regular expression: {exc}") from None
        return v

    def declined(self, answer: str) -> bool:
        """True when ``answer`` declines (see the class docstring)."""
        text = answer.replace("\u2019", "'").replace("\u2018", "'").lower()
        if any(p.lower() in text for p in self.phrases):
            return True
        return bool(self.pattern and re.search(self.pattern, answer, flags=re.IGNORECASE))


class Task(BaseModel):
    """How answers of one task are asked and judged. A calibration is valid for its task only.

    ``user_template`` contains ``{question}`` and, for tasks with a context, ``{context}``.
    ``judge`` names a judge of :mod:`gradguard.calibration.judge` (``containment`` or ``f1``), or ``bfcl``:
    tool calls checked by BFCL's rules (:mod:`gradguard.evaluation.tool_calls`; the built-in ``tools``
    task, whose questions carry their own messages and tools).
    With ``declines`` set, a question marked ``is_impossible`` is answered correctly exactly when
    the answer declines, and a declined answer to an answerable question is wrong.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(..., pattern=TASK_NAME_PATTERN)
    description: str = ""
    system_prompt: str | None = None
    user_template: str = "{question}"
    judge: Literal["containment", "f1", "bfcl"] = "containment"
    max_new_tokens: int = Field(64, ge=1, le=4096)
    declines: DeclineRule | None = None

    @model_validator(mode="after")
    def _template(self) -> Task:
        if "{question}" not in self.user_template:
            raise ValueError(f"user_template {self.user_template!r} must contain {{question}}")
        try:
            self.user_template.format(question="q", context="c")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"user_template {self.user_template!r} may only use {{question}} and {{context}} "
                f"(write literal braces as {{{{ and }}}}): {exc}"
            ) from None
        return self

    @property
    def tool_calls(self) -> bool:
        """True for a task whose answers are tool calls judged per call (judge ``bfcl``, e.g. ``tools``)."""
        return self.judge == "bfcl"

    @property
    def needs_context(self) -> bool:
        """True when the user message includes a ``{context}``."""
        return "{context}" in self.user_template

    def messages(self, question: str, context: str | None = None) -> list[dict[str, str]]:
        """The chat messages that ask ``question`` (with ``context`` where the template has one)."""
        if self.needs_context and context is None:
            raise InputError(f"task {self.name!r} formats a context; pass context= (e.g. --context TEXT or @FILE)")
        msgs: list[dict[str, str]] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": self.user_template.format(question=question, context=context or "")})
        return msgs

    def item_messages(self, item: QAItem) -> list[dict[str, str]]:
        """The chat messages for one data item."""
        if self.needs_context and item.context is None:
            raise InputError(
                f"question {item.index} ({item.query[:60]!r}) has no \"context\", but task {self.name!r} needs one; "
                "add a context to every line or choose a task without {context}"
            )
        return self.messages(item.query, item.context)

    def declined(self, answer: str) -> bool:
        """True when this task detects declining and ``answer`` declines."""
        return self.declines is not None and self.declines.declined(answer)


BUILTIN_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="closed-qa",
            description="a short answer from the model's own knowledge",
            system_prompt=DEFAULT_SYSTEM_PROMPT,
            judge="containment",
            max_new_tokens=24,
        ),
        Task(
            name="rag",
            description="an answer from a supplied context; a question the context does not answer must be declined",
            system_prompt=RAG_SYSTEM_PROMPT,
            user_template=RAG_USER_TEMPLATE,
            judge="f1",
            max_new_tokens=32,
            declines=DeclineRule(),
        ),
        Task(
            name="chat",
            description="a free-form answer in sentences to a bare question (what `gradguard ask` does)",
            system_prompt=None,
            judge="containment",
            max_new_tokens=64,
        ),
        Task(
            name="tools",
            description="tool calls: the conversation with tools bound through the chat template; one confidence "
            "per call (right function, every argument acceptable by BFCL's checker; no call when no tool fits)",
            system_prompt=None,
            judge="bfcl",
            max_new_tokens=TOOLS_MAX_NEW_TOKENS,
        ),
    )
}


def check_task_name(name: str) -> str:
    """``name`` if it is a valid task name, else :class:`UnknownTaskError` with the rule."""
    if not isinstance(name, str) or not re.match(TASK_NAME_PATTERN, name):
        raise UnknownTaskError(
            f"task name {name!r} is not valid; use lower-case letters, digits, '-' and '_' (e.g. 'my-rag'), "
            f"or a built-in task: {sorted(BUILTIN_TASKS)}"
        )
    return name


def builtin_task(name: str) -> Task:
    """The built-in task ``name``; :class:`UnknownTaskError` names the choices otherwise."""
    try:
        return BUILTIN_TASKS[name]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {name!r}; built-in tasks are {sorted(BUILTIN_TASKS)} — define your own with "
            f"`gradguard calibrate --task {name} --prompt-template FILE --data QA.jsonl`"
        ) from None


def load_task_file(path: str | os.PathLike[str], name: str) -> Task:
    """A :class:`Task` named ``name`` from a JSON file of its fields (``system_prompt``, ``user_template``, …)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"prompt template file {str(path)!r} does not exist; pass a JSON file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"prompt template {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"prompt template {path} must be a JSON object of Task fields, got {type(data).__name__}")
    data.setdefault("name", name)
    if data["name"] != name:
        raise InputError(f"prompt template {path} names task {data['name']!r} but --task is {name!r}; make them agree")
    try:
        return Task.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"prompt template {path} is not a valid task: {problems}") from None

