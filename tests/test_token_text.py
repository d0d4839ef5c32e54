"""``token_pieces``: one string per answer token that joins back into the decoded answer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from gradguard.testing.tiny import make_tiny_tokenizer
from gradguard.token_text import token_pieces


def sentencepiece_like() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with SentencePiece's metaspace ('▁' marks a word start; decoding drops the first)."""
    words = ["▁The", "▁capital", "▁of", "▁France", "▁is", "▁Paris", ".", "▁Lyon", "<unk>", "</s>"]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize(
    "text",
    ["Paris", "The answer is 42.", "Paris 🇫🇷 — 東京, naïve café " * 8, "a" * 100, " leading and trailing  "],
)
def test_byte_level_pieces_join_into_the_answer(text: str) -> None:
    tok = make_tiny_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tok.decode(ids) == text


def test_a_split_character_goes_to_the_token_that_completes_it() -> None:
    tok = make_tiny_tokenizer()
    ids = tok("x🙂y", add_special_tokens=False)["input_ids"]  # 1 + 4 byte tokens + 1
    assert len(ids) == 6
    assert token_pieces(tok, ids) == ("x", "", "", "", "🙂", "y")


def test_sentencepiece_word_starts_keep_their_space_inside_the_answer() -> None:
    tok = sentencepiece_like()
    ids = tok("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert pieces == ("The", " capital", " of", " France", " is", " Paris", ".")
    long_ids = ids * 12  # longer than the decoding window: pieces stay the same past a re-base
    long_pieces = token_pieces(tok, long_ids)
    assert "".join(long_pieces) == tok.decode(long_ids)
    assert long_pieces[7:14] == (" The", " capital", " of", " France", " is", " Paris", ".")


def test_an_answer_cut_inside_a_character_ends_with_what_decoding_makes_of_it() -> None:
    tok = make_tiny_tokenizer()
    ids = tok("ok🙂", add_special_tokens=False)["input_ids"][:-1]  # the emoji's last byte is missing
    pieces = token_pieces(tok, ids)
    assert pieces[:4] == ("o", "k", "", "") and "".join(pieces) == tok.decode(ids) and pieces[-1].endswith("\ufffd")


def test_special_tokens_are_empty_pieces() -> None:
    tok = make_tiny_tokenizer()
    ids = tok("ok", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert token_pieces(tok, ids) == ("o", "k", "")
    assert token_pieces(tok, []) == ()
