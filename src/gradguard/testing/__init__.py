"""Test helpers: tiny, offline, config-built chat models and hand-built score results.

Nothing here downloads anything: the tokenizer is a byte-level BPE with no merges built in
memory, and the model is initialised from a small config with a fixed seed. The tiny models
(and so torch and transformers) are imported on first use.
"""

from __future__ import annotations

from typing import Any

from gradguard.testing.results import make_score_result

__all__ = ["TINY_FAMILIES", "make_score_result", "make_tiny_model", "make_tiny_profile", "make_tiny_tokenizer"]


def __getattr__(name: str) -> Any:
    if name in {"TINY_FAMILIES", "make_tiny_model", "make_tiny_profile", "make_tiny_tokenizer"}:
        from gradguard.testing import tiny

        return getattr(tiny, name)
    raise AttributeError(f"module 'gradguard.testing' has no attribute {name!r}")
