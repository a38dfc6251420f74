"""Records ropepatch leaves on objects it rewrote, trusted only when ropepatch made them in this process.

ropepatch rewrites a transformers config's rope dict to one of its own rope types and keeps, under
the ``"ropepatch"`` key, the spec it applies and the dict as it was loaded (so ``to_dict`` and
``detect`` see the original). A key is something any ``config.json`` can carry, so the record's
*type* is what makes it trusted: :class:`Record` is a ``dict`` subclass that JSON never produces.
A record read from a file is a plain ``dict`` and is ignored: a checkpoint cannot steer detection
or what ``save_pretrained`` writes by planting ropepatch's key. Copies keep the type
(``copy.deepcopy`` and pickling preserve a subclass), so configs transformers copies stay trusted.
"""

from __future__ import annotations

from typing import Any, TypeGuard

__all__ = ["Record", "made_here"]


class Record(dict):  # type: ignore[type-arg]
    """A dict ropepatch itself made in this process (or a copy of one); never read from JSON."""

    __slots__ = ()


def made_here(obj: Any) -> TypeGuard[Record]:
    """True when ``obj`` is a :class:`Record`, i.e. ropepatch wrote it, not a file."""
    return isinstance(obj, Record)
