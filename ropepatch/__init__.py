"""ropepatch: long-context RoPE checkpoints that load correctly everywhere.

``import ropepatch; ropepatch.enable()`` and every supported runtime builds models with the
scaling their checkpoint really uses. ``ropepatch.detect(path)`` shows what that is.

Importing ropepatch imports neither torch nor any runtime; everything heavy loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ropepatch.errors import RopeConfigError, RopepatchWarning

if TYPE_CHECKING:
    from ropepatch.detection import detect
    from ropepatch.spec import RopeSpec

__version__ = "0.1.0"

__all__ = [
    "RopeConfigError",
    "RopeSpec",
    "RopepatchWarning",
    "__version__",
    "detect",
    "disable",
    "enable",
    "enabled",
    "is_enabled",
    "patch_model",
]

_LAZY = {
    "detect": ("ropepatch.detection", "detect"),
    "RopeSpec": ("ropepatch.spec", "RopeSpec"),
    "enable": ("ropepatch.runtime", "enable"),
    "disable": ("ropepatch.runtime", "disable"),
    "enabled": ("ropepatch.runtime", "enabled"),
    "is_enabled": ("ropepatch.runtime", "is_enabled"),
    "patch_model": ("ropepatch.runtime", "patch_model"),
}


def __getattr__(name: str) -> Any:
    # PEP 562: keep `import ropepatch` free of pluggy, torch and runtimes until something is used
    from ropepatch._lazy import load_lazy

    return load_lazy(globals(), _LAZY, "ropepatch", name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
