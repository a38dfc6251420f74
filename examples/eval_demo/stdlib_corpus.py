"""The demo's offline corpus: the Python standard library's own ``.py`` files, as bytes.

Every file goes to training or to evaluation by a hash of its path relative to the stdlib root, so
the split is the same on every machine with the same Python version, and no evaluated file was
seen in training.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

__all__ = ["HELD_OUT_BUCKET", "stdlib_files", "split_files", "read_bytes"]

#: a file is held out when sha1(relative path) mod 10 equals this
HELD_OUT_BUCKET = 0


def stdlib_root() -> Path:
    """The directory of this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Every ``.py`` file of the standard library (third-party packages excluded), sorted."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _bucket(path: Path) -> int:
    rel = path.relative_to(stdlib_root()).as_posix()
    return int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 10


def split_files() -> tuple[list[Path], list[Path]]:
    """``(train, held_out)``: about nine tenths and one tenth of the files."""
    train, held = [], []
    for p in stdlib_files():
        (held if _bucket(p) == HELD_OUT_BUCKET else train).append(p)
    return train, held


def read_bytes(paths: list[Path], limit: int | None = None) -> bytes:
    """The files' bytes joined by a blank line, cut at ``limit`` bytes."""
    out = bytearray()
    for p in paths:
        out += p.read_bytes() + b"\n\n"
        if limit is not None and len(out) >= limit:
            return bytes(out[:limit])
    return bytes(out)
