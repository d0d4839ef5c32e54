"""The straightforward gradient computation, as the paper's code does it: the test oracle.

One forward pass over prompt + response with every hidden state kept, then
``autograd.grad`` of the entropy-weighted loss with respect to all hidden states and to the
LM-head weight, and a second one for the unweighted loss (ExGrad). Slow (it scales with the
prompt length and builds a graph through every layer), but obviously right; every optimised
path in :mod:`gradguard.fast_path` must agree with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from gradguard.fast_path import RawScores

__all__ = ["oracle_scores"]


def oracle_scores(
    model: PreTrainedModel,
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    spt_position: int,
    layer_span: tuple[int, int],
    window: tuple[int, int] | None = None,
) -> RawScores:
    """Scores of one non-empty response by plain autograd over the whole sequence.

    ``window = (a, b)`` restricts the loss to response tokens ``a … b−1`` (the mean is over them);
    the returned token statistics then cover the window only.
    """
    device = model.device
    ids = torch.tensor([list(prompt_ids) + list(response_ids)], device=device)
    n_prompt, n_tokens = len(prompt_ids), len(response_ids)
    head = model.get_output_embeddings()
    was_required = head.weight.requires_grad
    try:
        head.weight.requires_grad_(True)
        with torch.enable_grad():
            # A detached embedding lookup: for tied embeddings only the LM-head use of the matrix counts.
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            out = model(inputs_embeds=embeds, output_hidden_states=True, use_cache=False)
            a, b = window if window is not None else (0, n_tokens)
            # Softmax in float64: torch's fp32 log_softmax over a ~150k vocabulary on CPU is biased by ~6e-5 nats
            # per token (measured on the embedded model against float64), more than the tolerance it pins.
            logits = out.logits[0, n_prompt - 1 + a : n_prompt - 1 + b].double()
            targets = torch.tensor(list(response_ids[a:b]), device=device)
            logp = torch.log_softmax(logits, dim=-1)
            entropy = -(logp.exp() * logp).sum(-1).detach()
            nll = -logp.gather(-1, targets.view(-1, 1)).squeeze(-1)
            weighted = (entropy * nll).mean()
            plain = nll.mean()
            start, stop = layer_span
            hidden = [out.hidden_states[i] for i in range(start, stop)]
            *g_hidden, g_head = torch.autograd.grad(weighted, [*hidden, head.weight], retain_graph=True)
            (g_head_plain,) = torch.autograd.grad(plain, [head.weight])
    finally:
        head.weight.requires_grad_(was_required)
        head.weight.grad = None
    d = g_head.shape[1]
    vocab = g_head.shape[0]
    semgrad = sum(float(g[0, spt_position].float().abs().sum()) for g in g_hidden) / ((stop - start) * d)
    return RawScores(
        semgrad=semgrad,
        paragrad=float(g_head.float().abs().sum()) / (vocab * d),
        exgrad=float(g_head_plain.float().abs().sum()) / (vocab * d),
        entropy=entropy.tolist(),
        nll=nll.detach().tolist(),
        window=(a, b),
    )
