"""Re-binding a function that modules copied by name (``from pkg import f``), restorably."""

from __future__ import annotations

import logging
import sys
from typing import Any

from ropepatch.patching import PatchSet

__all__ = ["rebind_everywhere"]

log = logging.getLogger("ropepatch")


def rebind_everywhere(original: Any, replacement: Any, patches: PatchSet, prefix: str) -> list[str]:
    """Replace every module attribute that *is* ``original`` in loaded modules named ``prefix*``.

    ``from pkg import f`` copies ``f`` into the importing module, so patching ``pkg.f`` alone
    misses modules imported earlier. Each replacement is recorded in ``patches`` (restorable).
    Returns ``module.attribute`` names that were re-bound.
    """
    done: list[str] = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == prefix or name.startswith(prefix + ".")):
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            if value is original:
                patches.set(module, attr, replacement)
                done.append(f"{name}.{attr}")
    return done
