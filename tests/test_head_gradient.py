"""The closed-form LM-head gradient against hand-computed values and plain autograd."""

from __future__ import annotations

import math

import pytest
import torch

from gradguard.head_gradient import head_gradients, token_stats


def test_two_token_vocabulary_by_hand() -> None:
    # W = [[1], [0]], u = [1]: z = [1, 0], p = [e/(e+1), 1/(e+1)], target 0.
    weight = torch.tensor([[1.0], [0.0]])
    u = torch.tensor([[1.0]])
    target = torch.tensor([0])
    stats = token_stats(u, weight, target, softcap=None)
    p0 = math.e / (math.e + 1)
    entropy = -(p0 * math.log(p0) + (1 - p0) * math.log(1 - p0))
    assert stats.nll.item() == pytest.approx(-math.log(p0), rel=1e-6)
    assert stats.entropy.item() == pytest.approx(entropy, rel=1e-6)
    grads = head_gradients(u, weight, target, stats, softcap=None)
    # ∂ℓ/∂W = (p − e_0) ⊗ u = [[-1/(e+1)], [1/(e+1)]]
    assert grads.exgrad_l1 == pytest.approx(2 / (math.e + 1), rel=1e-6)
    assert grads.paragrad_l1 == pytest.approx(entropy * 2 / (math.e + 1), rel=1e-6)
    # ∂ℓ_w/∂u = H · (p − e_0) · W = H · (−1/(e+1))
    assert grads.grad_u.item() == pytest.approx(-entropy / (math.e + 1), rel=1e-6)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_matches_autograd_with_chunks(softcap: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradguard.head_gradient as hg

    monkeypatch.setattr(hg, "_CHUNK", 7)  # force several chunks
    torch.manual_seed(1)
    vocab, dim, n_tokens = 23, 6, 4
    weight = torch.randn(vocab, dim, dtype=torch.float64).float()
    u = torch.randn(n_tokens, dim)
    targets = torch.randint(0, vocab, (n_tokens,))

    w_leaf = weight.clone().requires_grad_(True)
    u_leaf = u.clone().requires_grad_(True)
    z = u_leaf @ w_leaf.T
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    logp = torch.log_softmax(z, -1)
    entropy = -(logp.exp() * logp).sum(-1).detach()
    nll = -logp.gather(-1, targets.view(-1, 1)).squeeze(-1)
    g_w, g_u = torch.autograd.grad((entropy * nll).mean(), [w_leaf, u_leaf], retain_graph=True)
    (g_plain,) = torch.autograd.grad(nll.mean(), [w_leaf])

    stats = token_stats(u, weight, targets, softcap)
    grads = head_gradients(u, weight, targets, stats, softcap)
    assert grads.paragrad_l1 == pytest.approx(float(g_w.abs().sum()), rel=1e-5)
    assert grads.exgrad_l1 == pytest.approx(float(g_plain.abs().sum()), rel=1e-5)
    torch.testing.assert_close(grads.grad_u, g_u, rtol=1e-5, atol=1e-7)


def test_statistics_keep_float64_precision_over_a_large_vocabulary() -> None:
    from gradguard.head_gradient import lse_and_entropy

    torch.manual_seed(3)
    vocab, dim, n_tokens = 150_000, 16, 6
    weight = torch.randn(vocab, dim) * 0.6
    u = torch.randn(n_tokens, dim)
    u[0] = weight[7] * 6.0  # one confident token: a tiny NLL next to a large logit
    targets = torch.tensor([7, 1, 2, 3, 4, 5])
    z64 = u.double() @ weight.double().T
    logp = torch.log_softmax(z64, dim=-1)
    nll = -logp.gather(-1, targets.view(-1, 1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    stats = token_stats(u, weight, targets, softcap=None)
    torch.testing.assert_close(stats.nll.double(), nll, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(stats.entropy.double(), entropy, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(stats.lse.double(), torch.logsumexp(z64, -1), rtol=1e-6, atol=1e-5)
    lse, ent = lse_and_entropy((u @ weight.T).float())  # what generation saves per token
    torch.testing.assert_close(ent.double(), entropy, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(lse.double(), torch.logsumexp(z64, -1), rtol=1e-6, atol=1e-5)


def test_top_k_of_the_online_pass_matches_a_full_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradguard.head_gradient as hg

    monkeypatch.setattr(hg, "_CHUNK", 7)
    torch.manual_seed(4)
    weight, u = torch.randn(40, 5), torch.randn(3, 5)
    targets = torch.tensor([0, 1, 2])
    stats = token_stats(u, weight, targets, softcap=None, top_k=4)
    logp = torch.log_softmax(u @ weight.T, -1)
    values, ids = logp.topk(4, dim=-1)
    assert stats.top_ids is not None and stats.top_logprobs is not None
    assert torch.equal(stats.top_ids, ids)
    torch.testing.assert_close(stats.top_logprobs, values, rtol=1e-5, atol=1e-6)
