"""The Semantic Preservation Score (SPS) of every layer and prompt offset.

For queries ``q_1..q_N`` with paraphrase sets ``S_n = {q_n} ∪ paraphrases(q_n)``, every
variant is chat-templated (generation prompt added) and forwarded once; ``h_l[P+k]`` is
the hidden state entering decoder layer ``l`` at offset ``k`` (``−1 … −K``) from the end
of the ``P``-token prompt. With ``u`` the unit-normalised states:

- ``within(l, k)``: mean over queries of the mean pairwise cosine inside ``S_n``;
- ``across(l, k)``: mean cosine between variants of different queries;
- ``SPS(l, k) = within − across``: large when paraphrases land close together and
  different questions far apart, i.e. the state encodes the question's meaning.

Both means come from sums of unit vectors, so memory is O(layers · K · hidden) however
many queries are used: for a set of ``m`` unit vectors with sum ``S``,
``Σ_{i≠j} u_i·u_j = ‖S‖² − Σ_i ‖u_i‖²``.

Only offsets from the last token of the user's content to the end of the prompt are
*candidates*: earlier positions have not seen the whole question, and their similarity
is lexical (high already at layer 0).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from gradguard.data import qa_messages
from gradguard.errors import InputError
from gradguard.profiles.compat import model_dims
from gradguard.profiles.errors import ProfileWarning

__all__ = ["SPSResult", "compute_sps", "templated_prompt", "top_half"]


def top_half(num_layers: int) -> tuple[int, int]:
    """The half-open layer range ``[L − ⌊L/2⌋, L)`` used by SemGrad by default."""
    return (num_layers - num_layers // 2, num_layers)


@dataclass(frozen=True)
class SPSResult:
    """SPS, within- and across-query similarity as ``[num_layers, K]`` arrays (column j ↔ ``offsets[j]``)."""

    offsets: tuple[int, ...]
    sps: NDArray[np.float64]
    within: NDArray[np.float64]
    across: NDArray[np.float64]
    candidate_offsets: tuple[int, ...]
    offset_tokens: tuple[str, ...]
    n_queries: int
    n_variants: int

    @property
    def num_layers(self) -> int:
        """Rows: the number of decoder layers."""
        return int(self.sps.shape[0])

    def top_half_mean(self) -> NDArray[np.float64]:
        """SPS averaged over the top half of the layers, one value per offset."""
        a, b = top_half(self.num_layers)
        return np.asarray(self.sps[a:b].mean(axis=0), dtype=np.float64)

    def best_offset(self) -> int:
        """The candidate offset with the highest top-half SPS (the semantic-preserving offset)."""
        means = self.top_half_mean()
        cands = [j for j, k in enumerate(self.offsets) if k in self.candidate_offsets]
        j = max(cands, key=lambda i: (means[i], self.offsets[i]))
        return self.offsets[j]


def templated_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], int | None]:
    """``(ids, user_offset)``: the chat-templated prompt (generation prompt added) and the (negative) offset
    of the last token of the last user message's content; ``user_offset`` is None when it cannot be located."""
    from gradguard.prompting import template_prompt

    msgs = [dict(m) for m in messages]
    ids = template_prompt(tokenizer, msgs)
    content = next((m["content"] for m in reversed(msgs) if m.get("role") == "user"), None)
    if not content:
        return ids, None
    try:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except Exception:
        return ids, None
    if [int(i) for i in enc["input_ids"]] != ids:
        return ids, None
    end = text.rfind(content)
    if end < 0:
        return ids, None
    end += len(content)
    last = None
    for i, (start, _stop) in enumerate(enc["offset_mapping"]):
        if start < end:
            last = i
    return ids, (None if last is None else last - len(ids))


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for i in range(n):
        t = first[i]
        if any(p[i] != t for p in prompts):
            return i
    return n


