"""Closed-form LM-head gradients and token statistics, each in one pass over the head's vocabulary chunks.

For logits ``z_t = W u_t`` (optionally soft-capped, ``z = c·tanh(r/c)``) and a loss
``ℓ = Σ_t w_t · (−log p_t(y_t))`` with constant weights ``w_t``, the gradient with respect
to the pre-cap logits is ``δ_t = w_t (p_t − e_{y_t}) ⊙ (1 − (z_t/c)²)``, so

- ``∂ℓ/∂W = Σ_t δ_t ⊗ u_t`` (a ``V×d`` matrix never materialised whole: its L1 norm is
  summed chunk by chunk), and
- ``∂ℓ/∂u_t = δ_t W`` (what flows back into the decoder for SemGrad).

:func:`token_stats` reads ``W`` once (an online log-sum-exp, entropy and NLL over vocabulary chunks; no ``T×V``
tensor outlives a chunk). :func:`head_gradients` reads it once more: given each token's log-sum-exp and entropy —
from :func:`token_stats`, or saved while the model generated the answer — one fused pass computes the logits of a
chunk, ``p − e_y``, its contribution to ``∂ℓ_w/∂u`` and to both weight-gradient norms, and the token NLLs.
Softmax, entropy and norms are computed in fp32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "TokenStats",
    "HeadGradients",
    "HeadRow",
    "token_stats",
    "lse_and_entropy",
    "target_nll",
    "head_gradients",
    "head_gradients_rows",
]

#: Vocabulary rows per step. The chunk of ``W`` (c × d), its logits (c × T) and the c × d blocks of the weight
#: gradients stay in cache while they are used; 512 was fastest on a 2-core CPU at T = 4…32 (2,048: up to 1.3× slower).
_CHUNK = 512


@dataclass(frozen=True)
class TokenStats:
    """Per-token quantities of one response (length ``T``), all fp32; no ``T×V`` tensor is kept."""

    lse: torch.Tensor  # (T,) log Σ_v exp z_tv of the final (soft-capped) logits
    entropy: torch.Tensor  # (T,) H_t
    nll: torch.Tensor  # (T,) −log p_t(y_t)
    top_ids: torch.Tensor | None = None  # (T, k) the k most likely tokens, most likely first
    top_logprobs: torch.Tensor | None = None  # (T, k) their log-probabilities


def _logits_t(w: torch.Tensor, u32: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """fp32 logits of the vocabulary chunk ``w`` (c × d) for ``u32`` (T × d), transposed: (c × T)."""
    z = w.float() @ u32.T  # W_c uᵀ reads the chunk row by row (much faster on CPU than u W_cᵀ for small T)
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return z


def _merge_top(
    best: tuple[torch.Tensor, torch.Tensor] | None, z: torch.Tensor, offset: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-``k`` (values, ids), each (k, T), merged with the chunk logits ``z`` (c × T) from ``offset`` on."""
    values, idx = z.topk(min(k, z.shape[0]), dim=0)
    idx = idx + offset
    if best is not None:
        values, idx = torch.cat([best[0], values]), torch.cat([best[1], idx])
        values, pick = values.topk(min(k, values.shape[0]), dim=0)
        idx = idx.gather(0, pick)
    return values, idx


def _target_logits(z: torch.Tensor, targets: torch.Tensor, offset: int, out: torch.Tensor) -> torch.Tensor:
    """Write into ``out`` (T,) the logits of the targets that fall in this chunk; return the chunk mask (T,)."""
    local = targets - offset
    inside = (local >= 0) & (local < z.shape[0])
    cols = inside.nonzero().squeeze(-1)
    if cols.numel():
        out[cols] = z[local[cols], cols]
    return inside


