"""Choosing where the model runs: ``device=`` of ``GradScorer.from_pretrained``, ``LocalBackend`` and the server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradguard import GradScorer
from gradguard.errors import InputError
from gradguard.integrations._core.backend import LocalBackend
from gradguard.scorer import resolve_device
from gradguard.testing import make_tiny_model


def test_auto_is_a_gpu_only_when_torch_sees_one() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device(None) is None
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_bad_device_is_named_with_the_fix() -> None:
    with pytest.raises(InputError, match=r"device='banana'.*'cpu', 'cuda', 'cuda:N' or 'auto'"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match=r"device='cuda:0'.*no CUDA GPU"):
            resolve_device("cuda:0")


def test_from_pretrained_and_the_backend_put_the_model_where_asked(tmp_path: Path) -> None:
    model, tok = make_tiny_model("qwen2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    scorer = GradScorer.from_pretrained(str(tmp_path), device="cpu")
    assert scorer.model.device == torch.device("cpu")
    backend = LocalBackend(str(tmp_path), device="auto")
    assert backend.scorer.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="banana"):
        GradScorer.from_pretrained(str(tmp_path), device="banana")
