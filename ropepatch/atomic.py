"""Atomic file writes through a private temporary file: every file ropepatch writes goes through here.

A fixed temporary name (``x.pth.tmp``) lets anyone who can write to the folder plant a symlink
there and make the writer (often root, for ``install-pth``) overwrite the link's target. Here the
temporary file is created by :func:`tempfile.mkstemp` in the destination's folder, which opens
with ``O_CREAT | O_EXCL`` (and ``O_NOFOLLOW`` where it exists): it never opens an existing name,
symlink or not. The finished file then replaces the destination with :func:`os.replace`, which
renames over the *name*: a symlink at the destination is replaced by the new file, and whatever
it pointed to is never opened. Readers see the old file or the new one, never half of it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write"]


@contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, perms: int = 0o644, encoding: str | None = None, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a private temporary file next to ``path``; on success it atomically becomes ``path``.

    ``mode`` is ``"w"`` (text, ``encoding`` default UTF-8) or ``"wb"``. ``perms`` are the new
    file's permission bits (``mkstemp`` creates 0600; a ``.pth`` must be readable by every user).
    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if hasattr(os, "fchmod"):  # not on Windows, where mkstemp's file is not private anyway
            os.fchmod(fd, perms)
        if "b" in mode:
            f: IO[Any] = os.fdopen(fd, mode, **kwargs)
        else:
            f = os.fdopen(fd, mode, encoding=encoding or "utf-8", **kwargs)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the rename must not become visible before the data
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes, *, perms: int = 0o644) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, never following a planted name; return the path."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", perms=perms) as f:
        f.write(data)
    return Path(path)
