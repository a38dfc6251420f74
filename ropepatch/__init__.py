"""ropepatch: long-context RoPE checkpoints that load correctly everywhere.

``import ropepatch; ropepatch.enable()`` and every supported runtime builds models with the
scaling their checkpoint really uses. ``ropepatch.detect(path)`` shows what that is.

Importing ropepatch imports neither torch, pluggy nor any runtime; everything heavy loads on first use.

The plugin front door is here too: ``ropepatch.hookimpl`` marks hook implementations, and a plugin
subclasses ``ropepatch.Method`` (a scaling method), ``ropepatch.Adapter`` (a runtime) or answers
``detect_rope`` with a ``ropepatch.Finding`` read from a ``ropepatch.ConfigView``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ropepatch.errors import RopeConfigError, RopepatchWarning

if TYPE_CHECKING:
    from ropepatch.adapters.base import Adapter, Capability
    from ropepatch.changes import report
    from ropepatch.detection import detect
    from ropepatch.hookspecs import hookimpl
    from ropepatch.metadata.view import ConfigView, Finding
    from ropepatch.methods.base import Method, Prepared, require_dim
    from ropepatch.runtime import disable, enable, enabled, is_enabled, patch_model, temporarily_enabled
    from ropepatch.spec import RopeSpec

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Capability",
    "ConfigView",
    "Finding",
    "Method",
    "Prepared",
    "RopeConfigError",
    "RopeSpec",
    "RopepatchWarning",
    "__version__",
    "detect",
    "disable",
    "enable",
    "enabled",
    "hookimpl",
    "is_enabled",
    "patch_model",
    "report",
    "require_dim",
    "temporarily_enabled",
]

_LAZY = {
    "detect": ("ropepatch.detection", "detect"),
    "RopeSpec": ("ropepatch.spec", "RopeSpec"),
    "enable": ("ropepatch.runtime", "enable"),
    "disable": ("ropepatch.runtime", "disable"),
    "enabled": ("ropepatch.runtime", "enabled"),
    "temporarily_enabled": ("ropepatch.runtime", "temporarily_enabled"),
    "report": ("ropepatch.changes", "report"),
    # the plugin front door
    "hookimpl": ("ropepatch.hookspecs", "hookimpl"),
    "Method": ("ropepatch.methods.base", "Method"),
    "Prepared": ("ropepatch.methods.base", "Prepared"),
    "require_dim": ("ropepatch.methods.base", "require_dim"),
    "ConfigView": ("ropepatch.metadata.view", "ConfigView"),
    "Finding": ("ropepatch.metadata.view", "Finding"),
    "Adapter": ("ropepatch.adapters.base", "Adapter"),
    "Capability": ("ropepatch.adapters.base", "Capability"),
    "is_enabled": ("ropepatch.runtime", "is_enabled"),
    "patch_model": ("ropepatch.runtime", "patch_model"),
}


def __getattr__(name: str) -> Any:
    # PEP 562: keep `import ropepatch` free of pluggy, torch and runtimes until something is used
    from ropepatch._lazy import load_lazy

    return load_lazy(globals(), _LAZY, "ropepatch", name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
