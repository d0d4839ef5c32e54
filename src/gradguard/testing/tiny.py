"""Config-built tiny chat models (a few layers, hidden size 32) with real chat templates."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
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

# The tool-capable templates below never put a newline right after a ``{% ... %}`` tag (HF's Jinja setup
# trims it): such newlines are written as ``{{ '\n' }}``.
# Hermes-style tool block, modelled on Qwen2.5's template (tools in the system turn, calls as <tool_call> JSON).
_QWEN_TOOLS = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are a helpful assistant."
    "{% endif %}{{ '\n\n' }}# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}{{ '\n' }}</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    "<|im_end|>\n{% endif %}"
)
_QWEN_MESSAGES = (
    "{% for m in messages %}"
    "{% if tools and loop.first and m['role'] == 'system' %}"
    "{% elif m['role'] == 'assistant' and m.tool_calls %}<|im_start|>assistant"
    "{% if m['content'] %}{{ '\n' + m['content'] }}{% endif %}"
    "{% for tc in m.tool_calls %}{% if tc.function is defined %}{% set tc = tc.function %}{% endif %}"
    "{{ '\n<tool_call>\n{\"name\": \"' + tc.name + '\", \"arguments\": ' }}{{ tc.arguments | tojson }}"
    "{{ '}\n</tool_call>' }}{% endfor %}<|im_end|>\n"
    "{% elif m['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
    "{{ '\n<tool_response>\n' + m['content'] + '\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
)
# Llama 3.1-style: tools in the first user turn, a call as {"name", "parameters"}, results in the ipython role.
_LLAMA_MESSAGES = (
    "<|begin_of_text|>{% set ns = namespace(first=true) %}{% for m in messages %}"
    "{% if m['role'] == 'assistant' and m.tool_calls %}"
    "{% if m.tool_calls | length != 1 %}{{ raise_exception('This model only supports single tool-calls at once!') }}"
    "{% endif %}{% set tc = m.tool_calls[0].function %}<|start_header_id|>assistant<|end_header_id|>{{ '\n\n' }}"
    "{{ '{\"name\": \"' + tc.name + '\", \"parameters\": ' }}{{ tc.arguments | tojson }}}<|eot_id|>"
    "{% elif m['role'] in ('tool', 'ipython') %}<|start_header_id|>ipython<|end_header_id|>{{ '\n\n' }}"
    "{{ m['content'] }}<|eot_id|>"
    "{% elif tools and ns.first and m['role'] == 'user' %}{% set ns.first = false %}"
    "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a "
    "function call with its proper arguments that best answers the given prompt.\n\nRespond in the format "
    '{"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.'
    "\n\n{% for t in tools %}{{ t | tojson(indent=4) }}{{ '\n\n' }}{% endfor %}{{ m['content'] }}<|eot_id|>"
    "{% else %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endif %}"
    "{% endfor %}"
)
# Mistral v0.3-style: [AVAILABLE_TOOLS] before the last user turn, [TOOL_CALLS] [...] with 9-character ids.
_MISTRAL_MESSAGES = (
    "<s>{% set ns = namespace(last=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% if tools and loop.index0 == ns.last %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "[INST] {{ m['content'] }}[/INST]"
    "{% elif m['role'] == 'assistant' and m.tool_calls %}[TOOL_CALLS] ["
    "{% for tc in m.tool_calls %}{% if tc.id is not defined or tc.id | length != 9 %}"
    "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{% endif %}"
    "{% set out = tc.function | tojson %}{{ out[:-1] + ', \"id\": \"' + tc.id + '\"}' }}"
    "{% if not loop.last %}, {% endif %}{% endfor %}]</s>"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}</s>"
    "{% elif m['role'] == 'tool' %}[TOOL_RESULTS] {\"content\": {{ m['content'] | tojson }}, "
    '"call_id": "{{ m.tool_call_id }}"}[/TOOL_RESULTS]'
    "{% else %}{{ m['content'] }}\n\n{% endif %}{% endfor %}"
)

# ``tool_tokens``: (token, special) pairs added after the byte and special tokens when asked for; rendered
# plain chats (no tools, no tool messages) are the same text as before the tool support was added.
_TEMPLATES: dict[str, dict[str, Any]] = {
    "qwen2": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "tool_tokens": [("<tool_call>", False), ("</tool_call>", False)],
        "template": _QWEN_TOOLS + _QWEN_MESSAGES + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    },
    "llama": {
        "specials": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "eos": "<|eot_id|>",
        "pad": "<|eot_id|>",
        "tool_tokens": [("<|python_tag|>", True), ("<|eom_id|>", True)],
        "template": _LLAMA_MESSAGES
        + "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    },
    "mistral": {
        "specials": ["<s>", "</s>", "[INST]", "[/INST]"],
        "eos": "</s>",
        "pad": "</s>",
        "tool_tokens": [
            ("[AVAILABLE_TOOLS]", True), ("[/AVAILABLE_TOOLS]", True), ("[TOOL_CALLS]", True),
            ("[TOOL_RESULTS]", True), ("[/TOOL_RESULTS]", True),
        ],
        "template": _MISTRAL_MESSAGES,
    },
    "gemma2": {  # no tool support (the template never reads `tools`), as in Gemma 2
        "specials": ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"],
        "eos": "<end_of_turn>",
        "pad": "<pad>",
        "tool_tokens": [],
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


def make_tiny_tokenizer(
    family: str = "qwen2", *, chat_template: bool = True, tool_tokens: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) with the family's special tokens and chat template.

    The qwen2, llama and mistral templates render tools and tool messages (Qwen2.5, Llama 3.1 and
    Mistral v0.3 style); gemma2's has no tool support. Tool-call markers are byte sequences like any
    text; ``tool_tokens=True`` makes them single tokens, special or not as in the real tokenizers:
    ``<tool_call>``/``</tool_call>`` (qwen2, not special), ``<|python_tag|>`` (llama, special: decoding
    with ``skip_special_tokens`` drops it), ``[TOOL_CALLS]``, ``[AVAILABLE_TOOLS]``... (mistral, special).
    It grows the vocabulary, so a model built with it has other random weights.
    """
    spec = _TEMPLATES[family]
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(byte_vocab))}
    extra = spec["tool_tokens"] if tool_tokens else []
    specials = [*spec["specials"], *(t for t, special in extra if special)]
    for tok in specials:
        vocab[tok] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        additional_special_tokens=[t for t in specials if t not in (spec["eos"], spec["pad"])],
    )
    plain = [AddedToken(t, special=False, normalized=False) for t, special in extra if not special]
    if plain:
        tok.add_tokens(plain)
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
    tool_tokens: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised tiny chat model and its tokenizer, built offline from a config.

    ``tool_tokens``: give the tool-call markers their own tokens (see :func:`make_tiny_tokenizer`).
    """
    tok = make_tiny_tokenizer(family, tool_tokens=tool_tokens)
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
