"""The one metadata schema every integration publishes: versioned, JSON-able, the same keys scored or not."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gradguard.result import METADATA_KEYS, METADATA_SCHEMA_VERSION, unscored_metadata
from gradguard.testing import make_score_result


def test_metadata_is_versioned_and_json_able() -> None:
    meta = make_score_result(confidence=0.7, hybridgrad=0.1).metadata()
    assert tuple(meta) == METADATA_KEYS and meta["schema_version"] == METADATA_SCHEMA_VERSION
    assert json.loads(json.dumps(meta)) == meta


def test_nan_scores_become_none_and_unscored_metadata_has_the_same_keys() -> None:
    meta = make_score_result(confidence=None, hybridgrad=math.nan).metadata()
    assert meta["uncertainty"]["hybridgrad"] is None and meta["scored"] is False
    unscored = unscored_metadata("scoring failed: boom", model="m")
    assert set(unscored) == set(METADATA_KEYS) | {"error"}
    assert unscored["schema_version"] == METADATA_SCHEMA_VERSION and unscored["scored"] is False
    assert set(unscored["uncertainty"]) == set(meta["uncertainty"]) and unscored["model"] == "m"
    json.dumps(unscored)


def test_tokens_carry_text_logprob_and_entropy_of_every_answer_token(tiny_scorer) -> None:


    messages = [{"role": "user", "content": "Name a colour."}]
    result = tiny_scorer.score(messages, "Blue 🙂, or green.")
    tokens = result.metadata()["tokens"]
    n = len(result.token_ids)
    assert len(tokens["text"]) == len(tokens["logprob"]) == len(tokens["entropy"]) == n
    assert "".join(tokens["text"]) == result.response == "Blue 🙂, or green."
    # The entropies are those of the next-token distributions the model gives at each answer position.
    prompt = tiny_scorer.prompt_ids(messages)
    ids = torch.tensor([prompt + list(result.token_ids)])
    with torch.no_grad():
        logits = tiny_scorer.model(ids).logits[0, len(prompt) - 1 : -1].double()
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    assert tokens["entropy"] == pytest.approx(entropy.tolist(), abs=1e-4)
    assert tokens["logprob"] == pytest.approx(logp[torch.arange(n), list(result.token_ids)].tolist(), abs=1e-4)


def test_an_empty_answer_has_no_tokens(tiny_scorer) -> None:
    assert tiny_scorer.score([{"role": "user", "content": "Hi"}], "").metadata()["tokens"] is None
