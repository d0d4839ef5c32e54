"""``gradguard serve``: arguments to settings, the key from the environment, the loopback rule, missing extras."""

from __future__ import annotations

import sys

import pytest

from gradguard.cli import build_parser, main
from gradguard.errors import MissingExtraError
from gradguard.serving.cli import serve, settings_from_args
from gradguard.serving.settings import ServerSettings


def test_arguments_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADGUARD_API_KEY", "from-env")
    args = build_parser().parse_args(["serve", "--port", "9000", "--max-batch", "1", "--request-timeout", "5"])
    s = settings_from_args(args)
    assert (s.port, s.max_batch, s.request_timeout_s, s.api_key) == (9000, 1, 5.0, "from-env")
    args = build_parser().parse_args(["serve", "--api-key", "flag"])
    assert settings_from_args(args).api_key == "flag"


def test_non_loopback_without_key_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GRADGUARD_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err


def test_missing_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(MissingExtraError, match=r"gradguard\[serve\]"):
        serve(ServerSettings())
