"""Semantic-preserving offsets for known chat-model families (the paper's values).

The offset ``k`` is negative: the semantic-preserving token sits at ``s = P + k``
in a chat-templated prompt of ``P`` tokens. Per-model SPS profiles supersede this table.
"""

from __future__ import annotations

from typing import NamedTuple

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gradguard.errors import UnknownOffsetError

__all__ = ["FamilyOffset", "FAMILY_OFFSETS", "family_offset"]


class FamilyOffset(NamedTuple):
    """A family's offset and the chat-template marker that identifies the family's template."""

    offset: int
    template_marker: str
    family: str


#: Keyed by ``config.model_type``.
FAMILY_OFFSETS: dict[str, FamilyOffset] = {
    "llama": FamilyOffset(-4, "<|start_header_id|>", "Llama-3.x"),
    "qwen2": FamilyOffset(-3, "<|im_start|>", "Qwen2/2.5"),
    "qwen2_moe": FamilyOffset(-3, "<|im_start|>", "Qwen2/2.5"),
    "qwen3": FamilyOffset(-3, "<|im_start|>", "Qwen3"),
    "qwen3_moe": FamilyOffset(-3, "<|im_start|>", "Qwen3"),
    "mistral": FamilyOffset(-2, "[INST]", "Mistral"),
}


def family_offset(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The paper's offset for the model's family, recognised by ``model_type`` and chat template.

    Raises :class:`UnknownOffsetError` for any other model, saying how to supply an offset.
    """
    model_type = getattr(model.config, "model_type", None)
    entry = FAMILY_OFFSETS.get(str(model_type))
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    if entry is not None and entry.template_marker in template:
        return entry.offset
    why = (
        f"model_type {model_type!r} is not a known family"
        if entry is None
        else f"its chat template lacks the {entry.family} marker {entry.template_marker!r}"
    )
    raise UnknownOffsetError(
        f"no semantic-preserving offset is known for this model ({why}); pass spt_offset=K "
        "(a negative offset from the end of the chat-templated prompt, e.g. -2) or build a profile with "
        "`gradguard profile build --model SRC --paraphrases PARAPHRASES.jsonl`"
    )
