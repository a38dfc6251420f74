"""Locks that survive ``fork()``: a forked child can always call ``enable()`` / ``disable()``.

``os.fork()`` copies a process with only the calling thread. A lock another thread held at that
moment stays held in the child forever, so the child's first ``enable()`` would hang (servers
fork: gunicorn-style workers, ``multiprocessing``, vLLM/TGI process trees). Every lock ropepatch
uses is a :class:`ForkSafeLock`. Around a fork (``os.register_at_fork``):

* before: the locks that guard enabling, disabling and patching (:func:`hold_across_fork`) are
  taken in a fixed order, so the fork waits (at most :data:`FORK_WAIT` seconds per lock) until no
  other thread is half-way through ``enable()``/``disable()`` and the child copies a consistent state;
* in the parent: they are released;
* in the child: every ropepatch lock is replaced by a fresh, unheld one, and the registered
  per-process state is reset (:func:`at_fork_in_child`: builds that other threads of the parent
  had in flight never finish in the child).

What a child inherits is documented in docs/safety.md: ropepatch enabled or not as the parent
was, the same settings and installed patches, the models the parent built.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["FORK_WAIT", "ForkSafeLock", "at_fork_in_child", "hold_across_fork"]

#: seconds ``fork()`` waits for each held lock before copying the process anyway
FORK_WAIT = 10.0

_locks: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()
_held_across: list[tuple[int, ForkSafeLock]] = []
_taken: list[ForkSafeLock] = []
_child_hooks: list[Callable[[], None]] = []


class ForkSafeLock:
    """A ``threading.Lock`` (or ``RLock`` with ``reentrant=True``) that a forked child gets back unheld."""

    __slots__ = ("__weakref__", "_lock", "_reentrant")

    def __init__(self, *, reentrant: bool = False) -> None:
        self._reentrant = reentrant
        self._lock: Any = threading.RLock() if reentrant else threading.Lock()
        _locks.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """As ``threading.Lock.acquire``."""
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        """As ``threading.Lock.release``."""
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _reset(self) -> None:
        self._lock = threading.RLock() if self._reentrant else threading.Lock()


def hold_across_fork(lock: ForkSafeLock, rank: int) -> ForkSafeLock:
    """Take ``lock`` before every fork so the child copies no half-done work.

    Locks are taken by ``rank``, lowest first, which must be the order ropepatch's own code nests
    them in (``runtime`` 0, ``patch_lock`` 1, kept patches 2, import hooks 3), or fork and a
    disable() in another thread would each wait for the other until :data:`FORK_WAIT`.
    """
    _held_across.append((rank, lock))
    _held_across.sort(key=lambda item: item[0])
    return lock


def at_fork_in_child(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook()`` in every forked child, after the locks are fresh (resets per-process state)."""
    _child_hooks.append(hook)
    return hook


def _before() -> None:
    for _rank, lock in _held_across:
        if lock.acquire(timeout=FORK_WAIT):
            _taken.append(lock)


def _after_in_parent() -> None:
    while _taken:
        _taken.pop().release()


def _after_in_child() -> None:
    _taken.clear()
    for lock in list(_locks):
        lock._reset()
    for hook in _child_hooks:
        try:
            hook()
        except Exception:  # noqa: BLE001 - a fork must never fail because of ropepatch
            pass


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)
