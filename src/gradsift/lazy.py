"""Lazy public exports (PEP 562): a package names what it exports and imports each defining module on first use.

So ``from gradsift.scoring import LiSSAScorer`` does not import cleanlab, and ``import gradsift`` (which every
Hydra launcher worker does) does not import Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for ``names``.

    Args:
        package: the package's ``__name__``.
        names: exported name -> the module that defines it, relative to the package (``".outliers"``).

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's top level.
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(names[name], package), name)

    def __dir__() -> list[str]:
        return sorted(set(names) | set(vars(import_module(package))))

    return __getattr__, __dir__
