"""SemGrad against a hand-derived closed form, independent of Hugging Face internals and of autograd.

The model is a hand-built *linear* causal decoder exposing the interface gradguard uses
(``get_decoder().layers``, ``get_input_embeddings``, ``get_output_embeddings``, a KV cache):

    h_0[i]     = E[x_i]
    h_{l+1}[i] = h_l[i] + A_l h_l[i] + C_l m_l[i],   m_l[i] = (1/(i+1)) Σ_{j≤i} h_l[j]   (decoder layer l)
    z[i]       = W h_L[i]                                  (LM head; no final norm)

With ``δ_i = (H_t/T)(p_t − e_{y_t})`` at the position ``i = P−2+t`` that predicts response token
``t`` (entropies held constant, as in METHOD.md) and 0 elsewhere, backpropagation is linear:

    g_L[i] = Wᵀ δ_i,     g_l[j] = (I + A_l)ᵀ g_{l+1}[j] + C_lᵀ Σ_{i≥j} g_{l+1}[i] / (i+1)

and SemGrad = Σ_{l ∈ [start, stop)} ||g_l[s]||₁ / ((stop − start)·d) at s = P + spt_offset.
The same numbers come from :func:`oracle_scores` (plain autograd) and :func:`fast_scores`
(cropped cache, graph from the first span layer, closed-form head gradient).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from gradguard.fast_path import fast_scores, prefill
from gradguard.oracle import oracle_scores
from gradguard.scorer import combine_scores

D, V, L = 6, 11, 3
SPAN = (1, 3)
PROMPT = [3, 7, 1, 9, 4, 2, 8]
OFFSET = -3
S = len(PROMPT) + OFFSET  # 4
RESPONSES = [[5, 0, 10, 6], [2, 9]]


class LinearLayer(torch.nn.Module):
    """``h + A h + C·(mean of h over positions ≤ i)``: uniform causal attention without a softmax or norm."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor, index: int) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(a)
        self.c = torch.nn.Parameter(c)
        self.index = index

    def forward(self, hidden_states: torch.Tensor, cache: DynamicCache | None = None) -> torch.Tensor:
        full = hidden_states  # every position ≤ the last one of this chunk
        if cache is not None:  # the cache holds this layer's inputs at the earlier positions
            keys, _ = cache.update(hidden_states.unsqueeze(1), hidden_states.unsqueeze(1), self.index)
            full = keys[:, 0]
        n_past = full.shape[1] - hidden_states.shape[1]
        counts = torch.arange(n_past + 1, full.shape[1] + 1, dtype=full.dtype).view(1, -1, 1)
        mean = full.cumsum(dim=1)[:, n_past:] / counts
        return hidden_states + hidden_states @ self.a.T + mean @ self.c.T


class LinearDecoder(torch.nn.Module):
    def __init__(self, embed: torch.nn.Embedding, layers: list[LinearLayer]) -> None:
        super().__init__()
        self.embed_tokens = embed
        self.layers = torch.nn.ModuleList(layers)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool = False,
    ) -> Any:
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        states = [h]
        for layer in self.layers:
            h = layer(h, cache=cache if use_cache else None)
            states.append(h)
        return SimpleNamespace(last_hidden_state=h, hidden_states=tuple(states), cache=cache)


