"""`gradguard calibrate --spt-offset K`: an offset the profile's SPS matrix never measured is usable.

The profile record ties two fields to ``spt_offset``: it must be among the SPS matrix's offsets when
the profile keeps one, and ``anchor_token`` is the token it lands on. A manual profile may hold any
negative offset, so calibrating at an unmeasured one writes a manual profile without the matrix,
anchored at the new offset. Settings that cannot work are rejected before anything is generated.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from gradguard import GradScorer
from gradguard.calibration.cli import _validated, main
from gradguard.profiles import ProfileError, load_profile
from gradguard.profiles.io import save_profile
from gradguard.profiles.lookup import token_at_offset
from gradguard.profiles.schema import SPSData, SPSMatrix
from gradguard.testing import make_tiny_model, make_tiny_profile

N_LAYERS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model folder, a measured profile whose SPS matrix covers offsets -1…-3, and a QA file."""
    tmp = tmp_path_factory.mktemp("calibrate-offset")
    model, tok = make_tiny_model("qwen2")
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    rows = tuple(tuple(0.1 for _ in range(3)) for _ in range(N_LAYERS))
    sps = SPSMatrix(
        offsets=(-1, -2, -3),
        sps=rows,
        within=rows,
        across=rows,
        offset_tokens=("a", "b", "c"),
        candidate_offsets=(-1, -2, -3),
        top_half_mean=(0.1, 0.1, 0.1),
        chosen_offset=-2,
        data=SPSData(path="para.jsonl", sha256="0" * 64, n_queries=2, n_variants=4),
    )
    profile = make_tiny_profile(tok, model_id=None, sps=sps, anchor_token=token_at_offset(tok, -2))
    save_profile(profile, tmp / "profile.json")
    # The tiny model answers every question alike ("vo i" once normalised): gold "vo" makes half of them right.
    with (tmp / "qa.jsonl").open("w") as fh:
        for i in range(16):
            fh.write(json.dumps({"query": f"Question {i}?", "answers": ["vo" if i % 2 else "zzzq"]}) + "\n")
    return {"tmp": tmp, "model": tmp / "model", "profile": tmp / "profile.json", "data": tmp / "qa.jsonl"}


@pytest.fixture()
def quick_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer bootstrap resamples: the figures do not matter here, the written profile does."""
    from gradguard.calibration import fit

    real = fit.fit_task_calibration
    monkeypatch.setattr(fit, "fit_task_calibration", lambda *a, **k: real(*a, **{**k, "n_boot": 20}))


def _args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "calibrate", "--model", str(setup["model"]), "--profile", str(setup["profile"]), "--data", str(setup["data"]),
        "--cache", str(out.parent / f"{out.stem}-cache"), "--out", str(out), "--no-progress", "--folds", "2",
        "--max-new-tokens", "8", "--hidden-layers", "3", *extra,
    ]  # fmt: skip


def test_an_unmeasured_offset_calibrates_and_writes_a_usable_profile(setup: dict[str, Path], quick_fit: None) -> None:
    out = setup["tmp"] / "k6.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncalibrated-task warnings while scoring
        assert main(_args(setup, out, "--spt-offset", "-6")) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the written profile loads without complaint (anchor, unknown keys)
        written = load_profile(out)
        model, tok = make_tiny_model("qwen2")
        scorer = GradScorer(model, tok, profile=out, task="closed-qa")
    assert written.kind == "manual" and written.spt_offset == -6 and written.layer_span == (2, 4)
    assert written.sps is None  # it never measured -6
    assert written.anchor_token == token_at_offset(tok, -6) != token_at_offset(tok, -2)
    cal = written.calibrations["closed-qa"]
    assert cal.data.spt_offset == -6 and tuple(cal.data.layer_span) == (2, 4)
    assert scorer.spt_offset == -6 and scorer.calibrated


def test_a_measured_offset_keeps_the_sps_matrix(setup: dict[str, Path], quick_fit: None) -> None:
    out = setup["tmp"] / "k3.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_args(setup, out, "--spt-offset", "-3")) == 0
    written = load_profile(out)
    assert written.spt_offset == -3 and written.sps is not None and written.sps.offsets == (-1, -2, -3)


@pytest.fixture()
def no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("scored although the settings were rejected")

    for name in ("score", "score_many", "generate_and_score", "generate_many"):
        monkeypatch.setattr(GradScorer, name, fail)
    monkeypatch.setattr("gradguard.calibration.cli.run_harness", fail, raising=False)
    monkeypatch.setattr("gradguard.calibration.harness.run_harness", fail)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--spt-offset", "-100000"], r"--spt-offset -100000 reaches before the start of every prompt"),
        (["--spt-offset", "3"], r"spt_offset=3 must be negative"),
        (["--hidden-layers", "2", "9"], r"--hidden-layers \[2, 9\].*\[0, 4\]"),
    ],
)
def test_unusable_settings_fail_before_any_scoring(
    setup: dict[str, Path], no_scoring: None, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = setup["tmp"] / "rejected.json"
    assert main(_args(setup, out, *extra)) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gradguard:") or "Traceback" in x]
    assert len(lines) == 1 and lines[0].startswith("gradguard: error: "), lines  # one line, no traceback
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_an_invalid_profile_record_is_a_gradguard_error_not_a_validation_traceback() -> None:
    data = make_tiny_profile(spt_offset=-2).model_dump()
    data["sps"] = None
    data["spt_offset"] = 0
    with pytest.raises(ProfileError, match=r"spt_offset: .*less than or equal to -1.*--spt-offset"):
        _validated(data, "the calibrated profile")
