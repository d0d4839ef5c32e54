"""The core works without the ``calibrate`` extra (scikit-learn, scipy, matplotlib); what needs it says so."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradguard import GradguardError, MissingExtraError
from gradguard.extras import require
from gradguard.profiles import save_profile
from gradguard.testing import make_tiny_tokenizer

#: Prepended to every child: scikit-learn, scipy and matplotlib cannot be imported.
_BLOCK = """
import importlib.abc, sys

_BLOCKED = ("sklearn", "scipy", "matplotlib")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
for _name in _BLOCKED:
    sys.modules[_name] = None
"""


def _run(body: str, tmp_path: Path) -> str:
    script = tmp_path / "child.py"
    script.write_text(_BLOCK + textwrap.dedent(body), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_require_names_the_package_and_the_extra() -> None:
    assert require("json", "calibrate", "nothing") is sys.modules["json"]
    with pytest.raises(MissingExtraError) as info:
        require("sklearn_not_a_package.linear_model", "calibrate", "fitting a calibration")
    err = info.value
    assert isinstance(err, ImportError) and isinstance(err, GradguardError)
    assert err.extra == "calibrate" and err.package == "sklearn_not_a_package"
    assert "fitting a calibration" in str(err) and "pip install 'gradguard[calibrate]'" in str(err)


def test_require_maps_import_names_to_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sklearn", "sklearn.linear_model"):  # as if not installed, even after other tests imported it
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match=r"needs scikit-learn.*gradguard\[calibrate\]") as info:
        require("sklearn.linear_model", "calibrate", "fitting a calibration")
    assert info.value.package == "scikit-learn" and info.value.name.startswith("sklearn")


@pytest.mark.parametrize(
    "module, package, extra",
    [("langchain_core", "langchain-core", "langchain"), ("llama_index.core", "llama-index-core", "llama-index")],
)
def test_the_frameworks_are_named_by_their_distribution(
    module: str, package: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=rf"needs {package}.*gradguard\[{extra}\]"):
        require(module, extra, "the integration")


def test_a_missing_dependency_of_a_present_package_is_not_disguised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "present_pkg_gg").mkdir()
    (tmp_path / "present_pkg_gg" / "__init__.py").write_text("import absent_dependency_gg\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("present_pkg_gg", "calibrate", "x")
    assert not isinstance(info.value, MissingExtraError) and info.value.name == "absent_dependency_gg"


def test_the_core_scores_and_applies_a_shipped_calibration_without_the_extra(tmp_path: Path) -> None:
    from gradguard.testing import make_tiny_profile
    from gradguard.testing.calibration import make_task_calibration

    # fitted here (with the extra); the child only loads and applies it, as a shipped calibration is
    profile = make_tiny_profile(
        make_tiny_tokenizer("qwen2"),
        calibrations={"closed-qa": make_task_calibration("closed-qa")},
        default_task="closed-qa",
    )
    save_profile(profile, tmp_path / "profile.json")
    out = _run(
        """
        import gradguard
        from gradguard import GradScorer
        from gradguard.profiles import load_builtin_profile, load_profile
        import gradguard.routing  # noqa: F401
        from gradguard.testing import make_tiny_model

        assert load_builtin_profile("Qwen/Qwen2.5-Coder-0.5B-Instruct").calibrations  # shipped calibrations load
        from gradguard.cli import build_parser

        build_parser()  # every command registers (`gradguard ask` runs without the extra)
        model, tok = make_tiny_model("qwen2")
        scorer = GradScorer(model, tok, profile=load_profile("profile.json"))
        result = scorer.score([{"role": "user", "content": "What is the boiling point of water?"}], "one hundred")
        assert result.scored and result.confidence is not None and 0 < result.confidence < 1, result
        for name in ("sklearn", "scipy", "matplotlib"):
            assert sys.modules.get(name) is None, name
        print("ok", result.confidence)
        """,
        tmp_path,
    )
    assert out.startswith("ok ")


@pytest.mark.parametrize(
    "integration, framework",
    [
        ("gradguard.integrations.langchain", "langchain_core"),
        ("gradguard.integrations.llama_index", "llama_index.core"),
    ],
)
def test_the_integrations_import_without_the_extra(integration: str, framework: str, tmp_path: Path) -> None:
    if importlib.util.find_spec(framework.partition(".")[0]) is None:
        pytest.skip(f"{framework} is not installed")
    assert _run(f"import {integration}\nprint('ok')\n", tmp_path).strip() == "ok"


def test_fitting_thresholds_metrics_and_plots_say_which_extra_to_install(tmp_path: Path) -> None:
    out = _run(
        """
        from gradguard import MissingExtraError
        from gradguard.calibration.metrics import auroc
        from gradguard.calibration.plots import pyplot
        from gradguard.calibration.thresholds import choose_threshold
        from gradguard.profiles.plot import plot_sps
        from gradguard.testing import make_tiny_profile
        from gradguard.testing.calibration import make_task_calibration

        import importlib

        calls = {
            "fit": lambda: make_task_calibration("closed-qa", n=60),
            "fit module": lambda: importlib.import_module("gradguard.calibration.fit"),
            "evaluation report": lambda: importlib.import_module("gradguard.evaluation.report"),
            "threshold": lambda: choose_threshold([0.9, 0.2], [1, 0], epsilon=0.2),
            "auroc": lambda: auroc([0.9, 0.2], [1, 0]),
            "plot": pyplot,
            "sps plot": lambda: plot_sps(make_tiny_profile(), "sps.png"),
        }
        for what, call in calls.items():
            try:
                call()
            except MissingExtraError as exc:
                assert "pip install 'gradguard[calibrate]'" in str(exc), (what, str(exc))
                assert exc.extra == "calibrate" and exc.package in ("scikit-learn", "scipy", "matplotlib"), what
                print(what)
            else:
                raise AssertionError(f"{what} ran without the calibrate extra")
        """,
        tmp_path,
    )
    assert out.split("\n")[:7] == ["fit", "fit module", "evaluation report", "threshold", "auroc", "plot", "sps plot"]
