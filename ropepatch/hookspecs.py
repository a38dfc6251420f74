"""The hooks a ropepatch plugin can implement. Built-ins implement them exactly as third parties do.

Hooks follow ``llm``'s callback style: the host passes ``register`` and the plugin calls it, so a
plugin never depends on how ropepatch stores what it registers. Plugins import what they need from
the top level: ``from ropepatch import hookimpl, Method, Adapter, ConfigView, Finding``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ropepatch.metadata.view import ConfigView, Finding
    from ropepatch.methods.base import Method

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("ropepatch")
hookimpl = pluggy.HookimplMarker("ropepatch")


@hookspec
def register_methods(register: Callable[[Method], None]) -> None:
    """Register scaling methods: call ``register(method)`` with a :class:`ropepatch.methods.base.Method`."""


@hookspec(firstresult=True)
def detect_rope(view: ConfigView) -> Finding | None:
    """Say which scaling a checkpoint's metadata describes, or return ``None`` to pass.

    The first detector that returns a :class:`~ropepatch.metadata.view.Finding` wins. The built-ins
    are asked in this order: ``known`` (``tryfirst``), ``rope_scaling``, ``native``, ``gguf_keys``,
    ``fallback`` (``trylast``); third-party plugins are registered before the built-ins, so a plain
    ``@hookimpl`` runs after the dialect detectors: use ``tryfirst=True`` to pre-empt them.
    """


@hookspec
def register_adapters(register: Callable[[Any], None]) -> None:
    """Register runtime adapters: call ``register(adapter)`` with a :class:`ropepatch.adapters.base.Adapter`."""
