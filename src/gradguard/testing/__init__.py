"""Tiny, offline, config-built chat models for tests and examples.

Nothing here downloads anything: the tokenizer is a byte-level BPE with no merges
built in memory, and the model is initialised from a small config with a fixed seed.
"""

from gradguard.testing.tiny import TINY_FAMILIES, make_tiny_model, make_tiny_tokenizer

__all__ = ["TINY_FAMILIES", "make_tiny_model", "make_tiny_tokenizer"]
