"""Progress bars: tqdm when installed (the ``eval`` extra), else one line per finished stage."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(total: int, desc: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a bar on stderr while the block runs."""
    if not enabled:

        def ignore(n: int = 1) -> None:
            return None

        yield ignore
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, desc=desc, unit="win", leave=False, file=sys.stderr, dynamic_ncols=True)
        try:
            yield bar.update
        finally:
            bar.close()
        return
    start = time.time()
    done = [0]

    def advance(n: int = 1) -> None:
        done[0] += n

    try:
        yield advance
    finally:
        print(f"{desc}: {done[0]}/{total} in {time.time() - start:.1f}s", file=sys.stderr)