class LinearLM(torch.nn.Module):
    """The hand-built model; ``forward`` mimics a causal LM's (logits, hidden_states)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config = LlamaConfig(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=1)
        embed = torch.nn.Embedding(V, D)
        embed.weight.data = torch.randn(V, D, generator=g)
        layers = [
            LinearLayer(0.4 * torch.randn(D, D, generator=g) / D**0.5, 0.4 * torch.randn(D, D, generator=g) / D**0.5, i)
            for i in range(L)
        ]
        self.model = LinearDecoder(embed, layers)
        self.lm_head = torch.nn.Linear(D, V, bias=False)
        self.lm_head.weight.data = 1.5 * torch.randn(V, D, generator=g)
        self.requires_grad_(False)  # frozen, like an inference model; scoring must leave it so

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def get_decoder(self) -> LinearDecoder:
        return self.model

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.lm_head

    def forward(self, inputs_embeds: torch.Tensor, output_hidden_states: bool = False, use_cache: bool = False) -> Any:
        out = self.model(inputs_embeds=inputs_embeds)
        return SimpleNamespace(logits=self.lm_head(out.last_hidden_state), hidden_states=out.hidden_states)


def hand_scores(
    model: LinearLM, prompt: list[int], response: list[int], s: int, span: tuple[int, int]
) -> dict[str, Any]:
    """Everything by hand in float64 numpy (the formulas in the module docstring)."""
    E = model.model.embed_tokens.weight.detach().double().numpy()
    A = [layer.a.detach().double().numpy() for layer in model.model.layers]
    C = [layer.c.detach().double().numpy() for layer in model.model.layers]
    W = model.lm_head.weight.detach().double().numpy()
    x = prompt + response
    n, P, T = len(x), len(prompt), len(response)
    h = [E[x]]
    counts = np.arange(1, n + 1)[:, None]
    for j in range(L):
        mean = np.cumsum(h[j], axis=0) / counts
        h.append(h[j] + h[j] @ A[j].T + mean @ C[j].T)
    u = h[L]
    delta = np.zeros((n, V))
    entropy, nll = [], []
    for t, y in enumerate(response):
        i = P - 1 + t
        z = W @ u[i]
        logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
        p = np.exp(logp)
        H = float(-(p * logp).sum())
        entropy.append(H)
        nll.append(float(-logp[y]))
        delta[i] = (H / T) * (p - np.eye(V)[y])
    g = [np.zeros((n, D)) for _ in range(L + 1)]
    g[L] = delta @ W
    for j in range(L - 1, -1, -1):
        later = np.cumsum((g[j + 1] / counts)[::-1], axis=0)[::-1]  # Σ_{i≥j} g_{l+1}[i] / (i+1)
        g[j] = g[j + 1] @ (np.eye(D) + A[j]) + later @ C[j]
    start, stop = span
    head = delta.T @ u  # Σ_i δ_i ⊗ u_i, V×d
    return {
        "g": g,
        "semgrad": sum(np.abs(g[j][s]).sum() for j in range(start, stop)) / ((stop - start) * D),
        "paragrad": np.abs(head).sum() / (V * D),
        "entropy": entropy,
        "nll": nll,
    }


@pytest.fixture(scope="module")
def model() -> LinearLM:
    return LinearLM().eval()


def test_the_hand_model_is_causal_and_its_gradient_depends_on_position_layer_and_norm(model: LinearLM) -> None:
    """The closed form is discriminating: another position, layer set, norm or reduction gives another number."""
    ref = hand_scores(model, PROMPT, RESPONSES[0], S, SPAN)
    g, start, stop = ref["g"], *SPAN
    others = [
        sum(np.abs(g[j][S - 1]).sum() for j in range(start, stop)) / ((stop - start) * D),  # position s − 1
        sum(np.abs(g[j][S + 1]).sum() for j in range(start, stop)) / ((stop - start) * D),  # position s + 1
        sum(np.abs(g[j][S]).sum() for j in range(0, stop)) / (stop * D),  # all layers
        np.abs(g[L][S]).sum() / D,  # the final output
        sum(np.linalg.norm(g[j][S]) for j in range(start, stop)) / ((stop - start) * D),  # L2 norm
        sum(np.abs(g[j][S]).sum() for j in range(start, stop)) / D,  # sum over layers, not mean
    ]
    for other in others:
        assert other != pytest.approx(ref["semgrad"], rel=1e-3)
    # the tail of the prompt and the response change the gradient at s; positions before s carry gradient too
    assert np.abs(g[start][S]).sum() > 0 and np.abs(g[start][0]).sum() > 0


@pytest.mark.parametrize("response", RESPONSES)
def test_oracle_semgrad_equals_the_closed_form(model: LinearLM, response: list[int]) -> None:
    hand = hand_scores(model, PROMPT, response, S, SPAN)
    raw = oracle_scores(model, PROMPT, response, S, SPAN)  # type: ignore[arg-type]
    assert raw.semgrad == pytest.approx(hand["semgrad"], rel=1e-5)
    assert raw.paragrad == pytest.approx(hand["paragrad"], rel=1e-5)
    np.testing.assert_allclose(raw.entropy, hand["entropy"], rtol=1e-5)
    np.testing.assert_allclose(raw.nll, hand["nll"], rtol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("cache_kind", ["none", "prompt", "whole sequence"])
def test_fast_path_semgrad_equals_the_closed_form(model: LinearLM, cache_kind: str) -> None:
    """Batched, with no cache (prefilled), a prompt cache, or a longer cache to crop (as generation returns)."""
    cache = None
    if cache_kind == "prompt":
        cache = prefill(model, PROMPT)  # type: ignore[arg-type]
    elif cache_kind == "whole sequence":
        cache = prefill(model, PROMPT + RESPONSES[0][:-1])  # type: ignore[arg-type]
    raws = fast_scores(model, PROMPT, RESPONSES, S, SPAN, cache=cache)  # type: ignore[arg-type]
    for raw, response in zip(raws, RESPONSES, strict=True):
        hand = hand_scores(model, PROMPT, response, S, SPAN)
        assert raw.semgrad == pytest.approx(hand["semgrad"], rel=1e-5)
        assert raw.paragrad == pytest.approx(hand["paragrad"], rel=1e-5)
        np.testing.assert_allclose(raw.nll, hand["nll"], rtol=1e-5)
        scores = combine_scores(raw)
        alpha = np.exp(-np.mean(hand["entropy"]))
        assert scores["hybridgrad"] == pytest.approx(alpha * hand["paragrad"] + (1 - alpha) * hand["semgrad"], rel=1e-5)


@pytest.mark.parametrize(("offset", "span"), [(-1, (0, 3)), (-5, (2, 3)), (-7, (0, 1))])
def test_other_positions_and_spans(model: LinearLM, offset: int, span: tuple[int, int]) -> None:
    s = len(PROMPT) + offset
    hand = hand_scores(model, PROMPT, RESPONSES[0], s, span)
    assert oracle_scores(model, PROMPT, RESPONSES[0], s, span).semgrad == pytest.approx(hand["semgrad"], rel=1e-5)  # type: ignore[arg-type]
    fast = fast_scores(model, PROMPT, [RESPONSES[0]], s, span)[0]  # type: ignore[arg-type]
    assert fast.semgrad == pytest.approx(hand["semgrad"], rel=1e-5)
