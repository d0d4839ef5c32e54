"""Config-built tiny chat models (a few layers, hidden size 32) with real chat templates."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

__all__ = ["TINY_FAMILIES", "make_tiny_model", "make_tiny_tokenizer"]

_TEMPLATES: dict[str, dict[str, Any]] = {
    "qwen2": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "template": (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
    },
    "llama": {
        "specials": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "eos": "<|eot_id|>",
        "pad": "<|eot_id|>",
        "template": (
            "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
            "{{ m['content'] }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
        ),
    },
    "mistral": {
        "specials": ["<s>", "</s>", "[INST]", "[/INST]"],
        "eos": "</s>",
        "pad": "</s>",
        "template": (
            "<s>{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}[/INST]"
            "{% elif m['role'] == 'assistant' %}{{ m['content'] }}</s>"
            "{% else %}{{ m['content'] }}\n\n{% endif %}{% endfor %}"
        ),
    },
    "gemma2": {
        "specials": ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"],
        "eos": "<end_of_turn>",
        "pad": "<pad>",
        "template": (
            "<bos>{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
            "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
            "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
        ),
    },
}

#: Model families available as tiny models: ``qwen2``, ``llama``, ``mistral``, ``gemma2``
#: (tied embeddings and logit soft-capping).
TINY_FAMILIES: tuple[str, ...] = tuple(_TEMPLATES)


def make_tiny_tokenizer(family: str = "qwen2", *, chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) with the family's special tokens and chat template."""
    spec = _TEMPLATES[family]
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(byte_vocab))}
    for tok in spec["specials"]:
        vocab[tok] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        additional_special_tokens=[t for t in spec["specials"] if t not in (spec["eos"], spec["pad"])],
    )
    if chat_template:
        tok.chat_template = spec["template"]
    return tok


def make_tiny_model(
    family: str = "qwen2",
    *,
    num_layers: int = 4,
    hidden_size: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised tiny chat model and its tokenizer, built offline from a config."""
    tok = make_tiny_tokenizer(family)
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.convert_tokens_to_ids(_TEMPLATES[family]["specials"][0]),
    )
    torch.manual_seed(seed)
    if family == "qwen2":
        model: PreTrainedModel = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, tie_word_embeddings=False, sliding_window=None))
    elif family == "gemma2":
        model = Gemma2ForCausalLM(
            Gemma2Config(
                **common,
                head_dim=hidden_size // 4,
                tie_word_embeddings=True,
                final_logit_softcapping=30.0,
                attn_logit_softcapping=50.0,
                sliding_window=256,
                query_pre_attn_scalar=hidden_size // 4,
            )
        )
    else:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}")
    # Random init gives near-uniform predictions; sharpen the LM head so entropies vary.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    # transformers types PreTrainedModel.to through functools.wraps(nn.Module.to), which mypy misreads
    model = model.to(dtype).eval()  # type: ignore[arg-type]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def make_tiny_profile(tokenizer: PreTrainedTokenizerFast | None = None, **overrides: Any) -> Any:
    """A measured :class:`~gradguard.profiles.Profile` for ``make_tiny_model("qwen2")`` (4 layers, hidden 32).

    Offset −2 over layers 2–3, the tiny Qwen2 template's fingerprint; any field can be overridden.
    """
    from gradguard.profiles import Profile
    from gradguard.profiles.fingerprint import chat_template_fingerprint

    fields: dict[str, Any] = dict(
        name="tiny-qwen2",
        kind="measured",
        model_id="test/tiny-qwen2",
        model_type="qwen2",
        num_layers=4,
        hidden_size=32,
        chat_template_fingerprint=chat_template_fingerprint(tokenizer or make_tiny_tokenizer("qwen2")),
        spt_offset=-2,
        layer_span=(2, 4),
    )
    fields.update(overrides)
    return Profile(**fields)
