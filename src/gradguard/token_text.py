"""The text of each answer token, for showing per-token uncertainty (``ScoreResult.token_texts``)."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

__all__ = ["token_pieces"]

#: Tokens of left context each piece is decoded with (a window keeps the work linear in the length).
_CONTEXT = 4
#: The window is re-based once it holds this many tokens.
_WINDOW = 32


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> tuple[str, ...]:
    """The text each token of ``ids`` adds to the decoded answer, one string per token.

    A token is decoded in the context of the tokens before it (so a SentencePiece word start keeps
    its space and byte-level pieces join as they do in the answer). A token that ends inside a
    multi-byte character (byte-level BPE splits emoji and CJK characters) gets ``""`` and the
    token that completes the character carries it (at the end of an answer, the last token carries
    what decoding makes of the unfinished bytes). Special tokens decode to ``""``. Joined, the
    pieces give ``tokenizer.decode(ids, skip_special_tokens=True)`` up to the tokenizer's
    clean-up of spaces.
    """
    ids = [int(i) for i in ids]

    def decode(a: int, b: int) -> str:
        return str(tokenizer.decode(ids[a:b], skip_special_tokens=True))

    pieces: list[str] = []
    start = 0
    shown = ""  # decode(start, done): the text already handed out, from the window's start
    done = 0
    for i in range(len(ids)):
        text = decode(start, i + 1)
        if text.endswith("\ufffd"):  # an unfinished character: its bytes go to the token that finishes it
            pieces.append("")
            continue
        common = len(shown) if text.startswith(shown) else _common_prefix(text, shown)
        pieces.append(text[common:])
        shown, done = text, i + 1
        if done - start >= _WINDOW:
            start = done - _CONTEXT
            shown = decode(start, done)
    if done < len(ids):  # the answer ends inside a character: the last token shows what decoding makes of it
        text = decode(start, len(ids))
        pieces[-1] = text[_common_prefix(text, shown) :]
    return tuple(pieces)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
