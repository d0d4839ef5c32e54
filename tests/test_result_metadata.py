"""The one metadata schema every integration publishes: versioned, JSON-able, the same keys scored or not."""

from __future__ import annotations

import json
import math

from gradguard.result import METADATA_KEYS, METADATA_SCHEMA_VERSION, unscored_metadata
from gradguard.testing import make_score_result


def test_metadata_is_versioned_and_json_able() -> None:
    meta = make_score_result(confidence=0.7, hybridgrad=0.1).metadata()
    assert tuple(meta) == METADATA_KEYS and meta["schema_version"] == METADATA_SCHEMA_VERSION
    assert json.loads(json.dumps(meta)) == meta


def test_nan_scores_become_none_and_unscored_metadata_has_the_same_keys() -> None:
    meta = make_score_result(confidence=None, hybridgrad=math.nan).metadata()
    assert meta["uncertainty"]["hybridgrad"] is None and meta["scored"] is False
    unscored = unscored_metadata("scoring failed: boom", model="m")
    assert set(unscored) == set(METADATA_KEYS) | {"error"}
    assert unscored["schema_version"] == METADATA_SCHEMA_VERSION and unscored["scored"] is False
    assert set(unscored["uncertainty"]) == set(meta["uncertainty"]) and unscored["model"] == "m"
    json.dumps(unscored)
