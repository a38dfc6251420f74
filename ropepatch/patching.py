"""Reversible attribute patches and post-import hooks.

Every patch is recorded as ``(owner, attribute, original, replacement)``. Restoring puts back the
original object itself (not a copy), in reverse order, and only where the attribute still holds
our replacement: if someone patched over us, we leave theirs alone and warn. A group of patches
is applied as a transaction, so an adapter that fails half-way leaves its runtime untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = [
    "MARKER",
    "PatchSet",
    "cancel_import_hooks",
    "is_patched",
    "patch_lock",
    "patch_when_imported",
    "propagate",
    "when_imported",
]

log = logging.getLogger("ropepatch")

#: attribute set on every replacement ropepatch installs
MARKER = "__ropepatch__"
_ABSENT: Any = object()


def is_patched(obj: Any) -> bool:
    """True when ``obj`` is a replacement installed by ropepatch."""
    return bool(getattr(obj, MARKER, False))


@dataclass
class _Record:
    owner: Any
    attr: str
    original: Any  # _ABSENT when the attribute was inherited or missing
    replacement: Any
    is_item: bool = False
    keep_if: Callable[[], bool] | None = None


class PatchSet:
    """The patches one adapter installed, restorable exactly."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._records: list[_Record] = []

    def __len__(self) -> int:
        return len(self._records)

    def set(self, owner: Any, attr: str, replacement: Any) -> Any:
        """Replace ``owner.attr`` with ``replacement``; return the object that was visible before."""
        visible = getattr(owner, attr, _ABSENT)
        # classes: restore exactly what was in the class's own __dict__ (inherited -> delete again)
        if isinstance(owner, type):
            original = owner.__dict__.get(attr, _ABSENT)
        elif isinstance(owner, ModuleType):
            original = owner.__dict__.get(attr, _ABSENT)
        else:
            original = getattr(owner, "__dict__", {}).get(attr, _ABSENT) if hasattr(owner, "__dict__") else visible
        try:
            setattr(replacement, MARKER, True)
        except (AttributeError, TypeError):
            pass  # e.g. classmethod objects on old Pythons, builtins: the record still tracks it
        setattr(owner, attr, replacement)
        self._records.append(_Record(owner, attr, original, replacement))
        return None if visible is _ABSENT else visible

    def set_item(self, mapping: Any, key: str, value: Any, *, keep_if: Callable[[], bool] | None = None) -> None:
        """Set ``mapping[key]`` (e.g. a registry dict), restorable like an attribute.

        ``keep_if``: an entry ropepatch *added* stays at restore while this returns True (objects
        built under ropepatch still look it up); it is removed by a later restore once unused.
        """
        original = mapping.get(key, _ABSENT) if hasattr(mapping, "get") else _ABSENT
        mapping[key] = value
        self._records.append(_Record(mapping, key, original, value, is_item=True, keep_if=keep_if))

    def restore(self) -> list[str]:
        """Undo every patch, newest first; return messages for patches someone else replaced."""
        problems: list[str] = []
        _drop_unused_lingering()
        while self._records:
            rec = self._records.pop()
            if rec.is_item:
                current = rec.owner.get(rec.attr, _ABSENT)
                if current is not rec.replacement:
                    problems.append(f"{self.name}: {rec.attr!r} was changed by someone else; left as it is")
                    continue
                if rec.original is _ABSENT and rec.keep_if is not None and rec.keep_if():
                    _lingering.append(rec)
                    log.info("ropepatch: %s: keeping %r while models built under ropepatch use it", self.name, rec.attr)
                    continue
                if rec.original is _ABSENT:
                    del rec.owner[rec.attr]
                else:
                    rec.owner[rec.attr] = rec.original
                continue
            current = getattr(rec.owner, rec.attr, _ABSENT)
            if isinstance(rec.owner, type) or isinstance(rec.owner, ModuleType):
                current = rec.owner.__dict__.get(rec.attr, _ABSENT)
            if current is not rec.replacement:
                problems.append(
                    f"{self.name}: {getattr(rec.owner, '__name__', rec.owner)!r}.{rec.attr} was re-patched by "
                    "someone else; left as it is"
                )
                continue
            if rec.original is _ABSENT:
                try:
                    delattr(rec.owner, rec.attr)
                except AttributeError:
                    pass
            else:
                setattr(rec.owner, rec.attr, rec.original)
        for msg in problems:
            log.warning("ropepatch: %s", msg)
        return problems

    @contextmanager
    def transaction(self) -> Iterator[PatchSet]:
        """Apply patches inside; if anything raises, undo what was applied and re-raise."""
        mark = len(self._records)
        try:
            yield self
        except BaseException:
            undo = PatchSet(self.name)
            undo._records = self._records[mark:]
            del self._records[mark:]
            undo.restore()
            raise


# entries kept by restore() because live objects still used them (see PatchSet.set_item)
_lingering: list[_Record] = []


