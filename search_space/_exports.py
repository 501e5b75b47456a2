"""Lazy package faces: a package names its public API in ``__all__`` and imports each name on first use, so
``import gpnas.search_space`` (and the others) costs nothing until a name is used."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """-> (``__all__``, a module ``__getattr__``) for ``exports``: public name -> submodule that defines it."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(exports), __getattr__
