"""Chat templating and response tokenization for scoring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from gradguard.errors import ChatTemplateError, InputError

__all__ = ["Messages", "Tools", "template_prompt", "tokenize_response", "end_of_turn_ids", "token_span"]

Messages = Sequence[Mapping[str, Any]]
_ROLES = {"system", "user", "assistant", "tool"}


#: Tool schemas in OpenAI's format, ``[{"type": "function", "function": {"name", "description", "parameters"}}]``.
Tools = Sequence[Mapping[str, Any]]


def template_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, tools: Tools | None = None
) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's own chat template, generation prompt included.

    Messages may carry OpenAI's tool fields: an assistant message's ``tool_calls`` (``[{"id", "type":
    "function", "function": {"name", "arguments": dict}}]``: arguments as a dict, which templates such as
    Qwen's render with ``tojson``; its ``content`` may then be ``None``) and a tool message's
    ``tool_call_id`` and ``name``. ``tools`` is handed to the template as its ``tools`` variable.
    """
    if not messages:
        raise InputError(
            "the message list is empty; pass at least one message, e.g. [{'role': 'user', 'content': '...'}]"
        )
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise InputError(f"message {i} is {msg!r}; each message must be a dict with 'role' and 'content'")
        if msg["role"] not in _ROLES:
            raise InputError(f"message {i} has role {msg['role']!r}; use one of {sorted(_ROLES)}")
        if msg["content"] is None and msg["role"] == "assistant" and msg.get("tool_calls"):
            continue
        if not isinstance(msg["content"], str):
            raise InputError(f"message {i} has non-text content {type(msg['content']).__name__}; pass a string")
    if not tokenizer.chat_template:
        raise ChatTemplateError(
            f"tokenizer {type(tokenizer).__name__} ({tokenizer.name_or_path!r}) has no chat template; set "
            "tokenizer.chat_template to a Jinja template (see the model card) "
            "or use the model's -Instruct/-Chat variant"
        )
    try:
        extra: dict[str, Any] = {"tools": [dict(t) for t in tools]} if tools else {}
        out = tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=True, tokenize=True, **extra
        )
    except Exception as exc:
        raise ChatTemplateError(f"the chat template cannot render these messages: {exc}") from exc
    ids: Sequence[Any] = out["input_ids"] if isinstance(out, Mapping) else out
    return [int(i) for i in ids]


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, generation_eos: int | Sequence[int] | None = None) -> set[int]:
    """Ids that end an assistant turn: the tokenizer's EOS plus the generation config's EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids.update(int(i) for i in generation_eos)
    return ids


def tokenize_response(
    tokenizer: PreTrainedTokenizerBase, response: str | Sequence[int], eot_ids: set[int]
) -> list[int]:
    """Token ids of the response, with one trailing end-of-turn token stripped.

    A response given as text is tokenized without special tokens added. If it ends with an
    end-of-turn token (``<|im_end|>`` etc., as text or id), that one token is removed: the
    method scores the answer, not the turn delimiter. Only one is stripped.
    """
    if isinstance(response, str):
        ids = [int(i) for i in tokenizer(response, add_special_tokens=False)["input_ids"]]
    elif isinstance(response, Sequence) or hasattr(response, "tolist"):
        raw: list[Any] = response.tolist() if hasattr(response, "tolist") else list(response)
        try:
            ids = [int(i) for i in raw]
        except (TypeError, ValueError) as exc:
            raise InputError(f"response token ids must be integers, got {raw[:5]!r}...") from exc
        vocab = len(tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise InputError(
                f"response token ids {bad[:5]} are outside the vocabulary [0, {vocab}); pass ids from this tokenizer"
            )
    else:
        raise InputError(f"response must be text or a sequence of token ids, got {type(response).__name__}")
    if ids and ids[-1] in eot_ids:
        ids = ids[:-1]
    return ids


def token_span(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], start: int, end: int) -> tuple[int, int]:
    """The smallest token range ``[a, b)`` of ``ids`` whose text covers characters ``[start, end)`` of
    ``tokenizer.decode(ids, skip_special_tokens=True)``.

    Tokens are located by decoding growing prefixes (the decoded prefix lengths are monotone), so
    multi-byte characters split across tokens are attributed to the token that completes them.
    """
    text = str(tokenizer.decode(list(ids), skip_special_tokens=True))
    if not 0 <= start < end <= len(text):
        raise InputError(
            f"character range [{start}, {end}) is not a non-empty range inside the {len(text)}-character text; "
            "pass offsets into the decoded response"
        )
    ends = []  # ends[i] = length of the decoded text of ids[: i + 1]
    for i in range(len(ids)):
        prefix = str(tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True)).rstrip("\ufffd")
        ends.append(len(prefix))
    a = next(i for i, e in enumerate(ends) if e > start)
    b = next(i for i, e in enumerate(ends) if e >= end) + 1
    return a, b
