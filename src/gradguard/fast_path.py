"""The fast gradient scorer: O(T) in the response length, independent of the prompt length.

Three cuts over the straightforward computation (:mod:`gradguard.oracle`), exact up to float error:

1. Positions before the semantic-preserving token ``s`` do not depend on ``h_l[s]``
   (causal attention), so their keys and values come from a KV cache cropped to ``s``
   and only positions ``s … P+T−2`` are run again.
2. Only the SemGrad layers need a graph: the lower layers run under ``no_grad`` and the
   hidden state entering the first SemGrad layer becomes a detached leaf; no parameter
   gradient is ever computed.
3. The LM-head gradient is taken in closed form (:mod:`gradguard.head_gradient`).

Several completions of one prompt are scored in one batch (right-padded: causal
attention makes padding after a response invisible to it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache, PreTrainedModel

from gradguard.errors import InputError
from gradguard.head_gradient import HeadRow, TokenStats, head_gradients_rows, target_nll, token_stats
from gradguard.result import HiddenStates

__all__ = ["RawScores", "ScoreRow", "fast_scores", "fast_scores_rows", "crop_cache", "decoder_layers", "logit_softcap"]


@dataclass(frozen=True)
class RawScores:
    """Norms and per-token statistics of one response, before they are combined into scores."""

    semgrad: float
    paragrad: float
    exgrad: float
    entropy: list[float]
    nll: list[float]
    hidden: HiddenStates | None = None
    #: Per response token, the k most likely ``(token_id, log p)`` pairs (when asked for), most likely first.
    top_logprobs: list[list[tuple[int, float]]] | None = None
    #: The half-open token range ``[a, b)`` of the response the loss covered; ``entropy``, ``nll`` and
    #: ``top_logprobs`` cover the tokens ``[0, b)`` when the row was asked for full statistics, else ``[a, b)``.
    window: tuple[int, int] | None = None
    #: Index into ``entropy``/``nll`` where the window starts (``a`` with full statistics, else 0).
    window_offset: int = 0

    @property
    def window_nll(self) -> list[float]:
        """Token NLLs over the loss window."""
        return self.nll[self.window_offset :]

    @property
    def window_entropy(self) -> list[float]:
        """Token entropies over the loss window."""
        return self.entropy[self.window_offset :]


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's list of decoder layers."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        from gradguard.errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{type(model).__name__} has no `layers` list in its decoder; gradguard supports decoder-only "
            "transformers laid out like Llama/Qwen/Mistral/Gemma"
        )
    return layers


def logit_softcap(model: PreTrainedModel) -> float | None:
    """The final logit soft-capping constant (Gemma 2/3), or None."""
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    return float(cap) if cap else None


def crop_cache(cache: DynamicCache, keep: int) -> DynamicCache | None:
    """Crop ``cache`` in place to its first ``keep`` positions; None when that cannot be done exactly.

    A sliding-window layer that has already dropped old positions cannot be rolled back;
    the caller then rebuilds the prefix instead.
    """
    length = cache.get_seq_length()
    if length < keep:
        return None
    for index, layer in enumerate(cache.layers):
        window = getattr(layer, "sliding_window", None)
        if getattr(layer, "is_sliding", False) and window is not None and cache.get_seq_length(index) >= window:
            return None
    if length > keep:
        cache.crop(keep - length)
    return cache


@torch.no_grad()
def prefill(model: PreTrainedModel, prefix_ids: Sequence[int]) -> DynamicCache:
    """A KV cache over ``prefix_ids``, computed without a graph."""
    cache = DynamicCache(config=model.config)
    if prefix_ids:
        ids = torch.tensor([list(prefix_ids)], device=model.device)
        model.get_decoder()(input_ids=ids, cache=cache, use_cache=True)
    return cache


@contextmanager
def _capture_layer_inputs(
    layers: torch.nn.ModuleList, wanted: Sequence[int], into: dict[int, torch.Tensor]
) -> Iterator[None]:
    """Hooks: keep a detached copy of the input of each layer in ``wanted`` (scoring thread only)."""
    owner = threading.get_ident()

    def hook_for(index: int) -> Any:
        def keep(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if threading.get_ident() == owner:
                into[index] = (args[0] if args else kwargs["hidden_states"]).detach()

        return keep

    handles = [layers[i].register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in wanted]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _hidden_states(
    layer_inputs: dict[int, torch.Tensor], u: torch.Tensor, layers: Sequence[int], b: int, first: int, lo: int, hi: int
) -> HiddenStates:
    """The probe's hidden states of batch row ``b`` (segment index ``first`` is the last prompt token; the answer
    positions are those predicting the window's tokens ``lo … hi−1``)."""
    rows = [(layer_inputs[i] if i in layer_inputs else u)[b].detach().float() for i in layers]
    stacked = torch.stack(rows)  # (k, width, d)
    last = first + hi - 1
    states = {
        "spt": stacked[:, 0],
        "prompt_last": stacked[:, first],
        "answer_last": stacked[:, last],
        "answer_mean": stacked[:, first + lo : last + 1].mean(dim=1),
    }
    return HiddenStates(layers=tuple(layers), states={k: v.cpu().numpy() for k, v in states.items()})


