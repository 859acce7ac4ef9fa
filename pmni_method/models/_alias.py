"""Lazy aliases for classes that moved out of :mod:`pmni_method.models` (PEP 562).

Runs trained before the nerfstudio wrappers moved to :mod:`pmni_method.nerfstudio_adapter` have ``config.yml``
files that name them by their old module path. The alias modules resolve those names on first access only, so
importing :mod:`pmni_method.models` (or the alias module itself) still imports no nerfstudio.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, List


def lazy_module_getattr(alias: str, target: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that resolves every public name of module ``alias`` in module ``target``."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {alias!r} has no attribute {name!r}")
        return getattr(importlib.import_module(target), name)

    return __getattr__


def lazy_module_dir(target: str) -> Callable[[], List[str]]:
    def __dir__() -> List[str]:
        return sorted(vars(importlib.import_module(target)))

    return __dir__
