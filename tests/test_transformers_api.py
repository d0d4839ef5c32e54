"""gradguard calls transformers (>= 5.24) only through names that are not deprecated.

transformers 5.24 renamed ``past_key_values`` to ``cache`` (keyword of the decoder's forward and field of
``generate``'s output) and will drop the old keyword in 5.40. Deprecated keywords raise a
``FutureWarning``; a deprecated output attribute only logs through the ``transformers`` logger
(once per process), so the test turns both into failures.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest
from transformers.utils import logging as hf_logging

from gradguard import GradScorer
from gradguard.testing import make_tiny_model

MESSAGES = [{"role": "user", "content": "Name a colour."}]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def deprecations_fail() -> Iterator[_Collect]:
    """Deprecation warnings become errors; deprecation log lines from transformers are collected."""
    hf_logging.warning_once.cache_clear()  # a message logged once earlier in the session would stay silent
    handler = _Collect()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            yield handler
    finally:
        logger.removeHandler(handler)


def test_scoring_and_generation_use_no_deprecated_transformers_api(deprecations_fail: _Collect) -> None:
    model, tok = make_tiny_model("qwen2")
    scorer = GradScorer(model, tok, spt_offset=-3, model_name="tiny-qwen2")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no calibration.*")  # gradguard's own ProfileWarning
        scored = scorer.score(MESSAGES, "Blue.")
        generated = scorer.generate_and_score(MESSAGES, max_new_tokens=4)
        many = scorer.generate_many(MESSAGES, 2, max_new_tokens=3, do_sample=True)
    assert scored.scored and generated.n_response_tokens >= 0 and len(many) == 2
    deprecated = [m for m in deprecations_fail.messages if "deprecat" in m.lower()]
    assert not deprecated, deprecated


def test_generation_output_names_its_cache_cache() -> None:
    """The scorer reads ``out.cache``; the old ``past_key_values`` is only a deprecated alias in 5.24."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    assert "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__
    assert "past_key_values" not in GenerateDecoderOnlyOutput.__dataclass_fields__