@contextmanager
def _graph_from_layer(
    layers: torch.nn.ModuleList,
    start: int,
    stop: int,
    captured: list[torch.Tensor],
    replace: torch.Tensor | None = None,
) -> Iterator[None]:
    """Hooks: the input of ``layers[start]`` (or ``replace``, the same input saved earlier) becomes a leaf that starts
    the graph; inputs of ``start…stop−1`` are kept.

    Hooks belong to the shared modules, so they act only in the thread that registered them: another
    thread running the same model meanwhile (e.g. a pipeline generating outside gradguard) is untouched.
    """
    owner = threading.get_ident()

    def first_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any] | None:
        if threading.get_ident() != owner:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if replace is not None:
            hidden = replace.to(device=hidden.device, dtype=hidden.dtype)
        leaf = hidden.detach().requires_grad_(True)
        torch.set_grad_enabled(True)  # everything above this layer records a graph
        captured.append(leaf)
        if args:
            return (leaf, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": leaf}

    def keep_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if threading.get_ident() == owner:
            captured.append(args[0] if args else kwargs["hidden_states"])

    handles = [layers[start].register_forward_pre_hook(first_hook, with_kwargs=True)]
    handles += [layers[i].register_forward_pre_hook(keep_hook, with_kwargs=True) for i in range(start + 1, stop)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _skip_layers(layers: torch.nn.ModuleList, count: int) -> Iterator[None]:
    """The first ``count`` layers pass their input through unchanged (their output was saved; in this thread only).

    Each layer's ``forward`` is replaced on the instance and restored on exit, also when the pass fails.
    """
    owner = threading.get_ident()
    patched: list[tuple[torch.nn.Module, Any]] = []

    def skipping(layer: torch.nn.Module) -> Any:
        real = layer.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != owner:
                return real(*args, **kwargs)
            return args[0] if args else kwargs["hidden_states"]

        return forward

    try:
        for layer in list(layers)[:count]:
            patched.append((layer, layer.__dict__.get("forward")))
            layer.forward = skipping(layer)
        yield
    finally:
        for layer, own in patched:
            if own is None:
                del layer.forward
            else:
                layer.forward = own


#: Segments longer than this many positions run the SemGrad layers under activation checkpointing: each layer
#: keeps only its input (``d`` floats per position) and is recomputed during the backward pass, so the graph's
#: memory stops growing with the MLP width (about 1.2 MB per position on the embedded model without it). Shorter
#: segments — short answers, where scoring time matters most — skip the recomputation.
CHECKPOINT_ABOVE = 64


@contextmanager
def _checkpointed(layers: torch.nn.ModuleList, start: int, cache: DynamicCache, active: bool) -> Iterator[None]:
    """Layers ``start…`` run under non-reentrant activation checkpointing (this thread only), when ``active``.

    A recomputed layer must see the keys and values it saw the first time, so during the pass their cache layers
    do not grow: ``update`` returns the prefix joined with the new positions (the cache is consumed by the pass).
    """
    if not active:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    owner = threading.get_ident()
    patched: list[tuple[Any, str, Any]] = []

    def wrapped(layer: torch.nn.Module) -> Any:
        real = layer.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != owner or not torch.is_grad_enabled():
                return real(*args, **kwargs)
            return checkpoint(real, *args, use_reentrant=False, **kwargs)

        return forward

    def frozen(cache_layer: Any) -> Any:
        keys: torch.Tensor | None = getattr(cache_layer, "keys", None)
        values: torch.Tensor | None = getattr(cache_layer, "values", None)

        def update(key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if keys is None or values is None or keys.numel() == 0:
                return key_states, value_states
            return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

        return update

    try:
        for layer in list(layers)[start:]:
            patched.append((layer, "forward", layer.__dict__.get("forward")))
            layer.forward = wrapped(layer)
        cache_layers: list[Any] = list(cache.layers)[start : len(layers)]
        for cache_layer in cache_layers:
            patched.append((cache_layer, "update", cache_layer.__dict__.get("update")))
            cache_layer.update = frozen(cache_layer)
        yield
    finally:
        for obj, name, own in patched:
            if own is None:
                delattr(obj, name)
            else:
                setattr(obj, name, own)


class TokenStatsView(NamedTuple):
    """One row's slice ``[a, b)`` of a batched :class:`~gradguard.head_gradient.TokenStats`."""

    stats: TokenStats
    a: int
    b: int

    @property
    def lse(self) -> torch.Tensor:
        return self.stats.lse[self.a : self.b]

    @property
    def entropy(self) -> torch.Tensor:
        return self.stats.entropy[self.a : self.b]

    @property
    def nll(self) -> torch.Tensor:
        return self.stats.nll[self.a : self.b]

    def top(self) -> list[list[tuple[int, float]]] | None:
        if self.stats.top_ids is None or self.stats.top_logprobs is None:
            return None
        return _pairs(self.stats.top_ids[self.a : self.b], self.stats.top_logprobs[self.a : self.b])


def _check_windows(
    responses: Sequence[Sequence[int]], windows: Sequence[tuple[int, int] | None] | None
) -> list[tuple[int, int]]:
    """Each response's loss window as ``(a, b)`` with ``0 <= a < b <= len(response)``."""
    if windows is None:
        return [(0, len(r)) for r in responses]
    if len(windows) != len(responses):
        raise InputError(f"got {len(windows)} windows for {len(responses)} responses; pass one (or None) per response")
    out = []
    for i, (r, w) in enumerate(zip(responses, windows, strict=True)):
        a, b = (0, len(r)) if w is None else (int(w[0]), int(w[1]))
        if not 0 <= a < b <= len(r):
            raise InputError(
                f"window {w!r} of response {i} is not a non-empty token range inside [0, {len(r)}]; "
                f"pass (a, b) with 0 <= a < b <= {len(r)}"
            )
        out.append((a, b))
    return out


def _pairs(ids: torch.Tensor, values: torch.Tensor) -> list[list[tuple[int, float]]]:
    """Rows of ``(token_id, log p)`` pairs from (T, k) ids and log-probabilities, most likely first."""
    return [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]


class KnownStats(NamedTuple):
    """Log-sum-exp and entropy of response tokens ``offset … offset+len(lse)−1``, saved while they were generated."""

    offset: int
    lse: torch.Tensor
    entropy: torch.Tensor

    def covers(self, lo: int, hi: int) -> bool:
        return self.offset <= lo and hi <= self.offset + int(self.lse.shape[0])


def fast_scores(
    model: PreTrainedModel,
    prompt_ids: Sequence[int],
    responses: Sequence[Sequence[int]],
    spt_position: int,
    layer_span: tuple[int, int],
    cache: DynamicCache | None = None,
    hidden_layers: Sequence[int] = (),
    top_logprobs: int = 0,
    windows: Sequence[tuple[int, int] | None] | None = None,
    full_stats: Sequence[bool] | None = None,
) -> list[RawScores]:
    """Score several non-empty responses to one prompt in one batch.

    ``windows[i] = (a, b)`` restricts response ``i``'s loss to its tokens ``a … b−1`` (``None``: all of them):
    T, the entropy weights and α are taken over the window, tokens before it are teacher-forced inputs
    only, and tokens after it do not matter (causal attention). The same response may appear in several
    rows with different windows (one per tool call): each row gets its own backward signal in the one
    batched pass. ``full_stats[i]`` (default True) also returns the statistics of the tokens before the
    window (``RawScores.window_offset`` marks where the window starts).

    ``hidden_layers`` (indices ``0 … L``; ``L`` = the final normed output) selects hidden states
    this pass computes anyway to return in :attr:`RawScores.hidden` (see :class:`HiddenStates`);
    they cost no extra forward pass. ``top_logprobs=k`` also returns the ``k`` most likely tokens at
    each response position, read from the log-softmax this pass computes for the NLL and entropy.
    ``cache``, if given, holds at least the first ``spt_position`` prompt positions (batch 1,
    or batch ``len(responses)`` with identical prefixes, as ``generate`` returns); it is
    consumed. Without one the prefix is prefilled here without a graph.
    """
    batch = len(responses)
    spans = _check_windows(responses, windows)
    full = list(full_stats) if full_stats is not None else [True] * batch
    if len(full) != batch:
        raise InputError(f"full_stats has {len(full)} entries for {batch} responses; pass one per response")
    s = spt_position
    cropped = crop_cache(cache, s) if cache is not None else None
    if cropped is None:
        cropped = prefill(model, prompt_ids[:s])
    if cropped.get_seq_length() != s:
        raise AssertionError(f"cache holds {cropped.get_seq_length()} positions, expected {s}")
    keys = getattr(cropped.layers[0], "keys", None) if s > 0 else None
    cache_batch = int(keys.shape[0]) if keys is not None else batch
    if cache_batch == 1 and batch > 1:
        cropped.batch_repeat_interleave(batch)
    elif cache_batch != batch:
        raise AssertionError(f"cache batch {cache_batch} does not match {batch} responses")

    tail = list(prompt_ids[s:])
    ids, _ = _right_padded([tail + list(r[:-1]) for r in responses], model.device)
    first = len(tail) - 1  # segment index that predicts the first response token
    return _score_pass(
        model,
        ids,
        cropped,
        [(first, list(r), w, f) for r, w, f in zip(responses, spans, full, strict=True)],
        layer_span,
        hidden_layers,
        top_logprobs,
    )


class ScoreRow(NamedTuple):
    """One row of :func:`fast_scores_rows`: a response to a prompt, scored with its own semantic-preserving
    position and loss window (``None``: the whole response); ``full_stats`` as in :func:`fast_scores`."""

    prompt_ids: Sequence[int]
    spt_position: int
    response: Sequence[int]
    window: tuple[int, int] | None = None
    full_stats: bool = True


def fast_scores_rows(
    model: PreTrainedModel,
    rows: Sequence[ScoreRow],
    layer_span: tuple[int, int],
    hidden_layers: Sequence[int] = (),
    top_logprobs: int = 0,
) -> list[RawScores]:
    """Score rows with *different* prompts (and semantic-preserving positions) in one batched pass.

    Each row's result equals :func:`fast_scores` on that row alone, up to float error from padding:
    the prefixes ``prompt[:s]`` are prefilled together, left-padded (masked, with positions counted from
    each row's first real token), and the segments ``prompt[s:] + response[:-1]`` then run right-padded,
    each at positions ``s, s+1, …`` of its own row, so segment index 0 is every row's position ``s``.
    """
    rows = [ScoreRow(*row) for row in rows]
    if not rows:
        return []
    device = model.device
    spans = _check_windows([row.response for row in rows], [row.window for row in rows])
    positions = [int(row.spt_position) for row in rows]
    for row, s in zip(rows, positions, strict=True):
        if not 0 <= s < len(row.prompt_ids):
            raise InputError(
                f"spt_position {s} is outside the prompt of {len(row.prompt_ids)} tokens; "
                "pass a position inside the prompt"
            )
    prefixes = [list(row.prompt_ids[:s]) for row, s in zip(rows, positions, strict=True)]
    width_s = max(positions)
    prefix_mask = torch.zeros((len(rows), width_s), dtype=torch.long, device=device)
    for b, prefix in enumerate(prefixes):
        if prefix:
            prefix_mask[b, width_s - len(prefix) :] = 1
    cache = DynamicCache(config=model.config)
    if width_s:
        prefix_ids = torch.zeros((len(rows), width_s), dtype=torch.long, device=device)
        for b, prefix in enumerate(prefixes):
            if prefix:
                prefix_ids[b, width_s - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
        position_ids = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            model.get_decoder()(
                input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=position_ids, cache=cache, use_cache=True
            )
    tails = [list(row.prompt_ids[s:]) for row, s in zip(rows, positions, strict=True)]
    ids, segment_mask = _right_padded(
        [tail + list(row.response[:-1]) for tail, row in zip(tails, rows, strict=True)], device
    )
    offsets = torch.tensor(positions, dtype=torch.long, device=device).unsqueeze(1)
    segment_positions = offsets + torch.arange(ids.shape[1], device=device).unsqueeze(0)
    return _score_pass(
        model,
        ids,
        cache,
        [(len(t) - 1, list(row.response), w, row.full_stats) for t, row, w in zip(tails, rows, spans, strict=True)],
        layer_span,
        hidden_layers,
        top_logprobs,
        attention_mask=torch.cat([prefix_mask, segment_mask], dim=1),
        position_ids=segment_positions,
    )


def _right_padded(segments: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``segments`` right-padded with token 0 into a (B, width) id tensor, and the matching 0/1 mask."""
    width = max(len(seg) for seg in segments)
    ids = torch.zeros((len(segments), width), dtype=torch.long, device=device)
    mask = torch.zeros((len(segments), width), dtype=torch.long, device=device)
    for b, seg in enumerate(segments):
        ids[b, : len(seg)] = torch.tensor(list(seg), dtype=torch.long)
        mask[b, : len(seg)] = 1
    return ids, mask


def _score_pass(
    model: PreTrainedModel,
    ids: torch.Tensor,
    cache: DynamicCache,
    rows: Sequence[tuple[int, list[int], tuple[int, int], bool]],
    layer_span: tuple[int, int],
    hidden_layers: Sequence[int],
    top_logprobs: int,
    *,
    start_states: torch.Tensor | None = None,
    lower_states: dict[int, torch.Tensor] | None = None,
    known: Sequence[KnownStats | None] | None = None,
    **decoder_kwargs: Any,
) -> list[RawScores]:
    """The graph pass over the segments ``ids`` (B, width) after ``cache`` (consumed), and each row's scores.

    Segment index 0 of every row is its semantic-preserving position; ``rows[b] = (first, response, (lo, hi),
    full)``: segment index ``first`` predicts the response's first token, the loss covers tokens ``lo … hi−1``,
    and ``full`` also returns the statistics of the tokens before the window.

    ``start_states`` (B, width, d): the input of the first SemGrad layer at every segment position, saved while
    the answer was generated; the layers below it then do not run at all, and ``lower_states`` supplies the
    inputs of the hidden layers below it that ``hidden_layers`` asks for. ``known[b]``: the log-sum-exp and
    entropy generation saved for row ``b``'s tokens (then its head statistics need no pass of their own).
    """
    device = model.device
    layers = decoder_layers(model)
    start, stop = layer_span
    hidden_layers = tuple(int(i) for i in hidden_layers)
    bad = [i for i in hidden_layers if not 0 <= i <= len(layers)]
    if bad:
        raise InputError(
            f"hidden_layers {bad} are outside [0, {len(layers)}] (layer {len(layers)} is the final output); "
            f"keep only layers in that range"
        )
    layer_inputs: dict[int, torch.Tensor] = dict(lower_states or {})
    if start_states is not None:
        layer_inputs[start] = start_states  # what reaches layers[start] in this pass is a stand-in, replaced there
    watched = [i for i in hidden_layers if i < len(layers) and i not in layer_inputs]
    if start_states is not None and any(i < start and i not in layer_inputs for i in hidden_layers):
        raise AssertionError(f"hidden layers below {start} were asked for but not saved")
    captured: list[torch.Tensor] = []
    grad_mode = torch.is_grad_enabled()
    try:
        with (
            torch.no_grad(),
            _capture_layer_inputs(layers, watched, layer_inputs),
            _graph_from_layer(layers, start, stop, captured, replace=start_states),
            _skip_layers(layers, start if start_states is not None else 0),
            _checkpointed(layers, start, cache, active=ids.shape[1] > CHECKPOINT_ABOVE),
        ):
            out = model.get_decoder()(input_ids=ids, cache=cache, use_cache=True, **decoder_kwargs)
            torch.set_grad_enabled(True)
            u = out.last_hidden_state  # (B, width, d), the LM-head input, with a graph above `start`
    finally:
        torch.set_grad_enabled(grad_mode)

    weight = model.get_output_embeddings().weight
    cap = logit_softcap(model)
    grad_u = torch.zeros_like(u)
    known_rows = list(known) if known is not None else [None] * len(rows)
    with torch.no_grad():
        # Rows whose statistics were not saved by generation get them from one pass over the head (all such rows
        # together); the loss windows then take one fused gradient pass (all rows together).
        ranges = [(0 if full else lo, lo, hi) for _, _, (lo, hi), full in rows]
        # (Top-k alternatives before a window take the statistics pass too; their NLLs alone do not.)
        need = [
            not (kn is not None and kn.covers(fr, hi)) or (top_logprobs > 0 and fr < lo)
            for kn, (fr, lo, hi) in zip(known_rows, ranges, strict=True)
        ]
        inputs = [
            u[b, first + fr : first + hi].detach()
            for b, ((first, _, _, _), (fr, _, hi)) in enumerate(zip(rows, ranges, strict=True))
        ]
        targets = [
            torch.tensor(resp[fr:hi], dtype=torch.long, device=device)
            for (_, resp, _, _), (fr, _, hi) in zip(rows, ranges, strict=True)
        ]
        computed: dict[int, TokenStatsView] = {}
        asked = [b for b, flag in enumerate(need) if flag]
        if asked:
            stats = token_stats(
                torch.cat([inputs[b] for b in asked]), weight, torch.cat([targets[b] for b in asked]), cap, top_logprobs
            )
            at = 0
            for b in asked:
                size = int(targets[b].shape[0])
                computed[b] = TokenStatsView(stats, at, at + size)
                at += size
        head_rows = []
        for b, ((fr, lo, hi), kn) in enumerate(zip(ranges, known_rows, strict=True)):
            k = lo - fr
            if b in computed:
                lse, entropy = computed[b].lse[k:], computed[b].entropy[k:]
            else:
                assert kn is not None
                lse, entropy = kn.lse[lo - kn.offset : hi - kn.offset], kn.entropy[lo - kn.offset : hi - kn.offset]
            head_rows.append(HeadRow(inputs[b][k:], targets[b][k:], lse, entropy))
        heads = head_gradients_rows(head_rows, weight, cap, top_logprobs if len(computed) < len(rows) else 0)
        per_row = []
        for b, ((first, _, _, _), (fr, lo, hi), head) in enumerate(zip(rows, ranges, heads, strict=True)):
            grad_u[b, first + lo : first + hi] = head.grad_u
            if b in computed:
                view = computed[b]
                entropy, nll, top = view.entropy, view.nll, view.top()
            else:
                kn = known_rows[b]
                assert kn is not None
                entropy, nll = kn.entropy[fr - kn.offset : hi - kn.offset], head.nll
                if fr < lo:  # tokens before the window: their NLLs from the known log-sum-exps
                    before = target_nll(
                        inputs[b][: lo - fr],
                        weight,
                        targets[b][: lo - fr],
                        kn.lse[fr - kn.offset : lo - kn.offset],
                        cap,
                    )
                    nll = torch.cat([before, nll])
                top = (
                    _pairs(head.top_ids, head.top_logprobs)
                    if head.top_ids is not None and head.top_logprobs is not None
                    else None
                )
            per_row.append((entropy, nll, top, lo - fr, head))
    grads = torch.autograd.grad(u, captured, grad_outputs=grad_u)
    n_layers, width_d = stop - start, u.shape[-1]
    vocab = weight.shape[0]
    results = []
    for b, (entropy, nll, top, k, head) in enumerate(per_row):
        sem_l1 = sum(float(g[b, 0].float().abs().sum()) for g in grads)
        first, _, (lo, hi), _ = rows[b]
        results.append(
            RawScores(
                semgrad=sem_l1 / (n_layers * width_d),
                paragrad=head.paragrad_l1 / (vocab * width_d),
                exgrad=head.exgrad_l1 / (vocab * width_d),
                entropy=entropy.tolist(),
                nll=nll.tolist(),
                hidden=_hidden_states(layer_inputs, u, hidden_layers, b, first, lo, hi) if hidden_layers else None,
                top_logprobs=top if top_logprobs else None,
                window=(lo, hi),
                window_offset=k,
            )
        )
    del grads, u, captured, cache, grad_u, layer_inputs
    return results
