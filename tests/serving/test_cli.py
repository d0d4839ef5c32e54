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


def test_ray_flags_reach_serve_with_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradguard.serving.ray as ray_module

    seen: dict[str, object] = {}

    def fake(settings: ServerSettings, **kwargs: object) -> None:
        seen.update(kwargs, settings=settings)

    monkeypatch.setattr(ray_module, "serve_with_ray", fake)
    argv = ["serve", "--ray", "--replicas", "3", "--num-cpus-per-replica", "0.5", "--num-gpus-per-replica", "0.25",
            "--ray-address", "auto", "--max-queued-requests", "7", "--max-batch", "4"]  # fmt: skip
    assert main(argv) == 0
    assert (seen["replicas"], seen["num_cpus"], seen["num_gpus"], seen["address"]) == (3, 0.5, 0.25, "auto")
    assert seen["max_queued_requests"] == 7 and seen["max_ongoing_requests"] is None
    assert isinstance(seen["settings"], ServerSettings) and seen["settings"].max_batch == 4
    assert main(["serve", "--ray", "--replicas", "0"]) == 2  # named error, exit status 2
