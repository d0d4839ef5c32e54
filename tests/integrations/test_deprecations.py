"""Names this release deprecates still work and warn once, naming their replacement."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from gradguard.integrations._core import deprecation  # noqa: E402
from gradguard.integrations.langchain import metadata as lc_metadata  # noqa: E402
from gradguard.integrations.llama_index import Signal  # noqa: E402
from gradguard.integrations.llama_index import utils as li_utils  # noqa: E402
from gradguard.testing import make_score_result  # noqa: E402


def test_deprecated_names_work_and_warn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deprecation, "_warned", set())
    result = make_score_result(confidence=None, hybridgrad=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        describe = li_utils.describe_signal
        assert li_utils.describe_signal is not None  # a second access does not warn again
        apply = li_utils.apply_signal
        score_metadata = lc_metadata.score_metadata
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(messages) == 3, messages
    assert any("describe_signal" in m and ".describe()" in m for m in messages)
    assert any("apply_signal" in m and "confidence_of" in m for m in messages)
    assert any("score_metadata" in m and "result.metadata()" in m for m in messages)
    signal = Signal.uncertainty("hybridgrad", 0.02)
    assert describe(signal) == "hybridgrad <= 0.02"
    assert apply(signal, result) == 1.0
    assert score_metadata(result) == result.metadata()
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        li_utils.nothing_here  # noqa: B018
