"""No hook outlives a failing scoring, and a failure leaves the model exactly as it was.

A user's hook on one decoder layer raises; the error reaches the caller, and afterwards every module
has the hooks it had before (gradguard's own are gone), every parameter keeps its ``requires_grad``
flag and tensor hooks, grad mode is restored, the scorer's lock is free, and the next scoring gives
the same numbers as one before the failure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from gradguard import GradScorer
from gradguard.errors import GradguardError
from gradguard.testing import make_tiny_model

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


class Boom(RuntimeError):
    pass


@pytest.fixture(scope="module")
def scorer() -> GradScorer:
    model, tok = make_tiny_model("qwen2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer = GradScorer(model, tok, spt_offset=-3, layer_span=(2, 4), model_name="tiny-qwen2")
        # transformers installs its output-capturing forward hooks once per model, on the first call with
        # output_hidden_states=True (the oracle's), and keeps them: install them before any snapshot.
        scorer.oracle(MESSAGES, "Paris.")
    return scorer


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncalibrated-task warnings
        yield


def snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """Every module's hook ids, every parameter's requires_grad flag and tensor hooks, and grad mode."""
    modules = {name: {d: tuple(getattr(m, d, {}) or {}) for d in HOOK_DICTS} for name, m in model.named_modules()}
    params = {
        name: (p.requires_grad, tuple(p._backward_hooks or {}), p.grad is None) for name, p in model.named_parameters()
    }
    return {"modules": modules, "params": params, "grad_enabled": torch.is_grad_enabled()}


def _raise_always(*args: Any) -> None:
    raise Boom("user hook failed")


def _raise_when_grad(*args: Any) -> None:
    if torch.is_grad_enabled():  # only in gradguard's scoring pass (generation runs without a graph)
        raise Boom("user hook failed in the scoring pass")


CASES: dict[str, tuple[int, str, Callable[..., None]]] = {
    "pre-hook below the span": (0, "pre", _raise_always),
    "post-hook below the span": (1, "post", _raise_always),
    "pre-hook on the span's first layer": (2, "pre", _raise_always),
    "post-hook inside the span, scoring only": (3, "post", _raise_when_grad),
    "pre-hook inside the span, scoring only": (3, "pre", _raise_when_grad),
    "backward hook inside the span": (3, "backward", _raise_always),
}

CALLS: dict[str, Callable[[GradScorer], Any]] = {
    "score": lambda s: s.score(MESSAGES, "Paris is the capital."),
    "score_many": lambda s: s.score_many(MESSAGES, ["Paris.", "Lyon, I think."]),
    "generate_and_score": lambda s: s.generate_and_score(MESSAGES, max_new_tokens=5),
    "generate_many": lambda s: s.generate_many(MESSAGES, 2, max_new_tokens=4, do_sample=True),
    "oracle": lambda s: s.oracle(MESSAGES, "Paris is the capital."),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_failing_user_hook_leaves_no_trace(scorer: GradScorer, case: str, call: str) -> None:
    layer_index, kind, fn = CASES[case]
    model = scorer.model
    before_result = scorer.score(MESSAGES, "Paris is the capital.")
    layer = scorer.model.get_decoder().layers[layer_index]
    register = {
        "pre": layer.register_forward_pre_hook,
        "post": layer.register_forward_hook,
        "backward": layer.register_full_backward_hook,
    }[kind]
    handle = register(fn)
    try:
        before = snapshot(model)
        with pytest.raises((Boom, GradguardError)) as info:
            CALLS[call](scorer)
        if not isinstance(info.value, Boom):
            assert isinstance(info.value.__cause__, Boom)
        assert snapshot(model) == before
        assert scorer.lock.acquire(blocking=False)
        scorer.lock.release()
    finally:
        handle.remove()
    after = scorer.score(MESSAGES, "Paris is the capital.")
    assert after.semgrad == before_result.semgrad and after.paragrad == before_result.paragrad
    assert after.token_logprobs == before_result.token_logprobs


def test_the_snapshot_sees_a_leftover_hook(scorer: GradScorer) -> None:
    """The check above would notice a hook gradguard forgot to remove, or a changed flag."""
    model = scorer.model
    before = snapshot(model)
    handle = model.get_decoder().layers[2].register_forward_pre_hook(lambda *a: None)
    assert snapshot(model) != before
    handle.remove()
    head = model.get_output_embeddings().weight
    head.requires_grad_(not head.requires_grad)
    assert snapshot(model) != before
    head.requires_grad_(not head.requires_grad)
    assert snapshot(model) == before


def test_a_frozen_model_stays_frozen_and_a_trainable_one_trainable(scorer: GradScorer) -> None:
    model = scorer.model
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for i, p in enumerate(model.parameters()):
            p.requires_grad_(i % 2 == 0)
        mixed = snapshot(model)
        scorer.score(MESSAGES, "Paris.")
        scorer.oracle(MESSAGES, "Paris.")
        scorer.generate_and_score(MESSAGES, max_new_tokens=3)
        assert snapshot(model) == mixed
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
