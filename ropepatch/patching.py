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
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ropepatch.forksafe import ForkSafeLock, at_fork_in_child, hold_across_fork

__all__ = [
    "MARKER",
    "PatchSet",
    "build_finished",
    "build_started",
    "builds_in_flight",
    "cancel_import_hooks",
    "drop_unused",
    "is_patched",
    "lingering",
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
    shared: _Shared | None = None


@dataclass
class _Shared:
    """One reference-counted patch that several patch sets hold (every enable() installs the same one)."""

    owner: Any
    attr: str
    is_item: bool
    original: Any
    replacement: Any
    keep_if: Callable[[], bool] | None
    count: int = 0


class PatchSet:
    """The patches one adapter installed, restorable exactly."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._records: list[_Record] = []

    def __len__(self) -> int:
        return len(self._records)

    def set(self, owner: Any, attr: str, replacement: Any, *, keep_if: Callable[[], bool] | None = None) -> Any:
        """Replace ``owner.attr`` with ``replacement``; return the object that was visible before.

        ``keep_if``: as for :meth:`set_item`, the replacement stays at restore while this returns
        True (a model build in flight still calls it) and is undone by a later restore.
        """
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
        self._records.append(_Record(owner, attr, original, replacement, keep_if=keep_if))
        return None if visible is _ABSENT else visible

    def set_item(self, mapping: Any, key: str, value: Any, *, keep_if: Callable[[], bool] | None = None) -> None:
        """Set ``mapping[key]`` (e.g. a registry dict), restorable like an attribute.

        ``keep_if``: an entry ropepatch *added* stays at restore while this returns True (objects
        built under ropepatch still look it up); it is removed by a later restore once unused.
        """
        original = mapping.get(key, _ABSENT) if hasattr(mapping, "get") else _ABSENT
        mapping[key] = value
        self._records.append(_Record(mapping, key, original, value, is_item=True, keep_if=keep_if))

    def share(
        self, owner: Any, attr: str, value: Any, *, item: bool = False, keep_if: Callable[[], bool] | None = None
    ) -> None:
        """Install ``value`` at ``owner.attr`` (``owner[attr]`` with ``item``), counted across patch sets.

        For patches every enable() makes alike (registry entries, validators, the model-build hooks):
        the first holder installs ``value``, the last :meth:`restore` puts the original back, unless
        ``keep_if()`` still says it is needed (a build in flight); then :func:`drop_unused` does,
        and a new holder meanwhile takes the kept patch over instead of wrapping it again.
        """
        key = (id(owner), attr, item)
        with _linger_lock:
            shared = _shared.get(key)
            if shared is None or shared.owner is not owner:
                probe = _Record(owner, attr, _ABSENT, value, is_item=item)
                original = _current_value(probe)
                if not item and not isinstance(owner, (type, ModuleType)):
                    original = getattr(owner, "__dict__", {}).get(attr, _ABSENT)
                if item:
                    owner[attr] = value
                else:
                    try:
                        setattr(value, MARKER, True)
                    except (AttributeError, TypeError):
                        pass
                    setattr(owner, attr, value)
                shared = _Shared(owner, attr, item, original, value, keep_if)
                _shared[key] = shared
            shared.count += 1
            record = _Record(owner, attr, shared.original, value, is_item=item, keep_if=keep_if, shared=shared)
            self._records.append(record)

    def restore(self) -> list[str]:
        """Undo every patch, newest first; return messages for patches someone else replaced.

        A patch whose ``keep_if`` says it is still in use (a model build in flight, a live module
        that looks its registry entry up) stays until a later restore or :func:`drop_unused`
        finds it unused.
        """
        problems: list[str] = []
        with _linger_lock:
            records, self._records = self._records, []
            while records:
                rec = records.pop()
                if rec.shared is not None:
                    rec.shared.count -= 1
                    continue  # the last holder gone: drop_unused() below puts the original back
                if _current_value(rec) is not rec.replacement:
                    if rec.is_item:
                        problems.append(f"{self.name}: {rec.attr!r} was changed by someone else; left as it is")
                    else:
                        owner = getattr(rec.owner, "__name__", rec.owner)
                        problems.append(
                            f"{self.name}: {owner!r}.{rec.attr} was re-patched by someone else; left as it is"
                        )
                    continue
                if rec.keep_if is not None and rec.keep_if():
                    _lingering.append(rec)
                    log.info("ropepatch: %s: keeping %r while models built under ropepatch use it", self.name, rec.attr)
                    continue
                _undo(rec)
        drop_unused()
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


# patches kept by restore() because a build in flight or a live object still used them
_lingering: list[_Record] = []
_shared: dict[tuple[int, str, bool], _Shared] = {}
_linger_lock = hold_across_fork(ForkSafeLock(reentrant=True), 2)


def _current_value(rec: _Record) -> Any:
    if rec.is_item:
        return rec.owner.get(rec.attr, _ABSENT)
    if isinstance(rec.owner, (type, ModuleType)):
        return rec.owner.__dict__.get(rec.attr, _ABSENT)
    return getattr(rec.owner, rec.attr, _ABSENT)


def _undo(rec: _Record) -> None:
    if rec.is_item:
        if rec.original is _ABSENT:
            del rec.owner[rec.attr]
        else:
            rec.owner[rec.attr] = rec.original
    elif rec.original is _ABSENT:
        try:
            delattr(rec.owner, rec.attr)
        except AttributeError:
            pass
    else:
        setattr(rec.owner, rec.attr, rec.original)


def drop_unused() -> None:
    """Undo the kept patches nothing uses any more (``disable()`` and the end of each build call it)."""
    with _linger_lock:
        for key, shared in list(_shared.items()):
            if shared.count > 0 or (shared.keep_if is not None and shared.keep_if()):
                continue
            del _shared[key]
            rec = _Record(shared.owner, shared.attr, shared.original, shared.replacement, is_item=shared.is_item)
            if _current_value(rec) is shared.replacement:
                _undo(rec)
        for rec in list(_lingering):
            if rec.keep_if is not None and rec.keep_if():
                continue
            _lingering.remove(rec)
            if _current_value(rec) is rec.replacement:
                _undo(rec)


def lingering() -> int:
    """How many restored patches are kept because something still uses them."""
    with _linger_lock:
        return len(_lingering) + sum(1 for s in _shared.values() if s.count == 0)


# -- builds in flight -------------------------------------------------------------------------
# A model build that started while ropepatch was enabled looks ropepatch's registry entries and
# validators up until it finishes; disable() meanwhile must not pull them from under it. Builds
# are tracked by their object (a failed build's object dies, and with it its entry).
_builds: weakref.WeakSet[Any] = weakref.WeakSet()


@at_fork_in_child
def _forget_builds_of_other_threads() -> None:
    # threads of the parent that were building a model do not exist in a forked child: their
    # builds never finish there, and must not keep patches alive
    _builds.clear()
    drop_unused()


def build_started(obj: Any) -> None:
    """``obj`` (a model under construction) may look up ropepatch's patches until :func:`build_finished`."""
    with _linger_lock:
        try:
            _builds.add(obj)
        except TypeError:  # not weak-referenceable: nothing to track it by
            pass


def build_finished(obj: Any) -> None:
    """The build of ``obj`` is over; patches kept only for builds are undone when none is left."""
    with _linger_lock:
        _builds.discard(obj)
        if not _builds:
            drop_unused()


def builds_in_flight() -> bool:
    """True while a model build that started under ropepatch has not finished (or its object lives unfinished)."""
    return len(_builds) > 0


# -- post-import hooks (wrapt's idea: fire now if imported, else right after the import) ------
_hook_lock = hold_across_fork(ForkSafeLock(reentrant=True), 3)
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
_deferred_lock = patch_lock = hold_across_fork(ForkSafeLock(reentrant=True), 1)


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
