"""The one "did you mean" rule: the closest valid name to a typo."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest"]


def closest(name: str, candidates: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The candidate ``name`` most likely meant (a typo's fix), or ``None`` when none is close.

    The command line uses it for verbs, options and choices; config and override keys, methods and
    runtimes use the same difflib rule.
    """
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=cutoff)
    return matches[0] if matches else None
