"""Saying what ropepatch changed: one line per model whose RoPE it changed, and :func:`report`.

When an adapter changes a model's RoPE it calls :func:`record_change` (through
``Adapter.changed``). The first time per process for a given model and spec, one line goes to the
``ropepatch.changes`` logger: the model, what the runtime would have used, what ropepatch applies
(method, factor, original -> effective context) and where that came from. A model ropepatch leaves
alone gets no line.

Visible with default settings: if the program configured no logging at all (no handler on the root
or the ``ropepatch`` loggers), a stderr handler is added to ``ropepatch.changes`` the way libraries
print their one-off notices; once logging is configured, the program's configuration decides.
Quiet: ``ROPEPATCH_QUIET=1``, ``enable(quiet=True)``, or a level above INFO on the ``ropepatch``
logger (``logging.getLogger("ropepatch").setLevel(logging.WARNING)``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

__all__ = ["record_change", "report"]

changes_log = logging.getLogger("ropepatch.changes")

_lock = threading.Lock()
_seen: set[tuple[str, str]] = set()
_models: list[dict[str, Any]] = []
_handler: logging.Handler | None = None


def _quiet() -> bool:
    from ropepatch.runtime import current

    if os.environ.get("ROPEPATCH_QUIET", "").strip().lower() not in ("", "0", "false", "no"):
        return True
    state = current()
    return bool(state is not None and getattr(state, "quiet", False))


def _configured() -> bool:
    """True when the program set up logging itself (a handler we did not add, anywhere on the path)."""
    logger: logging.Logger | None = changes_log
    while logger is not None:
        if any(h is not _handler for h in logger.handlers):
            return True
        if not logger.propagate:
            break
        logger = logger.parent
    return False


def _describe(spec: Any) -> dict[str, Any]:
    return {
        "method": spec.method,
        "factor": spec.effective_factor,
        "original_context": spec.effective_original,
        "effective_context": spec.effective_context,
        "rope_theta": spec.rope_theta,
        "from": spec.provenance.get("method", "metadata"),
        "overridden": sorted(spec.overridden),
    }


def _line(fact: dict[str, Any]) -> str:
    applied = fact["applied"]
    parts = [applied["method"]]
    if applied["factor"] is not None and applied["method"] != "default":
        parts.append(f"x{applied['factor']:g}")
    original, effective = applied["original_context"], applied["effective_context"]
    if original is not None or effective is not None:
        parts.append(f"context {original or '?'} -> {effective if effective is not None else 'grows with input'}")
    return (
        f"ropepatch: {fact['model']} ({fact['runtime']}): RoPE {' '.join(parts)} "
        f"[from {applied['from']}]; {fact['runtime']} alone would use {fact['before']}"
    )


def record_change(runtime: str, spec: Any, *, model: Any, before: str, identity: Any = None) -> bool:
    """Record that ``runtime`` now runs ``model`` with ``spec`` (it would have used ``before``); True if new.

    One line per process for each (model, spec): layers, devices and workers building the same
    model repeat the call. ``identity`` distinguishes models with the same name (default: the name).
    """
    name = str(model or spec.model or spec.source or "a model")
    key = (f"{runtime}\0{identity if identity is not None else name}", spec.to_json())
    with _lock:
        if key in _seen:
            return False
        _seen.add(key)
        fact: dict[str, Any] = {"model": name, "runtime": runtime, "before": before, "applied": _describe(spec)}
        line = _line(fact)
        fact["line"] = line
        _models.append(fact)
    _emit(line)
    return True


def _emit(line: str) -> None:
    global _handler
    if _quiet():
        return
    if _configured():
        changes_log.info(line)
        return
    level = logging.getLogger("ropepatch").level
    if level > logging.INFO or (changes_log.level > logging.INFO):
        return
    with _lock:
        if _handler is None:
            _handler = logging.StreamHandler(sys.stderr)
            _handler.setFormatter(logging.Formatter("%(message)s"))
            changes_log.addHandler(_handler)
    # the program configured nothing: its root level (WARNING) is a default, not a choice
    changes_log.handle(changes_log.makeRecord(changes_log.name, logging.INFO, __file__, 0, line, (), None))


def report() -> dict[str, Any]:
    """What ropepatch did in this process: every model whose RoPE it changed, and each adapter's state.

    ``models``: one entry per changed model (``model``, ``runtime``, ``before``, ``applied`` with
    method, factor, contexts and where the method came from, and the ``line`` that was logged).
    ``adapters``: per registered adapter, ``state`` (``installed``, ``waiting`` for its runtime's
    import, ``skipped``, ``failed``, ``not selected``, or ``disabled``), ``reason``, the installed
    version, its floor and tested-up-to version.
    """
    from ropepatch.registry import get_registry
    from ropepatch.runtime import current

    state = current()
    adapters: dict[str, dict[str, Any]] = {}
    for name, adapter in get_registry().adapters.items():
        facts = adapter.describe()
        entry: dict[str, Any] = {
            "installed_version": facts["installed"],
            "floor": facts["floor"],
            "tested_up_to": facts["tested_up_to"],
            "reason": None,
        }
        if state is None:
            entry["state"] = "disabled"
        elif state.runtimes is not None and name not in state.runtimes:
            entry["state"] = "not selected"
        elif name in state.failures:
            entry.update(state="failed", reason=state.failures[name])
        elif name in state.skipped:
            entry.update(state="skipped", reason=state.skipped[name])
        elif name in state.installed:
            entry.update(state="installed", reason=state.untested.get(name))
        else:
            entry.update(state="waiting", reason=f"{adapter.trigger} not imported yet")
        adapters[name] = entry
    with _lock:
        models = [dict(m) for m in _models]
    return {"enabled": state is not None, "models": models, "adapters": adapters}


def _after_fork() -> None:  # a forked child starts with its parent's record but a fresh lock
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
