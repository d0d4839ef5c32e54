"""Optional dependencies: import them where they are needed, or say which extra installs them.

The core (scoring, profiles, applying a shipped calibration, routing) needs no optional package.
Fitting calibrations, risk-controlled thresholds, metrics, evaluation reports and plots need
scikit-learn, scipy and matplotlib: ``pip install 'gradguard[calibrate]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from gradguard.errors import MissingExtraError

__all__ = ["require"]

#: Top-level import name -> distribution name, where they differ.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "langchain_core": "langchain-core", "llama_index": "llama-index-core"}


def require(module_name: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module_name``; if its package is not installed raise :class:`MissingExtraError`.

    ``extra`` is the gradguard extra that installs it (e.g. ``"calibrate"``); ``purpose`` says what
    needs it, for the message (e.g. ``"fitting a calibration"``).

    >>> require("scipy.stats", "calibrate", "risk-controlled thresholds").beta  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name != missing and not module_name.startswith(missing + "."):
            raise  # the package is there but something it imports is not: not ours to explain
        top = missing.partition(".")[0]
        package = _DISTRIBUTIONS.get(top, top)
        raise MissingExtraError(
            f"{purpose} needs {package}, which is not installed; install it with: pip install 'gradguard[{extra}]'",
            package=package,
            extra=extra,
            name=missing,
        ) from exc
