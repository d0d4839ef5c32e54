"""Log-probabilities in OpenAI's chat-completions format (``choices[].logprobs``), for every surface that
speaks OpenAI's schema: the integrations' ``logprobs=True`` metadata, and a served model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["openai_logprobs"]


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode map used by byte-level BPE tokenizers."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = _byte_decoder()


def _token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The raw bytes a token stands for (byte-level BPE, SentencePiece byte-fallback, or decoded text)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    if isinstance(piece, str) and piece not in special:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        if piece and all(ch in _BYTE_DECODER for ch in piece):
            return bytes(_BYTE_DECODER[ch] for ch in piece)
        if "\u2581" in piece:
            return piece.replace("\u2581", " ").encode("utf-8")
    return str(tokenizer.decode([int(token_id)])).encode("utf-8")


def _entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    raw = _token_bytes(tokenizer, token_id)
    return {"token": raw.decode("utf-8", errors="replace"), "bytes": list(raw), "logprob": float(logprob)}


def openai_logprobs(
    tokenizer: Any,
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    top: Sequence[Sequence[tuple[int, float]]] | None = None,
) -> dict[str, Any]:
    """Log-probabilities in OpenAI's chat format:
    ``{"content": [{"token", "bytes", "logprob", "top_logprobs"}], "refusal": None}``.

    ``logprobs[t]`` is ``log p(y_t)`` of the response token ``token_ids[t]`` (the scorer's
    ``token_logprobs``); ``top[t]`` lists ``(token_id, logprob)`` of the most likely tokens
    at that position (empty lists when not asked for).
    """
    content = []
    for t, (tid, lp) in enumerate(zip(token_ids, logprobs, strict=False)):
        entry = _entry(tokenizer, tid, lp)
        entry["top_logprobs"] = [_entry(tokenizer, i, v) for i, v in top[t]] if top is not None else []
        content.append(entry)
    return {"content": content, "refusal": None}
