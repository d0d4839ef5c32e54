"""GradguardLLM() on the embedded Qwen2.5-Coder-0.5B-Instruct (slow; marked ``embedded``)."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, SummaryIndex  # noqa: E402

from gradguard import DEFAULT_MODEL  # noqa: E402
from gradguard.integrations.llama_index import ConfidenceGuardQueryEngine, GradguardLLM  # noqa: E402
from gradguard.routing import RoutingPolicy  # noqa: E402

pytestmark = pytest.mark.embedded


def test_default_llm_hosts_the_embedded_model_and_guards_a_query() -> None:
    llm = GradguardLLM(max_new_tokens=12)
    response = llm.complete("What is the capital of France? Answer with one word.")
    meta = response.additional_kwargs["gradguard"]
    assert "Paris" in response.text
    assert (
        meta["scored"] is True and meta["model"] == DEFAULT_MODEL and meta["spt_offset"] == -1
    )  # the measured built-in profile
    assert llm.metadata.model_name == DEFAULT_MODEL and llm.metadata.context_window == 32768

    engine = SummaryIndex([Document(text="The Heron-3 robot runs for 9 hours on one charge.")]).as_query_engine(llm=llm)
    guarded = ConfidenceGuardQueryEngine(engine, RoutingPolicy.threshold(0.5)).query("How long does the Heron-3 run?")
    g = guarded.metadata["gradguard"]
    # Calibrated on closed-book SciQ, this small model's confidence stays far below 0.5: the guard abstains.
    assert g["score_source"] == "llm" and g["score"]["scored"] is True
    assert g["action"] == "abstain" and guarded.response == "I don't know."