@torch.no_grad()
def token_stats(
    u: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None, top_k: int = 0
) -> TokenStats:
    """Log-sum-exp, entropy, NLL (and the ``top_k`` most likely tokens) for LM-head inputs ``u`` (T, d).

    One pass over ``W`` with an online log-sum-exp: per token the running maximum ``m``, ``S = Σ e^{z−m}`` and
    ``A = Σ e^{z−m}(m − z)`` (non-negative terms, so a small entropy keeps its precision); then
    ``lse = m + log S``, ``H = A/S + log S`` and ``nll = lse − z_y``.
    """
    u32 = u.float()
    n = u32.shape[0]
    device = u32.device
    m = torch.full((n,), -torch.inf, device=device)
    s = torch.zeros(n, device=device)
    a = torch.zeros(n, device=device)
    z_target = torch.zeros(n, device=device)
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    offset = 0
    for w in weight.split(_CHUNK):
        z = _logits_t(w, u32, softcap)
        m_new = torch.maximum(m, z.max(dim=0).values)
        e = torch.exp(z - m_new)
        if offset == 0:
            s, a = e.sum(0), (e * (m_new - z)).sum(0)
        else:
            scale = torch.exp(m - m_new)
            a = scale * (a + s * (m_new - m)) + (e * (m_new - z)).sum(0)
            s = s * scale + e.sum(0)
        m = m_new
        _target_logits(z, targets, offset, z_target)
        if top_k:
            best = _merge_top(best, z, offset, top_k)
        offset += w.shape[0]
    log_s = torch.log(s)
    lse = m + log_s
    top_ids = top_lp = None
    if best is not None:
        top_lp, top_ids = (best[0] - lse).T.contiguous(), best[1].T.contiguous()
    nll = (m - z_target) + log_s  # not lse − z_y: keeps the precision of a small NLL next to a large logit
    return TokenStats(lse=lse, entropy=a / s + log_s, nll=nll, top_ids=top_ids, top_logprobs=top_lp)


