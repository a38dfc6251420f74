"""PEP 562 lazy attributes: a package names what it exports, the module loads on first use."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["load_lazy"]


def load_lazy(
    namespace: MutableMapping[str, Any], table: Mapping[str, tuple[str, str]], package: str, name: str
) -> Any:
    """Import ``table[name]`` (``(module, attribute)``), cache it in ``namespace`` and return it."""
    if name not in table:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module, attr = table[name]
    value = getattr(importlib.import_module(module), attr)
    namespace[name] = value
    return value