def _drop_unused_lingering() -> None:
    for rec in list(_lingering):
        if rec.keep_if is not None and rec.keep_if():
            continue
        _lingering.remove(rec)
        if rec.owner.get(rec.attr, _ABSENT) is rec.replacement:
            del rec.owner[rec.attr]


# -- post-import hooks (wrapt's idea: fire now if imported, else right after the import) ------
_hook_lock = threading.RLock()
_pending: dict[str, list[Callable[[ModuleType], None]]] = {}


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of modules someone waits for, to run hooks after the module executed."""

    _busy = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        with _hook_lock:
            if fullname not in _pending:
                return None
        if getattr(self._busy, "names", None) and fullname in self._busy.names:
            return None
        self._busy.names = getattr(self._busy, "names", set()) | {fullname}
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
            if spec is None:
                for finder in sys.meta_path:
                    if finder is self or not hasattr(finder, "find_spec"):
                        continue
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None:
                        break
        finally:
            self._busy.names = self._busy.names - {fullname}
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original_exec(module)
            _fire(fullname, module)

        spec.loader = _LoaderProxy(loader, exec_module)
        return spec


class _LoaderProxy(importlib.abc.Loader):
    def __init__(self, loader: Any, exec_module: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._exec = exec_module

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._exec(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


_finder = _Finder()


_PROPAGATE = "__ropepatch_propagate__"


def propagate(exc: BaseException) -> BaseException:
    """Mark ``exc`` to leave the import that fired the hook raising it (``strict=True``); returns ``exc``."""
    try:
        setattr(exc, _PROPAGATE, True)
    except AttributeError:  # an exception type without instance attributes: it is logged instead
        pass
    return exc


def _fire(name: str, module: ModuleType) -> None:
    with _hook_lock:
        hooks = _pending.pop(name, [])
        if not _pending and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
    stop: BaseException | None = None
    # outside the lock (as wrapt does): hooks import other modules and may start threads, and an
    # import in another thread waiting for this lock would deadlock against the import lock
    for hook in hooks:
        try:
            hook(module)
        except Exception as exc:  # noqa: BLE001 - an import must not fail because of ropepatch ...
            if getattr(exc, _PROPAGATE, False):
                stop = stop or exc  # ... unless the user asked for strict: then the import raises
                continue
            log.exception("ropepatch: post-import hook for %s failed", name)
    if stop is not None:
        raise stop


def when_imported(name: str, hook: Callable[[ModuleType], None]) -> None:
    """Call ``hook(module)`` now if ``name`` is imported, else right after its import finishes."""
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
        return
    with _hook_lock:
        _pending.setdefault(name, []).append(hook)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def patch_when_imported(
    patches: PatchSet,
    module_name: str,
    patch: Callable[[ModuleType], None],
    *,
    live: Callable[[], bool],
    all_or_nothing: bool = True,
    on_failure: Callable[[BaseException], None] | None = None,
    tag: Any = None,
) -> None:
    """The one way an adapter defers a patch until ``module_name`` is imported.

    If the module is already imported, ``patch(module)`` runs now and its exceptions reach the
    caller (who is inside the adapter's install transaction). Otherwise it runs right after the
    module's import, only while ``live()`` is true (ropepatch not disabled or re-enabled
    meanwhile), inside a transaction of ``patches``. On failure the transaction undoes this
    patch's records; ``all_or_nothing`` also undoes every earlier patch in ``patches`` (no
    half-patched runtime). ``on_failure(exc)`` is then told (it records and warns; an exception it
    raises leaves the user's import when marked with :func:`propagate`). ``tag`` names the owner,
    for :func:`cancel_import_hooks`.
    """
    module = sys.modules.get(module_name)
    if module is not None:
        patch(module)
        return

    def hook(mod: ModuleType) -> None:
        if not live():
            return
        with _deferred_lock:
            try:
                with patches.transaction():
                    patch(mod)
            except Exception as exc:
                if all_or_nothing:
                    patches.restore()
                if on_failure is None:
                    raise
                on_failure(exc)

    hook.__ropepatch_state__ = tag  # type: ignore[attr-defined]
    when_imported(module_name, hook)


# deferred patches of all adapters run one at a time: two runtimes imported in two threads must not
# interleave their transactions (a restore of one would see the other's half-applied records).
# Adapters that patch classes while a model is built take it too (``patch_lock``).
_deferred_lock = patch_lock = threading.RLock()


def cancel_import_hooks(hook_filter: Callable[[Callable[..., Any]], bool] | None = None) -> None:
    """Forget pending hooks (all, or those ``hook_filter`` selects)."""
    with _hook_lock:
        for name in list(_pending):
            kept = [h for h in _pending[name] if hook_filter is not None and not hook_filter(h)]
            if kept:
                _pending[name] = kept
            else:
                del _pending[name]
        if not _pending and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