@torch.no_grad()
def lse_and_entropy(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-sum-exp and entropy over the last axis of fp32 logits ``z`` (as :func:`token_stats` computes them:
    ``H = A/S + log S`` with non-negative terms; fp32 ``log_softmax`` over a ~150k vocabulary is off by ~1e-4)."""
    m = z.max(dim=-1, keepdim=True).values
    gap = m - z
    e = torch.exp(-gap)
    s = e.sum(-1)
    log_s = torch.log(s)
    return m.squeeze(-1) + log_s, (e * gap).sum(-1) / s + log_s


@torch.no_grad()
def target_nll(
    u: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    """Token NLLs ``lse − z_y`` (T,) when the log-sum-exps are known: only the targets' rows of ``W`` are read."""
    z = (u.float() * weight[targets].float()).sum(-1)
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return lse.float() - z


@dataclass(frozen=True)
class HeadGradients:
    """L1 norms of the LM-head weight gradients, the gradient flowing into ``u``, and what the pass read on the way."""

    paragrad_l1: float  # ||∂ℓ_w/∂W||_1
    exgrad_l1: float  # ||∂ℓ/∂W||_1
    grad_u: torch.Tensor  # ∂ℓ_w/∂u, (T, d), in u's dtype
    nll: torch.Tensor  # (T,) −log p_t(y_t), fp32
    top_ids: torch.Tensor | None = None  # (T, k), when asked for
    top_logprobs: torch.Tensor | None = None


@dataclass(frozen=True)
class HeadRow:
    """One response's tokens for :func:`head_gradients_rows`: LM-head inputs ``u`` (T, d), ``targets`` (T,), and
    per token the log-sum-exp and entropy of its distribution (from :func:`token_stats` or saved by generation)."""

    u: torch.Tensor
    targets: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor


@torch.no_grad()
def head_gradients_rows(
    rows: Sequence[HeadRow], weight: torch.Tensor, softcap: float | None, top_k: int = 0
) -> list[HeadGradients]:
    """Closed-form ``∂ℓ_w/∂W``, ``∂ℓ/∂W`` (as L1 norms) and ``∂ℓ_w/∂u`` of several responses in one pass over ``W``.

    Per response ``ℓ_w = (1/T) Σ_t H_t·nll_t`` with the entropies ``H_t`` held constant, and ``ℓ = (1/T) Σ_t nll_t``.
    Every chunk of ``W`` is read once for all rows: the logits of all tokens at once (``p = exp(z − lse)``),
    then per row the chunk's block of ``Σ_t r_t ⊗ [w_t u_t | u_t]`` (``r = p − e_y``), whose absolute sums add
    up to both norms, and ``∂ℓ_w/∂u += (w ⊙ r) W_c``.
    """
    if not rows:
        return []
    u32 = torch.cat([row.u.float() for row in rows])  # (N, d)
    targets = torch.cat([row.targets for row in rows])
    lse = torch.cat([row.lse.float() for row in rows])
    sizes = [int(row.targets.shape[0]) for row in rows]
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    weights = torch.cat([row.entropy.float() / size for row, size in zip(rows, sizes, strict=True)])  # H_t / T
    # Σ_t w_t r_t ⊗ u_t = rᵀ (w ⊙ U) and Σ_t r_t ⊗ u_t = rᵀ U: per row two matmuls into contiguous c × d blocks
    # (faster on CPU than one against [w ⊙ U | U] whose halves are then summed with a stride).
    scaled = [(weights[a:b, None] * u32[a:b]).contiguous() for a, b in zip(bounds, bounds[1:], strict=False)]
    plain = [u32[a:b].contiguous() for a, b in zip(bounds, bounds[1:], strict=False)]
    n = u32.shape[0]
    para = [0.0] * len(rows)
    ex = [0.0] * len(rows)
    expected = torch.zeros_like(u32)  # Σ_v w p_v f_v W_v (f: the soft-cap derivative, else 1)
    mass = torch.zeros(n, device=u32.device)  # Σ_v exp(z − lse): 1 when lse came from this very pass
    z_target = torch.zeros(n, device=u32.device)
    cols = torch.arange(n, device=u32.device)
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    offset = 0
    for w in weight.split(_CHUNK):
        w32 = w.float()
        z = _logits_t(w32, u32, softcap)  # (c, N)
        p = torch.exp(z - lse)
        mass += p.sum(0)
        scale = 1.0 - (z / softcap) ** 2 if softcap else None
        r = p * scale if scale is not None else p
        expected.addmm_((r * weights).T, w32)
        inside = _target_logits(z, targets, offset, z_target)
        if bool(inside.any()):
            hit = cols[inside]
            local = targets[hit] - offset
            r[local, hit] -= scale[local, hit] if scale is not None else 1.0  # (p − e_y) ⊙ f
        if top_k:
            best = _merge_top(best, z, offset, top_k)
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
            r_i = r[:, a:b]
            # Pairwise fp32 sums (vector_norm's ord=1 reduction drifts by ~1e-4 on blocks this size).
            para[i] += float((r_i @ scaled[i]).abs_().sum())  # rows of ∂ℓ_w/∂W
            ex[i] += float((r_i @ plain[i]).abs_().sum())  # rows of T·∂ℓ/∂W
        offset += w.shape[0]
    # When ``lse`` was saved by generation, this pass's own logits differ from generation's by float error:
    # normalise with this pass's log-sum-exp (``lse + log mass``), so the NLLs and ∂ℓ_w/∂u are those of one
    # consistent distribution (the weight-gradient norms carry a relative error of |mass − 1|, ~1e-5).
    lse = lse + torch.log(mass)
    f_target = 1.0 - (z_target / softcap) ** 2 if softcap else torch.ones_like(z_target)
    grad_u = expected / mass[:, None] - (weights * f_target)[:, None] * weight[targets].float()
    nll = lse - z_target
    out = []
    for i, (row, a, b) in enumerate(zip(rows, bounds, bounds[1:], strict=False)):
        top_ids = top_lp = None
        if best is not None:
            top_lp, top_ids = (best[0][:, a:b] - lse[a:b]).T.contiguous(), best[1][:, a:b].T.contiguous()
        out.append(
            HeadGradients(
                paragrad_l1=para[i],
                exgrad_l1=ex[i] / sizes[i],
                grad_u=grad_u[a:b].to(row.u.dtype),
                nll=nll[a:b],
                top_ids=top_ids,
                top_logprobs=top_lp,
            )
        )
    return out


def head_gradients(
    u: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, stats: TokenStats, softcap: float | None
) -> HeadGradients:
    """:func:`head_gradients_rows` for one response whose ``stats`` came from :func:`token_stats`."""
    return head_gradients_rows([HeadRow(u, targets, stats.lse, stats.entropy)], weight, softcap)[0]
