"""Helpers adapters share: re-binding a function that modules copied by name, deferred patches."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ropepatch.patching import PatchSet, when_imported

__all__ = ["rebind_everywhere", "when_imported_in"]

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


def when_imported_in(
    state: Any, patches: PatchSet, module_name: str, patch: Callable[[ModuleType, PatchSet, Any], None]
) -> None:
    """Run ``patch(module, patches, state)`` once ``module_name`` is imported (now, if it is).

    For adapters whose runtime imports its pieces lazily: the patch lands in the adapter's own
    :class:`PatchSet` (so ``disable()`` restores it), inside a transaction, and is skipped if
    ropepatch was disabled (or re-enabled with a new state) meanwhile. A failure is logged and
    leaves that module unpatched; it never breaks the user's import.
    """

    def hook(module: ModuleType) -> None:
        from ropepatch.runtime import current

        live: Any = current()
        if live is not state:
            return
        try:
            with patches.transaction():
                patch(module, patches, live)
        except Exception as exc:  # noqa: BLE001 - an import must not fail because of ropepatch
            message = f"ropepatch: could not patch {module_name}: {type(exc).__name__}: {exc}"
            live.failures[f"{patches.name}:{module_name}"] = message
            if getattr(live, "strict", False):
                raise
            log.warning(message)

    hook.__ropepatch_state__ = state  # type: ignore[attr-defined]  # disable() cancels it
    when_imported(module_name, hook)
