"""Bad input gets a clear error; the model is never changed; memory stays flat."""

from __future__ import annotations

import gc
import math
import warnings

import pytest
import torch

from gradguard import (
    ChatTemplateError,
    ContextLengthError,
    GradScorer,
    InputError,
    UnknownOffsetError,
    UnsupportedModelError,
)
from gradguard.testing import make_tiny_model, make_tiny_tokenizer

Q = [{"role": "user", "content": "What is the capital of France?"}]


def test_empty_message_list(qwen_scorer: GradScorer) -> None:
    with pytest.raises(InputError, match="empty"):
        qwen_scorer.score([], "Paris")


@pytest.mark.parametrize(
    "messages, match",
    [([{"role": "robot", "content": "hi"}], "role 'robot'"), ([{"content": "hi"}], "'role' and 'content'")],
)
def test_malformed_messages(qwen_scorer: GradScorer, messages: list, match: str) -> None:
    with pytest.raises(InputError, match=match):
        qwen_scorer.score(messages, "Paris")


@pytest.mark.parametrize("response", ["", [], "<|im_end|>"])
def test_empty_response_is_nan_and_unscored(qwen_scorer: GradScorer, response: object) -> None:
    result = qwen_scorer.score(Q, response)  # type: ignore[arg-type]
    assert result.empty and not result.scored
    assert result.n_response_tokens == 0
    assert all(math.isnan(v) for v in result.uncertainty().values())
    assert result.metadata()["uncertainty"]["hybridgrad"] is None


def test_end_of_turn_is_stripped_once(qwen_scorer: GradScorer) -> None:
    plain = qwen_scorer.score(Q, "Paris")
    with_eot = qwen_scorer.score(Q, "Paris<|im_end|>")
    assert with_eot.token_ids == plain.token_ids
    assert with_eot.hybridgrad == pytest.approx(plain.hybridgrad)
    twice = qwen_scorer.score(Q, "Paris<|im_end|><|im_end|>")
    assert twice.n_response_tokens == plain.n_response_tokens + 1


def test_token_ids_and_text_agree(qwen_scorer: GradScorer) -> None:
    ids = qwen_scorer.tokenizer("Paris", add_special_tokens=False)["input_ids"]
    assert qwen_scorer.score(Q, ids).hybridgrad == pytest.approx(qwen_scorer.score(Q, "Paris").hybridgrad)
    with pytest.raises(InputError, match="outside the vocabulary"):
        qwen_scorer.score(Q, [10**9])


def test_prompt_longer_than_context_is_refused(qwen_scorer: GradScorer) -> None:
    long = [{"role": "user", "content": "word " * 400}]  # ~2000 byte tokens > 1024 positions
    with pytest.raises(ContextLengthError, match="context window of 1024"):
        qwen_scorer.score(long, "Paris")
    with pytest.raises(ContextLengthError):
        qwen_scorer.generate_and_score(long, max_new_tokens=4)


def test_tokenizer_without_chat_template() -> None:
    model, _ = make_tiny_model("qwen2")
    scorer = GradScorer(model, make_tiny_tokenizer("qwen2", chat_template=False), spt_offset=-2)
    with pytest.raises(ChatTemplateError, match="chat_template"):
        scorer.score(Q, "Paris")


def test_not_a_causal_lm() -> None:
    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    )
    with pytest.raises(UnsupportedModelError, match="causal language model"):
        GradScorer(bert, make_tiny_tokenizer("qwen2"))  # type: ignore[arg-type]


def test_unknown_family_needs_an_offset() -> None:
    model, tok = make_tiny_model("gemma2")
    with pytest.raises(UnknownOffsetError, match="spt_offset"):
        GradScorer(model, tok)
    with pytest.raises(InputError, match="negative"):
        GradScorer(model, tok, spt_offset=2)


def test_family_offsets() -> None:
    for family, offset in (("qwen2", -3), ("llama", -4), ("mistral", -2)):
        model, tok = make_tiny_model(family)
        assert GradScorer(model, tok).spt_offset == offset


def test_bad_layer_span() -> None:
    model, tok = make_tiny_model("qwen2")
    with pytest.raises(InputError, match="layer_span"):
        GradScorer(model, tok, layer_span=(3, 9))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_finite_scores(dtype: torch.dtype) -> None:
    model, tok = make_tiny_model("qwen2", dtype=dtype)
    scorer = GradScorer(model, tok)
    result = scorer.score(Q, "Paris is the capital of France.")
    assert result.scored
    assert all(math.isfinite(v) and v > 0 for v in (result.semgrad, result.paragrad, result.exgrad))
    reference = GradScorer(*make_tiny_model("qwen2")).score(Q, "Paris is the capital of France.")
    assert result.paragrad == pytest.approx(reference.paragrad, rel=0.1)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_model_is_left_as_found(requires_grad: bool) -> None:
    model, tok = make_tiny_model("qwen2")
    for p in model.parameters():
        p.requires_grad_(requires_grad)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scorer = GradScorer(model, tok)
    scorer.score(Q, "Paris")
    scorer.oracle(Q, "Paris")
    scorer.generate_and_score(Q, max_new_tokens=4)
    for name, p in model.named_parameters():
        assert p.requires_grad is requires_grad, name
        assert p.grad is None, name
        assert torch.equal(p.detach(), before[name]), name
    assert torch.is_grad_enabled()


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on every live object touches deprecated torch attributes
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_memory_is_flat_over_1000_scorings() -> None:
    model, tok = make_tiny_model("qwen2", num_layers=2, hidden_size=16)
    scorer = GradScorer(model, tok)
    messages = [{"role": "user", "content": "Hi?"}]
    for _ in range(20):  # warm-up
        scorer.score(messages, "Yo")
    baseline = _live_tensors()
    for i in range(1000):
        result = scorer.score(messages, "Yo" if i % 2 else "Hey")
        assert result.scored
    assert _live_tensors() <= baseline + 2
