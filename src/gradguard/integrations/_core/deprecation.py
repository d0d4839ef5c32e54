"""Deprecated public names: each still works and warns once, naming its replacement."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["deprecated_names"]

_warned: set[str] = set()


def deprecated_names(module: str, names: dict[str, tuple[Callable[[], Any], str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``names`` (``old -> (getter, advice)``) with one warning per name."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        getter, advice = names[name]
        if f"{module}.{name}" not in _warned:
            _warned.add(f"{module}.{name}")
            warnings.warn(f"{module}.{name} is deprecated; {advice}", DeprecationWarning, stacklevel=2)
        return getter()

    return __getattr__
