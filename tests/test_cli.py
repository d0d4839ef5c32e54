"""The `gradguard ask` / `gradguard score` commands on a tiny model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradguard.cli import main
from gradguard.testing import make_tiny_model

KEYS = {"hybridgrad", "semgrad", "paragrad", "exgrad", "g_nll", "mean_nll", "mean_entropy", "alpha"}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tiny")
    model, tok = make_tiny_model("qwen2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_score_json(tiny_folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--question", "What is 2+2?", "--answer", "4", "--model", tiny_folder, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer"] == "4"
    assert set(out["scores"]) == KEYS
    assert out["scores"]["hybridgrad"] > 0
    assert out["spt_offset"] == -3
    assert out["n_response_tokens"] == 1
    assert out["timing"]["generate_s"] is None and out["timing"]["score_s"] > 0
    assert out["confidence"] is None


def test_ask_json_with_system(tiny_folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["ask", "What is 2+2?", "--model", tiny_folder, "--system", "Be brief.", "--max-new-tokens", "6", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"answer", "model", "scores", "spt_offset", "n_response_tokens", "timing"} <= set(out)
    assert out["timing"]["generate_s"] > 0
    assert out["n_response_tokens"] <= 6


def test_human_readable_output_names_the_direction(tiny_folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--question", "Hi?", "--answer", "Hello", "--model", tiny_folder]) == 0
    assert "larger = less confident" in capsys.readouterr().out


def test_bad_model_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--question", "Hi?", "--answer", "x", "--model", str(tmp_path / "nope.gguf")]) == 2
    assert "does not exist" in capsys.readouterr().err