def _prefix_cache(model: Any, prefix: list[int]) -> Any:
    """The KV cache of a prompt prefix shared by every variant (e.g. the system message), or None."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids = torch.tensor([prefix], dtype=torch.long, device=device)
    try:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
    except TypeError:
        return None
    cache = out.cache  # transformers >= 5.24 (`past_key_values` before)
    return cache if isinstance(cache, DynamicCache) else None


def _forward_hidden(
    model: Any,
    batch: list[list[int]],
    pad_id: int,
    num_layers: int,
    prefix_cache: Any = None,
    prefix_len: int = 0,
) -> list[torch.Tensor]:
    """Hidden states entering layers 0..L-1 for a right-padded batch (padding cannot affect earlier positions).

    With ``prefix_cache`` (the cache of the first ``prefix_len`` tokens, shared by every
    row), only the rest of each prompt is run; the returned states start at ``prefix_len``.
    """
    suffixes = [ids[prefix_len:] for ids in batch]
    width = max(len(x) for x in suffixes)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), prefix_len + width), dtype=torch.long)
    mask[:, :prefix_len] = 1
    for i, ids in enumerate(suffixes):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, prefix_len : prefix_len + len(ids)] = 1
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"output_hidden_states": True}
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(batch))
        kwargs.update(cache=cache, use_cache=True)
    else:
        kwargs["use_cache"] = False
    try:
        out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), logits_to_keep=1, **kwargs)
    except TypeError:  # models without logits_to_keep
        out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
    hs = out.hidden_states
    if hs is None or len(hs) < num_layers + 1:
        raise InputError("the model did not return hidden states for every layer; SPS needs output_hidden_states")
    return list(hs[:num_layers])


@torch.inference_mode()
def compute_sps(
    model: Any,
    tokenizer: Any,
    groups: Sequence[Sequence[str]],
    *,
    num_offsets: int = 8,
    system_prompt: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    reuse_prefix: bool = True,
) -> SPSResult:
    """SPS for every layer and the last ``num_offsets`` prompt positions.

    ``groups`` holds, per query, the query and its paraphrases (at least two texts each;
    at least two groups). Each variant is asked as ``[system?, user]``; one forward pass
    per variant, no generation, no gradients. Shows a progress bar over queries.
    With ``reuse_prefix`` the prompt prefix every variant shares (system message, template
    header) is run once and its KV cache reused; the result is the same up to float rounding.
    """
    if num_offsets < 1:
        raise InputError(f"num_offsets={num_offsets} must be >= 1 (e.g. 8)")
    groups = [list(g) for g in groups]
    if len(groups) < 2:
        raise InputError(f"SPS needs at least 2 queries, got {len(groups)}; pass more paraphrase groups")
    bad = [i for i, g in enumerate(groups) if len(g) < 2]
    if bad:
        raise InputError(f"queries {bad[:5]} have no paraphrase; every group needs the query and >= 1 paraphrase")
    _, num_layers, hidden = model_dims(model)
    if num_layers is None or hidden is None:
        raise InputError("cannot read num_hidden_layers/hidden_size from the model config")
    K = num_offsets
    offsets = tuple(-(j + 1) for j in range(K))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    prompts_by_group: list[list[list[int]]] = []
    user_offsets: list[int] = []
    unknown_user = 0
    for group in groups:
        prompts: list[list[int]] = []
        for text in group:
            ids, user_off = templated_prompt(tokenizer, qa_messages(text, system_prompt))
            if len(ids) < K:
                raise InputError(f"a prompt has only {len(ids)} tokens, fewer than num_offsets={K}; lower --offsets")
            prompts.append(ids)
            if user_off is None:
                unknown_user += 1
            else:
                user_offsets.append(user_off)
        prompts_by_group.append(prompts)
    first_ids = prompts_by_group[0][0]

    was_training = bool(getattr(model, "training", False))
    model.eval()
    everything = [p for ps in prompts_by_group for p in ps]
    prefix_len = min(_common_prefix(everything), min(len(p) for p in everything) - K) if reuse_prefix else 0
    prefix_cache = _prefix_cache(model, everything[0][:prefix_len]) if prefix_len >= 2 else None
    if prefix_cache is None:
        prefix_len = 0

    sum_all = torch.zeros((num_layers, K, hidden), dtype=torch.float64)
    within_sum = torch.zeros((num_layers, K), dtype=torch.float64)
    sq_group_sums = torch.zeros((num_layers, K), dtype=torch.float64)
    sizes: list[int] = []
    try:
        for prompts in tqdm(prompts_by_group, desc="SPS", unit="query", disable=not progress):
            group_sum = torch.zeros((num_layers, K, hidden), dtype=torch.float64)
            sq_units = torch.zeros((num_layers, K), dtype=torch.float64)
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start : start + batch_size]
                hidden_states = _forward_hidden(model, batch, pad_id, num_layers, prefix_cache, prefix_len)
                pos = torch.tensor([[len(ids) + k - prefix_len for k in offsets] for ids in batch], dtype=torch.long)
                for layer, h in enumerate(hidden_states):
                    idx = pos.to(h.device).unsqueeze(-1).expand(-1, -1, h.shape[-1])
                    v = torch.gather(h, 1, idx).to(torch.float64).cpu()  # [B, K, d]
                    norm = v.norm(dim=-1, keepdim=True)
                    u = torch.where(norm > 0, v / norm.clamp_min(1e-300), torch.zeros_like(v))
                    group_sum[layer] += u.sum(dim=0)
                    sq_units[layer] += (u * u).sum(dim=(0, 2))
            m = len(prompts)
            sq = (group_sum * group_sum).sum(dim=-1)
            within_sum += (sq - sq_units) / (m * (m - 1))
            sq_group_sums += sq
            sum_all += group_sum
            sizes.append(m)
    finally:
        if was_training:
            model.train()

    n_groups = len(sizes)
    total = sum(sizes)
    within = within_sum / n_groups
    cross_pairs = total * total - sum(s * s for s in sizes)
    across = ((sum_all * sum_all).sum(dim=-1) - sq_group_sums) / cross_pairs
    sps = within - across

    if unknown_user:
        warnings.warn(
            f"could not locate the end of the user's text in {unknown_user} prompts; every offset is a candidate",
            ProfileWarning,
            stacklevel=2,
        )
    if user_offsets and not unknown_user:
        latest_user = max(user_offsets)  # the most conservative: every prompt's candidates have seen its question
        candidates = tuple(k for k in offsets if k >= latest_user)
    else:
        candidates = offsets
    tokens = tuple(str(tokenizer.decode([first_ids[len(first_ids) + k]])) for k in offsets)
    return SPSResult(
        offsets=offsets,
        sps=sps.numpy(),
        within=within.numpy(),
        across=across.numpy(),
        candidate_offsets=candidates,
        offset_tokens=tokens,
        n_queries=n_groups,
        n_variants=total,
    )
