"""What ``model.generate`` computes that scoring needs, saved while it runs — and whether it can be trusted.

While an answer is generated, hooks keep (in the generating thread only):

- the input of the first SemGrad layer (and of any lower layer the calibration's probe reads) at every position
  from the semantic-preserving token on: the prompt's tail from the prefill, one position per decoding step;
- per generated token, the log-sum-exp and entropy of the model's next-token distribution (fp32, from the LM
  head's output, soft-capped like the model's logits; the ``T×V`` logits themselves are not kept).

Scoring then runs only the SemGrad layers on those saved inputs (:mod:`gradguard.reuse_path`). The saved
states are used only when the generation provably ran one position per step over an unchanged batch: beam
search (which reorders rows), assisted or prompt-lookup decoding (which crop the cache), a sliding-window
cache that dropped positions, or any forward call of another shape make :attr:`GenerationStates.trusted`
False, and the scorer takes the exact path instead (never a wrong score).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from gradguard.fast_path import decoder_layers, logit_softcap
from gradguard.head_gradient import lse_and_entropy

__all__ = ["GenerationCapture", "GenerationStates", "untrusted_settings"]


def untrusted_settings(model: PreTrainedModel, generate_kwargs: dict[str, Any]) -> str | None:
    """Why states saved under these ``generate`` settings could not be trusted, or None when they can."""
    config = model.generation_config

    def setting(name: str) -> Any:
        return generate_kwargs[name] if name in generate_kwargs else getattr(config, name, None)

    if (setting("num_beams") or 1) > 1:
        return "beam search reorders rows between steps"
    if generate_kwargs.get("assistant_model") is not None or setting("prompt_lookup_num_tokens"):
        return "assisted decoding verifies several positions per step and crops the cache"
    if setting("use_cache") is False:
        return "generation ran without a KV cache"
    if generate_kwargs.get("past_key_values") is not None or generate_kwargs.get("cache") is not None:
        return "generation continued a cache it was given"
    return None


@dataclass
class GenerationStates:
    """What one ``generate`` call saved for scoring (see :class:`GenerationCapture`).

    Column ``j`` of each tensor in ``hidden`` (``layer → (B, N, d)``) is padded input column ``first_col + j``
    (the prompt was left-padded to ``input_width`` columns; decoding step ``i ≥ 1`` is column
    ``input_width + i − 1``). ``lse`` and ``entropy`` (``(B, steps)``) belong to generated token ``g`` at index ``g``.
    """

    hidden: dict[int, torch.Tensor]
    first_col: int
    input_width: int
    lse: torch.Tensor
    entropy: torch.Tensor
    cache: DynamicCache | None
    attention_mask: torch.Tensor
    trusted: bool
    reason: str | None = None

    @property
    def steps(self) -> int:
        """Forward calls generation made (= tokens it generated per row)."""
        return int(self.lse.shape[1]) if self.lse.dim() == 2 else 0


@dataclass
class GenerationCapture:
    """Hooks that save :class:`GenerationStates` during one ``generate`` call (a context manager).

    ``layers``: decoder layers whose *input* is kept (the first SemGrad layer, and lower probe layers);
    ``first_col``: the first padded input column kept; ``input_width``: the input's width (prompt, prefill and
    left padding); ``batch``: the rows generate runs (``num_return_sequences`` included).
    """

    model: PreTrainedModel
    layers: Sequence[int]
    first_col: int
    input_width: int
    batch: int
    reason: str | None = None
    _hidden: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    _lse: list[torch.Tensor] = field(default_factory=list)
    _entropy: list[torch.Tensor] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)

    def _distrust(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._hidden.clear()
            self._lse.clear()
            self._entropy.clear()

    def __enter__(self) -> GenerationCapture:
        owner = threading.get_ident()
        layers = decoder_layers(self.model)
        cap = logit_softcap(self.model)

        def keep_input(index: int) -> Any:
            def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                if threading.get_ident() != owner or self.reason is not None:
                    return
                hidden = args[0] if args else kwargs["hidden_states"]
                seen = self._hidden.setdefault(index, [])
                width = self.input_width if not seen else 1
                if hidden.dim() != 3 or hidden.shape[0] != self.batch or hidden.shape[1] != width:
                    self._distrust(
                        f"a forward call saw {tuple(hidden.shape[:2])} (batch, positions), expected "
                        f"({self.batch}, {width}): the cache was cropped or rows were reordered"
                    )
                    return
                seen.append(hidden[:, self.first_col :].detach().clone() if not seen else hidden.detach().clone())

            return hook

        def keep_stats(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if threading.get_ident() != owner or self.reason is not None:
                return
            logits = output if isinstance(output, torch.Tensor) else output[0]
            if logits.dim() != 3 or logits.shape[0] != self.batch:
                self._distrust(f"the LM head saw logits of shape {tuple(logits.shape)}, expected ({self.batch}, ·, V)")
                return
            with torch.no_grad():
                z = logits[:, -1].float()
                if cap:
                    z = torch.tanh(z / cap) * cap
                lse, entropy = lse_and_entropy(z)
                self._lse.append(lse)
                self._entropy.append(entropy)

        try:
            for index in sorted(set(self.layers)):
                self._handles.append(layers[index].register_forward_pre_hook(keep_input(index), with_kwargs=True))
            self._handles.append(self.model.get_output_embeddings().register_forward_hook(keep_stats))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._remove()

    def states(self, cache: Any, attention_mask: torch.Tensor) -> GenerationStates:
        """The saved states, checked against the cache generate returned (consumes the capture's buffers)."""
        reason = self.reason
        steps = len(self._lse)
        if reason is None and steps == 0:
            reason = "generation made no forward call"
        if reason is None and any(len(v) != steps for v in self._hidden.values()):
            reason = "the saved layer inputs and the LM head's calls do not line up"
        if reason is None:
            reason = _cache_problem(cache, self.input_width + steps - 1)
        if reason is not None:
            empty = torch.empty(0)
            return GenerationStates(
                {}, self.first_col, self.input_width, empty, empty, None, attention_mask, False, reason
            )
        hidden = {index: torch.cat(parts, dim=1) for index, parts in self._hidden.items()}
        lse, entropy = torch.stack(self._lse, dim=1), torch.stack(self._entropy, dim=1)
        self._hidden, self._lse, self._entropy = {}, [], []
        return GenerationStates(hidden, self.first_col, self.input_width, lse, entropy, cache, attention_mask, True)


def _cache_problem(cache: Any, expected: int) -> str | None:
    """Why ``cache`` cannot serve as the prefix of the scoring pass, or None."""
    if not isinstance(cache, DynamicCache):
        return f"generate returned a {type(cache).__name__}, not a DynamicCache"
    for index, layer in enumerate(cache.layers):
        keys = getattr(layer, "keys", None)
        if keys is None or int(keys.shape[-2]) != expected:
            stored = None if keys is None else int(keys.shape[-2])
            if getattr(layer, "is_sliding", False):
                return f"the sliding-window cache of layer {index} dropped positions ({stored} of {expected} kept)"
            return f"cache layer {index} holds {stored} positions, expected {expected}"
    return None
