"""Scoring that reuses what generation computed: only the SemGrad layers run, and the LM head is read once.

Given the :class:`~gradguard.capture.GenerationStates` of a ``generate`` call, an answer's scores need

- no lower-half forward: the input of the first SemGrad layer at every position from the semantic-preserving
  token ``s`` on was saved, and becomes the leaf the graph starts from;
- no prefix forward: the upper layers' keys and values before ``s`` come from generation's KV cache (copied per
  scoring row and right-aligned, so rows from a left-padded batch, several completions, or several windows of one
  answer line up);
- no separate logits pass: each generated token's log-sum-exp and entropy were saved, so one fused pass over
  the LM head gives ``∂ℓ_w/∂u``, both weight-gradient norms and the NLLs.

The result equals :func:`gradguard.fast_path.fast_scores` (and so the oracle) up to float error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import DynamicCache, PreTrainedModel

from gradguard.capture import GenerationStates
from gradguard.errors import InputError
from gradguard.fast_path import KnownStats, RawScores, _check_windows, _right_padded, _score_pass

__all__ = ["ReuseRow", "reused_scores"]


class ReuseRow(NamedTuple):
    """One row to score from saved generation states: generation row ``source``, its ``prompt_ids`` (without the
    prefill), semantic-preserving position, the answer ``response`` (the ``n_forced`` prefill tokens first, then
    generated tokens), and a loss ``window`` and ``full_stats`` as in :class:`~gradguard.fast_path.ScoreRow`."""

    source: int
    prompt_ids: Sequence[int]
    spt_position: int
    response: Sequence[int]
    n_forced: int = 0
    window: tuple[int, int] | None = None
    full_stats: bool = True


def _prefix_cache(
    model: PreTrainedModel, states: GenerationStates, sources: Sequence[int], cols: Sequence[int]
) -> tuple[DynamicCache, torch.Tensor]:
    """A cache of each row's prefix (generation row ``sources[b]``, padded columns ``[0, cols[b])``), right-aligned
    to ``max(cols)`` columns, and its attention mask (left padding masked)."""
    assert states.cache is not None
    width = max(cols)
    device = states.attention_mask.device
    index = torch.tensor(list(sources), dtype=torch.long, device=device)
    aligned = all(c == width for c in cols)
    mask = torch.zeros((len(sources), width), dtype=states.attention_mask.dtype, device=device)
    for b, (src, col) in enumerate(zip(sources, cols, strict=True)):
        mask[b, width - col :] = states.attention_mask[src, :col]
    cache = DynamicCache(config=model.config)
    if width == 0:
        return cache, mask
    for layer_idx, layer in enumerate(states.cache.layers):
        pair = []
        saved: tuple[torch.Tensor, torch.Tensor] = (layer.keys, layer.values)  # type: ignore[union-attr,assignment]
        for full in saved:
            if aligned:
                pair.append(full.index_select(0, index.to(full.device))[:, :, :width].contiguous())
                continue
            out = full.new_zeros((len(sources), full.shape[1], width, full.shape[3]))
            for b, (src, col) in enumerate(zip(sources, cols, strict=True)):
                out[b, :, width - col :] = full[src, :, :col]
            pair.append(out)
        cache.update(pair[0], pair[1], layer_idx)
    return cache, mask


def reused_scores(
    model: PreTrainedModel,
    states: GenerationStates,
    rows: Sequence[ReuseRow],
    layer_span: tuple[int, int],
    hidden_layers: Sequence[int] = (),
    top_logprobs: int = 0,
) -> list[RawScores]:
    """Score ``rows`` (answers generated in the call that saved ``states``) in one batched pass.

    Each row's result equals :func:`~gradguard.fast_path.fast_scores` on it alone (the exact path), up to float
    error. ``states`` must be trusted and must have saved the inputs of ``layer_span[0]`` and of every hidden
    layer below it that ``hidden_layers`` names; the source cache is read, not changed.
    """
    if not states.trusted:
        raise InputError(f"these generation states cannot be reused ({states.reason}); score on the exact path")
    rows = [ReuseRow(*row) for row in rows]
    if not rows:
        return []
    start = layer_span[0]
    missing = [i for i in (start, *hidden_layers) if i <= start and i not in states.hidden]
    if missing:
        raise InputError(f"generation did not save the inputs of layers {missing}; score on the exact path")
    spans = _check_windows([row.response for row in rows], [row.window for row in rows])
    device = model.device
    segments, cols, known = [], [], []
    for row in rows:
        s, n_prompt = int(row.spt_position), len(row.prompt_ids)
        n_generated = len(row.response) - row.n_forced
        col = states.input_width - (n_prompt + row.n_forced) + s  # padded column of s
        segment = list(row.prompt_ids[s:]) + list(row.response[:-1])
        if not 0 <= s < n_prompt or col < states.first_col:
            raise InputError(f"spt_position {s} lies before the saved states (column {col} < {states.first_col})")
        if col - states.first_col + len(segment) > next(iter(states.hidden.values())).shape[1]:
            raise InputError("the answer is longer than what generation saved; score on the exact path")
        if n_generated > states.steps:
            raise InputError(f"{n_generated} generated tokens but generation saved statistics for {states.steps}")
        segments.append(segment)
        cols.append(col)
        known.append(
            KnownStats(row.n_forced, states.lse[row.source, :n_generated], states.entropy[row.source, :n_generated])
        )
    ids, segment_mask = _right_padded(segments, device)
    width = ids.shape[1]

    def gathered(saved: torch.Tensor) -> torch.Tensor:
        out = saved.new_zeros((len(rows), width, saved.shape[-1]))
        for b, (row, col, segment) in enumerate(zip(rows, cols, segments, strict=True)):
            at = col - states.first_col
            out[b, : len(segment)] = saved[row.source, at : at + len(segment)]
        return out.to(device)

    start_states = gathered(states.hidden[start])
    lower = {i: gathered(states.hidden[i]) for i in hidden_layers if i < start}
    cache, prefix_mask = _prefix_cache(model, states, [row.source for row in rows], cols)
    positions = torch.tensor([int(row.spt_position) for row in rows], dtype=torch.long, device=device).unsqueeze(1)
    return _score_pass(
        model,
        ids,
        cache,
        [
            (len(row.prompt_ids) - int(row.spt_position) - 1, list(row.response), w, row.full_stats)
            for row, w in zip(rows, spans, strict=True)
        ],
        layer_span,
        hidden_layers,
        top_logprobs,
        start_states=start_states,
        lower_states=lower,
        known=known,
        attention_mask=torch.cat([prefix_mask.to(device), segment_mask], dim=1),
        position_ids=positions + torch.arange(width, device=device).unsqueeze(0),
    )
