"""Closed-form LM-head gradients, computed in vocabulary chunks.

For logits ``z_t = W u_t`` (optionally soft-capped, ``z = c·tanh(r/c)``) and a loss
``ℓ = Σ_t w_t · (−log p_t(y_t))`` with constant weights ``w_t``, the gradient with respect
to the pre-cap logits is ``δ_t = w_t (p_t − e_{y_t}) ⊙ (1 − (z_t/c)²)``, so

- ``∂ℓ/∂W = Σ_t δ_t ⊗ u_t`` (a ``V×d`` matrix never materialised whole: its L1 norm is
  summed chunk by chunk), and
- ``∂ℓ/∂u_t = δ_t W`` (what flows back into the decoder for SemGrad).

Softmax, entropy and norms are computed in fp32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TokenStats", "token_stats", "head_gradients", "HeadGradients"]

_CHUNK = 16384  # vocabulary rows per step for logits and ∂ℓ/∂u (outputs are only T × chunk)
_G_CHUNK = 2048  # rows per step of the V×2d gradient matrix: small enough to stay in cache


@dataclass(frozen=True)
class TokenStats:
    """Per-token quantities of one response (length ``T``), all fp32."""

    logits: torch.Tensor  # (T, V) final (soft-capped) logits
    log_probs: torch.Tensor  # (T, V)
    entropy: torch.Tensor  # (T,) H_t
    nll: torch.Tensor  # (T,) −log p_t(y_t)


@torch.no_grad()
def head_logits(u: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """fp32 logits ``W u`` (soft-capped when ``softcap`` is set), computed in vocabulary chunks."""
    u32 = u.float()
    parts = [u32 @ w.float().T for w in weight.split(_CHUNK)]
    z = torch.cat(parts, dim=-1)
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return z


@torch.no_grad()
def token_stats(u: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> TokenStats:
    """Logits, log-probabilities, entropies and token NLLs for LM-head inputs ``u`` (T, d)."""
    z = head_logits(u, weight, softcap)
    logp = torch.log_softmax(z, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    nll = -logp.gather(-1, targets.view(-1, 1)).squeeze(-1)
    return TokenStats(logits=z, log_probs=logp, entropy=entropy, nll=nll)


@dataclass(frozen=True)
class HeadGradients:
    """L1 norms of the LM-head weight gradients and the gradient flowing into ``u``."""

    paragrad_l1: float  # ||∂ℓ_w/∂W||_1
    exgrad_l1: float  # ||∂ℓ/∂W||_1
    grad_u: torch.Tensor  # ∂ℓ_w/∂u, (T, d), in u's dtype


@torch.no_grad()
def head_gradients(
    u: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    stats: TokenStats,
    softcap: float | None,
) -> HeadGradients:
    """Closed-form ``∂ℓ_w/∂W``, ``∂ℓ/∂W`` (as L1 norms) and ``∂ℓ_w/∂u`` for one response.

    ``ℓ_w = (1/T) Σ_t H_t·nll_t`` with the entropies ``H_t`` held constant, and
    ``ℓ = (1/T) Σ_t nll_t``.
    """
    n_tokens = targets.shape[0]
    residual = stats.log_probs.exp()
    residual[torch.arange(n_tokens), targets] -= 1.0  # p_t − e_{y_t}
    if softcap:
        residual = residual * (1.0 - (stats.logits / softcap) ** 2)
    weights = (stats.entropy / n_tokens).unsqueeze(-1)  # H_t / T
    u32 = u.float()
    d = u32.shape[-1]
    # Σ_t w_t r_t ⊗ u_t = rᵀ (w ⊙ U) and Σ_t r_t ⊗ u_t = rᵀ U: one matmul against [w ⊙ U | U].
    stacked = torch.cat([weights * u32, u32], dim=-1)  # (T, 2d)
    para = 0.0
    ex = 0.0
    for r in residual.split(_G_CHUNK, dim=-1):  # r: (T, chunk)
        g = (r.T @ stacked).abs_()  # (chunk, 2d): |[∂ℓ_w/∂W rows | T·∂ℓ/∂W rows]|
        # Pairwise fp32 sums (vector_norm's ord=1 reduction drifts by ~1e-4 on chunks this size).
        para += float(g[:, :d].sum())
        ex += float(g[:, d:].sum())
    weighted = residual * weights
    grad_u = torch.zeros_like(u32)
    for r, w in zip(weighted.split(_CHUNK, dim=-1), weight.split(_CHUNK), strict=True):
        grad_u += r @ w.float()
    return HeadGradients(paragrad_l1=para, exgrad_l1=ex / n_tokens, grad_u=grad_u.to(u.dtype))
